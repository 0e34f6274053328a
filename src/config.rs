//! Configuration: the TOML file (`RawConfig`, unknown keys refused) overlaid by flags and
//! `TETHER_*` variables, then validated into a typed [`Config`], reporting every problem at
//! once with its key path.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{AgentArgs, RunArgs, WatchArgs};
use crate::output::{EnvSpec, Format, Owner};
use crate::secret::Value;
use crate::signal::Signal;
use crate::source::{SourceKind, SourceSpec};

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
    pub forward_signals: Option<Vec<String>>,
    pub exec_timeout: Option<String>,
    pub reload_grace: Option<String>,
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
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawEnv {
    pub enabled: Option<bool>,
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub prefix: Option<String>,
}

/// What a change does to the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Restart,
    Signal(Signal),
    /// A hook command, split shell-style, executed without a shell.
    Exec(Vec<String>),
    None,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Restart => f.write_str("restart"),
            Action::Signal(s) => write!(f, "signal:{s}"),
            Action::Exec(argv) => write!(
                f,
                "exec:{}",
                shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default()
            ),
            Action::None => f.write_str("none"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Run,
    Watch,
}

/// One output as validated.
#[derive(Clone, Debug)]
pub struct OutputSpec {
    pub path: PathBuf,
    pub format: Format,
    pub mode: u32,
    pub owner: Option<Owner>,
    pub on_change: Action,
}

/// Where watch mode sends its signals.
#[derive(Clone, Debug, Default)]
pub struct WatchTarget {
    pub pidfile: Option<PathBuf>,
    pub process: Option<String>,
}

/// The network source: nodes and the environment to follow.
#[derive(Clone, Debug)]
pub struct NetSpec {
    /// Base URLs as given (http(s):// or ws(s)://).
    pub servers: Vec<String>,
    pub env: String,
    pub token: Option<Value>,
    pub ca_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub start_without_server: bool,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub net: Option<NetSpec>,
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
    pub forward_signals: Vec<Signal>,
    pub exec_timeout: Duration,
    pub reload_grace: Duration,
    pub target: WatchTarget,
    pub log_level: Option<String>,
    pub log_format: LogFormat,
}

/// One problem, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(key: &str, message: impl Into<String>) -> Self {
        ConfigError(vec![Problem {
            key: key.into(),
            message: message.into(),
        }])
    }
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

impl ConfigError {
    fn with_span(mut self, text: &str, span: Option<std::ops::Range<usize>>) -> Self {
        if let (Some(span), Some(p)) = (span, self.0.first_mut()) {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            p.message = format!("{} (line {line})", p.message);
        }
        self
    }
}

impl RawConfig {
    /// Overlay the flags (which already include `TETHER_*` variables) on the file.
    fn overlay(mut self, a: &AgentArgs) -> Self {
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
                    on_change: None,
                }]);
            }
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
        set(&mut self.log_level, &a.log.log_level);
        set(&mut self.log_format, &a.log.log_format);
        self
    }
}

fn load(agent: &AgentArgs) -> Result<RawConfig, ConfigError> {
    let file = match &agent.config {
        Some(path) => read_file(path)?,
        None => RawConfig::default(),
    };
    Ok(file.overlay(agent))
}

/// Build the config of `tether run` from its flags and optional file.
pub fn for_run(args: &RunArgs) -> Result<Config, ConfigError> {
    let mut raw = load(&args.agent)?;
    if !args.command.is_empty() {
        raw.command = None;
    }
    let mut cfg = validate(&raw, Mode::Run)?;
    if !args.command.is_empty() {
        cfg.command = args.command.clone();
    }
    if cfg.command.is_empty() {
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
    validate(&raw, Mode::Watch)
}

/// Validate a raw config for a mode, collecting every problem.
pub fn validate(raw: &RawConfig, mode: Mode) -> Result<Config, ConfigError> {
    let mut p = Problems::default();

    let sources: Vec<SourceSpec> = raw
        .sources
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, s)| p.check(&format!("source[{i}]"), parse_source(s)))
        .collect();
    let net = parse_net(raw, &mut p);
    if sources.is_empty() && net.is_none() {
        p.push(
            "source",
            "at least one source is required (--source file:/etc/app.env, or --server URL --env NAME)",
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
        Some(s) => p.check(key, parse_duration(s)).unwrap_or(default),
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
    if max_wait < debounce {
        p.push("max_wait", "must be at least the debounce window");
    }

    p.finish(Config {
        net,
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
        forward_signals,
        exec_timeout,
        reload_grace,
        target,
        log_level: raw.log_level.clone(),
        log_format,
    })
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn check<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.push(key, m)).ok()
    }

    fn finish(self, cfg: Config) -> Result<Config, ConfigError> {
        if self.0.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(self.0))
        }
    }
}

