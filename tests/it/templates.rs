//! Template outputs end to end: configs rendered from live values and read back by standard
//! parsers (Python's yaml and json, `sh`), template edits, `check` commands, render errors
//! that keep the old file and trigger nothing, one action per change set, and secrets that
//! never reach a log.

use std::process::Command;

use crate::support::{Tether, Work, run_to_end};

const SECRET: &str = "s3cr3t-Very-Private";

/// `run -c cfg.toml --source file:app.env --log-level debug --no-env -- CHILD`.
fn start(work: &Work, child: &[String]) -> Tether {
    let mut args: Vec<String> = vec![
        "run".into(),
        "-c".into(),
        work.path("cfg.toml").display().to_string(),
        "--source".into(),
        format!("file:{}", work.path("app.env").display()),
        "--log-level".into(),
        "debug".into(),
        "--no-env".into(),
        "--debounce".into(),
        "0".into(),
        "--".into(),
    ];
    args.extend(child.iter().cloned());
    Tether::start(work.dir.path(), args, &[])
}

fn python(code: &str, file: &std::path::Path) -> String {
    let out = Command::new("python3")
        .args(["-c", code])
        .arg(file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn configs_render_and_read_back_with_standard_parsers() {
    let work = Work::new();
    let key = "-----BEGIN PRIVATE KEY-----\\nMIIEabc\\n-----END PRIVATE KEY-----";
    let cert = "-----BEGIN CERTIFICATE-----\\nMIIDxyz\\n-----END CERTIFICATE-----";
    work.write(
        "app.env",
        &format!(
            "PORT=8443\nHOST=example.test\nTLS_KEY=\"{key}\"\nTLS_CERT=\"{cert}\"\n\
             COLON=\"a: b\"\nMULTI=\"line1\\nline2: x\"\nSTAR=\"*ref\"\nQUOTE=\"it's \\\"q\\\" $HOME\"\n"
        ),
    );
    work.write(
        "nginx.conf.tmpl",
        "server {\n  listen {{ PORT }} ssl;\n  server_name {{ HOST }};\n}\n",
    );
    let out = |n: &str| work.path(n).display().to_string();
    work.write(
        "cfg.toml",
        &format!(
            r#"
[[output]]
path = "{nginx}"
template = "{tmpl}"

[[output]]
path = "{pem}"
contents = "{{{{ TLS_CERT }}}}\n{{{{ TLS_KEY | required }}}}\n"

[[output]]
path = "{yaml}"
contents = "colon: {{{{ COLON | toyaml }}}}\nmulti: {{{{ MULTI | toyaml }}}}\nstar: {{{{ STAR | toyaml }}}}\nquote: {{{{ QUOTE | toyaml }}}}\nmissing: {{{{ NOPE | default('dflt') | toyaml }}}}\n"

[[output]]
path = "{json}"
contents = "{{\"multi\": {{{{ MULTI | tojson }}}}, \"quote\": {{{{ QUOTE | tojson }}}}, \"names\": {{{{ names | tojson }}}}}}\n"

[[output]]
path = "{sh}"
contents = "MULTI={{{{ MULTI | shell_quote }}}}\nQUOTE={{{{ QUOTE | shell_quote }}}}\nB64={{{{ STAR | b64encode }}}}\n"
"#,
            nginx = out("nginx.conf"),
            tmpl = out("nginx.conf.tmpl"),
            pem = out("bundle.pem"),
            yaml = out("app.yaml"),
            json = out("app.json"),
            sh = out("app.sh"),
        ),
    );
    let (code, _, err) = run_to_end(
        work.dir.path(),
        &[
            "run",
            "--once",
            "-c",
            "cfg.toml",
            "--source",
            "file:app.env",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        work.read("nginx.conf"),
        "server {\n  listen 8443 ssl;\n  server_name example.test;\n}\n"
    );
    assert_eq!(
        work.read("bundle.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIDxyz\n-----END CERTIFICATE-----\n\
         -----BEGIN PRIVATE KEY-----\nMIIEabc\n-----END PRIVATE KEY-----\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(work.path("bundle.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "rendered files are 0600 by default");

    let yaml = python(
        "import yaml,json,sys; print(json.dumps(yaml.safe_load(open(sys.argv[1])), sort_keys=True))",
        &work.path("app.yaml"),
    );
    let want = serde_json::json!({
        "colon": "a: b", "multi": "line1\nline2: x", "star": "*ref",
        "quote": "it's \"q\" $HOME", "missing": "dflt"
    });
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&yaml).unwrap(),
        want
    );

    let json = python(
        "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d))",
        &work.path("app.json"),
    );
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["multi"], "line1\nline2: x");
    assert_eq!(json["quote"], "it's \"q\" $HOME");
    assert_eq!(json["names"].as_array().unwrap().len(), 8);

    let sh = Command::new("sh")
        .arg("-c")
        .arg(r#". "$1"; printf '%s|%s|%s' "$MULTI" "$QUOTE" "$B64""#)
        .arg("sh")
        .arg(work.path("app.sh"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sh.stdout),
        "line1\nline2: x|it's \"q\" $HOME|KnJlZg=="
    );
}

/// The outputs of the action tests: `a.conf` from a template file, `b.conf` inline.
fn two_outputs(work: &Work, extra_a: &str, extra_b: &str, top: &str) {
    work.write("a.tmpl", "a={{ A }}\n");
    work.write(
        "cfg.toml",
        &format!(
            "{top}\n[[output]]\npath = \"{}\"\ntemplate = \"{}\"\n{extra_a}\n\n\
             [[output]]\npath = \"{}\"\ncontents = \"b={{{{ B }}}}\\n\"\n{extra_b}\n",
            work.path("a.conf").display(),
            work.path("a.tmpl").display(),
            work.path("b.conf").display(),
        ),
    );
}

#[test]
fn a_template_edit_renders_again_and_signals() {
    let work = Work::new();
    work.write("app.env", "A=1\nB=2\n");
    two_outputs(&work, "on_change = \"signal:USR1\"", "", "");
    let t = start(&work, &work.child_args(&[]));
    t.wait_for("the child to start", || work.starts().len() == 1);
    assert_eq!(work.read("a.conf"), "a=1\n");

    work.write("a.tmpl", "alpha={{ A }} beta={{ B }}\n");
    t.wait_for("the template's new render", || {
        work.read("a.conf") == "alpha=1 beta=2\n"
    });
    t.wait_for("SIGUSR1 at the child", || !work.signals().is_empty());
    assert_eq!(work.starts().len(), 1, "not restarted");
}

#[test]
fn a_missing_name_or_failing_check_keeps_every_old_file_and_triggers_nothing() {
    let work = Work::new();
    work.write("app.env", "A=1\nB=2\n");
    two_outputs(
        &work,
        "on_change = \"signal:USR1\"",
        "on_change = \"signal:USR2\"\ncheck = \"grep -qv bad {path}\"",
        "listen_metrics = \"127.0.0.1:0\"",
    );
    let t = start(&work, &work.child_args(&[]));
    t.wait_for("the child to start", || work.starts().len() == 1);
    assert_eq!(work.read("b.conf"), "b=2\n");
    let addr = crate::agent_ops::endpoint_addr(&t);

    // A failing check on b: neither a nor b moves (all or nothing), no signal.
    work.write("app.env", "A=10\nB=bad\n");
    t.wait_for("the check failure in the log", || {
        t.stderr().contains("check failed")
    });
    assert_eq!(work.read("a.conf"), "a=1\n");
    assert_eq!(work.read("b.conf"), "b=2\n");
    let failures = format!(
        "tether_agent_render_failures_total{{output=\"{}\"}} ",
        work.path("b.conf").display()
    );
    let (status, metrics) = crate::agent_ops::get(&addr, "/metrics");
    assert_eq!(status, 200);
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&failures)?.trim().parse::<u64>().ok());
    assert!(counted.is_some_and(|n| n >= 1), "{metrics}");

    // A template that reads a name nobody provides: an error naming it, nothing moves.
    work.write("a.tmpl", "a={{ A }} {{ NOT_THERE }}\n");
    t.wait_for("the render error in the log", || {
        t.stderr().contains("NOT_THERE")
    });
    assert_eq!(work.read("a.conf"), "a=1\n");
    assert_eq!(work.read("b.conf"), "b=2\n");

    // Fixed: both land, one signal each, the first signals the child has seen.
    work.write("a.tmpl", "a={{ A }}\n");
    work.write("app.env", "A=11\nB=3\n");
    t.wait_for("both outputs", || {
        work.read("a.conf") == "a=11\n" && work.read("b.conf") == "b=3\n"
    });
    t.wait_for("two signals", || work.signals().len() == 2);
    let mut sigs = work.signals();
    sigs.sort();
    assert_eq!(
        sigs,
        ["SIGUSR1", "SIGUSR2"],
        "nothing earlier was signalled"
    );
    assert_eq!(work.starts().len(), 1);
}

