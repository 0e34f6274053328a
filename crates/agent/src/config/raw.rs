//! The config file as written (`RawConfig`, unknown keys refused) and the overlay of flags
//! and `TETHER_*` variables on it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::args::AgentArgs;
use crate::source::keyshade::config::RawKeyshade;

/// The file as written. Every field optional; flags fill or override.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub command: Option<Vec<String>>,
    #[serde(rename = "source")]
    pub sources: Option<Vec<RawSource>>,
    #[serde(rename = "output")]
    pub outputs: Option<Vec<RawOutput>>,
    pub on_change: Option<String>,
    pub env: Option<RawEnv>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<String>,
    pub debounce: Option<String>,
    pub max_wait: Option<String>,
    pub splay: Option<String>,
    pub restart_on_exit: Option<String>,
    pub keep_outputs: Option<bool>,
    /// One change set lands in every output or in none (default true).
    pub atomic_outputs: Option<bool>,
    pub forward_signals: Option<Vec<String>>,
    pub exec_timeout: Option<String>,
    pub reload_grace: Option<String>,
    /// `forward` (run's default) or `reload` (watch always).
    pub sighup: Option<String>,
    pub signal_pidfile: Option<PathBuf>,
    pub signal_process: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    /// Nodes to follow (network source), any of which will do.
    #[serde(rename = "server")]
    pub servers: Option<Vec<String>>,
    /// The environment to follow on those nodes.
    pub environment: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub start_without_server: Option<bool>,
    /// Where /healthz, /readyz and /metrics are served: `127.0.0.1:9464` or `unix:PATH`.
    pub listen_metrics: Option<String>,
    /// The keyshade source (`crate::source::keyshade::config`).
    pub keyshade: Option<RawKeyshade>,
    /// Health after a change (`crate::bake`): at most one of the three checks.
    pub health_cmd: Option<String>,
    pub health_http: Option<String>,
    pub health_tcp: Option<String>,
    pub bake: Option<String>,
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    /// Go back to the last healthy values when a change fails (default true).
    pub rollback: Option<bool>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawSource {
    /// `"file:/etc/app.env"`, `"json:/x.conf"`, `"dir:/secrets"`.
    Short(String),
    Table(RawSourceTable),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawSourceTable {
    pub file: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    /// dotenv or json (files only; default by extension).
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    pub path: Option<String>,
    pub format: Option<String>,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub on_change: Option<String>,
    /// A template file to render (watched) instead of `format`.
    pub template: Option<String>,
    /// An inline template instead of `format`.
    pub contents: Option<String>,
    /// A command run on the rendered temp file before it lands (`{path}`).
    pub check: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawEnv {
    pub enabled: Option<bool>,
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub prefix: Option<String>,
}

/// Read and parse a config file.
pub fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        ConfigError::one(
            "config",
            format!("{}: {}", path.display(), e.message().trim()),
        )
        .with_span(&text, e.span())
    })
}

impl RawConfig {
    /// Overlay the flags (which already include `TETHER_*` variables) on the file.
    pub(super) fn overlay(mut self, a: &AgentArgs) -> Self {
        fn set<T: Clone>(slot: &mut Option<T>, v: &Option<T>) {
            if v.is_some() {
                *slot = v.clone();
            }
        }
        if !a.sources.is_empty() {
            self.sources = Some(a.sources.iter().cloned().map(RawSource::Short).collect());
        }
        if a.output.is_some() || a.format.is_some() || a.mode.is_some() || a.owner.is_some() {
            if a.output.is_none() && self.outputs.as_ref().is_some_and(|o| o.len() == 1) {
                // --format/--mode/--owner alone adjust the single output of the file.
                if let Some(o) = self.outputs.as_mut().and_then(|o| o.first_mut()) {
                    set(&mut o.format, &a.format);
                    set(&mut o.mode, &a.mode);
                    set(&mut o.owner, &a.owner);
                }
            } else {
                self.outputs = Some(vec![RawOutput {
                    path: a.output.clone(),
                    format: a.format.clone(),
                    mode: a.mode.clone(),
                    owner: a.owner.clone(),
                    ..RawOutput::default()
                }]);
            }
        }
        for t in &a.templates {
            // SRC:DEST[:ACTION]; an action may itself hold colons (exec:CMD, signal:HUP).
            let mut parts = t.splitn(3, ':');
            let src = parts.next().unwrap_or_default();
            let dest = parts.next();
            let action = parts.next();
            self.outputs.get_or_insert_with(Vec::new).push(RawOutput {
                path: dest.map(str::to_string),
                template: Some(src.to_string()),
                on_change: action.map(str::to_string),
                ..RawOutput::default()
            });
        }
        set(&mut self.on_change, &a.on_change);
        if a.no_env {
            self.env.get_or_insert_with(RawEnv::default).enabled = Some(false);
        } else if a.env == Some(None) {
            self.env.get_or_insert_with(RawEnv::default).enabled = Some(true);
        }
        if let Some(Some(name)) = &a.env {
            self.environment = Some(name.clone());
        }
        if !a.servers.is_empty() {
            self.servers = Some(a.servers.clone());
        }
        set(&mut self.token_file, &a.token_file);
        set(&mut self.ca_file, &a.ca_file);
        set(&mut self.state_dir, &a.state_dir);
        if a.start_without_server {
            self.start_without_server = Some(true);
        }
        set(&mut self.stop_signal, &a.stop_signal);
        set(&mut self.stop_timeout, &a.stop_timeout);
        set(&mut self.debounce, &a.debounce);
        set(&mut self.max_wait, &a.max_wait);
        set(&mut self.splay, &a.splay);
        set(&mut self.restart_on_exit, &a.restart_on_exit);
        if a.keep_outputs {
            self.keep_outputs = Some(true);
        }
        if !a.forward_signals.is_empty() {
            self.forward_signals = Some(a.forward_signals.clone());
        }
        set(&mut self.exec_timeout, &a.exec_timeout);
        set(&mut self.reload_grace, &a.reload_grace);
        set(&mut self.sighup, &a.sighup);
        set(&mut self.listen_metrics, &a.listen_metrics);
        set(&mut self.log_level, &a.log.log_level);
        set(&mut self.log_format, &a.log.log_format);
        RawKeyshade::overlay(&mut self.keyshade, &a.keyshade);
        let h = &a.health;
        if h.health_cmd.is_some() || h.health_http.is_some() || h.health_tcp.is_some() {
            // A check given by flag replaces the file's, whatever its kind.
            self.health_cmd = h.health_cmd.clone();
            self.health_http = h.health_http.clone();
            self.health_tcp = h.health_tcp.clone();
        }
        set(&mut self.bake, &h.bake);
        set(&mut self.health_interval, &h.health_interval);
        set(&mut self.health_timeout, &h.health_timeout);
        if h.no_rollback {
            self.rollback = Some(false);
        }
        self
    }
}

pub(super) fn load(agent: &AgentArgs) -> Result<RawConfig, ConfigError> {
    let file = match &agent.config {
        Some(path) => read_file(path)?,
        None => RawConfig::default(),
    };
    Ok(file.overlay(agent))
}
