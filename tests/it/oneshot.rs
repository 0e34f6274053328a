//! One-shot and dry run (`--once`, `--dry-run`), `check --mode serve`, `status --watch` and
//! `NO_COLOR` (issue 13, items 5 and 7), against the real binary, real and fake nodes. The
//! last three are in `oneshot/verbs.rs`.

mod verbs;

use std::process::Command;

use tether_core::protocol::{ClientMsg, Epoch, ServerMsg, WireEntry};
use tether_core::secret::Value;

use crate::fake_node::{FakeNode, pos, synced, welcome};
use crate::support::{Tether, Work, free_port, run_to_end, run_to_end_env, start_node};

const E1: Epoch = Epoch(0x0190_0000_0000_0001);

fn s(p: std::path::PathBuf) -> String {
    p.display().to_string()
}

fn put(w: &Work, url: &str, pairs: &[&str]) {
    let mut args = vec!["put", "--server", url, "--env", "prod"];
    args.extend_from_slice(pairs);
    let (code, out, err) = run_to_end(w.dir.path(), &args);
    assert_eq!(code, 0, "put failed:\n{out}{err}");
}

/// A dev-mode node with its data under `w/data`, and its URL.
fn node(w: &Work) -> (Tether, String) {
    let (proc, port) = start_node(w.dir.path(), &["--data", &s(w.path("data"))]);
    (proc, format!("http://127.0.0.1:{port}"))
}

// --- --once ------------------------------------------------------------------------------