/// `"30s"`, `"200ms"`, `"1m30s"`, or `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration like 30s or 200ms ({e})"))
}

pub fn parse_action(s: &str) -> Result<Action, String> {
    let (kind, arg) = match s.split_once(':') {
        Some((k, a)) => (k.trim(), Some(a)),
        None => (s.trim(), None),
    };
    match (kind, arg) {
        ("restart", None) => Ok(Action::Restart),
        ("none", None) => Ok(Action::None),
        ("signal", None) => Ok(Action::Signal(Signal::HUP)),
        ("signal", Some(sig)) => sig.parse().map(Action::Signal).map_err(|e| e.to_string()),
        ("exec", Some(cmd)) => match shlex::split(cmd) {
            Some(argv) if !argv.is_empty() => Ok(Action::Exec(argv)),
            _ => Err(format!(
                "exec command {cmd:?} is empty or has unbalanced quotes"
            )),
        },
        _ => Err(format!(
            "{s:?} is not one of restart, signal[:SIG], exec:CMD, none"
        )),
    }
}

fn parse_source(s: &RawSource) -> Result<SourceSpec, String> {
    match s {
        RawSource::Short(text) => SourceSpec::parse(text),
        RawSource::Table(t) => match (&t.file, &t.dir) {
            (Some(path), None) => {
                let kind = match t.format.as_deref() {
                    None => SourceSpec::kind_for_file(path),
                    Some("dotenv") => SourceKind::Dotenv,
                    Some("json") => SourceKind::Json,
                    Some(other) => {
                        return Err(format!("format {other:?} is not one of dotenv, json"));
                    }
                };
                Ok(SourceSpec {
                    kind,
                    path: path.clone(),
                })
            }
            (None, Some(path)) if t.format.is_none() => Ok(SourceSpec {
                kind: SourceKind::Dir,
                path: path.clone(),
            }),
            (None, Some(_)) => Err("format applies to file sources only".into()),
            _ => Err("give exactly one of file = \"PATH\" or dir = \"PATH\"".into()),
        },
    }
}

fn parse_output(
    o: &RawOutput,
    key: &str,
    default_action: &Action,
    p: &mut Problems,
) -> Option<OutputSpec> {
    let format = match o.format.as_deref() {
        None => Some(Format::Dotenv),
        Some(f) => p.check(&format!("{key}.format"), f.parse::<Format>()),
    };
    let path = match o.path.as_deref() {
        None | Some("") => {
            p.push(&format!("{key}.path"), "an output needs a path");
            None
        }
        Some(s) => Some(crate::output::resolve_path(s)),
    };
    let mode = match o.mode.as_deref() {
        None => Some(0o600),
        Some(m) => p.check(&format!("{key}.mode"), parse_mode(m)),
    };
    let owner = match o.owner.as_deref() {
        None => Some(None),
        Some(s) => p.check(&format!("{key}.owner"), Owner::parse(s).map(Some)),
    };
    let on_change = match o.on_change.as_deref() {
        None => Some(default_action.clone()),
        Some(a) => p.check(&format!("{key}.on_change"), parse_action(a)),
    };
    Some(OutputSpec {
        path: path?,
        format: format?,
        mode: mode?,
        owner: owner?,
        on_change: on_change?,
    })
}

fn parse_net(raw: &RawConfig, p: &mut Problems) -> Option<NetSpec> {
    let servers = raw.servers.clone().unwrap_or_default();
    let servers: Vec<String> = servers
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .collect();
    if servers.is_empty() {
        if raw.environment.is_some() {
            p.push("server", "--env NAME needs at least one --server URL");
        }
        return None;
    }
    for (i, s) in servers.iter().enumerate() {
        if let Err(e) = crate::source::net::ws_url(s) {
            p.push(&format!("server[{i}]"), e);
        }
    }
    let Some(env) = raw.environment.clone() else {
        p.push(
            "environment",
            "--server needs the environment to follow: --env NAME",
        );
        return None;
    };
    if let Err(e) = crate::server::store::validate_name("environment", &env) {
        p.push("environment", e.to_string());
    }
    let token = match &raw.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => Some(Value::from(t.trim())),
            Ok(_) => {
                p.push("token_file", format!("{} is empty", path.display()));
                None
            }
            Err(e) => {
                p.push("token_file", format!("cannot read {}: {e}", path.display()));
                None
            }
        },
        None => std::env::var("TETHER_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| Value::from(t.trim())),
    };
    if let Some(ca) = &raw.ca_file {
        if !ca.is_file() {
            p.push(
                "ca_file",
                format!("{} is not a readable file", ca.display()),
            );
        }
    }
    Some(NetSpec {
        servers,
        env,
        token,
        ca_file: raw.ca_file.clone(),
        state_dir: raw.state_dir.clone(),
        start_without_server: raw.start_without_server.unwrap_or(false),
    })
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode like \"0600\"")),
    }
}

