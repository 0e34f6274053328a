//! One-shot and dry run (`--once`, `--dry-run`), `check --mode serve`, `status --watch` and
//! `NO_COLOR` (issue 13, items 5 and 7), against the real binary, real and fake nodes.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use futures_util::{SinkExt, StreamExt};
use tether_core::protocol::{ClientMsg, Epoch, ServerMsg, Subscription, WireEntry};
use tether_core::secret::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::fake_node::{FakeNode, pos, synced, welcome};
use crate::support::{
    BIN, DEADLINE, Tether, Work, free_port, run_to_end, run_to_end_env, start_node, wait_for,
};

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
        &format!("source = [\"file:a.env\"]\n[[output]]\npath = \"{bad}\"\n[[output]]\npath = \"{good}\"\n"),
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

// --- check --mode serve ------------------------------------------------------------------

#[test]
fn check_serve_prints_the_effective_config_or_every_problem() {
    use sha2::{Digest, Sha256};
    let w = Work::new();
    let token = "raw-token-never-printed-0123456789";
    let hash = format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())));
    w.write(
        "node.toml",
        &format!(
            "listen = \"0.0.0.0:7070\"\nredis = \"redis://:redis-pa55word@redis:6379/0\"\n\
             [[token]]\nname = \"agents\"\nhash = \"{hash}\"\nrole = \"read\"\nenvs = [\"prod\"]\n"
        ),
    );
    let (code, out, err) = run_to_end(
        w.dir.path(),
        &["check", "--mode", "serve", "--config", "node.toml"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"0.0.0.0:7070\""), "{out}");
    assert!(out.contains(&hash), "{out}");
    assert!(out.contains("redis://<redacted>@redis:6379/0"), "{out}");
    assert!(
        !out.contains("redis-pa55word") && !out.contains(token),
        "{out}"
    );

    w.write(
        "bad.toml",
        "listen = \"0.0.0.0:7070\"\nheartbeat = \"1ms\"\nhistory = 0\n",
    );
    let (code, out, err) = run_to_end(
        w.dir.path(),
        &["check", "--mode", "serve", "-c", "bad.toml"],
    );
    assert_eq!(code, 64, "{out}{err}");
    for key in ["heartbeat:", "history:", "token:"] {
        assert!(err.contains(&format!("  {key}")), "{key} missing: {err}");
    }
    assert!(out.is_empty(), "{out}");
}

#[test]
fn the_shipped_node_config_passes_check_serve() {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/config/serve.toml");
    let (code, out, err) = run_to_end(
        std::path::Path::new(root),
        &["check", "--mode", "serve", "--config", &path],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[[token]]"), "{out}");
}

// --- status --watch ----------------------------------------------------------------------

#[test]
fn status_watch_follows_the_rollout_until_every_agent_is_current() {
    let w = Work::new();
    let (_n, url) = node(&w);
    put(&w, &url, &["A=1"]);
    let mut watch = Tether::start(
        w.dir.path(),
        [
            "status",
            "--server",
            &url,
            "--env",
            "prod",
            "--watch",
            "--timeout",
            "0",
        ],
        &[],
    );
    watch.wait_for("the first progress line", || {
        watch.stdout().contains("no agent connected")
    });
    let out = s(w.path("out.env"));
    let _agent = Tether::start(
        w.dir.path(),
        [
            "watch",
            "--server",
            &url,
            "--env",
            "prod",
            "--state-dir",
            "state",
            "--output",
            &out,
        ],
        &[],
    );
    let status = watch.wait();
    assert_eq!(status.code(), Some(0), "{}", watch.stderr());
    let stdout = watch.stdout();
    assert!(
        stdout.contains("prod: version 1: 1 of 1 agent(s) current"),
        "{stdout}"
    );
    assert!(stdout.ends_with("prod: rollout complete\n"), "{stdout}");
}

#[test]
fn status_watch_times_out_with_its_own_code_on_an_agent_that_never_acks() {
    let w = Work::new();
    let (_n, url) = node(&w);
    put(&w, &url, &["A=1"]);
    // A client that says hello and never acknowledges anything.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ws_url = format!("{}/v1/ws", url.replace("http", "ws"));
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .expect("connect");
        let hello = ClientMsg::Hello {
            agent: "silent".into(),
            subscribe: vec![Subscription {
                env: "prod".into(),
                position: None,
            }],
        };
        let text = serde_json::to_string(&hello).unwrap();
        ws.send(Message::text(text)).await.expect("hello");
        let _ = tx.send(());
        while ws.next().await.is_some() {}
    });
    rx.recv_timeout(DEADLINE)
        .expect("the silent agent connected");
    let (code, out, err) = run_to_end(
        w.dir.path(),
        &[
            "status",
            "--server",
            &url,
            "--env",
            "prod",
            "--watch",
            "--timeout",
            "2s",
        ],
    );
    assert_eq!(code, 75, "{out}{err}");
    assert!(out.contains("0 of 1 agent(s) current"), "{out}");
    assert!(err.contains("rollout not complete after 2s"), "{err}");

    // A node that is not there is an error at once, not a timeout.
    let gone = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = run_to_end(
        w.dir.path(),
        &["status", "--server", &gone, "--env", "prod", "--watch"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no node answered") && err.contains(&gone),
        "{err}"
    );
}

// --- NO_COLOR ----------------------------------------------------------------------------

/// What a one-shot logs to a terminal (a pty the test owns), with NO_COLOR as given.
fn logs_on_a_terminal(w: &Work, no_color: Option<&str>) -> String {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave: OwnedFd = pty.slave;
    let mut cmd = Command::new(BIN);
    let out = s(w.path("out.env"));
    cmd.args([
        "watch",
        "--once",
        "--source",
        "file:a.env",
        "--output",
        &out,
    ])
    .current_dir(w.dir.path())
    .env_clear()
    .env("XDG_RUNTIME_DIR", w.dir.path())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::from(slave.try_clone().unwrap()));
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let mut child = cmd.spawn().expect("start tether");
    // Only tether may hold the terminal, or reading it never ends.
    drop(cmd);
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once tether, the terminal's last holder, is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(String::from_utf8_lossy(&all).into_owned());
    });
    wait_for("tether to exit", || {
        child.try_wait().ok().flatten().is_some()
    });
    rx.recv_timeout(DEADLINE).expect("the terminal's output")
}

#[test]
fn no_color_turns_off_log_colours_on_a_terminal() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let coloured = logs_on_a_terminal(&w, None);
    assert!(coloured.contains("rendered once"), "{coloured:?}");
    assert!(
        coloured.contains("\x1b["),
        "a terminal gets colours: {coloured:?}"
    );
    let empty = logs_on_a_terminal(&w, Some(""));
    assert!(
        empty.contains("\x1b["),
        "an empty NO_COLOR is unset: {empty:?}"
    );
    let plain = logs_on_a_terminal(&w, Some("1"));
    assert!(plain.contains("rendered once"), "{plain:?}");
    assert!(
        !plain.contains('\x1b'),
        "NO_COLOR=1 still coloured: {plain:?}"
    );
}
