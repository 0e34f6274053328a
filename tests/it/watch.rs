//! Watch mode (pidfile and process-name targets, exec hooks), `tether check`, logging (no
//! secret value at trace level, JSON lines) and how tether refuses bad input.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;

use crate::files::{s, watch_none};
use crate::support::{BENCH_BIN, DEADLINE, Tether, Work, alive, run_to_end};

/// The fixture started by the test as an ordinary process (not tether's child).
struct Fixture(Child);

impl Fixture {
    /// Start `program child --record ... --env-file ...` and wait until its signal
    /// handlers are in place (it records `start PID` after installing them).
    fn start(w: &Work, program: &Path) -> Fixture {
        let args = w.child_args(&[]);
        let child = Command::new(program)
            .args(&args[1..])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fixture");
        let f = Fixture(child);
        crate::support::wait_for("fixture started", || w.starts() == [f.pid()]);
        f
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reports every open of one file: the sign that tether is re-reading a source.
struct Opens {
    rx: std::sync::mpsc::Receiver<()>,
    _watcher: notify::RecommendedWatcher,
}

impl Opens {
    fn new(file: &Path) -> Opens {
        use notify::{EventKind, Watcher, event::AccessKind};
        let (tx, rx) = std::sync::mpsc::channel();
        let want = file.to_path_buf();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if matches!(ev.kind, EventKind::Access(AccessKind::Open(_)))
                    && ev.paths.contains(&want)
                {
                    let _ = tx.send(());
                }
            }
        })
        .expect("watcher");
        let dir = file.parent().expect("a parent");
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .expect("watch");
        Opens {
            rx,
            _watcher: watcher,
        }
    }

    fn clear(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    fn wait(&self, t: &Tether, what: &str) {
        if self.rx.recv_timeout(DEADLINE).is_err() {
            t.dump();
            panic!("timed out after {DEADLINE:?} waiting for: {what}");
        }
    }
}

fn watch(w: &Work, args: &[&str]) -> Tether {
    let mut all = vec!["watch", "--debounce", "0"];
    all.extend_from_slice(args);
    Tether::start(w.dir.path(), all, &[])
}

fn src(w: &Work, name: &str) -> String {
    format!("file:{}", s(&w.path(name)))
}

fn stop(mut t: Tether) {
    t.signal(Signal::SIGTERM);
    let st = t.wait();
    if st.code() != Some(0) {
        t.dump();
        panic!("watch exited with {st:?}, want 0");
    }
}

// ---------------------------------------------------------------------------------------
// Targets

#[test]
fn watch_signals_the_pidfile_process_with_hup_by_default() {
    let w = Work::new();
    let fx = Fixture::start(&w, Path::new(BENCH_BIN));
    let pidfile = w.path("app.pid");
    fs::write(&pidfile, format!("{}\n", fx.pid())).unwrap();
    w.write("a.env", "A=1\n");
    let out = w.path("out.env");
    let t = watch(
        &w,
        &[
            "--source",
            &src(&w, "a.env"),
            "--output",
            &s(&out),
            "--signal-pidfile",
            &s(&pidfile),
        ],
    );
    t.wait_for("first render", || w.read("out.env") == "A=1\n");
    assert!(w.signals().is_empty(), "the first render signals nothing");

    w.write("a.env", "A=2\n");
    t.wait_for("a HUP", || !w.signals().is_empty());
    assert_eq!(w.read("out.env"), "A=2\n", "written before the signal");
    assert_eq!(w.signals(), ["SIGHUP"]);

    // A no-op change does nothing: the next real change brings the second signal only.
    // Each no-op is seen re-read by tether before the next write, so it is not merged
    // into the real change.
    let opens = Opens::new(&w.path("a.env"));
    for same in ["A=2\n", "# same values\nA=2\n"] {
        opens.clear();
        w.write("a.env", same);
        opens.wait(&t, "tether re-reads the unchanged source");
    }
    w.write("a.env", "A=3\n");
    t.wait_for("the next change", || w.read("out.env") == "A=3\n");
    // Logged before the output is written, so the count is final here.
    assert_eq!(t.stderr().matches("configuration changed").count(), 2);
    t.wait_for("second HUP", || w.signals().len() >= 2);
    assert_eq!(w.signals(), ["SIGHUP", "SIGHUP"]);

    stop(t);
    assert!(alive(fx.pid()), "watch leaves its target running");
    assert!(!out.exists());
}

