//! What a reload changes: the running configuration compared with the one just built, key
//! by key, sorted into what is applied in place (and which part of the agent it touches)
//! and what only a restart can change. Pure: no I/O, so it is tested here on its own.

use crate::config::{Config, Mode};
use crate::output::EnvSpec;
use crate::run::supervisor_options;
use crate::source::net::NetSpec;

/// What happens to the network source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum NetChange {
    /// Unchanged: its connection stays up.
    #[default]
    Same,
    /// Added by the reload.
    Start,
    /// Removed by the reload.
    Stop,
    /// Its nodes, environment, token file, CA, state directory or start rule changed:
    /// a new follower replaces the old one.
    Restart,
}

/// The difference between two configurations.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Changed keys applied in place, for the log (`output[1]`, `debounce`...).
    pub changed: Vec<String>,
    /// Changed keys that only a restart of tether applies.
    pub need_restart: Vec<&'static str>,
    pub sources: bool,
    pub net: NetChange,
    /// What happens to the keyshade source (same rules as the network source's).
    pub keyshade: NetChange,
    pub outputs: bool,
    pub env: bool,
    pub supervisor: bool,
    pub debounce: bool,
    pub signals: bool,
    pub log_level: bool,
}

impl Plan {
    pub(crate) fn between(old: &Config, new: &Config) -> Plan {
        let mut changed: Vec<String> = Vec::new();
        let mut key = |differs: bool, k: &str| {
            if differs {
                changed.push(k.to_string());
            }
            differs
        };

        let sources = key(old.sources != new.sources, "source");
        let net = match (&old.net, &new.net) {
            (None, None) => NetChange::Same,
            (None, Some(_)) => {
                key(true, "server");
                NetChange::Start
            }
            (Some(_), None) => {
                key(true, "server");
                NetChange::Stop
            }
            (Some(a), Some(b)) => {
                let fields = net_fields(a, b);
                for f in &fields {
                    key(true, f);
                }
                if fields.is_empty() {
                    NetChange::Same
                } else {
                    NetChange::Restart
                }
            }
        };

        let keyshade = match (&old.keyshade, &new.keyshade) {
            (None, None) => NetChange::Same,
            (None, Some(_)) => NetChange::Start,
            (Some(_), None) => NetChange::Stop,
            (Some(a), Some(b)) if crate::source::keyshade::same(a, b) => NetChange::Same,
            (Some(_), Some(_)) => NetChange::Restart,
        };
        key(keyshade != NetChange::Same, "keyshade");

        key(old.on_change != new.on_change, "on_change");
        let mut outputs = false;
        for (i, o) in new.outputs.iter().enumerate() {
            match old.outputs.iter().find(|x| x.path == o.path) {
                Some(x) if x == o => {}
                Some(_) => outputs |= key(true, &format!("output[{i}]")),
                None => outputs |= key(true, &format!("output[{i}] (added)")),
            }
        }
        for o in &old.outputs {
            if !new.outputs.iter().any(|x| x.path == o.path) {
                outputs |= key(true, &format!("output {} (removed)", o.path.display()));
            }
        }
        let env = key(!same_env(&old.env, &new.env), "env");

        let (so, sn) = (supervisor_options(old), supervisor_options(new));
        key(so.stop_signal != sn.stop_signal, "stop_signal");
        key(so.stop_timeout != sn.stop_timeout, "stop_timeout");
        key(so.restart_on_exit != sn.restart_on_exit, "restart_on_exit");
        key(so.reload_grace != sn.reload_grace, "reload_grace");

        let debounce = [
            key(old.debounce != new.debounce, "debounce"),
            key(old.max_wait != new.max_wait, "max_wait"),
            key(old.splay != new.splay, "splay"),
        ]
        .contains(&true);
        key(old.exec_timeout != new.exec_timeout, "exec_timeout");
        // Health settings apply from the next bake on (one running keeps its own).
        let (ho, hn) = (&old.health, &new.health);
        key(ho.check != hn.check, "health check");
        key(ho.bake != hn.bake, "bake");
        key(ho.interval != hn.interval, "health_interval");
        key(ho.timeout != hn.timeout, "health_timeout");
        key(ho.rollback != hn.rollback, "rollback");
        key(old.keep_outputs != new.keep_outputs, "keep_outputs");
        let signals = [
            key(
                old.forward_signals != new.forward_signals,
                "forward_signals",
            ),
            key(old.sighup != new.sighup, "sighup"),
        ]
        .contains(&true);
        key(old.target.pidfile != new.target.pidfile, "signal_pidfile");
        key(old.target.process != new.target.process, "signal_process");
        let log_level = key(old.log_level != new.log_level, "log_level");

        let mut need_restart = Vec::new();
        if old.mode == Mode::Run && old.command != new.command {
            need_restart.push("command");
        }
        if old.log_format != new.log_format {
            need_restart.push("log_format");
        }
        Plan {
            changed,
            need_restart,
            sources,
            net,
            keyshade,
            outputs,
            env,
            supervisor: so != sn,
            debounce,
            signals,
            log_level,
        }
    }

