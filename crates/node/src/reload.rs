//! Reloading the node's configuration while it runs: on a request (SIGHUP, which the
//! binary turns into a [`Reload`] request) and when its config file or TLS files change
//! (`watch`). The file is read again under the flags and `TETHER_*` variables the node
//! started with, and validated whole. Any problem: each is logged (key and message, never a
//! token or a password) and the running configuration stays. Otherwise what can change at
//! runtime does (tokens, TLS certificate, log level, heartbeat and max_frame for new agent
//! connections, request_timeout, max_unauthenticated, metrics_require_token, history,
//! repair_interval, slot_lease), and what cannot (listen, data, redis, node_id, log_format, TLS on or
//! off) is logged as taking effect at restart. systemd hears `RELOADING=1` before and
//! `READY=1` after, applied or refused.

mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tether_core::notify;
use tether_core::settings::{LogControl, Problem};
use tokio::sync::mpsc;

use super::Node;
use super::args::ServeArgs;
use super::auth::Auth;
use super::config::{self, ServeConfig};
use super::live::Gate;

/// How a node is asked to reload.
pub struct Reload {
    /// The flags (with the `TETHER_*` variables clap read) the node started with.
    pub args: ServeArgs,
    /// One message per request (SIGHUP): each is a reload. Requests that arrive while one
    /// is running may be merged into the next.
    pub requests: mpsc::Receiver<()>,
}

/// Start the reload task (and the file watch, with a config file) for a node started with
/// `running`.
pub(crate) fn start(
    r: Reload,
    running: ServeConfig,
    log: LogControl,
    node: Arc<Node>,
    gate: Arc<Gate>,
) {
    let reloader = Reloader {
        args: r.args,
        running,
        log,
        node: node.clone(),
        gate,
    };
    let (tx, events) = mpsc::unbounded_channel();
    let files = reloader.files();
    // The config file, and TLS files even when flags name them.
    let watch = if files.is_empty() {
        None
    } else {
        watch::FileWatch::start(&files, tx)
            .map_err(|e| tracing::warn!(error = %e, "cannot follow the config and TLS files; reload with SIGHUP"))
            .ok()
    };
    let tasks = node.tasks.clone();
    tasks.spawn(run(reloader, r.requests, events, watch));
}

async fn run(
    mut reloader: Reloader,
    requests: mpsc::Receiver<()>,
    events: mpsc::UnboundedReceiver<()>,
    mut watch: Option<watch::FileWatch>,
) {
    let shutdown = reloader.node.shutdown.clone();
    let mut requests = Some(requests);
    let mut events = watch.is_some().then_some(events);
    let mut seen = fingerprint(&reloader.files());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = next(&mut requests) => match r {
                Some(()) => {
                    seen = fingerprint(&reloader.files());
                    reloader.reload("signal").await;
                }
                None => requests = None,
            },
            e = next_unbounded(&mut events) => {
                let open = e.is_some() && match events.as_mut() {
                    Some(rx) => watch::settle(rx).await,
                    None => false,
                };
                if !open {
                    events = None;
                    continue;
                }
                let now = fingerprint(&reloader.files());
                if now != seen {
                    seen = now;
                    reloader.reload("file changed").await;
                }
                if let Some(w) = watch.as_mut() {
                    if let Err(e) = w.follow(&reloader.files()) {
                        tracing::warn!(error = %e, "cannot follow a changed path of the config; reload with SIGHUP");
                    }
                }
            }
        }
    }
}

async fn next(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_unbounded(rx: &mut Option<mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What the files hold now: equal fingerprints, nothing to reload.
fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => {
                h.update([1]);
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            }
            Err(e) => h.update([0, e.kind() as u8]),
        }
    }
    h.finalize().into()
}

struct Reloader {
    args: ServeArgs,
    running: ServeConfig,
    log: LogControl,
    node: Arc<Node>,
    gate: Arc<Gate>,
}

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

