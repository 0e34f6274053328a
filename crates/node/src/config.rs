//! The node's configuration: TOML file (`deny_unknown_fields`) overlaid by flags and
//! `TETHER_*` variables, validated with every problem reported; and the TLS acceptor.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::auth::{Auth, TokenConfig};
pub use super::redis_url::{RedisUrl, redact_url};

use crate::args::ServeArgs;
use tether_core::settings::{ConfigError, LogFormat, Problem, parse_duration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServeConfig {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub node_id: Option<String>,
    pub history: Option<u64>,
    pub heartbeat: Option<String>,
    pub max_frame: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    /// Cluster mode: `redis://[:password@]host:port/db` or `rediss://…`.
    pub redis: Option<RedisUrl>,
    /// How often a cluster node compares its positions with Redis (default 10s).
    pub repair_interval: Option<String>,
    /// How long a rollout slot outlives its last renewal (default 30s, at least 1s).
    pub slot_lease: Option<String>,
    /// Longest a request (headers and body) may take to arrive (default 30s).
    pub request_timeout: Option<String>,
    /// Most connections at once with no request past the token check (default 1024).
    pub max_unauthenticated: Option<usize>,
    /// `/metrics` asks for a token (any role) like the API (default false).
    pub metrics_require_token: Option<bool>,
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub node_id: String,
    pub history: u64,
    pub heartbeat: Duration,
    pub max_frame: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tokens: Vec<TokenConfig>,
    pub log_level: Option<String>,
    pub log_format: LogFormat,
    pub redis: Option<RedisUrl>,
    pub repair_interval: Duration,
    /// A rollout slot's lease (`docs/rollouts.md`).
    pub slot_lease: Duration,
    /// The front door: request timeout, unauthenticated connections, `/metrics` token.
    pub limits: super::front::Limits,
    /// `--reset-store`: replace a damaged embedded store by what can be read from it.
    pub reset_store: bool,
}

/// Build the node config from flags and the optional file.
/// The longest `slot_lease`: a slot of an agent that vanished must come back some day.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

pub fn from_args(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
    let raw = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| one("config", format!("cannot read {}: {e}", path.display())))?;
            toml::from_str::<RawServeConfig>(&text).map_err(|e| {
                one(
                    "config",
                    format!("{}: {}", path.display(), e.message().trim()),
                )
            })?
        }
        None => RawServeConfig::default(),
    };
    let mut problems = Vec::new();
    let mut push = |key: &str, message: String| {
        problems.push(Problem {
            key: key.into(),
            message,
        })
    };
    let listen_s = args
        .listen
        .clone()
        .or(raw.listen)
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let listen = match listen_s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            push(
                "listen",
                format!("{listen_s:?} is not an address like 127.0.0.1:7070 or [::1]:7070"),
            );
            None
        }
    };
    let heartbeat = match args.heartbeat.as_ref().or(raw.heartbeat.as_ref()) {
        // One problem for a value that does not parse, not a second about its size.
        Some(s) => parse_duration(s)
            .map_err(|m| push("heartbeat", m))
            .ok()
            .unwrap_or(Duration::from_secs(15)),
        None => Duration::from_secs(15),
    };
    if heartbeat < Duration::from_millis(10) {
        push("heartbeat", "must be at least 10ms".into());
    }
    let max_frame = args.max_frame.or(raw.max_frame).unwrap_or(1024 * 1024);
    if max_frame < 4096 {
        push("max_frame", "must be at least 4096 bytes".into());
    }
    let history = args.history.or(raw.history).unwrap_or(1000);
    if history == 0 {
        push("history", "must keep at least one change set".into());
    }
    let tls_cert = args.tls_cert.clone().or(raw.tls_cert);
    let tls_key = args.tls_key.clone().or(raw.tls_key);
    if tls_cert.is_some() != tls_key.is_some() {
        push("tls_cert", "tls_cert and tls_key go together".into());
    }
    if let Err(errs) = Auth::new(&raw.tokens) {
        for (k, m) in errs {
            push(&k, m);
        }
    }
    if let Some(addr) = listen {
        if raw.tokens.is_empty() && !addr.ip().is_loopback() {
            push(
                "token",
                format!(
                    "no tokens configured: dev mode only listens on loopback, not {addr} (add [[token]] entries, see `tether serve hash-token`)"
                ),
            );
        }
    }
    let log_format = match args.log.log_format.as_deref().or(raw.log_format.as_deref()) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(o) => {
            push("log_format", format!("{o:?} is not one of text, json"));
            LogFormat::Text
        }
    };
    let node_id = args
        .node_id
        .clone()
        .or(raw.node_id)
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let redis = args.redis.clone().or(raw.redis);
    if let Some(RedisUrl(url)) = &redis {
        if ::redis::Client::open(url.as_str()).is_err() {
            push(
                "redis",
                format!(
                    "{} is not a redis URL (redis://[:password@]host:port/db or rediss://…)",
                    redact_url(url)
                ),
            );
        }
    }
    let repair_interval = match args
        .repair_interval
        .as_ref()
        .or(raw.repair_interval.as_ref())
    {
        Some(s) => parse_duration(s)
            .map_err(|m| push("repair_interval", m))
            .ok()
            .unwrap_or(Duration::from_secs(10)),
        None => Duration::from_secs(10),
    };
    if repair_interval < Duration::from_millis(10) {
        push("repair_interval", "must be at least 10ms".into());
    }
    let slot_lease = match args.slot_lease.as_ref().or(raw.slot_lease.as_ref()) {
        Some(s) => parse_duration(s)
            .map_err(|m| push("slot_lease", m))
            .ok()
            .unwrap_or(crate::fleet::DEFAULT_LEASE),
        None => crate::fleet::DEFAULT_LEASE,
    };
    if slot_lease < Duration::from_secs(1) {
        push("slot_lease", "must be at least 1s".into());
    }
    if slot_lease > MAX_LEASE {
        push("slot_lease", "must be at most 1d".into());
    }
    let defaults = super::front::Limits::default();
    let request_timeout = match args
        .request_timeout
        .as_ref()
        .or(raw.request_timeout.as_ref())
    {
        Some(s) => parse_duration(s)
            .map_err(|m| push("request_timeout", m))
            .ok()
            .unwrap_or(defaults.request_timeout),
        None => defaults.request_timeout,
    };
    if request_timeout < Duration::from_millis(100) {
        push("request_timeout", "must be at least 100ms".into());
    }
    let max_unauthenticated = args
        .max_unauthenticated
        .or(raw.max_unauthenticated)
        .unwrap_or(defaults.max_unauthenticated);
    if max_unauthenticated == 0 {
        push(
            "max_unauthenticated",
            "must be at least 1 (no client could connect)".into(),
        );
    } else if max_unauthenticated > 1_000_000 {
        push("max_unauthenticated", "must be at most 1000000".into());
    }
    let limits = super::front::Limits {
        request_timeout,
        max_unauthenticated,
        metrics_require_token: args.metrics_require_token
            || raw.metrics_require_token.unwrap_or(false),
    };
    if !problems.is_empty() {
        return Err(ConfigError(problems));
    }
    Ok(ServeConfig {
        listen: listen.unwrap_or_else(|| unreachable!()),
        data: args
            .data
            .clone()
            .or(raw.data)
            .unwrap_or_else(|| PathBuf::from("tether-data")),
        node_id,
        history,
        heartbeat,
        max_frame,
        tls_cert,
        tls_key,
        tokens: raw.tokens,
        log_level: args.log.log_level.clone().or(raw.log_level),
        log_format,
        redis,
        repair_interval,
        slot_lease,
        limits,
        reset_store: args.reset_store,
    })
}

