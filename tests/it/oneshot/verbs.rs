//! `check --mode serve`, `status --watch` and `NO_COLOR`, against the real binary.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use futures_util::StreamExt;

use super::{node, put, s};
use crate::support::ws::{hello, send_msg, ws_connect};
use crate::support::{BIN, DEADLINE, Tether, Work, free_port, run_to_end, wait_for};

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
        stdout.contains("prod: version 1: 1/1 applied, 1 healthy, 0 failed, 0 pending · done"),
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
        let mut ws = ws_connect(&ws_url, None).await.expect("connect");
        send_msg(&mut ws, &hello("prod", None)).await;
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
    assert!(
        out.contains("prod: version 1: 0/1 applied, 0 healthy, 0 failed, 1 pending · rolling"),
        "{out}"
    );
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
