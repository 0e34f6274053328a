//! Tests of the configuration: every problem at once, flags over the file, the effective
//! config without values.

use super::*;
use crate::args::AgentArgs;

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
fn effective_config_round_trips_through_the_parser() {
    let c = validate(
        &raw("source = [\"json:/a.conf\", \"dir:/s\"]\n[[output]]\npath = \"/run/a.env\"\nmode = \"0640\"\non_change = \"signal:USR2\""),
        Mode::Run,
    )
    .unwrap();
    let again = validate(&raw(&c.to_toml()), Mode::Run).unwrap();
    assert_eq!(again.to_toml(), c.to_toml());
}

#[test]
fn sighup_forwards_in_run_and_reloads_in_watch() {
    let run = raw("source = [\"file:/a.env\"]\n");
    assert_eq!(validate(&run, Mode::Run).unwrap().sighup, Sighup::Forward);
    let watch = raw(
        "source = [\"file:/a.env\"]\nsignal_process = \"app\"\n[[output]]\npath = \"/run/a\"\n",
    );
    assert_eq!(
        validate(&watch, Mode::Watch).unwrap().sighup,
        Sighup::Reload
    );
    let reload = raw("source = [\"file:/a.env\"]\nsighup = \"reload\"\n");
    assert_eq!(validate(&reload, Mode::Run).unwrap().sighup, Sighup::Reload);

    let forward_in_watch = raw(
        "source = [\"file:/a.env\"]\nsighup = \"forward\"\non_change = \"none\"\n[[output]]\npath = \"/run/a\"\n",
    );
    let err = validate(&forward_in_watch, Mode::Watch).unwrap_err();
    assert_eq!(err.0[0].key, "sighup");
    let bad = raw("source = [\"file:/a.env\"]\nsighup = \"ignore\"\n");
    let err = validate(&bad, Mode::Run).unwrap_err();
    assert!(err.0[0].message.contains("forward, reload"), "{err}");
}

#[test]
fn listen_metrics_is_off_by_default_checked_and_overridden_by_the_flag() {
    use crate::health::ListenAddr;
    let base = "source = [\"file:/a.env\"]\n[[output]]\npath = \"/run/a.env\"\n";
    let c = validate(&raw(base), Mode::Watch).unwrap();
    assert_eq!(c.listen_metrics, None);

    let file = raw(&format!("listen_metrics = \"unix:/run/t.sock\"\n{base}"));
    let c = validate(&file, Mode::Watch).unwrap();
    assert_eq!(
        c.listen_metrics,
        Some(ListenAddr::Unix("/run/t.sock".into()))
    );
    assert!(
        c.to_toml()
            .contains("listen_metrics = \"unix:/run/t.sock\"")
    );

    let args = AgentArgs {
        listen_metrics: Some("127.0.0.1:9464".into()),
        ..Default::default()
    };
    let c = validate(&file.overlay(&args), Mode::Watch).unwrap();
    assert_eq!(
        c.listen_metrics,
        Some(ListenAddr::Tcp("127.0.0.1:9464".parse().unwrap()))
    );

    let bad = raw(&format!("listen_metrics = \"localhost\"\n{base}"));
    let err = validate(&bad, Mode::Watch).unwrap_err();
    assert!(
        err.0
            .iter()
            .any(|p| p.key == "listen_metrics" && p.message.contains("127.0.0.1:9464")),
        "{err:?}"
    );
}

