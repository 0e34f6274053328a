//! Parsing and checking the config's values: durations, actions, sources, outputs, the
//! network source, file modes and the env filter. Each problem is collected with its key.

use super::*;
use crate::output::{CheckSpec, TemplateSource};

#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn extend(&mut self, more: Vec<Problem>) {
        self.0.extend(more);
    }

    pub(super) fn check<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.push(key, m)).ok()
    }

    pub(super) fn finish(self, cfg: Config) -> Result<Config, ConfigError> {
        if self.0.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(self.0))
        }
    }
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

pub(super) fn parse_source(s: &RawSource) -> Result<SourceSpec, String> {
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

pub(super) fn parse_output(
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
    let template = match (o.template.as_deref(), o.contents.as_ref()) {
        (Some(_), Some(_)) => {
            p.push(
                &format!("{key}.template"),
                "give template or contents, not both",
            );
            None
        }
        (Some(""), None) => {
            p.push(&format!("{key}.template"), "a template needs a path");
            None
        }
        (Some(t), None) => Some(Some(TemplateSource::File(crate::output::resolve_path(t)))),
        (None, Some(c)) => Some(Some(TemplateSource::Inline(c.clone()))),
        (None, None) => Some(None),
    };
    if o.format.is_some() && (o.template.is_some() || o.contents.is_some()) {
        p.push(
            &format!("{key}.format"),
            "a template output has no format: remove it",
        );
    }
    if let Some(Some(t)) = &template {
        let text = match t.text() {
            Ok(text) => Some(text),
            Err(e) => {
                p.push(&format!("{key}.template"), e.to_string());
                None
            }
        };
        if let Some(Err(e)) = text.map(|text| crate::output::template::validate(&t.name(), &text)) {
            p.push(&format!("{key}.template"), e.to_string());
        }
    }
    let check = match o.check.as_deref() {
        None => Some(None),
        Some(c) => p.check(&format!("{key}.check"), CheckSpec::parse(c).map(Some)),
    };
    if check.as_ref().is_some_and(Option::is_some)
        && matches!(format, Some(Format::Dir))
        && template.as_ref().is_some_and(Option::is_none)
    {
        p.push(&format!("{key}.check"), "a dir output cannot be checked");
    }
    Some(OutputSpec {
        path: path?,
        format: format?,
        mode: mode?,
        owner: owner?,
        on_change: on_change?,
        template: template?,
        check: check?,
    })
}

pub(super) fn parse_net(raw: &RawConfig, p: &mut Problems) -> Option<NetSpec> {
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
    if let Err(e) = tether_core::limits::validate_name("environment", &env) {
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
    let token_source = match (&raw.token_file, &token) {
        (Some(path), _) => format!("token_file {}", path.display()),
        (None, Some(_)) => "TETHER_TOKEN".to_string(),
        (None, None) => "none configured: set token_file or TETHER_TOKEN".to_string(),
    };
    Some(NetSpec {
        servers,
        env,
        token,
        token_file: raw.token_file.clone(),
        token_source,
        ca_file: raw.ca_file.clone(),
        state_dir: raw.state_dir.clone(),
        start_without_server: raw.start_without_server.unwrap_or(false),
    })
}

pub(super) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode like \"0600\"")),
    }
}

pub(super) fn parse_env(raw: Option<&RawEnv>, mode: Mode, p: &mut Problems) -> Option<EnvSpec> {
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

/// Health after a change: at most one check kind, the bake and its timings.
pub(super) fn parse_health(
    raw: &super::RawConfig,
    mode: super::Mode,
    p: &mut Problems,
) -> crate::bake::HealthSpec {
    use crate::bake::{Check, HealthSpec};
    let mut spec = HealthSpec::defaults(mode);
    let given: Vec<(&str, &String)> = [
        ("health_cmd", &raw.health_cmd),
        ("health_http", &raw.health_http),
        ("health_tcp", &raw.health_tcp),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    if given.len() > 1 {
        let keys: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
        p.push(
            keys[1],
            format!(
                "one health check at most: {} are given (--health-cmd, --health-http, --health-tcp)",
                keys.join(" and ")
            ),
        );
    } else if let Some((key, v)) = given.first() {
        let parsed = match *key {
            "health_cmd" => Check::parse_cmd(v),
            "health_http" => Check::parse_http(v),
            _ => Check::parse_tcp(v),
        };
        spec.check = p.check(key, parsed);
    }
    let mut dur = |key: &str, v: &Option<String>, slot: &mut std::time::Duration| {
        if let Some(s) = v {
            if let Some(d) = p.check(key, super::parse_bounded(s)) {
                *slot = d;
            }
        }
    };
    dur("bake", &raw.bake, &mut spec.bake);
    dur("health_interval", &raw.health_interval, &mut spec.interval);
    dur("health_timeout", &raw.health_timeout, &mut spec.timeout);
    if spec.interval.is_zero() {
        p.push("health_interval", "must be more than 0");
    }
    if spec.timeout.is_zero() {
        p.push("health_timeout", "must be more than 0");
    }
    if let Some(r) = raw.rollback {
        spec.rollback = r;
    }
    spec
}