#[test]
fn per_output_mode_lets_the_good_output_land() {
    let work = Work::new();
    work.write("app.env", "A=1\nB=2\n");
    two_outputs(
        &work,
        "on_change = \"signal:USR1\"",
        "on_change = \"signal:USR2\"\ncheck = \"grep -qv bad {path}\"",
        "atomic_outputs = false",
    );
    let t = start(&work, &work.child_args(&[]));
    t.wait_for("the child to start", || work.starts().len() == 1);
    work.write("app.env", "A=10\nB=bad\n");
    t.wait_for("a's new content", || work.read("a.conf") == "a=10\n");
    t.wait_for("SIGUSR1", || !work.signals().is_empty());
    assert_eq!(
        work.read("b.conf"),
        "b=2\n",
        "the checked output kept its content"
    );
    assert_eq!(work.signals(), ["SIGUSR1"]);
}

#[test]
fn two_outputs_changed_by_one_change_set_restart_once() {
    let work = Work::new();
    work.write("app.env", "A=1\nB=2\nC=1\n");
    work.write("c.tmpl", "c={{ C }}\n");
    two_outputs(
        &work,
        "on_change = \"restart\"",
        "on_change = \"restart\"",
        "",
    );
    let mut cfg = work.read("cfg.toml");
    cfg.push_str(&format!(
        "\n[[output]]\npath = \"{}\"\ntemplate = \"{}\"\non_change = \"signal:USR1\"\n",
        work.path("c.conf").display(),
        work.path("c.tmpl").display()
    ));
    work.write("cfg.toml", &cfg);
    let t = start(&work, &work.child_args(&[]));
    t.wait_for("the child to start", || work.starts().len() == 1);

    work.write("app.env", "A=5\nB=6\nC=1\n");
    t.wait_for("a restart", || work.starts().len() >= 2);
    // A later change that only signals: any second restart from the first change would
    // have come before it.
    work.write("app.env", "A=5\nB=6\nC=2\n");
    t.wait_for("SIGUSR1", || !work.signals().is_empty());
    assert_eq!(work.starts().len(), 2, "one restart for two outputs");
}

