//! `tether check --mode serve --config FILE`: a node's config file validated as `tether
//! serve --config FILE` would take it (flags and `TETHER_*` variables left out), with its
//! TLS files loaded; then the effective config as TOML. Nothing secret is printed: tokens
//! appear as the hashes the file holds, a Redis password as `<redacted>`.

use std::path::Path;
use std::time::Duration;

use tether_core::settings::{ConfigError, LogFormat, Problem};

use crate::args::ServeArgs;
use crate::auth::Role;
use crate::config::{RawServeConfig, ServeConfig, from_args, redact_url, tls_acceptor};

/// Every problem with its key, or the effective config as TOML.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    let args = ServeArgs {
        config: Some(path.to_path_buf()),
        ..ServeArgs::default()
    };
    let cfg = from_args(&args)?;
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        // The files are read at start: a node that cannot load them does not start.
        tls_acceptor(cert, key).map_err(|message| {
            ConfigError(vec![Problem {
                key: "tls_cert".into(),
                message,
            }])
        })?;
    }
    // Read again for what the file leaves to each node (its id): the file parsed above.
    let raw: RawServeConfig = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default();
    Ok(to_toml(&cfg, raw.node_id.is_some()))
}

/// The effective config; `node_id` only when the file sets it (else each node's default).
fn to_toml(cfg: &ServeConfig, node_id_set: bool) -> String {
    use toml::Value as V;
    let s = |v: &str| V::String(v.to_string());
    let d = |v: Duration| V::String(humantime::format_duration(v).to_string());
    let mut t = toml::Table::new();
    t.insert("listen".into(), s(&cfg.listen.to_string()));
    t.insert("data".into(), s(&cfg.data.display().to_string()));
    if node_id_set {
        t.insert("node_id".into(), s(&cfg.node_id));
    }
    if let Some(redis) = &cfg.redis {
        t.insert("redis".into(), s(&redact_url(&redis.0)));
    }
    t.insert("history".into(), V::Integer(saturating(cfg.history)));
    t.insert("heartbeat".into(), d(cfg.heartbeat));
    t.insert(
        "max_frame".into(),
        V::Integer(saturating(cfg.max_frame as u64)),
    );
    t.insert("repair_interval".into(), d(cfg.repair_interval));
    t.insert("slot_lease".into(), d(cfg.slot_lease));
    t.insert("request_timeout".into(), d(cfg.limits.request_timeout));
    t.insert(
        "max_unauthenticated".into(),
        V::Integer(saturating(cfg.limits.max_unauthenticated as u64)),
    );
    t.insert(
        "metrics_require_token".into(),
        V::Boolean(cfg.limits.metrics_require_token),
    );
    if let Some(cert) = &cfg.tls_cert {
        t.insert("tls_cert".into(), s(&cert.display().to_string()));
    }
    if let Some(key) = &cfg.tls_key {
        t.insert("tls_key".into(), s(&key.display().to_string()));
    }
    if let Some(level) = &cfg.log_level {
        t.insert("log_level".into(), s(level));
    }
    let format = match cfg.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    t.insert("log_format".into(), s(format));
    let tokens = cfg
        .tokens
        .iter()
        .map(|tok| {
            let mut tt = toml::Table::new();
            tt.insert("name".into(), s(&tok.name));
            tt.insert("hash".into(), s(&tok.hash));
            let role = match tok.role {
                Role::Read => "read",
                Role::Write => "write",
                Role::Admin => "admin",
            };
            tt.insert("role".into(), s(role));
            if let Some(envs) = &tok.envs {
                tt.insert("envs".into(), V::Array(envs.iter().map(|e| s(e)).collect()));
            }
            tt.insert("secrets".into(), V::Boolean(tok.secrets));
            V::Table(tt)
        })
        .collect();
    t.insert("token".into(), V::Array(tokens));
    let mut out = String::new();
    out.push_str(&format!(
        "# {}; {}\n",
        match &cfg.redis {
            Some(_) => "cluster mode: the store and the bus are the Redis below".to_string(),
            None => format!("single node: embedded store in {}", cfg.data.display()),
        },
        match cfg.tokens.len() {
            0 => "no tokens: dev mode (loopback only, every request may do anything)".to_string(),
            n => format!("{n} token(s)"),
        }
    ));
    if !node_id_set {
        out.push_str("# node_id not set: each node names itself HOSTNAME-PID\n");
    }
    out.push_str(&toml::to_string_pretty(&t).unwrap_or_default());
    out
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn effective_config_hides_the_redis_password_and_shows_hashes() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        let f = write(&format!(
            "listen = \"127.0.0.1:7171\"\nredis = \"redis://:pa55word@redis.internal:6379/0\"\n\
             [[token]]\nname = \"agents\"\nhash = \"{hash}\"\nrole = \"read\"\nenvs = [\"prod\"]\n"
        ));
        let text = check(f.path()).unwrap();
        assert!(!text.contains("pa55word"), "{text}");
        assert!(
            text.contains("redis://<redacted>@redis.internal:6379/0"),
            "{text}"
        );
        assert!(text.contains(&hash), "{text}");
        assert!(text.contains("listen = \"127.0.0.1:7171\""), "{text}");
        assert!(text.contains("node_id not set"), "{text}");
        // What it prints is a config the node takes.
        let again = write(&text);
        assert!(check(again.path()).is_ok());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let f = write(
            "heartbeat = \"soon\"\nhistory = 0\n[[token]]\nname = \"x\"\nhash = \"nope\"\nrole = \"read\"\n",
        );
        let keys: Vec<String> = check(f.path())
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert!(keys.contains(&"heartbeat".to_string()), "{keys:?}");
        assert!(keys.contains(&"history".to_string()), "{keys:?}");
        assert!(keys.contains(&"token[0].hash".to_string()), "{keys:?}");
    }

    #[test]
    fn tls_files_that_do_not_load_are_a_problem() {
        let f = write("tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n");
        let e = check(f.path()).unwrap_err();
        assert_eq!(e.0[0].key, "tls_cert");
        assert!(e.0[0].message.contains("/nonexistent/cert.pem"), "{e}");
    }
}