impl Reloader {
    /// The files the node reads: its config file and TLS files.
    fn files(&self) -> Vec<PathBuf> {
        [
            self.args.config.clone(),
            self.running.tls_cert.clone(),
            self.running.tls_key.clone(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    async fn reload(&mut self, trigger: &str) {
        notify::reloading();
        tracing::info!(trigger, "reloading the configuration");
        match self.apply() {
            Ok(()) => {}
            Err(problems) => {
                for p in &problems {
                    tracing::error!(key = %p.key, problem = %p.message, "config reload: problem");
                }
                tracing::error!(
                    problems = problems.len(),
                    "config reload refused; the running configuration stays"
                );
            }
        }
        notify::ready(&super::sd::status_line(&self.node).await);
    }

    /// Read, validate and apply the configuration; on any problem nothing is applied.
    fn apply(&mut self) -> Result<(), Vec<Problem>> {
        let cfg = config::from_args(&self.args).map_err(|e| e.0)?;
        let old = &self.running;
        let auth = Auth::new(&cfg.tokens).map_err(|errs| {
            errs.into_iter()
                .map(|(k, m)| problem(&k, m))
                .collect::<Vec<_>>()
        })?;
        if cfg.tokens.is_empty() && !old.listen.ip().is_loopback() {
            return Err(vec![problem(
                "token",
                format!(
                    "no tokens configured: dev mode only listens on loopback, and this node listens on {} (listen changes at restart)",
                    old.listen
                ),
            )]);
        }
        let tls_on = old.tls_cert.is_some();
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) if tls_on => {
                Some(config::tls_acceptor(cert, key).map_err(|m| vec![problem("tls_cert", m)])?)
            }
            _ => None,
        };
        let mut restart = Vec::new();
        let mut check = |key: &'static str, changed: bool| {
            if changed {
                restart.push(key);
            }
        };
        check("listen", cfg.listen != old.listen);
        check("data", cfg.data != old.data);
        check(
            "redis",
            cfg.redis.as_ref().map(|u| &u.0) != old.redis.as_ref().map(|u| &u.0),
        );
        check("node_id", cfg.node_id != old.node_id);
        check("log_format", cfg.log_format != old.log_format);
        check("tls_cert", cfg.tls_cert.is_some() != tls_on);
        // The one change that may still fail: applied first, so that a refusal leaves
        // everything as it was.
        let mut applied: Vec<&str> = Vec::new();
        if cfg.log_level != old.log_level {
            self.log
                .set(cfg.log_level.as_deref())
                .map_err(|m| vec![problem("log_level", m)])?;
            applied.push("log_level");
        }
        let node = &self.node;
        if cfg.tokens != old.tokens {
            log_tokens(old, &cfg);
            node.live.set_auth(auth);
            // Connections of removed or narrowed tokens close; the others stay.
            node.hub.recheck_tokens();
            applied.push("token");
        }
        if let Some(tls) = tls {
            self.gate.set_tls(tls);
            applied.push("tls (certificate and key read again)");
        }
        for (key, changed) in [
            ("heartbeat", cfg.heartbeat != old.heartbeat),
            ("max_frame", cfg.max_frame != old.max_frame),
        ] {
            if changed {
                tracing::info!(key, "applies to agent connections opened from now on");
                applied.push(key);
            }
        }
        node.live.set_heartbeat(cfg.heartbeat);
        node.live.set_max_frame(cfg.max_frame);
        if cfg.limits != old.limits {
            self.gate.door.set_limits(cfg.limits);
            applied.push("request_timeout, max_unauthenticated, metrics_require_token");
        }
        if cfg.history != old.history {
            node.store.set_history(cfg.history);
            applied.push("history");
        }
        if cfg.repair_interval != old.repair_interval {
            node.live.set_repair_interval(cfg.repair_interval);
            applied.push("repair_interval");
        }
        if cfg.slot_lease != old.slot_lease {
            node.fleet.set_lease(cfg.slot_lease);
            applied.push("slot_lease");
        }
        for key in &restart {
            tracing::warn!(
                key,
                "changed, but takes effect at restart: the running value stays until then"
            );
        }
        tracing::info!(
            applied = %if applied.is_empty() { "nothing changed".to_string() } else { applied.join(", ") },
            restart_needed = restart.len(),
            "configuration reloaded"
        );
        // What runs now: the new values, but the old ones of what waits for a restart.
        let mut next = cfg;
        next.listen = old.listen;
        next.data = old.data.clone();
        next.redis = old.redis.clone();
        next.node_id = old.node_id.clone();
        next.log_format = old.log_format;
        if next.tls_cert.is_some() != tls_on {
            next.tls_cert = old.tls_cert.clone();
            next.tls_key = old.tls_key.clone();
        }
        self.running = next;
        Ok(())
    }
}

/// Which tokens came and went, by name (never a hash or a secret).
fn log_tokens(old: &ServeConfig, new: &ServeConfig) {
    let names = |c: &ServeConfig| {
        c.tokens
            .iter()
            .map(|t| t.name.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (before, after) = (names(old), names(new));
    let list = |v: Vec<&String>| {
        v.into_iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    tracing::info!(
        tokens = new.tokens.len(),
        added = %list(after.difference(&before).collect()),
        removed = %list(before.difference(&after).collect()),
        "tokens reloaded: connections whose token is gone or no longer covers them are closed"
    );
}

#[cfg(test)]
mod tests;