    /// The reload changes nothing at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.need_restart.is_empty()
    }
}

/// The fields of the network source that differ (the token's content is not one: the
/// follower reads its file again at each connection).
fn net_fields(a: &NetSpec, b: &NetSpec) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.servers != b.servers {
        out.push("server");
    }
    if a.env != b.env {
        out.push("environment");
    }
    if a.token_file != b.token_file || (a.token_file.is_none() && a.token != b.token) {
        out.push("token_file");
    }
    if a.ca_file != b.ca_file {
        out.push("ca_file");
    }
    if a.state_dir != b.state_dir {
        out.push("state_dir");
    }
    if a.start_without_server != b.start_without_server {
        out.push("start_without_server");
    }
    out
}

fn same_env(a: &Option<EnvSpec>, b: &Option<EnvSpec>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.include == b.include && a.exclude == b.exclude && a.prefix == b.prefix
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawConfig, validate};

    fn cfg(mode: Mode, text: &str) -> Config {
        let raw: RawConfig = toml::from_str(text).expect("valid toml");
        validate(&raw, mode).expect("valid config")
    }

    const BASE: &str = r#"
        source = ["file:/etc/a.env"]
        signal_pidfile = "/run/app.pid"
        [[output]]
        path = "/run/a.env"
    "#;

    #[test]
    fn the_same_configuration_is_an_empty_plan() {
        let a = cfg(Mode::Watch, BASE);
        let plan = Plan::between(&a, &a.clone());
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn outputs_are_matched_by_path() {
        let a = cfg(Mode::Watch, BASE);
        let format = cfg(Mode::Watch, &format!("{BASE}format = \"json\"\n"));
        let p = Plan::between(&a, &format);
        assert_eq!(p.changed, ["output[0]"]);
        assert!(p.outputs && !p.sources && p.net == NetChange::Same);

        let added = cfg(
            Mode::Watch,
            &format!("{BASE}[[output]]\npath = \"/run/b.env\"\n"),
        );
        let p = Plan::between(&a, &added);
        assert_eq!(p.changed, ["output[1] (added)"]);
        let p = Plan::between(&added, &a);
        assert_eq!(p.changed, ["output /run/b.env (removed)"]);
        assert!(p.outputs);

        // Reordered, otherwise the same: nothing to do.
        let two = "source = [\"file:/a.env\"]\nsignal_process = \"app\"\n";
        let ab = cfg(
            Mode::Watch,
            &format!("{two}[[output]]\npath = \"/run/a\"\n[[output]]\npath = \"/run/b\"\n"),
        );
        let ba = cfg(
            Mode::Watch,
            &format!("{two}[[output]]\npath = \"/run/b\"\n[[output]]\npath = \"/run/a\"\n"),
        );
        assert!(Plan::between(&ab, &ba).is_empty());
    }

    #[test]
    fn health_settings_are_applied_in_place() {
        let a = cfg(Mode::Watch, BASE);
        let b = cfg(
            Mode::Watch,
            &BASE.replace(
                "signal_pidfile",
                "health_tcp = \"127.0.0.1:80\"\nbake = \"5s\"\nhealth_interval = \"2s\"\nhealth_timeout = \"9s\"\nrollback = false\nsignal_pidfile",
            ),
        );
        let p = Plan::between(&a, &b);
        assert_eq!(
            p.changed,
            [
                "health check",
                "bake",
                "health_interval",
                "health_timeout",
                "rollback"
            ]
        );
        assert!(p.need_restart.is_empty());
    }

    #[test]
    fn an_action_change_is_an_output_change() {
        let a = cfg(Mode::Watch, BASE);
        let b = cfg(
            Mode::Watch,
            &BASE.replace(
                "signal_pidfile",
                "on_change = \"signal:USR1\"\nsignal_pidfile",
            ),
        );
        let p = Plan::between(&a, &b);
        assert_eq!(p.changed, ["on_change", "output[0]"]);
        assert!(p.outputs);
    }

    #[test]
    fn the_network_source_restarts_only_when_what_it_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0").unwrap();
        let net = |env: &str, extra: &str| {
            cfg(
                Mode::Run,
                &format!(
                    "server = [\"http://127.0.0.1:1\"]\nenvironment = \"{env}\"\ntoken_file = {:?}\n{extra}\n[[output]]\npath = \"/run/a.env\"\n",
                    token.display().to_string()
                ),
            )
        };
        let a = net("prod", "");
        // The token's content changed: the follower reads it itself; nothing to restart.
        std::fs::write(&token, "t1").unwrap();
        assert!(Plan::between(&a, &net("prod", "")).is_empty());
        let p = Plan::between(&a, &net("staging", ""));
        assert_eq!(
            (p.net, p.changed.clone()),
            (NetChange::Restart, vec!["environment".to_string()])
        );
        let p = Plan::between(&a, &net("prod", "debounce = \"1s\"\nmax_wait = \"5s\""));
        assert_eq!(p.net, NetChange::Same);
        assert_eq!(p.changed, ["debounce", "max_wait"]);
        assert!(p.debounce && !p.supervisor);
        let file = cfg(Mode::Run, "source = [\"file:/a.env\"]\n");
        assert_eq!(Plan::between(&file, &a).net, NetChange::Start);
        assert_eq!(Plan::between(&a, &file).net, NetChange::Stop);
    }

    #[test]
    fn the_keyshade_source_restarts_only_when_what_it_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "ks.pat.0").unwrap();
        let ks = |env: &str, extra: &str| {
            let text = format!(
                "[[output]]\npath = \"/run/a.env\"\n[keyshade]\nbase_url = \"http://127.0.0.1:1\"\nworkspace = \"w\"\nproject = \"p\"\nenvironment = \"{env}\"\ntoken_file = {:?}\n{extra}\n",
                token.display().to_string()
            );
            let raw: RawConfig = toml::from_str(&text).expect("valid toml");
            let ctx = crate::source::keyshade::config::Context::default();
            crate::config::validate_in(&raw, Mode::Watch, &ctx).expect("valid config")
        };
        let a = ks("prod", "");
        // The token file's content: read by the follower itself at each attempt.
        std::fs::write(&token, "ks.pat.1").unwrap();
        assert!(Plan::between(&a, &ks("prod", "")).is_empty());
        let p = Plan::between(&a, &ks("staging", ""));
        assert_eq!(
            (p.keyshade, p.changed.clone()),
            (NetChange::Restart, vec!["keyshade".to_string()])
        );
        let p = Plan::between(&a, &ks("prod", "snapshot_interval = \"5m\""));
        assert_eq!(p.keyshade, NetChange::Restart);
        let p = Plan::between(&a, &ks("prod", "quit_on_decryption_failure = true"));
        assert_eq!(p.keyshade, NetChange::Restart);
        let none = cfg(Mode::Watch, BASE);
        assert_eq!(Plan::between(&none, &a).keyshade, NetChange::Start);
        assert_eq!(Plan::between(&a, &none).keyshade, NetChange::Stop);
        assert_eq!(Plan::between(&none, &none).keyshade, NetChange::Same);
    }

    #[test]
    fn run_mode_keys_sort_into_their_parts() {
        let base = "source = [\"file:/a.env\"]\ncommand = [\"app\"]\n";
        let a = cfg(Mode::Run, base);
        let b = cfg(
            Mode::Run,
            &format!(
                "{base}stop_signal = \"INT\"\nsighup = \"reload\"\nlog_level = \"debug\"\n[env]\nprefix = \"APP_\"\n"
            ),
        );
        let p = Plan::between(&a, &b);
        assert_eq!(p.changed, ["env", "stop_signal", "sighup", "log_level"]);
        assert!(p.env && p.supervisor && p.signals && p.log_level);
        assert!(!p.outputs && !p.sources && !p.debounce);
        assert!(p.need_restart.is_empty());

        let other = cfg(
            Mode::Run,
            "source = [\"file:/a.env\"]\ncommand = [\"other\"]\nlog_format = \"json\"\n",
        );
        let p = Plan::between(&a, &other);
        assert_eq!(p.need_restart, ["command", "log_format"]);
        assert!(p.changed.is_empty() && !p.is_empty());
    }
}