#[test]
fn watch_signals_the_configured_signal() {
    let w = Work::new();
    let fx = Fixture::start(&w, Path::new(BENCH_BIN));
    // The pidfile appears only after tether starts, as an app's own pidfile would.
    let pidfile = w.path("app.pid");
    w.write("a.env", "A=1\n");
    let t = watch(
        &w,
        &[
            "--source",
            &src(&w, "a.env"),
            "--output",
            &s(&w.path("out.env")),
            "--signal-pidfile",
            &s(&pidfile),
            "--on-change",
            "signal:USR1",
        ],
    );
    t.wait_for("first render", || w.read("out.env") == "A=1\n");
    w.write("a.env", "A=2\n");
    t.wait_for("a warning about the pidfile", || {
        t.stderr().contains("cannot signal through pidfile")
    });
    assert_eq!(
        w.read("out.env"),
        "A=2\n",
        "the output is written regardless"
    );

    fs::write(&pidfile, fx.pid().to_string()).unwrap();
    w.write("a.env", "A=3\n");
    t.wait_for("a USR1", || !w.signals().is_empty());
    assert_eq!(w.signals(), ["SIGUSR1"]);
    stop(t);
}

#[test]
fn watch_signals_processes_by_name() {
    let w = Work::new();
    // A unique name (comm holds 15 bytes) so no other process on the machine matches.
    let name = format!("tfx-{:08x}", rand::random::<u32>());
    let exe = w.path(&name);
    std::os::unix::fs::symlink(BENCH_BIN, &exe).unwrap();
    let fx = Fixture::start(&w, &exe);
    w.write("a.env", "A=1\n");
    let t = watch(
        &w,
        &[
            "--source",
            &src(&w, "a.env"),
            "--output",
            &s(&w.path("out.env")),
            "--signal-process",
            &name,
            "--on-change",
            "signal:SIGUSR2",
        ],
    );
    t.wait_for("first render", || w.read("out.env") == "A=1\n");
    w.write("a.env", "A=2\n");
    t.wait_for("a USR2", || !w.signals().is_empty());
    assert_eq!(w.signals(), ["SIGUSR2"]);
    assert!(w.record().contains(&format!("SIGUSR2 {}", fx.pid())));
    stop(t);
    assert!(alive(fx.pid()));
}

#[test]
fn watch_runs_exec_hooks_and_logs_their_status() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let log = w.path("hook.log");
    // exec:CMD is split shell-style and run without a shell, so call one explicitly.
    let hook = format!(
        "exec:sh -c 'echo \"$TETHER_CHANGED\" >> {}; case $TETHER_CHANGED in *FAIL*) exit 3;; esac'",
        s(&log),
    );
    let t = watch(
        &w,
        &[
            "--source",
            &src(&w, "a.env"),
            "--output",
            &s(&w.path("out.env")),
            "--on-change",
            &hook,
        ],
    );
    t.wait_for("first render", || w.read("out.env") == "A=1\n");
    assert!(!log.exists(), "the first render runs no hook");

    w.write("a.env", "A=2\nB=1\n");
    t.wait_for("the hook ran", || w.read("hook.log").lines().count() == 1);
    assert_eq!(w.read("hook.log"), "A,B\n");
    t.wait_for("its status logged", || t.stderr().contains("hook finished"));

    w.write("a.env", "A=2\nB=1\nFAIL=1\n");
    t.wait_for("the hook ran again", || {
        w.read("hook.log").lines().count() == 2
    });
    assert_eq!(w.read("hook.log"), "A,B\nFAIL\n");
    t.wait_for("the failure logged", || t.stderr().contains("hook failed"));
    let err = t.stderr();
    let line = err.lines().find(|l| l.contains("hook failed")).unwrap();
    assert!(line.contains("exit code 3"), "{line}");
    stop(t);
}

