//! Configuration: the TOML file (`RawConfig`, unknown keys refused) overlaid by flags and
//! `TETHER_*` variables, then validated into a typed [`Config`], reporting every problem at
//! once with its key path.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::args::{RunArgs, WatchArgs};
use crate::output::{EnvSpec, Format, Owner};
use crate::source::keyshade::config as keyshade;
use crate::source::{SourceKind, SourceSpec};
use tether_core::secret::Value;
use tether_core::signal::Signal;

pub use crate::action::Action;
pub use crate::output::OutputSpec;
pub use crate::source::keyshade::config::KeyshadeSpec;
pub use crate::source::net::NetSpec;

mod parse;
mod raw;
#[cfg(test)]
mod tests;

pub use parse::parse_action;
use parse::{Problems, parse_env, parse_net, parse_output, parse_source};
use raw::load;
pub use raw::{RawConfig, RawEnv, RawOutput, RawSource, RawSourceTable, read_file};
pub use tether_core::settings::{ConfigError, LogFormat, Problem, parse_duration};

/// The longest any of the agent's durations may be (a day): larger ones are mistakes, and
/// would overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// A duration of the agent's configuration: parsed, at most [`MAX_DURATION`].
pub(crate) fn parse_bounded(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is too long: at most 1d (24h)"));
    }
    Ok(d)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Run,
    Watch,
}

/// What SIGHUP sent to tether itself does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sighup {
    /// Forward it to the child's process group (run's default).
    Forward,
    /// Re-read tether's own configuration (watch always; run with `sighup = "reload"`).
    Reload,
}

impl std::fmt::Display for Sighup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sighup::Forward => "forward",
            Sighup::Reload => "reload",
        })
    }
}

/// What a configuration was built from (flags and `TETHER_*` variables as read at start),
/// so that a reload builds it again the same way with the file as it is now.
#[derive(Clone, Debug)]
pub enum Origin {
    Run(RunArgs),
    Watch(WatchArgs),
}

impl Origin {
    /// Build the configuration again: the file as it is now, under the same flags.
    pub fn build(&self) -> Result<Config, ConfigError> {
        match self {
            Origin::Run(a) => for_run(a),
            Origin::Watch(a) => for_watch(a),
        }
    }

    /// The config file (`--config`), if there is one.
    pub fn config_file(&self) -> Option<&std::path::Path> {
        match self {
            Origin::Run(a) => a.agent.config.as_deref(),
            Origin::Watch(a) => a.agent.config.as_deref(),
        }
    }
}

/// Where watch mode sends its signals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchTarget {
    pub pidfile: Option<PathBuf>,
    pub process: Option<String>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub net: Option<NetSpec>,
    /// The keyshade source (`[keyshade]`, `--keyshade-*`, keyshade's own files).
    pub keyshade: Option<KeyshadeSpec>,
    pub mode: Mode,
    pub command: Vec<OsString>,
    pub sources: Vec<SourceSpec>,
    pub outputs: Vec<OutputSpec>,
    pub env: Option<EnvSpec>,
    pub on_change: Action,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub debounce: Duration,
    pub max_wait: Duration,
    pub splay: Duration,
    pub restart_on_exit: RestartPolicy,
    pub keep_outputs: bool,
    /// A change set lands in every output or in none (`atomic_outputs`, default true).
    pub atomic_outputs: bool,
    pub forward_signals: Vec<Signal>,
    pub exec_timeout: Duration,
    pub reload_grace: Duration,
    pub sighup: Sighup,
    pub target: WatchTarget,
    pub log_level: Option<String>,
    pub log_format: LogFormat,
    /// What it was built from (`None` for `tether check`): a reload builds it again.
    pub origin: Option<Origin>,
    /// Where the agent's endpoints listen (`--listen-metrics`); off when `None`.
    pub listen_metrics: Option<crate::health::ListenAddr>,
    /// `--once` / `--dry-run` (flags only): render once and exit.
    pub once: Option<crate::once::OnceSpec>,
    /// Health after a change: the check, the bake, rollback.
    pub health: crate::bake::HealthSpec,
}

