//! Hostile input: the store — permissions, empty or damaged database files. A node is
//! started on a data directory, written to, stopped, its files damaged on disk, and
//! started again (issue 11, items 4 and 11).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value as Json, json};
use tether_core::protocol::{Position, ServerMsg};

use crate::support::ws::{self, next_server_msg, send_msg, ws_connect};
use crate::support::{BIN, DEADLINE, Tether, Work, listening_port, run_to_end, start_node};

/// One HTTP call; any status is returned.
fn http(method: &str, url: &str, body: Option<Json>) -> (u16, Json) {
    let r = crate::support::http_request(method, url, None, body.as_ref());
    (r.status, r.json)
}

fn put(port: u16, name: &str, value: &str) -> Position {
    let (status, body) = http(
        "POST",
        &format!("http://127.0.0.1:{port}/v1/envs/prod/changes"),
        Some(json!({"changes": [{"name": name, "value": value, "secret": true}]})),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["position"].clone()).expect("a position")
}

fn env(port: u16) -> (u16, Json) {
    http(
        "GET",
        &format!("http://127.0.0.1:{port}/v1/envs/prod"),
        None,
    )
}

fn data(w: &Work) -> String {
    w.path("data").display().to_string()
}

fn node(w: &Work, extra: &[&str]) -> (Tether, u16) {
    let data = data(w);
    let mut args = vec!["--data", data.as_str()];
    args.extend_from_slice(extra);
    start_node(w.dir.path(), &args)
}

/// A node written to (`n` change sets), then stopped; returns its last position.
fn written(w: &Work, n: usize) -> Position {
    let (mut t, port) = node(w, &[]);
    let mut last = None;
    for i in 0..n {
        last = Some(put(port, "A", &format!("v{i}")));
    }
    put(port, "B", "kept");
    t.signal(Signal::SIGTERM);
    t.wait();
    let mut last = last.expect("at least one");
    last.version += 1;
    last
}

/// Start a node on a store it must refuse: exit 65, and the error says why and what to do.
fn refused(w: &Work) -> String {
    let (code, _, err) = run_to_end(
        w.dir.path(),
        &["serve", "--listen", "127.0.0.1:0", "--data", &data(w)],
    );
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("tether.db") && err.contains("is damaged") && err.contains("--reset-store"),
        "{err}"
    );
    err
}

/// Fold what is in the log into the database (so damage to the file is damage to the data).
fn checkpoint(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
}

#[test]
fn store_files_are_private_in_an_existing_0755_data_dir_under_umask_022() {
    let w = Work::new();
    let dir = w.path("data");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let err = w.path("node.err");
    // The node under umask 022, whatever the test runner's.
    let mut child = KillOnDrop(
        Command::new("sh")
            .args(["-c", "umask 022 && exec \"$0\" \"$@\"", BIN, "serve"])
            .args(["--listen", "127.0.0.1:0", "--data", &data(&w)])
            .current_dir(w.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || fs::read_to_string(&err).unwrap_or_default();
    let port = wait(&mut child, "the node listening", || listening_port(&log()));
    put(port, "A", "s3cret");
    for name in ["tether.db", "tether.db-wal", "tether.db-shm"] {
        let path = dir.join(name);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} is {mode:o}\n{}", log());
    }
    let log = crate::support::strip_ansi(&log());
    let warning = log
        .lines()
        .find(|l| l.contains("data directory is open to other users"))
        .unwrap_or_else(|| panic!("no warning about the directory:\n{log}"));
    assert!(
        warning.contains(&data(&w)) && warning.contains("0755"),
        "{warning}"
    );
}

#[test]
fn an_emptied_store_is_refused_until_reset_store() {
    let w = Work::new();
    written(&w, 2);
    let db = w.path("data").join("tether.db");
    fs::write(&db, b"").unwrap();
    for f in ["tether.db-wal", "tether.db-shm"] {
        let _ = fs::remove_file(w.path("data").join(f));
    }
    let err = refused(&w);
    assert!(err.contains("empty (0 bytes)"), "{err}");
    assert_eq!(fs::metadata(&db).unwrap().len(), 0, "left as found");

    let (t, port) = node(&w, &["--reset-store"]);
    assert!(t.stderr().contains("--reset-store"), "says what it did");
    let (status, body) = http("GET", &format!("http://127.0.0.1:{port}/readyz"), None);
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    assert!(
        aside(&w.path("data")).len() == 1,
        "the damaged file is kept aside"
    );
}

#[test]
fn damaged_pages_are_refused_and_reset_store_keeps_what_can_be_read() {
    let w = Work::new();
    let before = written(&w, 30);
    let db = w.path("data").join("tether.db");
    checkpoint(&db);
    // Overwrite the history table's root page.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let root: i64 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'history'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    let mut bytes = fs::read(&db).unwrap();
    let at = ((root - 1) * size) as usize;
    bytes[at..at + size as usize].fill(0xA5);
    fs::write(&db, &bytes).unwrap();

    refused(&w);
    assert_eq!(fs::read(&db).unwrap(), bytes, "left as found");

    let (_t, port) = node(&w, &["--reset-store"]);
    let (status, body) = env(port);
    assert_eq!(status, 200, "{body}");
    let after: Position = serde_json::from_value(body["position"].clone()).unwrap();
    assert!(
        after.epoch > before.epoch,
        "a new epoch: {after} after {before}"
    );
    assert_eq!(after.version, before.version);
    let text = body.to_string();
    assert!(text.contains("\"A\"") && text.contains("\"B\""), "{text}");
    assert_eq!(aside(&w.path("data")).len(), 1);
}

/// A value planted in a damaged history row: it must reach neither `/readyz` nor the log.
const MARKER: &str = "hunter2-planted-in-history";

/// A history row of the right syntax whose `secret` holds [`MARKER`] (serde_json's error
/// for it quotes the string).
fn marked_row() -> String {
    json!([{"name": "A", "value": "x", "secret": MARKER}]).to_string()
}

/// What an agent at `from` in `prod` is sent first: a snapshot, change or error.
fn hello(port: u16, from: Position) -> ServerMsg {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("ws://127.0.0.1:{port}/v1/ws");
        let mut ws = ws_connect(&url, None).await.expect("connect");
        send_msg(&mut ws, &ws::hello("prod", Some(from))).await;
        loop {
            let m = next_server_msg(&mut ws).await;
            if let ServerMsg::Snapshot { .. } | ServerMsg::Change { .. } | ServerMsg::Error { .. } =
                m
            {
                break m;
            }
        }
    })
}