#[test]
fn a_secret_never_appears_in_a_render_error_or_check_log() {
    let work = Work::new();
    work.write("app.env", &format!("S={SECRET}\nOK=1\n"));
    work.write(
        "cfg.toml",
        &format!(
            "[[output]]\npath = \"{}\"\ncontents = \"{{{{ OK }}}}\"\n\
             check = \"sh -c 'cat {{path}}; echo leaked {SECRET}; exit 1'\"\n\n\
             [[output]]\npath = \"{}\"\ncontents = \"{{{{ S | int }}}}{{{{ S.x.y }}}}{{{{ S + 1 }}}}\"\n",
            work.path("checked").display(),
            work.path("broken").display(),
        ),
    );
    let (code, out, err) = run_to_end(
        work.dir.path(),
        &[
            "run",
            "--once",
            "-c",
            "cfg.toml",
            "--source",
            "file:app.env",
            "--log-level",
            "trace",
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("check failed") || err.contains("template"),
        "{err}"
    );
    assert!(!err.contains(SECRET) && !out.contains(SECRET), "{err}");
    assert!(!work.path("checked").exists() && !work.path("broken").exists());

    // --once is all or nothing too: a good output is not written when another fails,
    // unless atomic_outputs = false.
    let good = format!(
        "[[output]]\npath = \"{}\"\ncontents = \"{{{{ OK }}}}\"\n\n\
         [[output]]\npath = \"{}\"\ncontents = \"{{{{ GONE }}}}\"\n",
        work.path("good").display(),
        work.path("broken").display(),
    );
    let once = [
        "run",
        "--once",
        "-c",
        "cfg.toml",
        "--source",
        "file:app.env",
    ];
    work.write("cfg.toml", &good);
    let (code, _, err) = run_to_end(work.dir.path(), &once);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("GONE"), "{err}");
    assert!(!work.path("good").exists(), "all or nothing");
    work.write("cfg.toml", &format!("atomic_outputs = false\n{good}"));
    let (code, _, err) = run_to_end(work.dir.path(), &once);
    assert_ne!(code, 0, "{err}");
    assert_eq!(work.read("good"), "1", "per output: the good one lands");

    // Run mode: a check printing the rendered file.
    work.write(
        "cfg.toml",
        &format!(
            "[[output]]\npath = \"{}\"\ncontents = \"v={{{{ S }}}}\"\n\
             check = \"sh -c 'cat {{path}}; grep -q ok {{path}}'\"\n",
            work.path("checked").display(),
        ),
    );
    work.write("app.env", "S=ok\n");
    let t = start(&work, &work.child_args(&[]));
    t.wait_for("the child to start", || work.starts().len() == 1);
    work.write("app.env", &format!("S={SECRET}\n"));
    t.wait_for("the check failure", || t.stderr().contains("check failed"));
    assert_eq!(work.read("checked"), "v=ok");
    assert!(!t.stderr().contains(SECRET), "{}", t.stderr());
    assert!(
        t.stderr().contains("***"),
        "the check's output is shown scrubbed"
    );
}