/// Build the config of `tether run` from its flags and optional file.
pub fn for_run(args: &RunArgs) -> Result<Config, ConfigError> {
    let mut raw = load(&args.agent)?;
    if !args.command.is_empty() {
        raw.command = None;
    }
    let mut cfg = with_once(validate(&raw, Mode::Run), &args.agent.once)?;
    if !args.command.is_empty() {
        cfg.command = args.command.clone();
    }
    cfg.origin = Some(Origin::Run(args.clone()));
    if cfg.command.is_empty() && cfg.once.is_none() {
        return Err(ConfigError::one(
            "command",
            "no command to run (give it after `--` or as `command = [...]` in the config)",
        ));
    }
    Ok(cfg)
}

/// Build the config of `tether watch` from its flags and optional file.
pub fn for_watch(args: &WatchArgs) -> Result<Config, ConfigError> {
    let mut raw = load(&args.agent)?;
    if args.signal_pidfile.is_some() {
        raw.signal_pidfile = args.signal_pidfile.clone();
    }
    if args.signal_process.is_some() {
        raw.signal_process = args.signal_process.clone();
    }
    let mut cfg = with_once(validate(&raw, Mode::Watch), &args.agent.once)?;
    cfg.origin = Some(Origin::Watch(args.clone()));
    Ok(cfg)
}

/// Add the one-shot flags to a validated config; their problems join the config's.
fn with_once(
    cfg: Result<Config, ConfigError>,
    args: &crate::args::OnceArgs,
) -> Result<Config, ConfigError> {
    match (cfg, crate::once::spec(args)) {
        (Ok(mut cfg), Ok(once)) => {
            let renders_nothing = cfg.outputs.is_empty();
            if once.as_ref().is_some_and(|o| !o.dry_run) && renders_nothing {
                return Err(ConfigError::one(
                    "output",
                    "--once writes files and starts no child: give an --output \
                     (--dry-run shows the child's environment)",
                ));
            }
            cfg.once = once;
            Ok(cfg)
        }
        (Err(mut e), Err(more)) => {
            e.0.extend(more);
            Err(e)
        }
        (Err(e), Ok(_)) => Err(e),
        (Ok(_), Err(problems)) => Err(ConfigError(problems)),
    }
}

/// Validate a raw config for a mode, collecting every problem. keyshade's own files are
/// found through the process's `HOME` and working directory.
pub fn validate(raw: &RawConfig, mode: Mode) -> Result<Config, ConfigError> {
    validate_in(raw, mode, &keyshade::Context::from_process())
}