#[test]
fn once_renders_file_sources_starts_no_child_and_keeps_the_output() {
    let w = Work::new();
    w.write("a.env", "A=1\nB=two\n");
    let out = s(w.path("out/app.env"));
    let (code, _, err) = run_to_end(
        w.dir.path(),
        &[
            "watch",
            "--once",
            "--source",
            "file:a.env",
            "--output",
            &out,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(w.read("out/app.env"), "A=1\nB=two\n", "kept after the exit");

    // run: the command is not started (its record file never appears); TETHER_ONCE works.
    let run_out = s(w.path("run.env"));
    let mut args = vec!["run", "--source", "file:a.env", "--output", &run_out, "--"];
    let child = w.child_args(&[]);
    args.extend(child.iter().map(String::as_str));
    let (code, _, err) = run_to_end_env(w.dir.path(), &args, &[("TETHER_ONCE", "1")]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no child started"), "{err}");
    assert!(!w.path("record").exists(), "the child was started");
}

#[test]
fn once_names_the_source_and_the_output_that_failed() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    w.write("blocker", "a file where a directory should be");
    let (code, _, err) = run_to_end(
        w.dir.path(),
        &[
            "watch",
            "--once",
            "--source",
            "file:gone.env",
            "--output",
            &s(w.path("x.env")),
        ],
    );
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("gone.env"), "{err}");

    let good = s(w.path("good.env"));
    let bad = s(w.path("blocker/app.env"));
    w.write(
        "two.toml",
        // Per output (atomic_outputs = false): the other output is still written.
        &format!("source = [\"file:a.env\"]\natomic_outputs = false\n[[output]]\npath = \"{bad}\"\n[[output]]\npath = \"{good}\"\n"),
    );
    let (code, _, err) = run_to_end(w.dir.path(), &["watch", "--once", "-c", "two.toml"]);
    assert_eq!(code, 73, "{err}");
    assert!(err.contains(&bad), "the error names the output: {err}");
    assert_eq!(
        w.read("good.env"),
        "A=1\n",
        "the other output is still written"
    );
}

#[test]
fn once_follows_a_node_saves_its_state_and_can_start_degraded_from_it() {
    let w = Work::new();
    let (mut n, url) = node(&w);
    put(&w, &url, &["GREETING=hello", "PORT=8080"]);
    let state = s(w.path("state"));
    let out = s(w.path("out.env"));
    let args = |extra: &[&str]| {
        let mut a = vec![
            "watch",
            "--once",
            "--server",
            &url,
            "--env",
            "prod",
            "--state-dir",
            &state,
            "--output",
            &out,
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_to_end(w.dir.path(), &a)
    };
    let (code, _, err) = run(args(&[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(w.read("out.env"), "GREETING=hello\nPORT=8080\n");
    let saved = std::fs::read_dir(w.path("state"))
        .expect("state saved")
        .count();
    assert_eq!(saved, 1);

    // The node is gone: without --start-without-server that fails, with it the saved state
    // is rendered (degraded) and the exit is 0.
    n.signal(nix::sys::signal::Signal::SIGTERM);
    n.wait();
    std::fs::remove_file(w.path("out.env")).unwrap();
    let (code, _, err) = run(args(&["--once-timeout", "1s"]));
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("no node answered within 1s"), "{err}");
    assert!(
        err.contains(&url.replace("http", "ws")),
        "names the node: {err}"
    );
    assert!(!w.path("out.env").exists());
    let (code, _, err) = run(args(&["--start-without-server"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("DEGRADED"), "{err}");
    assert_eq!(w.read("out.env"), "GREETING=hello\nPORT=8080\n");
}

#[test]
fn once_fails_clearly_when_no_node_answers() {
    let w = Work::new();
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = s(w.path("out.env"));
    let (code, _, err) = run_to_end(
        w.dir.path(),
        &[
            "watch",
            "--once",
            "--once-timeout",
            "1s",
            "--server",
            &url,
            "--env",
            "prod",
            "--state-dir",
            "state",
            "--output",
            &out,
        ],
    );
    assert_eq!(code, 69, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("tether: no node answered within 1s"),
        "{err}"
    );
    assert!(last.contains("Connection refused"), "says why: {err}");
    assert!(!w.path("out.env").exists());
}

/// A node's snapshot of `prod`: a plain and a secret entry.
fn snapshot_with_a_secret(p: tether_core::protocol::Position) -> ServerMsg {
    let entry = |name: &str, value: &str, secret| WireEntry {
        name: name.into(),
        value: Some(Value::from(value)),
        secret,
    };
    ServerMsg::Snapshot {
        env: "prod".into(),
        position: p,
        entries: vec![
            entry("DB_PASSWORD", "node-s3cret-value", true),
            entry("GREETING", "hello-plain", false),
        ],
    }
}

/// `tether watch ARGS` following the fake node; answers its hello with a snapshot at `p`
/// and waits for it to exit. Returns (exit code, stdout, stderr).
fn against_fake(w: &Work, fake: &FakeNode, args: &[&str]) -> (i32, String, String) {
    let p = pos(E1, 4);
    let url = fake.url();
    let mut all = vec!["watch", "--server", &url, "--env", "prod"];
    all.extend_from_slice(args);
    let index = fake.attempts();
    let mut agent = Tether::start(w.dir.path(), &all, &[]);
    let conn = fake.wait_hello(&agent, index);
    conn.send(&welcome(60_000));
    conn.send(&snapshot_with_a_secret(p));
    conn.send(&synced(p));
    let code = agent.wait().code().unwrap_or(-1);
    agent.wait_for("the connection to end", || conn.ended().is_some());
    (code, agent.stdout(), agent.stderr())
}

#[test]
fn once_acknowledges_what_it_rendered() {
    let w = Work::new();
    let fake = FakeNode::start();
    let out = s(w.path("out.env"));
    let state = s(w.path("state"));
    let (code, _, err) = against_fake(
        &w,
        &fake,
        &["--once", "--state-dir", &state, "--output", &out],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        fake.conn(0).acked(pos(E1, 4)),
        "no ack: {:?}",
        fake.conn(0).received()
    );
    assert!(w.read("out.env").contains("DB_PASSWORD=node-s3cret-value"));
}

// --- --dry-run ---------------------------------------------------------------------------

#[test]
fn dry_run_writes_saves_signals_and_acknowledges_nothing_and_masks_secrets() {
    let w = Work::new();
    let fake = FakeNode::start();
    w.write("local.env", "LOCAL_TOKEN=file-s3cret-value\n");
    // The app a signal would go to: `sleep`, which SIGHUP would end.
    let mut app = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    w.write("app.pid", &format!("{}\n", app.id()));
    w.write("app.env", "OLD=1\n");
    let before = std::fs::metadata(w.path("app.env")).unwrap();
    let (out, state, pidfile) = (
        s(w.path("app.env")),
        s(w.path("state")),
        s(w.path("app.pid")),
    );
    let fresh = s(w.path("fresh/new.json"));
    w.write(
        "dry.toml",
        &format!(
            "source = [\"file:local.env\"]\nstate_dir = \"{state}\"\nsignal_pidfile = \"{pidfile}\"\n\
             [[output]]\npath = \"{out}\"\n[[output]]\npath = \"{fresh}\"\nformat = \"json\"\non_change = \"exec:/bin/reload --now\"\n"
        ),
    );
    let (code, stdout, err) = against_fake(&w, &fake, &["-c", &s(w.path("dry.toml")), "--dry-run"]);
    assert_eq!(code, 0, "{err}");

    // Nothing touched: the old output as it was, no new one, no state, no ack.
    assert_eq!(w.read("app.env"), "OLD=1\n");
    let after = std::fs::metadata(w.path("app.env")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
    assert!(!w.path("fresh").exists(), "an output directory was made");
    assert!(!w.path("state").exists(), "the state dir was written");
    let frames = fake.conn(0).received();
    assert!(
        !frames.iter().any(|f| matches!(f, ClientMsg::Ack { .. })),
        "a dry run acknowledged: {frames:?}"
    );
    assert!(
        matches!(&frames[0], ClientMsg::Hello { agent, .. } if agent.ends_with("dry-run")),
        "{frames:?}"
    );

    // The report: masked secrets (the node's and the file's), plain values, actions.
    for secret in ["node-s3cret-value", "file-s3cret-value"] {
        assert!(
            !stdout.contains(secret) && !err.contains(secret),
            "{stdout}{err}"
        );
    }
    assert!(stdout.contains("  | DB_PASSWORD='<masked>'"), "{stdout}");
    assert!(stdout.contains("  | LOCAL_TOKEN='<masked>'"), "{stdout}");
    assert!(stdout.contains("  | GREETING=hello-plain"), "{stdout}");
    assert!(
        stdout.contains("\"GREETING\": \"hello-plain\""),
        "json: {stdout}"
    );
    assert!(stdout.contains(&format!("output {out}\n")), "{stdout}");
    assert!(stdout.contains("would replace it"), "{stdout}");
    assert!(stdout.contains("would create it"), "{stdout}");
    let app_pid = app.id();
    assert!(
        stdout.contains(&format!(
            "on change: signal SIGHUP to pidfile {pidfile} (pid {app_pid} now); fires: yes"
        )),
        "{stdout}"
    );
    assert!(app.try_wait().unwrap().is_none(), "the app was signalled");
    let _ = app.kill();
    let _ = app.wait();
    assert!(
        stdout.contains("on change: exec hook /bin/reload --now; fires: no"),
        "{stdout}"
    );

    // --show-file-values shows the file's value, never the node's secret.
    let (code, stdout, err) = against_fake(
        &w,
        &fake,
        &[
            "-c",
            &s(w.path("dry.toml")),
            "--dry-run",
            "--show-file-values",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("LOCAL_TOKEN=file-s3cret-value"), "{stdout}");
    assert!(!stdout.contains("node-s3cret-value"), "{stdout}");
    assert!(!w.path("state").exists());
}

#[test]
fn dry_run_of_run_shows_the_child_and_its_environment_without_starting_it() {
    let w = Work::new();
    w.write("a.env", "PORT=8080\n");
    let mut args = vec![
        "run",
        "--dry-run",
        "--show-file-values",
        "--source",
        "file:a.env",
        "--",
    ];
    let child = w.child_args(&[]);
    args.extend(child.iter().map(String::as_str));
    let (code, stdout, err) = run_to_end(w.dir.path(), &args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("(not started)"), "{stdout}");
    assert!(stdout.contains("1 variable(s) injected"), "{stdout}");
    assert!(stdout.contains("  | PORT=8080"), "{stdout}");
    assert!(!w.path("record").exists(), "the child was started");
}