/// `/readyz` says "damaged" in a fixed sentence (it needs no token): no environment name,
/// nothing stored; nor does the node's log quote the planted value.
fn damaged_without_names(port: u16, node: &Tether, about: &str) {
    let (status, body) = http("GET", &format!("http://127.0.0.1:{port}/readyz"), None);
    assert_eq!(
        (status, &body["status"]),
        (503, &json!("damaged")),
        "{body}"
    );
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(about), "{body}");
    assert!(
        !reason.contains("prod") && !reason.contains(MARKER),
        "{body}"
    );
    assert!(!node.stderr().contains(MARKER), "{}", node.stderr());
}

#[test]
fn a_damaged_history_gives_agents_a_snapshot_and_readyz_says_why() {
    let w = Work::new();
    let (mut t, port) = node(&w, &[]);
    let first = put(port, "A", "1");
    put(port, "A", "2");
    let last = put(port, "A", "3");
    t.signal(Signal::SIGTERM);
    t.wait();
    // A history row whose content no longer parses; the file's structure is intact.
    let db = w.path("data").join("tether.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE history SET changes = ?1 WHERE version = 2",
        [marked_row()],
    )
    .unwrap();
    drop(conn);

    let (t, port) = node(&w, &["--log-level", "debug"]);
    match hello(port, first) {
        ServerMsg::Snapshot { position, .. } => assert_eq!(position, last),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    damaged_without_names(port, &t, "history");
    assert!(t.stderr().contains("prod"), "the log names the environment");
}

/// A Redis history entry that does not parse costs the agent a snapshot, not its
/// catch-up (which used to answer `unavailable` on every reconnect), and `/readyz` says so.
#[test]
fn a_damaged_redis_history_gives_agents_a_snapshot() {
    let w = Work::new();
    let (_redis, rport) = redis(&w);
    let url = format!("redis://127.0.0.1:{rport}");
    let (t, port) = node(&w, &["--redis", &url, "--log-level", "debug"]);
    crate::support::wait_for("the node ready", || ready(port).0 == 200);
    put(port, "A", "1");
    let from = put(port, "A", "2");
    // Version 3 in Redis, its history entry garbage.
    let stream = "tether:env:{prod}:history";
    let reply = redis_cmd(rport, &["XADD", stream, "3-0", "changes", &marked_row()]);
    assert_eq!(reply.unwrap(), "$3");
    let reply = redis_cmd(rport, &["HSET", "tether:env:{prod}:meta", "version", "3"]);
    assert_eq!(reply.unwrap(), ":0");
    match hello(port, from) {
        ServerMsg::Snapshot { position, .. } => assert_eq!(position.version, 3),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    damaged_without_names(port, &t, "history");
}

/// A node knows only the environments it saw in Redis; one restarted after Redis lost its
/// data learns of the loss from its agents, which hold positions Redis does not have. A
/// write then would start a new history and wipe them: it is refused until an admin
/// starts the environment over.
#[test]
fn a_node_restarted_after_redis_lost_its_data_refuses_writes_agents_would_lose() {
    let w = Work::new();
    let (_redis, rport) = redis(&w);
    let url = format!("redis://127.0.0.1:{rport}");
    let (mut t, port) = node(&w, &["--redis", &url]);
    crate::support::wait_for("the node ready", || ready(port).0 == 200);
    put(port, "A", "1");
    let held = put(port, "B", "2");
    t.signal(Signal::SIGTERM);
    t.wait();
    assert_eq!(redis_cmd(rport, &["FLUSHALL"]).unwrap(), "+OK");

    let (t, port) = node(&w, &["--redis", &url]);
    crate::support::wait_for("the node ready", || ready(port).0 == 200);
    match hello(port, held) {
        ServerMsg::Error { code, message } => {
            assert_eq!(code, "unavailable");
            assert!(message.contains("no longer holds"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let (status, body) = write(port, "A", "3");
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no longer holds"), "{body}");
    let exists = redis_cmd(rport, &["EXISTS", "tether:env:{prod}:meta"]);
    assert_eq!(exists.unwrap(), ":0", "no new history");
    damaged_without_names(port, &t, "no longer holds");

    // An admin starts it over: a new epoch, and writes are taken again.
    let (status, body) = http(
        "POST",
        &format!("http://127.0.0.1:{port}/v1/envs/prod/reset"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let over: Position = serde_json::from_value(body["position"].clone()).unwrap();
    assert!(over.epoch > held.epoch && over.version == 0, "{over}");
    assert_eq!(ready(port).0, 200);
    let (status, body) = write(port, "A", "3");
    assert_eq!(status, 200, "{body}");
}

fn ready(port: u16) -> (u16, Json) {
    http("GET", &format!("http://127.0.0.1:{port}/readyz"), None)
}

fn write(port: u16, name: &str, value: &str) -> (u16, Json) {
    http(
        "POST",
        &format!("http://127.0.0.1:{port}/v1/envs/prod/changes"),
        Some(json!({"changes": [{"name": name, "value": value}]})),
    )
}

/// A redis-server without persistence on a free loopback port, answering.
fn redis(w: &Work) -> (KillOnDrop, u16) {
    let port = crate::support::free_port();
    let mut redis = KillOnDrop(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(w.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait(&mut redis, "redis answering", || {
        redis_cmd(port, &["PING"]).ok().filter(|r| r == "+PONG")
    });
    (redis, port)
}

/// One command to Redis; the reply's first line.
fn redis_cmd(port: u16, args: &[&str]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = String::new();
    for cmd in [args, &["QUIT"]] {
        req += &format!("*{}\r\n", cmd.len());
        for a in cmd {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
    }
    s.write_all(req.as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply.lines().next().unwrap_or_default().to_string())
}

#[test]
fn redis_flushed_under_a_running_node_refuses_writes_that_would_wipe_agents() {
    let w = Work::new();
    let (_redis, port) = redis(&w);
    let url = format!("redis://127.0.0.1:{port}");
    let (node, node_port) = node(&w, &["--redis", &url]);
    crate::support::wait_for("the node ready", || ready(node_port).0 == 200);
    put(node_port, "A", "1");
    put(node_port, "B", "2");

    assert_eq!(redis_cmd(port, &["FLUSHALL"]).unwrap(), "+OK");
    // A write now would start a new history holding only A: agents would drop B.
    let (status, body) = write(node_port, "A", "3");
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no longer holds"), "{body}");
    assert_eq!(
        redis_cmd(port, &["EXISTS", "tether:env:{prod}:meta"]).unwrap(),
        ":0"
    );
    damaged_without_names(node_port, &node, "no longer holds");
    assert!(
        node.stderr().contains("prod"),
        "the log names the environment"
    );
}

/// The damaged databases moved aside in `dir`.
fn aside(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.contains(".damaged-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `f` gives a value, failing if the process exits first or on the deadline.
fn wait<T>(child: &mut KillOnDrop, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("exited with {st} before {what}");
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