/// [`validate`], with keyshade's files and variables taken from `ctx`.
pub fn validate_in(
    raw: &RawConfig,
    mode: Mode,
    ctx: &keyshade::Context,
) -> Result<Config, ConfigError> {
    let mut p = Problems::default();

    let sources: Vec<SourceSpec> = raw
        .sources
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, s)| p.check(&format!("source[{i}]"), parse_source(s)))
        .collect();
    let net = parse_net(raw, &mut p);
    let mut keyshade_problems = Vec::new();
    let keyshade = keyshade::parse(raw.keyshade.as_ref(), ctx, &mut keyshade_problems);
    let keyshade_in_use = keyshade::in_use(raw.keyshade.as_ref(), ctx);
    p.extend(keyshade_problems);
    if sources.is_empty() && net.is_none() && !keyshade_in_use {
        p.push(
            "source",
            "at least one source is required (--source file:/etc/app.env, --server URL --env \
             NAME, or --keyshade-project SLUG and the other [keyshade] settings)",
        );
    }

    let on_change = match &raw.on_change {
        Some(s) => p
            .check("on_change", parse_action(s))
            .unwrap_or(Action::None),
        None if mode == Mode::Run => Action::Restart,
        None if raw.signal_pidfile.is_some() || raw.signal_process.is_some() => {
            Action::Signal(Signal::HUP)
        }
        None => Action::None,
    };

    let mut outputs = Vec::new();
    for (i, o) in raw.outputs.iter().flatten().enumerate() {
        let key = format!("output[{i}]");
        if let Some(spec) = parse_output(o, &key, &on_change, &mut p) {
            outputs.push(spec);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for o in &outputs {
        if !seen.insert(o.path.clone()) {
            p.push(
                "output",
                format!("{} is used by two outputs", o.path.display()),
            );
        }
    }

    let env = parse_env(raw.env.as_ref(), mode, &mut p);

    let dur = |p: &mut Problems, key: &str, v: &Option<String>, default: Duration| match v {
        Some(s) => p.check(key, parse_bounded(s)).unwrap_or(default),
        None => default,
    };
    let stop_timeout = dur(
        &mut p,
        "stop_timeout",
        &raw.stop_timeout,
        Duration::from_secs(10),
    );
    let debounce = dur(
        &mut p,
        "debounce",
        &raw.debounce,
        Duration::from_millis(100),
    );
    let max_wait = dur(&mut p, "max_wait", &raw.max_wait, Duration::from_secs(2));
    let splay = dur(&mut p, "splay", &raw.splay, Duration::ZERO);
    let exec_timeout = dur(
        &mut p,
        "exec_timeout",
        &raw.exec_timeout,
        Duration::from_secs(30),
    );
    for o in &mut outputs {
        if let Some(c) = &mut o.check {
            c.timeout = exec_timeout;
        }
    }
    let reload_grace = dur(
        &mut p,
        "reload_grace",
        &raw.reload_grace,
        Duration::from_secs(1),
    );

    let stop_signal = match &raw.stop_signal {
        Some(s) => p
            .check(
                "stop_signal",
                s.parse::<Signal>().map_err(|e| e.to_string()),
            )
            .unwrap_or(Signal::TERM),
        None => Signal::TERM,
    };
    let forward_signals = match &raw.forward_signals {
        Some(list) => list
            .iter()
            .filter(|s| !s.trim().is_empty())
            .filter_map(|s| {
                p.check(
                    "forward_signals",
                    s.parse::<Signal>().map_err(|e| e.to_string()),
                )
            })
            .collect(),
        None => Signal::default_forwarded(),
    };
    for s in &forward_signals {
        if matches!(
            s.0,
            nix::sys::signal::Signal::SIGKILL
                | nix::sys::signal::Signal::SIGSTOP
                | nix::sys::signal::Signal::SIGCHLD
        ) {
            p.push("forward_signals", format!("{s} cannot be forwarded"));
        }
        // Job-control stops: tether must keep their default action to stop with its child.
        if matches!(
            s.0,
            nix::sys::signal::Signal::SIGTSTP
                | nix::sys::signal::Signal::SIGTTIN
                | nix::sys::signal::Signal::SIGTTOU
        ) {
            p.push(
                "forward_signals",
                format!("{s} is job control: the terminal sends it to the child itself"),
            );
        }
    }
    let restart_on_exit = match raw.restart_on_exit.as_deref() {
        None | Some("never") => RestartPolicy::Never,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some("always") => RestartPolicy::Always,
        Some(other) => {
            p.push(
                "restart_on_exit",
                format!("{other:?} is not one of never, on-failure, always"),
            );
            RestartPolicy::Never
        }
    };
    let sighup = match (raw.sighup.as_deref(), mode) {
        (None, Mode::Run) | (Some("forward"), Mode::Run) => Sighup::Forward,
        (None | Some("reload"), _) => Sighup::Reload,
        (Some("forward"), Mode::Watch) => {
            p.push(
                "sighup",
                "watch mode has no child to forward it to; SIGHUP reloads tether's config",
            );
            Sighup::Reload
        }
        (Some(other), _) => {
            p.push("sighup", format!("{other:?} is not one of forward, reload"));
            Sighup::Reload
        }
    };
    let log_format = match raw.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.push("log_format", format!("{other:?} is not one of text, json"));
            LogFormat::Text
        }
    };

    let target = WatchTarget {
        pidfile: raw.signal_pidfile.clone(),
        process: raw.signal_process.clone(),
    };
    if let Some(name) = &target.process {
        if name.is_empty() || name.contains('/') {
            p.push("signal_process", "must be a process name, not a path");
        }
    }
    let command: Vec<OsString> = raw.command.iter().flatten().map(OsString::from).collect();

    // Mode-specific rules.
    let actions = std::iter::once(("on_change".to_string(), &on_change)).chain(
        outputs
            .iter()
            .enumerate()
            .map(|(i, o)| (format!("output[{i}].on_change"), &o.on_change)),
    );
    match mode {
        Mode::Run => {
            if target.pidfile.is_some() || target.process.is_some() {
                p.push(
                    "signal_pidfile",
                    "only `tether watch` signals other processes; `run` signals its child",
                );
            }
            if outputs.is_empty() && env.is_none() {
                p.push(
                    "output",
                    "nothing to render: give an --output or enable --env",
                );
            }
        }
        Mode::Watch => {
            for (key, a) in actions {
                match a {
                    Action::Restart => p.push(&key, "restart needs a child: use `tether run`, or signal/exec in watch mode"),
                    Action::Signal(_) if target.pidfile.is_none() && target.process.is_none() => p.push(
                        &key,
                        "a signal needs a target: --signal-pidfile PATH or --signal-process NAME",
                    ),
                    _ => {}
                }
            }
            if outputs.is_empty() {
                p.push("output", "watch mode needs at least one --output");
            }
            if !command.is_empty() {
                p.push("command", "watch mode runs no command; use `tether run`");
            }
        }
    }
    let listen_metrics = raw
        .listen_metrics
        .as_deref()
        .and_then(|s| p.check("listen_metrics", s.parse::<crate::health::ListenAddr>()));
    if max_wait < debounce {
        p.push("max_wait", "must be at least the debounce window");
    }
    let health = parse::parse_health(raw, mode, &mut p);

    p.finish(Config {
        net,
        keyshade,
        mode,
        command,
        sources,
        outputs,
        env,
        on_change,
        stop_signal,
        stop_timeout,
        debounce,
        max_wait,
        splay,
        restart_on_exit,
        keep_outputs: raw.keep_outputs.unwrap_or(false),
        atomic_outputs: raw.atomic_outputs.unwrap_or(true),
        forward_signals,
        exec_timeout,
        reload_grace,
        sighup,
        target,
        log_level: raw.log_level.clone(),
        log_format,
        origin: None,
        listen_metrics,
        once: None,
        health,
    })
}