#[test]
fn check_validates_templates_and_warns_of_unknown_names() {
    let work = Work::new();
    work.write("app.env", "A=1\n");
    work.write("bad.tmpl", "ok\n{% if %}\n");
    work.write("good.tmpl", "{{ A }} {{ UNKNOWN_NAME | default('x') }}\n");
    let cfg = |tmpl: &str| {
        format!(
            "source = [\"file:{}\"]\n[[output]]\npath = \"{}\"\ntemplate = \"{}\"\n",
            work.path("app.env").display(),
            work.path("x.conf").display(),
            work.path(tmpl).display()
        )
    };
    work.write("cfg.toml", &cfg("bad.tmpl"));
    let (code, _, err) = run_to_end(work.dir.path(), &["check", "-c", "cfg.toml"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("bad.tmpl") && err.contains("line 2"), "{err}");

    work.write("cfg.toml", &cfg("good.tmpl"));
    let (code, out, err) = run_to_end(work.dir.path(), &["check", "-c", "cfg.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("UNKNOWN_NAME"),
        "{err}"
    );
    assert!(!err.contains("reads A,"), "{err}");
    assert!(out.contains("good.tmpl"), "{out}");
}

#[test]
fn dry_run_shows_a_template_render_with_secrets_masked() {
    let work = Work::new();
    work.write("app.env", &format!("S={SECRET}\nPORT=80\n"));
    work.write(
        "cfg.toml",
        &format!(
            "[[output]]\npath = \"{}\"\ncontents = \"listen {{{{ PORT }}}}; pass {{{{ S }}}};\\n\"\n\n\
             [[output]]\npath = \"{}\"\ncontents = \"{{{{ GONE }}}}\"\n",
            work.path("x.conf").display(),
            work.path("y.conf").display(),
        ),
    );
    let (code, out, err) = run_to_end(
        work.dir.path(),
        &[
            "watch",
            "--dry-run",
            "-c",
            "cfg.toml",
            "--source",
            "file:app.env",
            "--signal-process",
            "nothing-here",
        ],
    );
    assert!(!out.contains(SECRET) && !err.contains(SECRET), "{out}{err}");
    assert!(out.contains("pass <masked>;"), "{out}\n{err} {code}");
    assert!(
        out.contains("would NOT write it") && out.contains("GONE"),
        "{out}"
    );
    assert!(!work.path("x.conf").exists(), "a dry run writes nothing");
}

#[test]
fn a_failing_check_is_acknowledged_to_the_node_as_a_failure() {
    use crate::fake_node::{FakeNode, change, pos, snapshot, synced, welcome};
    use tether_core::protocol::{ClientMsg, Epoch};
    let work = Work::new();
    let fake = FakeNode::start();
    work.write(
        "cfg.toml",
        &format!(
            "[[output]]\npath = \"{}\"\ncontents = \"v={{{{ S }}}}\\n\"\n\
             check = \"grep -q ok {{path}}\"\non_change = \"signal:USR1\"\n",
            work.path("app.conf").display(),
        ),
    );
    let mut args: Vec<String> = ["run", "-c", "cfg.toml", "--server"]
        .map(String::from)
        .to_vec();
    args.push(fake.url());
    args.extend(
        [
            "--env",
            "prod",
            "--state-dir",
            &work.path("state").display().to_string(),
            "--no-env",
            "--debounce",
            "0",
            "--",
        ]
        .map(String::from),
    );
    args.extend(work.child_args(&[]));
    let agent = Tether::start(work.dir.path(), &args, &[]);
    let e = Epoch(0x0190_0000_0000_0001);
    let (v1, v2) = (pos(e, 1), pos(e, 2));
    let c = fake.wait_hello(&agent, 0);
    c.send(&welcome(60_000));
    c.send(&snapshot(v1, &[("S", "ok")]));
    c.send(&synced(v1));
    agent.wait_for("v1 rendered and acked", || {
        work.read("app.conf") == "v=ok\n" && c.acked(v1) && work.starts().len() == 1
    });

    c.send(&change(v2, &[("S", SECRET)]));
    let failed = || {
        c.received().into_iter().find_map(|m| match m {
            ClientMsg::Ack {
                position,
                ok: false,
                error,
                ..
            } if position == v2 => Some(error.unwrap_or_default()),
            _ => None,
        })
    };
    agent.wait_for("v2 acknowledged as failed", || failed().is_some());
    let error = failed().unwrap_or_default();
    assert!(error.contains("check"), "{error}");
    assert!(!error.contains(SECRET), "{error}");
    assert_eq!(work.read("app.conf"), "v=ok\n");
    assert!(work.signals().is_empty(), "{:?}", work.record());
    assert!(!agent.stderr().contains(SECRET));
}