#[test]
fn watch_kills_a_hook_that_outlives_its_timeout() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let pids = w.path("hook.pid");
    // The hook records its pid, then hangs (exec keeps the pid).
    let hook = format!("exec:sh -c 'echo $$ > {}; exec sleep 600'", s(&pids));
    let t = watch(
        &w,
        &[
            "--source",
            &src(&w, "a.env"),
            "--output",
            &s(&w.path("out.env")),
            "--on-change",
            &hook,
            "--exec-timeout",
            "300ms",
        ],
    );
    t.wait_for("first render", || w.read("out.env") == "A=1\n");
    w.write("a.env", "A=2\n");
    t.wait_for("the hook started", || w.read("hook.pid").ends_with('\n'));
    let pid: i32 = w.read("hook.pid").trim().parse().unwrap();
    t.wait_for("the timeout logged", || {
        t.stderr().contains("hook timed out")
    });
    t.wait_for("the hook killed", || !alive(pid));
    // tether carries on.
    w.write("a.env", "A=3\n");
    t.wait_for("next change", || w.read("out.env") == "A=3\n");
    stop(t);
}

// ---------------------------------------------------------------------------------------
// tether check

#[test]
fn check_reports_every_problem_with_its_key() {
    let w = Work::new();
    w.write(
        "bad.toml",
        r#"
source = ["file:/etc/app.env", "ftp:/x"]
debounce = "soon"
stop_signal = "SIGFOO"
restart_on_exit = "sometimes"
on_change = "reboot"

[[output]]
path = "/run/app.env"
format = "yaml"
mode = "999"
owner = "no-such-user-xyz"
"#,
    );
    let (code, out, err) = run_to_end(w.dir.path(), &["check", "--config", "bad.toml"]);
    assert_eq!(code, 64, "{err}");
    assert!(out.is_empty(), "{out}");
    for key in [
        "source[1]",
        "debounce",
        "stop_signal",
        "restart_on_exit",
        "on_change",
        "output[0].format",
        "output[0].mode",
        "output[0].owner",
    ] {
        assert!(
            err.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key}: "))),
            "{key} missing from:\n{err}"
        );
    }
    // The header counts every problem listed.
    let listed = err.lines().filter(|l| l.starts_with("  ")).count();
    assert!(err.contains(&format!("({listed} problem(s))")), "{err}");
}