impl Config {
    /// The effective configuration as TOML, for `tether check`. Holds no values.
    pub fn to_toml(&self) -> String {
        use toml::Value as V;
        let mut t = toml::Table::new();
        let s = |v: String| V::String(v);
        let d = |v: Duration| V::String(humantime::format_duration(v).to_string());
        if !self.command.is_empty() {
            t.insert(
                "command".into(),
                V::Array(
                    self.command
                        .iter()
                        .map(|a| s(a.to_string_lossy().into_owned()))
                        .collect(),
                ),
            );
        }
        t.insert(
            "source".into(),
            V::Array(self.sources.iter().map(|x| s(x.to_string())).collect()),
        );
        if let Some(net) = &self.net {
            t.insert(
                "server".into(),
                V::Array(net.servers.iter().cloned().map(s).collect()),
            );
            t.insert("environment".into(), s(net.env.clone()));
            if let Some(tf) = &net.token_file {
                t.insert("token_file".into(), s(tf.display().to_string()));
            }
            if let Some(ca) = &net.ca_file {
                t.insert("ca_file".into(), s(ca.display().to_string()));
            }
            if let Some(dir) = &net.state_dir {
                t.insert("state_dir".into(), s(dir.display().to_string()));
            }
            t.insert(
                "start_without_server".into(),
                V::Boolean(net.start_without_server),
            );
        }
        if let Some(ks) = &self.keyshade {
            t.insert("keyshade".into(), V::Table(ks.to_toml()));
        }
        t.insert("on_change".into(), s(self.on_change.to_string()));
        t.insert("stop_signal".into(), s(self.stop_signal.to_string()));
        t.insert("stop_timeout".into(), d(self.stop_timeout));
        t.insert("debounce".into(), d(self.debounce));
        t.insert("max_wait".into(), d(self.max_wait));
        t.insert("splay".into(), d(self.splay));
        let policy = match self.restart_on_exit {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        };
        t.insert("restart_on_exit".into(), s(policy.into()));
        t.insert("keep_outputs".into(), V::Boolean(self.keep_outputs));
        t.insert("atomic_outputs".into(), V::Boolean(self.atomic_outputs));
        t.insert(
            "forward_signals".into(),
            V::Array(
                self.forward_signals
                    .iter()
                    .map(|x| s(x.to_string()))
                    .collect(),
            ),
        );
        t.insert("exec_timeout".into(), d(self.exec_timeout));
        t.insert("reload_grace".into(), d(self.reload_grace));
        t.insert("sighup".into(), s(self.sighup.to_string()));
        if let Some(addr) = &self.listen_metrics {
            t.insert("listen_metrics".into(), s(addr.to_string()));
        }
        let h = &self.health;
        if let Some(c) = &h.check {
            t.insert(c.key().into(), s(c.to_string()));
        }
        t.insert("bake".into(), d(h.bake));
        t.insert("health_interval".into(), d(h.interval));
        t.insert("health_timeout".into(), d(h.timeout));
        t.insert("rollback".into(), V::Boolean(h.rollback));
        if let Some(pf) = &self.target.pidfile {
            t.insert("signal_pidfile".into(), s(pf.display().to_string()));
        }
        if let Some(name) = &self.target.process {
            t.insert("signal_process".into(), s(name.clone()));
        }
        let mut env = toml::Table::new();
        env.insert("enabled".into(), V::Boolean(self.env.is_some()));
        if let Some(e) = &self.env {
            env.insert(
                "include".into(),
                V::Array(e.include.iter().cloned().map(s).collect()),
            );
            env.insert(
                "exclude".into(),
                V::Array(e.exclude.iter().cloned().map(s).collect()),
            );
            env.insert("prefix".into(), s(e.prefix.clone()));
        }
        t.insert("env".into(), V::Table(env));
        let outputs = self
            .outputs
            .iter()
            .map(|o| {
                let mut ot = toml::Table::new();
                ot.insert("path".into(), s(o.path.display().to_string()));
                match &o.template {
                    Some(crate::output::TemplateSource::File(p)) => {
                        ot.insert("template".into(), s(p.display().to_string()));
                    }
                    Some(crate::output::TemplateSource::Inline(c)) => {
                        ot.insert("contents".into(), s(c.clone()));
                    }
                    None => {
                        ot.insert("format".into(), s(o.format.to_string()));
                    }
                }
                if let Some(c) = &o.check {
                    ot.insert(
                        "check".into(),
                        s(shlex::try_join(c.argv.iter().map(String::as_str)).unwrap_or_default()),
                    );
                }
                ot.insert("mode".into(), s(format!("{:04o}", o.mode)));
                if let Some(owner) = &o.owner {
                    ot.insert("owner".into(), s(owner.to_string()));
                }
                ot.insert("on_change".into(), s(o.on_change.to_string()));
                V::Table(ot)
            })
            .collect();
        t.insert("output".into(), V::Array(outputs));
        toml::to_string_pretty(&t).unwrap_or_default()
    }
}