fn parse_env(raw: Option<&RawEnv>, mode: Mode, p: &mut Problems) -> Option<EnvSpec> {
    let enabled = raw.and_then(|e| e.enabled).unwrap_or(mode == Mode::Run);
    if !enabled {
        return None;
    }
    if mode == Mode::Watch {
        p.push(
            "env.enabled",
            "watch mode has no child to inject values into",
        );
        return None;
    }
    let include = raw.and_then(|e| e.include.clone()).unwrap_or_default();
    let exclude = raw.and_then(|e| e.exclude.clone()).unwrap_or_default();
    let prefix = raw.and_then(|e| e.prefix.clone()).unwrap_or_default();
    if !prefix.is_empty() && !crate::output::valid_env_name(&prefix) {
        p.push(
            "env.prefix",
            format!("{prefix:?} is not a valid start of a variable name"),
        );
    }
    p.check("env", EnvSpec::new(include, exclude, prefix))
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
                ot.insert("format".into(), s(o.format.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawConfig {
        toml::from_str(text).expect("valid toml")
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let r = raw(r#"
            source = ["file:/a.env", "ftp:/x"]
            debounce = "soon"
            stop_signal = "SIGFOO"
            restart_on_exit = "sometimes"
            [[output]]
            path = "/run/x"
            format = "yaml"
            mode = "999"
        "#);
        let err = validate(&r, Mode::Run).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "source[1]",
            "debounce",
            "stop_signal",
            "restart_on_exit",
            "output[0].format",
            "output[0].mode",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<RawConfig>("debounse = \"1s\"").is_err());
        assert!(toml::from_str::<RawConfig>("[[output]]\npath = \"x\"\nmod = \"0600\"").is_err());
    }

    #[test]
    fn defaults_for_run() {
        let c = validate(&raw(r#"source = ["file:/a.env"]"#), Mode::Run).unwrap();
        assert_eq!(c.on_change, Action::Restart);
        assert!(c.env.is_some(), "env injection is on by default in run");
        assert_eq!(c.stop_signal, Signal::TERM);
        assert_eq!(c.stop_timeout, Duration::from_secs(10));
        assert_eq!(c.forward_signals.len(), 8);
    }

    #[test]
    fn watch_rules() {
        let err = validate(
            &raw("source = [\"file:/a.env\"]\non_change = \"restart\"\n[[output]]\npath = \"/run/a\""),
            Mode::Watch,
        )
        .unwrap_err();
        assert!(err.0.iter().any(|p| p.key == "on_change"));
        let c = validate(
            &raw("source = [\"file:/a.env\"]\nsignal_pidfile = \"/run/app.pid\"\n[[output]]\npath = \"/run/a\""),
            Mode::Watch,
        )
        .unwrap();
        assert_eq!(c.on_change, Action::Signal(Signal::HUP));
        assert!(c.env.is_none());
    }

    #[test]
    fn flags_override_file() {
        let file = raw(
            "source = [\"file:/a.env\"]\ndebounce = \"1s\"\n[[output]]\npath = \"/run/a\"\nformat = \"json\"",
        );
        let args = AgentArgs {
            debounce: Some("5ms".into()),
            format: Some("shell".into()),
            no_env: true,
            ..Default::default()
        };
        let c = validate(&file.overlay(&args), Mode::Run).unwrap();
        assert_eq!(c.debounce, Duration::from_millis(5));
        assert_eq!(c.outputs[0].format, Format::Shell);
        assert_eq!(c.outputs[0].path, PathBuf::from("/run/a"));
        assert!(c.env.is_none());
    }

    #[test]
    fn actions_parse() {
        assert_eq!(
            parse_action("signal:usr1"),
            Ok(Action::Signal("USR1".parse().unwrap()))
        );
        assert_eq!(parse_action("signal"), Ok(Action::Signal(Signal::HUP)));
        assert_eq!(
            parse_action("exec:nginx -s 'reload now'"),
            Ok(Action::Exec(vec![
                "nginx".into(),
                "-s".into(),
                "reload now".into()
            ]))
        );
        assert!(parse_action("exec:").is_err());
        assert!(parse_action("reboot").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn effective_config_round_trips_through_the_parser() {
        let c = validate(
            &raw("source = [\"json:/a.conf\", \"dir:/s\"]\n[[output]]\npath = \"/run/a.env\"\nmode = \"0640\"\non_change = \"signal:USR2\""),
            Mode::Run,
        )
        .unwrap();
        let again = validate(&raw(&c.to_toml()), Mode::Run).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
    }
}