#[test]
fn template_outputs_and_their_problems() {
    let r = raw(r#"
        source = ["file:/a.env"]
        exec_timeout = "7s"
        [[output]]
        path = "/run/a"
        contents = "{{ A }}"
        check = "true {path}"
        [[output]]
        path = "/run/b"
        contents = "x"
        template = "/t"
        [[output]]
        path = "/run/c"
        format = "json"
        contents = "{% if %}"
        [[output]]
        path = "/run/d"
        contents = "x"
        check = "'unbalanced"
    "#);
    let err = validate(&r, Mode::Run).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "output[1].template",
        "output[2].format",
        "output[2].template",
        "output[3].check",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    assert!(!keys.iter().any(|k| k.starts_with("output[0]")), "{keys:?}");

    let ok = raw(
        "source = [\"file:/a.env\"]\nexec_timeout = \"7s\"\natomic_outputs = false\n\
                  [[output]]\npath = \"/run/a\"\ncontents = \"{{ A }}\"\ncheck = \"true {path}\"",
    );
    let c = validate(&ok, Mode::Run).unwrap();
    assert!(!c.atomic_outputs);
    let check = c.outputs[0].check.clone().unwrap();
    assert_eq!(check.argv, ["true", "{path}"]);
    assert_eq!(
        check.timeout,
        Duration::from_secs(7),
        "exec_timeout bounds checks"
    );
    assert!(c.to_toml().contains("contents"));
}

#[test]
fn the_template_flag_adds_outputs() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("a.tmpl");
    std::fs::write(&t, "{{ A }}").unwrap();
    let args = AgentArgs {
        templates: vec![
            format!("{}:/run/a.conf", t.display()),
            format!("{}:/run/b.conf:signal:QUIT", t.display()),
        ],
        ..AgentArgs::default()
    };
    let c = validate(
        &raw("source = [\"file:/a.env\"]\n[[output]]\npath = \"/run/x\"").overlay(&args),
        Mode::Run,
    )
    .unwrap();
    assert_eq!(c.outputs.len(), 3);
    assert_eq!(
        c.outputs[1].template,
        Some(crate::output::TemplateSource::File(t.clone()))
    );
    assert_eq!(c.outputs[1].on_change, Action::Restart);
    assert_eq!(c.outputs[2].on_change, Action::Signal(Signal::QUIT));
    assert!(c.atomic_outputs, "all or nothing by default");
}

#[test]
fn health_settings_default_per_mode_and_refuse_two_checks() {
    let run = validate(&raw(r#"source = ["file:/a.env"]"#), Mode::Run).unwrap();
    assert_eq!(run.health, crate::bake::HealthSpec::defaults(Mode::Run));
    assert_eq!(run.health.bake, Duration::from_secs(10));

    let c = validate(
        &raw(r#"
            source = ["file:/a.env"]
            health_http = "http://127.0.0.1:8080/healthz"
            bake = "30s"
            health_interval = "2s"
            health_timeout = "90s"
            rollback = false
        "#),
        Mode::Run,
    )
    .unwrap();
    assert_eq!(
        c.health.check.as_ref().map(|c| c.key()),
        Some("health_http")
    );
    assert_eq!(c.health.bake, Duration::from_secs(30));
    assert_eq!(c.health.interval, Duration::from_secs(2));
    assert_eq!(c.health.timeout, Duration::from_secs(90));
    assert!(!c.health.rollback);
    let toml = c.to_toml();
    for line in [
        "health_http = \"http://127.0.0.1:8080/healthz\"",
        "bake = \"30s\"",
        "health_interval = \"2s\"",
        "health_timeout = \"1m 30s\"",
        "rollback = false",
    ] {
        assert!(toml.contains(line), "{line} missing from\n{toml}");
    }

    let err = validate(
        &raw(r#"
            source = ["file:/a.env"]
            health_cmd = "true"
            health_tcp = "127.0.0.1:80"
            health_interval = "0s"
            bake = "soon"
            health_timeout = "400d"
            splay = "1000000000000d"
        "#),
        Mode::Run,
    )
    .unwrap_err();
    let problems: Vec<String> = err
        .0
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p
                .starts_with("health_tcp: one health check at most: health_cmd and health_tcp")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("health_interval")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("bake")),
        "{problems:?}"
    );
    for key in ["health_timeout", "splay"] {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(key) && p.contains("at most 1d")),
            "{key}: {problems:?}"
        );
    }
}

#[test]
fn a_health_check_flag_replaces_the_files_and_no_rollback_wins() {
    let file = raw(r#"
        source = ["file:/a.env"]
        health_http = "http://127.0.0.1:8080/"
        rollback = true
    "#);
    let mut a = AgentArgs::default();
    a.health.health_tcp = Some("127.0.0.1:5432".into());
    a.health.bake = Some("5s".into());
    a.health.no_rollback = true;
    let c = validate(&file.overlay(&a), Mode::Run).unwrap();
    assert_eq!(c.health.check.as_ref().map(|c| c.key()), Some("health_tcp"));
    assert_eq!(c.health.bake, Duration::from_secs(5));
    assert!(!c.health.rollback);
}