fn one(key: &str, message: String) -> ConfigError {
    ConfigError(vec![Problem {
        key: key.into(),
        message,
    }])
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".into())
}

/// A rustls acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
pub(crate) mod tests {
    /// A self-signed certificate and its key, as PEM files.
    pub(crate) fn self_signed() -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut c = tempfile::NamedTempFile::new().unwrap();
        let mut k = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut c, cert.pem().as_bytes()).unwrap();
        std::io::Write::write_all(&mut k, key.serialize_pem().as_bytes()).unwrap();
        (c, k)
    }

    #[test]
    fn slot_lease_is_bounded() {
        let with = |lease: &str| {
            super::from_args(&crate::args::ServeArgs {
                slot_lease: Some(lease.into()),
                ..crate::args::ServeArgs::default()
            })
        };
        let err = with("1000000d").expect_err("too long");
        assert!(
            err.0
                .iter()
                .any(|p| p.key == "slot_lease" && p.message.contains("at most 1d")),
            "{err:?}"
        );
        assert!(with("1s").is_ok() && with("1d").is_ok());
    }

    #[test]
    fn redacts_passwords_with_at_signs() {
        assert_eq!(
            super::redact_url("redis://:p@ss@host:6379/0"),
            "redis://<redacted>@host:6379/0"
        );
        assert_eq!(super::redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            super::redact_url("rediss://u:pw@h"),
            "rediss://<redacted>@h"
        );
    }
}