#[test]
fn check_prints_the_effective_config() {
    let w = Work::new();
    w.write(
        "good.toml",
        r#"
# comments are fine
source = ["file:/etc/app.env", { dir = "/etc/secrets" }]
debounce = "250ms"
stop_signal = "hup"

[[output]]
path = "/run/app/app.env"
mode = "0640"
on_change = "signal:USR2"

[[output]]
path = "/run/app/secrets"
format = "dir"
"#,
    );
    let (code, out, err) = run_to_end(w.dir.path(), &["check", "--config", "good.toml"]);
    assert_eq!(code, 0, "{err}");
    let v: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert_eq!(
        v["source"].as_array().unwrap().len(),
        2,
        "both sources: {out}"
    );
    assert_eq!(v["debounce"].as_str(), Some("250ms"));
    assert_eq!(v["stop_signal"].as_str(), Some("SIGHUP"));
    assert_eq!(v["on_change"].as_str(), Some("restart"), "the run default");
    let outputs = v["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0]["mode"].as_str(), Some("0640"));
    assert_eq!(outputs[0]["on_change"].as_str(), Some("signal:SIGUSR2"));
    assert_eq!(outputs[1]["format"].as_str(), Some("dir"));
    assert_eq!(outputs[1]["mode"].as_str(), Some("0600"));
    // The effective config is itself a valid config.
    fs::write(w.path("again.toml"), &out).unwrap();
    let (code, again, err) = run_to_end(w.dir.path(), &["check", "--config", "again.toml"]);
    assert_eq!((code, again.as_str()), (0, out.as_str()), "{err}");

    // Watch-mode rules apply with --mode watch.
    let (code, _, err) = run_to_end(
        w.dir.path(),
        &["check", "--config", "good.toml", "--mode", "watch"],
    );
    assert_eq!(code, 64);
    assert!(err.contains("output[0].on_change"), "{err}");
}

#[test]
fn check_refuses_unknown_keys() {
    let w = Work::new();
    w.write(
        "typo.toml",
        "source = [\"file:/a.env\"]\ndebounse = \"1s\"\n",
    );
    let (code, _, err) = run_to_end(w.dir.path(), &["check", "--config", "typo.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("unknown field `debounse`"), "{err}");
    assert!(err.contains("typo.toml") && err.contains("line 2"), "{err}");

    w.write(
        "typo2.toml",
        "[[output]]\npath = \"/run/x\"\nmod = \"0600\"\n",
    );
    let (code, _, err) = run_to_end(w.dir.path(), &["check", "--config", "typo2.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("unknown field `mod`"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Logging

/// Values rotated through a source; none may ever reach tether's logs.
fn rotation(i: usize) -> String {
    format!("SECRET-ROTATION-{i}-zq9")
}

fn assert_no_secret(t: &Tether) {
    let (out, err) = (t.stdout(), t.stderr());
    for text in [&out, &err] {
        assert!(
            !text.contains("zq9") && !text.contains("ROTATION") && !text.contains("s3cr3t"),
            "a secret value reached the logs"
        );
    }
}

#[test]
fn secret_values_never_reach_trace_logs_in_run() {
    let w = Work::new();
    w.write("a.env", &format!("SECRET={}\nPLAIN=x\n", rotation(0)));
    let out = w.path("out.env");
    let mut args: Vec<String> = [
        "run",
        "--log-level",
        "trace",
        "--debounce",
        "0",
        "--stop-timeout",
        "10s",
        "--source",
        &src(&w, "a.env"),
        "--output",
        &s(&out),
        "--",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(w.child_args(&[]));
    let mut t = Tether::start(w.dir.path(), &args, &[]);
    // Applied: the output and the env of a child that has started since (its `start` line
    // comes after its signal handlers, so the TERM at the end reaches a handler). Every
    // applied rotation is one restart.
    let restarts = std::cell::Cell::new(0);
    let has = |i: usize| {
        let want = format!("SECRET={}", rotation(i));
        w.child_env().contains(&want)
            && w.read("out.env").contains(&want)
            && w.starts().len() > restarts.get()
    };
    t.wait_for("first start", || has(0));
    for i in 1..=4 {
        w.write("a.env", &format!("SECRET={}\nPLAIN=x\n", rotation(i)));
        restarts.set(restarts.get() + 1);
        t.wait_for("rotation applied (restart with the new env)", || has(i));
    }
    // A broken file holding a value, and a name no output can carry.
    w.write("a.env", &format!("SECRET=\"{}\n", rotation(5)));
    t.wait_for("parse error", || t.stderr().contains("cannot parse"));
    w.write(
        "a.env",
        &format!("SECRET={}\nbad-name={}\n", rotation(6), rotation(7)),
    );
    restarts.set(restarts.get() + 1);
    t.wait_for("rotation 6 applied", || has(6));
    t.wait_for("bad name reported", || {
        t.stderr().contains("entry not injected") && t.stderr().contains("bad-name")
    });
    assert!(!w.read("out.env").contains("bad-name"));
    assert!(t.stderr().contains("TRACE") || t.stderr().contains("DEBUG"));
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait().code(), Some(0));
    assert_no_secret(&t);
}

#[test]
fn secret_values_never_reach_json_trace_logs_in_watch() {
    let w = Work::new();
    w.write("a.json", &format!(r#"{{"SECRET": "{}"}}"#, rotation(0)));
    let out = w.path("out.d");
    let mut t = Tether::start(
        w.dir.path(),
        [
            "watch",
            "--log-level",
            "trace",
            "--log-format",
            "json",
            "--debounce",
            "0",
            "--source",
            &src(&w, "a.json"),
            "--output",
            &s(&out),
            "--format",
            "dir",
            "--on-change",
            "none",
        ],
        &[],
    );
    t.wait_for("first render", || w.read("out.d/SECRET") == rotation(0));
    for i in 1..=4 {
        w.write("a.json", &format!(r#"{{"SECRET": "{}"}}"#, rotation(i)));
        t.wait_for("rotation applied", || w.read("out.d/SECRET") == rotation(i));
    }
    w.write("a.json", &format!(r#"{{"SECRET": "{}"#, rotation(5)));
    t.wait_for("parse error", || t.stderr().contains("cannot parse"));
    w.write(
        "a.json",
        &format!(
            r#"{{"SECRET": "{}", "../up": "{}"}}"#,
            rotation(6),
            rotation(7)
        ),
    );
    t.wait_for("rotation 6 applied", || {
        w.read("out.d/SECRET") == rotation(6)
    });
    t.wait_for("bad name reported", || t.stderr().contains("../up"));
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait().code(), Some(0));
    assert_no_secret(&t);
    assert_json_lines(&t.stderr());
}

/// Every line is one JSON object with a timestamp, a level and a message.
fn assert_json_lines(err: &str) {
    let mut n = 0;
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "message"] {
            assert!(v.get(field).is_some(), "no {field}: {line}");
        }
        n += 1;
    }
    assert!(n > 0, "no log lines");
}

#[test]
fn json_log_format_gives_json_lines_with_fields() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let out = w.path("out.env");
    let t = watch_none(&w, "a.env", &["--output", &s(&out), "--log-format", "json"]);
    t.wait_for("first render", || {
        t.stderr().contains("first render complete")
    });
    fs::remove_file(w.path("a.env")).unwrap();
    t.wait_for("a warning", || t.stderr().contains("source is gone"));
    let err = t.stderr();
    assert_json_lines(&err);
    let warn = err
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("source is gone"))
        })
        .unwrap();
    assert_eq!(warn["level"], "WARN");
    assert!(
        warn["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("/a.env")),
        "fields are JSON fields: {warn}"
    );
    stop(t);

    // The same through the environment, with TETHER_LOG for the level.
    w.write("b.env", "B=1\n");
    let t = Tether::start(
        w.dir.path(),
        [
            "watch",
            "--source",
            &src(&w, "b.env"),
            "--output",
            &s(&out),
            "--on-change",
            "none",
        ],
        &[("TETHER_LOG_FORMAT", "json"), ("TETHER_LOG", "debug")],
    );
    t.wait_for("first render", || w.read("out.env") == "B=1\n");
    w.write("b.env", "B=2\n");
    t.wait_for("a debug line", || {
        t.stderr().contains("\"level\":\"DEBUG\"")
    });
    assert_json_lines(&t.stderr());
    stop(t);
}

#[test]
fn text_logs_have_no_colour_codes_when_not_on_a_terminal() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let t = watch_none(&w, "a.env", &["--output", &s(&w.path("out.env"))]);
    t.wait_for("first render", || {
        t.stderr().contains("first render complete")
    });
    let err = t.stderr();
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in a log file:\n{err:?}"
    );
    assert!(err.contains(" INFO "), "{err}");
    stop(t);
}

// ---------------------------------------------------------------------------------------
// Bad input

#[test]
fn missing_source_at_start_exits_1_naming_the_path() {
    let w = Work::new();
    // A missing file, a file in a missing directory, a missing `dir:` source.
    let cases = [
        format!("file:{}", s(&w.path("app.env"))),
        format!("file:{}", s(&w.path("nope/app.env"))),
        format!("dir:{}", s(&w.path("secrets"))),
    ];
    let out = s(&w.path("out.env"));
    for source in &cases {
        for verb in ["watch", "run"] {
            let mut args = vec![verb, "--source", source, "--output", &out];
            if verb == "watch" {
                args.extend(["--on-change", "none"]);
            } else {
                args.extend(["--", "true"]);
            }
            let (code, _, err) = run_to_end(w.dir.path(), &args);
            assert_eq!(code, 1, "{verb} {source}: {err}");
            let line = err.lines().last().unwrap_or_default();
            let path = source.split_once(':').unwrap().1;
            assert!(line.contains(path), "{verb} {source}: {err}");
            assert_eq!(
                line.matches("No such file").count(),
                1,
                "the cause, once: {line}"
            );
        }
    }
    assert!(!w.path("out.env").exists());
}

#[test]
fn unwritable_output_exits_1_naming_the_output() {
    let w = Work::new();
    w.write("a.env", "A=s3cr3t\n");
    w.write("plain", "a regular file\n");
    let record = w.path("record");
    for (format, out) in [
        ("dotenv", w.path("plain/sub/out.env")),
        ("dir", w.path("plain/out.d")),
    ] {
        let mut args = vec![
            "run".to_string(),
            "--source".into(),
            src(&w, "a.env"),
            "--output".into(),
            s(&out),
            "--format".into(),
            format.into(),
            "--".into(),
        ];
        args.extend(w.child_args(&[]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = run_to_end(w.dir.path(), &args);
        assert_eq!(code, 1, "{format}: {err}");
        assert!(err.contains(&s(&out)), "{format}: names the output: {err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(!record.exists(), "{format}: the child never started");
    }
    assert_eq!(w.read("plain"), "a regular file\n");
}

#[test]
fn bad_flag_values_exit_64_naming_the_key() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let source = src(&w, "a.env");
    let out = s(&w.path("out.env"));
    let cases: &[(&[&str], &str)] = &[
        (&["--debounce", "soon"], "debounce"),
        (&["--max-wait", "1 fortnight"], "max_wait"),
        (&["--mode", "0999"], "output[0].mode"),
        (&["--format", "yaml"], "output[0].format"),
        (&["--on-change", "reboot"], "on_change"),
        (&["--owner", "no-such-user-xyz"], "output[0].owner"),
        (&["--log-format", "xml"], "log_format"),
    ];
    for (extra, key) in cases {
        let mut args = vec!["watch", "--source", &source, "--output", &out];
        args.extend_from_slice(extra);
        let (code, out, err) = run_to_end(w.dir.path(), &args);
        assert_eq!(code, 64, "{extra:?}: {err}");
        assert!(out.is_empty());
        assert!(
            err.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key}: "))),
            "{extra:?} should name {key}:\n{err}"
        );
    }
    // Several at once: every one reported.
    let (code, _, err) = run_to_end(
        w.dir.path(),
        &[
            "run",
            "--source",
            &source,
            "--stop-signal",
            "SIGNOPE",
            "--splay",
            "later",
            "--",
            "true",
        ],
    );
    assert_eq!(code, 64);
    assert!(
        err.contains("stop_signal: ") && err.contains("splay: "),
        "{err}"
    );
    // Watch without a target for its signal.
    let (code, _, err) = run_to_end(
        w.dir.path(),
        &[
            "watch",
            "--source",
            &source,
            "--output",
            &out,
            "--on-change",
            "signal",
        ],
    );
    assert_eq!(code, 64);
    assert!(err.contains("--signal-pidfile"), "{err}");
    assert!(!w.path("out.env").exists());
}
