//! `tether serve` and the network source, end to end: real nodes on port 0 (or on a port
//! picked for a restart), agents supervising the fixture child, a crafted node that speaks
//! the protocol from the test, and raw protocol clients.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{Value as Json, json};
use tether_core::protocol::{ClientMsg, Epoch, ServerMsg, WireChange};
use tether_core::secret::Value;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::fake_node::{FakeNode, change, pos, snapshot, synced, welcome};
use crate::support::ws::{
    Client, Ws, hello, hello_and_sync, next_server_msg, send_msg, wait_closed, ws_connect,
};
use crate::support::{
    DEADLINE, Resp, Tether, Work, free_port, http_request, run_to_end, run_to_end_env, start_node,
    start_node_at,
};

// ---------------------------------------------------------------------------------------
// Harness: nodes, agents, HTTP, raw protocol clients.

/// A running node with its data directory under the test's workspace.
struct Node {
    proc: Tether,
    port: u16,
}

impl Node {
    /// A dev-mode node (no tokens) on a free port, data in `w/data`.
    fn start(w: &Work, extra: &[&str]) -> Node {
        Node::start_listen(w, "127.0.0.1:0", extra)
    }

    /// A node on a chosen port, data in `w/data` (to restart "the same" node).
    fn start_on(w: &Work, port: u16, extra: &[&str]) -> Node {
        Node::start_listen(w, &format!("127.0.0.1:{port}"), extra)
    }

    fn start_listen(w: &Work, listen: &str, extra: &[&str]) -> Node {
        let data = w.path("data").display().to_string();
        let mut args = vec!["--data", data.as_str()];
        args.extend_from_slice(extra);
        let (proc, port) = if listen == "127.0.0.1:0" {
            start_node(w.dir.path(), &args)
        } else {
            start_node_at(w.dir.path(), listen, &args)
        };
        Node { proc, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    /// Stop the node with `sig` and wait for it to be gone.
    fn stop(mut self, sig: Signal) {
        self.proc.signal(sig);
        self.proc.wait();
    }

    /// A counter from `/metrics`.
    fn metric(&self, name: &str) -> u64 {
        let r = http("GET", &format!("{}/metrics", self.url()), None, None);
        assert_eq!(r.status, 200, "{}", r.text);
        r.text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{}", r.text))
    }
}

/// One HTTP request; any status is returned (never an error for 4xx/5xx).
fn http(method: &str, url: &str, token: Option<&str>, body: Option<Json>) -> Resp {
    http_request(method, url, token, body.as_ref())
}

/// Commit `pairs` to `env` as one change set over HTTP; returns the new version.
fn commit(url: &str, token: Option<&str>, env: &str, pairs: &[(&str, &str)]) -> u64 {
    let changes: Vec<Json> = pairs
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();
    let r = http(
        "POST",
        &format!("{url}/v1/envs/{env}/changes"),
        token,
        Some(json!({ "changes": changes })),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["position"]["version"].as_u64().expect("a version")
}

/// `tether put` through the CLI.
fn put(w: &Work, url: &str, pairs: &[&str]) {
    let mut args = vec!["put", "--server", url, "--env", "prod"];
    args.extend_from_slice(pairs);
    let (code, out, err) = run_to_end(w.dir.path(), &args);
    assert_eq!(code, 0, "put failed:\n{out}{err}");
}

/// `tether run` following `prod` on `server`, output `out.env`, state in `state/`, with
/// `extra` flags before `--` and the fixture child after it.
fn start_agent(w: &Work, server: &str, extra: &[&str], envs: &[(&str, &str)]) -> Tether {
    let out = w.path("out.env").display().to_string();
    let state = w.path("state").display().to_string();
    let mut args: Vec<String> = [
        "run",
        "--server",
        server,
        "--env",
        "prod",
        "--state-dir",
        &state,
        "--output",
        &out,
        "--debounce",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(w.child_args(&[]));
    Tether::start(w.dir.path(), &args, envs)
}

/// Flags for "files only, signal the child on change".
const SIGNAL_USR1: &[&str] = &["--no-env", "--on-change", "signal:USR1"];

fn count(signals: &[String], name: &str) -> usize {
    signals.iter().filter(|s| *s == name).count()
}

fn stderr_count(t: &Tether, needle: &str) -> usize {
    crate::support::strip_ansi(&t.stderr())
        .matches(needle)
        .count()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Read until a change frame for `env` at `version` (heartbeats etc. skipped).
async fn wait_change(ws: &mut impl Client, env: &str, version: u64) -> Vec<WireChange> {
    loop {
        match next_server_msg(ws).await {
            ServerMsg::Change {
                env: e,
                position,
                changes,
            } if e == env && position.version == version => return changes,
            ServerMsg::Change { position, .. } if position.version > version => {
                panic!("skipped past version {version} to {position}")
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. put → signal / restart.

#[test]
fn put_signals_the_child_with_the_new_value_in_its_file() {
    let w = Work::new();
    let node = Node::start(&w, &[]);
    put(&w, &node.url(), &["A=1"]);
    let agent = start_agent(&w, &node.url(), SIGNAL_USR1, &[]);
    agent.wait_for("first render and child start", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 1
    });
    assert!(w.signals().is_empty(), "{:?}", w.record());

    put(&w, &node.url(), &["A=2"]);
    agent.wait_for("new value in the file, child signalled", || {
        w.read("out.env").contains("A=2") && count(&w.signals(), "SIGUSR1") == 1
    });
    assert_eq!(w.starts().len(), 1, "signalled, not restarted");
}

#[test]
fn put_restarts_the_child_with_the_new_value_in_its_environment() {
    let w = Work::new();
    let node = Node::start(&w, &[]);
    put(&w, &node.url(), &["A=1"]);
    let agent = start_agent(&w, &node.url(), &["--on-change", "restart"], &[]);
    agent.wait_for("child started with A=1 in its env", || {
        w.starts().len() == 1 && w.child_env().contains(&"A=1".to_string())
    });

    put(&w, &node.url(), &["A=2"]);
    agent.wait_for("child restarted with A=2 in its env", || {
        w.starts().len() == 2 && w.child_env().contains(&"A=2".to_string())
    });
    let starts = w.starts();
    assert_ne!(starts[0], starts[1], "a new process");
    assert!(!crate::support::alive(starts[0]), "the old child is gone");
}

// ---------------------------------------------------------------------------------------
// 2, 3, 10, 11. Nodes coming and going.

#[test]
fn an_agent_started_while_the_node_is_down_connects_once_it_is_up() {
    let w = Work::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let agent = start_agent(&w, &url, SIGNAL_USR1, &[]);
    agent.wait_for("the agent tried and failed to connect", || {
        stderr_count(&agent, "node connection failed") >= 1
    });
    assert!(w.starts().is_empty(), "no child before a first state");

    let node = Node::start_on(&w, port, &[]);
    put(&w, &node.url(), &["A=1"]);
    agent.wait_for("render and child start once the node is up", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 1
    });
}

#[test]
fn a_restarted_node_resumes_the_agent_without_a_snapshot() {
    let w = Work::new();
    let node = Node::start(&w, &[]);
    let port = node.port;
    put(&w, &node.url(), &["A=1"]);
    let agent = start_agent(&w, &node.url(), SIGNAL_USR1, &[]);
    agent.wait_for("first render", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 1
    });
    assert_eq!(stderr_count(&agent, "snapshot applied"), 1);

    // Crash the node; the agent notices.
    let failures = stderr_count(&agent, "node connection failed");
    node.stop(Signal::SIGKILL);
    agent.wait_for("the agent noticed the node is gone", || {
        stderr_count(&agent, "node connection failed") > failures
    });

    // A change is committed while the agent cannot reach any node: through another node
    // process on another port, over the same store.
    let other = Node::start(&w, &[]);
    put(&w, &other.url(), &["A=2"]);
    other.stop(Signal::SIGTERM);

    // The node comes back where the agent looks for it.
    let node = Node::start_on(&w, port, &[]);
    agent.wait_for("the change made while it was away", || {
        w.read("out.env").contains("A=2") && count(&w.signals(), "SIGUSR1") == 1
    });
    assert_eq!(
        node.metric("tether_snapshots_total"),
        0,
        "the agent resumed from history, not a snapshot"
    );
    assert!(node.metric("tether_connections_total") >= 1);
    assert_eq!(
        stderr_count(&agent, "snapshot applied"),
        1,
        "still only the first"
    );
    assert_eq!(w.starts().len(), 1);
}

#[test]
fn start_without_server_runs_on_saved_state_then_follows_the_node() {
    let w = Work::new();
    let node = Node::start(&w, &[]);
    let port = node.port;
    put(&w, &node.url(), &["A=1"]);

    let mut first = start_agent(&w, &node.url(), SIGNAL_USR1, &[]);
    first.wait_for("first run renders and starts its child", || {
        w.read("out.env").contains("A=1") && saved_state(&w).is_some() && w.starts().len() == 1
    });
    {
        use std::os::unix::fs::PermissionsExt;
        let state = saved_state(&w).expect("saved state");
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the saved state holds secrets");
    }
    first.signal(Signal::SIGTERM);
    first.wait();
    node.stop(Signal::SIGTERM);
    assert!(!w.path("out.env").exists(), "outputs are removed on exit");

    let mut extra = SIGNAL_USR1.to_vec();
    extra.push("--start-without-server");
    let agent = start_agent(&w, &format!("http://127.0.0.1:{port}"), &extra, &[]);
    agent.wait_for("child started from the saved state", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 2
    });
    assert!(
        stderr_count(&agent, "DEGRADED") >= 1,
        "reports itself degraded"
    );

    let node = Node::start_on(&w, port, &[]);
    agent.wait_for("reconnected", || {
        stderr_count(&agent, "no longer degraded") == 1
    });
    put(&w, &node.url(), &["A=2"]);
    agent.wait_for("a put reaches the agent", || {
        w.read("out.env").contains("A=2") && count(&w.signals(), "SIGUSR1") == 1
    });
    assert_eq!(w.starts().len(), 2);
}

#[test]
fn a_committed_change_survives_a_node_crash() {
    let w = Work::new();
    let node = Node::start(&w, &[]);
    put(&w, &node.url(), &["A=1", "B=2"]);
    let before = http("GET", &format!("{}/v1/envs/prod", node.url()), None, None);
    assert_eq!(before.status, 200);
    node.stop(Signal::SIGKILL);

    let node = Node::start(&w, &[]);
    let after = http("GET", &format!("{}/v1/envs/prod", node.url()), None, None);
    assert_eq!(after.status, 200, "{}", after.text);
    assert_eq!(
        after.json["position"], before.json["position"],
        "same epoch and version"
    );
    assert_eq!(after.json["position"]["version"], 1);
    let (code, out, err) = run_to_end(
        w.dir.path(),
        &["get", "--server", &node.url(), "--env", "prod", "B"],
    );
    assert_eq!((code, out.as_str()), (0, "2\n"), "{err}");
}

// ---------------------------------------------------------------------------------------
// 4. A crafted node: gap → resync, duplicates, old snapshots, new epochs, acks.

#[test]
fn crafted_node_gap_resync_duplicates_and_snapshots() {
    let w = Work::new();
    let fake = FakeNode::start();
    let agent = start_agent(&w, &fake.url(), SIGNAL_USR1, &[]);
    let conn = fake.wait_hello(&agent, 0);
    let hello = conn.hello().expect("a hello");
    assert_eq!(hello.env, "prod");
    assert_eq!(hello.position, None, "a fresh agent has no position");
    match &conn.received()[..] {
        [ClientMsg::Hello { subscribe, .. }] => assert_eq!(subscribe.len(), 1),
        other => panic!("the first frame is not one hello: {other:?}"),
    }

    let e1 = Epoch(0x0190_0000_0000_0001);
    let e2 = Epoch(e1.0 + (1 << 16));
    conn.send(&welcome(60_000));
    conn.send(&snapshot(pos(e1, 1), &[("A", "1")]));
    conn.send(&synced(pos(e1, 1)));
    agent.wait_for("v1 rendered, child started, v1 acked", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 1 && conn.acked(pos(e1, 1))
    });

    // A gap: v3 after v1. The agent asks for what follows v1 and does not apply v3.
    conn.send(&change(pos(e1, 3), &[("A", "3")]));
    agent.wait_for("a resync from v1", || {
        conn.received().iter().any(|m| {
            matches!(m, ClientMsg::Resync { env, position } if env == "prod" && *position == Some(pos(e1, 1)))
        })
    });
    assert!(w.read("out.env").contains("A=1"), "{}", w.read("out.env"));
    assert!(!w.read("out.env").contains("A=3"));
    assert!(!conn.acked(pos(e1, 3)));
    assert!(w.signals().is_empty(), "{:?}", w.record());

    // The answer: the missed change sets, in order, then synced. Each version is awaited
    // before the next is sent, so the child's signals cannot coalesce and can be counted.
    conn.send(&change(pos(e1, 2), &[("B", "2")]));
    agent.wait_for("v2 applied", || {
        w.read("out.env").contains("B=2") && conn.acked(pos(e1, 2)) && w.signals().len() == 1
    });
    conn.send(&change(pos(e1, 3), &[("A", "3")]));
    conn.send(&synced(pos(e1, 3)));
    agent.wait_for("v3 applied", || {
        w.read("out.env").contains("A=3") && conn.acked(pos(e1, 3)) && w.signals().len() == 2
    });

    // Duplicates are dropped: v4, then v4 again with other values, then v5.
    conn.send(&change(pos(e1, 4), &[("A", "4")]));
    agent.wait_for("v4 applied", || {
        w.read("out.env").contains("A=4") && conn.acked(pos(e1, 4)) && w.signals().len() == 3
    });
    conn.send(&change(pos(e1, 4), &[("A", "dup"), ("DUP", "dup")]));
    conn.send(&change(pos(e1, 5), &[("C", "5")]));
    agent.wait_for("v5 applied", || {
        w.read("out.env").contains("C=5") && conn.acked(pos(e1, 5)) && w.signals().len() >= 4
    });
    let out = w.read("out.env");
    assert!(!out.contains("dup"), "a duplicate was applied:\n{out}");
    assert!(out.contains("A=4"), "{out}");

    // An older snapshot is never applied; a later change still is (and shows the order).
    conn.send(&snapshot(pos(e1, 2), &[("A", "old")]));
    conn.send(&change(pos(e1, 6), &[("D", "6")]));
    agent.wait_for("v6 applied", || {
        w.read("out.env").contains("D=6") && conn.acked(pos(e1, 6)) && w.signals().len() >= 5
    });
    let out = w.read("out.env");
    assert!(
        !out.contains("old"),
        "an older snapshot was applied:\n{out}"
    );
    assert!(out.contains("A=4") && out.contains("C=5"), "{out}");
    assert_eq!(
        count(&w.signals(), "SIGUSR1"),
        5,
        "one signal per distinct version (v2..v6): {:?}",
        w.record()
    );

    // A snapshot of a newer epoch is a new history: applied, even at a lower version.
    conn.send(&snapshot(pos(e2, 1), &[("A", "new")]));
    conn.send(&synced(pos(e2, 1)));
    agent.wait_for("the new epoch's snapshot applied", || {
        let out = w.read("out.env");
        out.contains("A=new") && !out.contains("C=5") && conn.acked(pos(e2, 1))
    });
    agent.wait_for("signalled for it", || w.signals().len() == 6);

    let received = conn.received();
    let hellos = received
        .iter()
        .filter(|m| matches!(m, ClientMsg::Hello { .. }))
        .count();
    assert_eq!(hellos, 1, "one connection throughout: {received:?}");
    assert_eq!(fake.attempts(), 1, "one connection throughout");
    assert_eq!(conn.bad_frames(), Vec::<String>::new());
    let acks: BTreeSet<(u64, u64, bool)> = received
        .iter()
        .filter_map(|m| match m {
            ClientMsg::Ack { position, ok, .. } => Some((position.epoch.0, position.version, *ok)),
            _ => None,
        })
        .collect();
    let expected: BTreeSet<(u64, u64, bool)> = (1..=6)
        .map(|v| (e1.0, v, true))
        .chain([(e2.0, 1, true)])
        .collect();
    assert_eq!(
        acks, expected,
        "every applied version acked ok, nothing else"
    );
    assert_eq!(w.starts().len(), 1);
}

// ---------------------------------------------------------------------------------------
// 5. Tokens.

const ADMIN: &str = "admin-token-0123456789";
const WRITER: &str = "writer-token-0123456789";
const READER: &str = "reader-token-0123456789";
const NOSECRETS: &str = "nosecrets-token-0123456789";

fn sha256_hex(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn write_token_config(w: &Work) -> String {
    let mut toml = String::new();
    for (name, token, role, envs, secrets) in [
        ("admin", ADMIN, "admin", "", true),
        ("ci", WRITER, "write", r#""prod""#, true),
        ("agents", READER, "read", r#""prod""#, true),
        ("dashboards", NOSECRETS, "read", r#""prod""#, false),
    ] {
        // No `envs` key: every environment (`envs = []` is refused).
        let envs = match envs {
            "" => String::new(),
            e => format!("envs = [{e}]\n"),
        };
        toml.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nhash = \"sha256:{}\"\nrole = \"{role}\"\n{envs}secrets = {secrets}\n\n",
            sha256_hex(token)
        ));
    }
    w.write("node.toml", &toml);
    w.path("node.toml").display().to_string()
}

fn error_code(r: &Resp) -> &str {
    r.json["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn tokens_on_http() {
    let w = Work::new();
    let cfg = write_token_config(&w);
    let node = Node::start(&w, &["--config", &cfg]);
    let prod = format!("{}/v1/envs/prod", node.url());

    let r = http("GET", &prod, None, None);
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(error_code(&r), "unauthorized", "{}", r.text);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("token"),
        "{}",
        r.text
    );
    assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"));

    let r = http("GET", &prod, Some("not-a-token"), None);
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(error_code(&r), "unauthorized");

    // Health endpoints need no token.
    assert_eq!(
        http("GET", &format!("{}/healthz", node.url()), None, None).status,
        200
    );

    // A read token may not write; a token for prod may not touch dev.
    let body = json!({"changes": [{"name": "A", "value": "1"}]});
    let r = http(
        "POST",
        &format!("{prod}/changes"),
        Some(READER),
        Some(body.clone()),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(error_code(&r), "forbidden");
    let dev = format!("{}/v1/envs/dev", node.url());
    let r = http("GET", &dev, Some(READER), None);
    assert_eq!(r.status, 403, "{}", r.text);
    let r = http(
        "POST",
        &format!("{dev}/changes"),
        Some(WRITER),
        Some(body.clone()),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        commit(&node.url(), Some(WRITER), "prod", &[("HOST", "db")]),
        1
    );

    // Secret values go only to tokens allowed to read them.
    let r = http(
        "PUT",
        &format!("{prod}/entries/PASSWORD"),
        Some(ADMIN),
        Some(json!({"value": "s3cr3t", "secret": true})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let find = |r: &Resp, name: &str| -> Json {
        r.json["entries"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} in {}", r.text))
    };
    let withheld = http("GET", &prod, Some(NOSECRETS), None);
    assert_eq!(withheld.status, 200, "{}", withheld.text);
    assert_eq!(find(&withheld, "PASSWORD")["secret"], true);
    assert!(
        find(&withheld, "PASSWORD").get("value").is_none(),
        "{}",
        withheld.text
    );
    assert!(!withheld.text.contains("s3cr3t"));
    assert_eq!(find(&withheld, "HOST")["value"], "db");
    let full = http("GET", &prod, Some(READER), None);
    assert_eq!(find(&full, "PASSWORD")["value"], "s3cr3t");

    // The verbs take the token from TETHER_TOKEN and report refusals.
    let dir = w.dir.path();
    let url = node.url();
    let (code, _, err) = run_to_end_env(
        dir,
        &["put", "--server", &url, "--env", "prod", "X=1"],
        &[("TETHER_TOKEN", READER)],
    );
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");
    let (code, _, err) = run_to_end(dir, &["get", "--server", &url, "--env", "prod"]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    let (code, out, err) = run_to_end_env(
        dir,
        &["get", "--server", &url, "--env", "prod"],
        &[("TETHER_TOKEN", NOSECRETS)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("HOST=db") && out.contains("PASSWORD=<withheld>"),
        "{out}"
    );
}

#[test]
fn tokens_on_the_websocket() {
    let w = Work::new();
    let cfg = write_token_config(&w);
    let node = Node::start(&w, &["--config", &cfg]);
    commit(&node.url(), Some(ADMIN), "prod", &[("HOST", "db")]);

    // A raw upgrade without a token, or with a bad one, is refused with a status.
    let rt = runtime();
    rt.block_on(async {
        for token in [None, Some("not-a-token")] {
            match ws_connect(&node.ws(), token).await {
                Err(tungstenite::Error::Http(resp)) => {
                    assert_eq!(resp.status().as_u16(), 401, "token {token:?}");
                    let body =
                        String::from_utf8_lossy(resp.body().as_deref().unwrap_or(&[])).into_owned();
                    assert!(body.contains("unauthorized"), "{body}");
                }
                Err(e) => panic!("expected an HTTP refusal, got {e}"),
                Ok(_) => panic!("upgrade accepted with token {token:?}"),
            }
        }
        // A good token for prod, following dev: an error frame, then a close with a reason.
        let mut ws = ws_connect(&node.ws(), Some(READER)).await.expect("upgrade");
        send_msg(&mut ws, &hello("dev", None)).await;
        assert!(matches!(
            next_server_msg(&mut ws).await,
            ServerMsg::Error { code, .. } if code == "forbidden"
        ));
        let (_, reason) = wait_closed(&mut ws).await.expect("a close frame");
        assert!(reason.contains("may read"), "{reason}");
    });

    // An agent with a bad token says so clearly and never starts its child.
    let bad = start_agent(
        &w,
        &node.url(),
        SIGNAL_USR1,
        &[("TETHER_TOKEN", "not-a-token")],
    );
    bad.wait_for("a refusal, twice (it keeps trying)", || {
        stderr_count(&bad, "HTTP 401") >= 2
    });
    assert!(stderr_count(&bad, "refused") >= 1, "{}", bad.stderr());
    assert!(w.starts().is_empty(), "{:?}", w.record());
    assert!(!w.path("out.env").exists());
    drop(bad);

    // With a token file holding a token that may not read secrets: the secret is left out.
    let w2 = Work::new();
    let r = http(
        "PUT",
        &format!("{}/v1/envs/prod/entries/PASSWORD", node.url()),
        Some(ADMIN),
        Some(json!({"value": "s3cr3t", "secret": true})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    w2.write("token", &format!("{NOSECRETS}\n"));
    let token_file = w2.path("token").display().to_string();
    let mut extra = SIGNAL_USR1.to_vec();
    extra.extend(["--token-file", token_file.as_str()]);
    let agent = start_agent(&w2, &node.url(), &extra, &[]);
    agent.wait_for("render with the token's view", || {
        w2.read("out.env").contains("HOST=db") && w2.starts().len() == 1
    });
    assert!(
        !w2.read("out.env").contains("PASSWORD"),
        "{}",
        w2.read("out.env")
    );
}

#[test]
fn dev_mode_refuses_a_non_loopback_address() {
    let w = Work::new();
    let data = w.path("data").display().to_string();
    let (code, out, err) = run_to_end(
        w.dir.path(),
        &["serve", "--listen", "0.0.0.0:0", "--data", &data],
    );
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains("no tokens") && err.contains("loopback"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// 6, 7. Bad frames.

#[test]
fn an_oversized_frame_closes_that_connection_only() {
    let w = Work::new();
    let node = Node::start(&w, &["--max-frame", "8192"]);
    commit(&node.url(), None, "prod", &[("A", "1")]);
    let rt = runtime();
    rt.block_on(async {
        let mut big = ws_connect(&node.ws(), None).await.expect("upgrade");
        // The send itself may fail once the node has closed.
        let _ = big.send(Message::text("x".repeat(100 * 1024))).await;
        if let Some((code, reason)) = wait_closed(&mut big).await {
            assert_eq!(code, 1009, "{reason}");
        }

        let mut ok = ws_connect(&node.ws(), None).await.expect("upgrade");
        let at = hello_and_sync(&mut ok, "prod").await;
        assert_eq!(at.version, 1);
    });
    let r = http("GET", &format!("{}/healthz", node.url()), None, None);
    assert_eq!(r.status, 200);
}

#[test]
fn malformed_json_closes_with_a_reason_and_unknown_types_get_an_error() {
    let w = Work::new();
    let node = Node::start(&w, &[]);
    commit(&node.url(), None, "prod", &[("A", "1")]);
    let rt = runtime();
    rt.block_on(async {
        // Malformed as the first frame, and after a hello.
        let mut ws = ws_connect(&node.ws(), None).await.expect("upgrade");
        ws.send(Message::text("{not json")).await.unwrap();
        let (_, reason) = wait_closed(&mut ws).await.expect("a close frame");
        assert!(reason.contains("malformed"), "{reason}");

        let mut ws = ws_connect(&node.ws(), None).await.expect("upgrade");
        hello_and_sync(&mut ws, "prod").await;
        ws.send(Message::text(r#"{"type":"ack","env":"prod"}"#))
            .await
            .unwrap();
        let (_, reason) = wait_closed(&mut ws).await.expect("a close frame");
        assert!(reason.contains("malformed"), "{reason}");

        // An unknown type is answered and the connection stays.
        let mut ws = ws_connect(&node.ws(), None).await.expect("upgrade");
        hello_and_sync(&mut ws, "prod").await;
        ws.send(Message::text(r#"{"type":"bogus"}"#)).await.unwrap();
        match next_server_msg(&mut ws).await {
            ServerMsg::Error { code, .. } => assert_eq!(code, "unknown_type"),
            other => panic!("expected an error frame, got {other:?}"),
        }
        let url = node.url();
        let v = tokio::task::spawn_blocking(move || commit(&url, None, "prod", &[("A", "2")]))
            .await
            .unwrap();
        assert_eq!(v, 2);
        let changes = wait_change(&mut ws, "prod", 2).await;
        assert_eq!(changes[0].name, "A");
        assert_eq!(changes[0].value, Some(Value::from("2")));
    });
}

// ---------------------------------------------------------------------------------------
// 8. Fan-out.

/// Make sure this process may hold `n` more descriptors.
fn raise_nofile(n: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < n {
        setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard).expect("setrlimit");
    }
}

#[test]
fn a_thousand_protocol_clients_all_receive_one_change() {
    const CLIENTS: usize = 1000;
    raise_nofile(4 * CLIENTS as u64);
    let w = Work::new();
    let node = Node::start(&w, &[]);
    commit(&node.url(), None, "prod", &[("A", "1")]);
    let rt = runtime();
    let url = node.ws();

    let started = Instant::now();
    let clients: Vec<Ws> = rt.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let gate = gate.clone();
            let url = url.clone();
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                let mut ws = ws_connect(&url, None).await.expect("upgrade");
                let at = hello_and_sync(&mut ws, "prod").await;
                assert_eq!(at.version, 1);
                ws
            });
        }
        let mut clients = Vec::with_capacity(CLIENTS);
        while let Some(r) = tasks.join_next().await {
            clients.push(r.expect("client task"));
        }
        clients
    });
    assert_eq!(clients.len(), CLIENTS);
    eprintln!("{CLIENTS} clients synced in {:?}", started.elapsed());
    assert_eq!(node.metric("tether_agents_connected"), CLIENTS as u64);

    let v = commit(&node.url(), None, "prod", &[("A", "2")]);
    assert_eq!(v, 2);
    let started = Instant::now();
    let received = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for mut ws in clients {
            tasks.spawn(async move {
                let changes = wait_change(&mut ws, "prod", 2).await;
                assert_eq!(changes[0].value, Some(Value::from("2")));
                ws
            });
        }
        let mut n = 0;
        let all = async {
            while let Some(r) = tasks.join_next().await {
                r.expect("client task");
                n += 1;
            }
        };
        tokio::time::timeout(DEADLINE, all)
            .await
            .expect("every client got the change within the deadline");
        n
    });
    assert_eq!(received, CLIENTS);
    eprintln!(
        "one change reached {CLIENTS} clients in {:?}",
        started.elapsed()
    );
}

/// A client that stops reading while change sets pile up past the socket buffers gets them
/// all later, whole and in order, with the node's own answer to it in between, and the
/// connection stays.
#[test]
fn a_client_that_reads_late_gets_every_change_whole_and_in_order() {
    const N: u64 = 100;
    let w = Work::new();
    let node = Node::start(&w, &[]);
    commit(&node.url(), None, "prod", &[("A", "0")]);
    let rt = runtime();
    let mut ws = rt.block_on(async {
        let mut ws = ws_connect(&node.ws(), None).await.expect("upgrade");
        assert_eq!(hello_and_sync(&mut ws, "prod").await.version, 1);
        ws
    });
    // About 3 MiB while the client reads nothing: more than loopback's buffers take.
    let filler = "x".repeat(30_000);
    for i in 1..=N {
        commit(
            &node.url(),
            None,
            "prod",
            &[("A", &format!("{i}:{filler}"))],
        );
        if i == N / 2 {
            rt.block_on(ws.send(Message::text(r#"{"type":"nonsense"}"#)))
                .expect("send a frame");
        }
    }
    rt.block_on(async {
        let (mut next, mut errors) = (1, 0);
        while next <= N {
            match next_server_msg(&mut ws).await {
                ServerMsg::Change {
                    position, changes, ..
                } => {
                    assert_eq!(position.version, next + 1, "change sets out of order");
                    let value = changes[0].value.as_ref().expect("a value");
                    assert_eq!(
                        value.expose(),
                        format!("{next}:{filler}").as_bytes(),
                        "version {} arrived damaged",
                        position.version
                    );
                    next += 1;
                }
                ServerMsg::Error { code, .. } => {
                    assert_eq!(code, "unknown_type");
                    errors += 1;
                }
                ServerMsg::Heartbeat { .. } => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
        assert_eq!(next, N + 1);
        if errors == 0 {
            match next_server_msg(&mut ws).await {
                ServerMsg::Error { code, .. } => assert_eq!(code, "unknown_type"),
                other => panic!("expected the answer to the unknown type, got {other:?}"),
            }
        }
    });
    commit(&node.url(), None, "prod", &[("A", "last")]);
    let changes = rt.block_on(wait_change(&mut ws, "prod", N + 2));
    assert_eq!(changes[0].value, Some(Value::from("last")));
}

/// A client socket that takes at most 16 KiB a millisecond, and with a small receive buffer
/// much less: slow, but steady.
struct SlowReader {
    tcp: TcpStream,
    nap: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl tokio::io::AsyncRead for SlowReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        std::task::ready!(self.nap.as_mut().poll(cx));
        let mut chunk = [0u8; 16 * 1024];
        let want = buf.remaining().min(chunk.len());
        let mut part = tokio::io::ReadBuf::new(&mut chunk[..want]);
        std::task::ready!(std::pin::Pin::new(&mut self.tcp).poll_read(cx, &mut part))?;
        buf.put_slice(part.filled());
        let next = tokio::time::Instant::now() + Duration::from_millis(1);
        self.nap.as_mut().reset(next);
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for SlowReader {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A protocol client on a [`SlowReader`] with an 8 KiB receive buffer.
async fn slow_connect(port: u16) -> WebSocketStream<SlowReader> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(8 * 1024).expect("SO_RCVBUF");
    let connect = socket.connect(([127, 0, 0, 1], port).into());
    let tcp = tokio::time::timeout(DEADLINE, connect)
        .await
        .expect("connect within the deadline")
        .expect("connect");
    let slow = SlowReader {
        tcp,
        nap: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    let cfg = WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(0);
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let handshake = tokio_tungstenite::client_async_with_config(url, slow, Some(cfg));
    match tokio::time::timeout(DEADLINE, handshake).await {
        Ok(r) => r.expect("upgrade").0,
        Err(_) => panic!("WebSocket handshake hung for {DEADLINE:?}"),
    }
}

/// A change set far bigger than the socket buffers (about 4.8 MB once its control
/// characters are JSON-escaped, from a request of about 1 MB, whatever `--max-frame` says)
/// reaches a client that reads slowly but steadily: whole, then the small change committed
/// right after it, with heartbeats in between, on the one connection. The kernel takes only
/// part of such a frame at once; the rest must follow whole, and one big change must not
/// make the node give up on a reader.
#[test]
fn a_big_change_reaches_a_slow_reader_whole_and_the_connection_stays() {
    let w = Work::new();
    let node = Node::start(&w, &["--max-frame", "8192", "--heartbeat", "200ms"]);
    commit(&node.url(), None, "prod", &[("A", "0")]);
    let rt = runtime();
    let mut ws = rt.block_on(async {
        let mut ws = slow_connect(node.port).await;
        assert_eq!(hello_and_sync(&mut ws, "prod").await.version, 1);
        ws
    });
    let raw = vec![1u8; 400_000];
    let b64 = tether_core::protocol::b64::encode(&raw);
    let r = http(
        "POST",
        &format!("{}/v1/envs/prod/changes", node.url()),
        None,
        Some(json!({"changes": [
            {"name": "A", "value": {"b64": b64}},
            {"name": "B", "value": {"b64": b64}},
        ]})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let big = r.json["position"]["version"].as_u64().expect("a version");
    let small = commit(&node.url(), None, "prod", &[("A", "after")]);
    rt.block_on(async {
        let changes = wait_change(&mut ws, "prod", big).await;
        assert_eq!(changes.len(), 2);
        for c in &changes {
            let value = c.value.as_ref().expect("a value");
            assert!(
                value.expose() == raw.as_slice(),
                "{} arrived damaged",
                c.name
            );
        }
        let changes = wait_change(&mut ws, "prod", small).await;
        assert_eq!(changes[0].value, Some(Value::from("after")));
    });
    assert_eq!(
        node.metric("tether_connections_total"),
        1,
        "never reconnected"
    );
    assert_eq!(node.metric("tether_agents_connected"), 1);
}

/// An agent that stops reading is dropped once what waits for it passes the limit (32 MiB,
/// two of the largest frames an agent takes); the node and its other agents carry on.
#[test]
fn an_agent_that_stops_reading_is_dropped_and_the_others_carry_on() {
    let w = Work::new();
    let node = Node::start(&w, &[]);
    commit(&node.url(), None, "prod", &[("A", "0")]);
    let rt = runtime();
    let (mut stuck, mut reading) = rt.block_on(async {
        let mut stuck = ws_connect(&node.ws(), None).await.expect("upgrade");
        hello_and_sync(&mut stuck, "prod").await;
        let mut reading = ws_connect(&node.ws(), None).await.expect("upgrade");
        hello_and_sync(&mut reading, "prod").await;
        (stuck, reading)
    });
    assert_eq!(node.metric("tether_agents_connected"), 2);
    // Up to 100 MB that `stuck` never reads: past the kernel's buffers (up to 4 MiB of
    // send buffer here) and the 32 MiB backlog.
    let filler = "y".repeat(500_000);
    let mut dropped = false;
    for i in 0..200 {
        let v = commit(
            &node.url(),
            None,
            "prod",
            &[("A", &format!("{i}:{filler}"))],
        );
        rt.block_on(wait_change(&mut reading, "prod", v));
        if i % 10 == 9 && node.metric("tether_agents_connected") == 1 {
            dropped = true;
            break;
        }
    }
    if !dropped {
        crate::support::wait_for("the agent that stopped reading is dropped", || {
            node.metric("tether_agents_connected") == 1
        });
    }
    // What reached `stuck` before the drop is whole and in order; then the socket ends.
    rt.block_on(async {
        let mut next = 2;
        loop {
            match tokio::time::timeout(DEADLINE, stuck.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    if let Ok(ServerMsg::Change { position, .. }) = serde_json::from_str(&t) {
                        assert_eq!(position.version, next, "out of order before the drop");
                        next += 1;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break,
                Err(_) => panic!("the dropped connection did not end within {DEADLINE:?}"),
            }
        }
    });
    let v = commit(&node.url(), None, "prod", &[("A", "after")]);
    let changes = rt.block_on(wait_change(&mut reading, "prod", v));
    assert_eq!(changes[0].value, Some(Value::from("after")));
}

// ---------------------------------------------------------------------------------------
// 9. Admin verbs.

#[test]
fn admin_verbs_put_get_rm_status() {
    let w = Work::new();
    let node = Node::start(&w, &[]);
    let url = node.url();
    let dir = w.dir.path();
    let verb = |args: &[&str]| -> (i32, String, String) {
        let mut all = vec![args[0], "--server", url.as_str(), "--env", "prod"];
        all.extend_from_slice(&args[1..]);
        run_to_end(dir, &all)
    };

    // One put, several entries: one change set, one version.
    let (code, out, err) = verb(&["put", "A=1", "B=2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "prod at version 1");
    let (code, out, err) = verb(&["put", "--secret", "TOKEN=t0p"]);
    assert_eq!((code, out.trim()), (0, "prod at version 2"), "{err}");

    let (code, out, err) = verb(&["get", "A"]);
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");
    let (code, out, _) = verb(&["get"]);
    assert_eq!(code, 0);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["A=1", "B=2", "TOKEN=t0p"]);
    let (code, out, _) = verb(&["get", "--json"]);
    assert_eq!(code, 0);
    let v: Json = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["position"]["version"], 2);

    let (code, out, err) = verb(&["rm", "B", "TOKEN"]);
    assert_eq!((code, out.trim()), (0, "prod at version 3"), "{err}");
    let (code, _, err) = verb(&["get", "B"]);
    assert_ne!(code, 0);
    assert!(err.contains("no entry"), "{err}");

    // ws:// base URLs work for the verbs too.
    let ws_base = format!("ws://127.0.0.1:{}", node.port);
    let (code, out, err) = run_to_end(dir, &["get", "--server", &ws_base, "--env", "prod", "A"]);
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");

    // Status: an agent on the current version.
    let agent = start_agent(&w, &url, SIGNAL_USR1, &[]);
    agent.wait_for("status shows the agent current at version 3", || {
        let (code, out, _) = verb(&["status"]);
        code == 0
            && out.contains("version 3, 1 agent(s)")
            && out.contains("1 current")
            && out.contains("version 3: 1")
    });
    let (code, out, _) = verb(&["status", "--json"]);
    assert_eq!(code, 0);
    let v: Json = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["agents"], 1);
    assert_eq!(v["current"], 1);
    // One node alone: its own agents, whatever the scope asked; a bad scope is refused.
    for scope in ["", "?scope=node", "?scope=cluster"] {
        let r = http(
            "GET",
            &format!("{url}/v1/envs/prod/status{scope}"),
            None,
            None,
        );
        assert_eq!(
            (r.status, &r.json["scope"]),
            (200, &json!("node")),
            "{}",
            r.text
        );
        assert_eq!(r.json["agents"], 1, "{}", r.text);
    }
    let r = http(
        "GET",
        &format!("{url}/v1/envs/prod/status?scope=all"),
        None,
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text);

    // Bad URLs are usage errors; an unreachable node is a clear failure.
    for bad in [
        "ftp://127.0.0.1:1",
        "127.0.0.1:7070",
        "http://user:pw@127.0.0.1:1",
    ] {
        let (code, _, err) = run_to_end(dir, &["get", "--server", bad, "--env", "prod"]);
        assert_eq!(code, 64, "{bad}: {err}");
        assert!(err.starts_with("tether: "), "{err}");
    }
    let down = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = run_to_end(dir, &["put", "--server", &down, "--env", "prod", "A=9"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no node answered"), "{err}");
    assert!(err.contains(&down), "{err}");
}

/// The agent's saved-state file for `prod` (named per environment, nodes and token).
fn saved_state(w: &Work) -> Option<std::path::PathBuf> {
    std::fs::read_dir(w.path("state"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("prod-") && name.ends_with(".json")
        })
}

/// At trace level, neither the node nor an agent following it over the network logs a
/// secret value or the bearer token (tungstenite's own frame and handshake logging
/// included).
#[test]
fn secrets_and_tokens_never_reach_trace_logs_over_the_network() {
    let w = Work::new();
    let cfg = write_token_config(&w);
    let node = Node::start(&w, &["--config", &cfg, "--log-level", "trace"]);
    let secret = |n: usize| format!("NET-SECRET-ROTATION-{n}-q7z");
    let body = |n: usize| serde_json::json!({"changes": [{"name": "PASSWORD", "value": secret(n), "secret": true}]});
    let url = format!("{}/v1/envs/prod/changes", node.url());
    assert_eq!(http("POST", &url, Some(WRITER), Some(body(0))).status, 200);

    let mut extra = SIGNAL_USR1.to_vec();
    extra.extend(["--log-level", "trace"]);
    let agent = start_agent(&w, &node.url(), &extra, &[("TETHER_TOKEN", READER)]);
    agent.wait_for("first render", || w.read("out.env").contains(&secret(0)));
    for n in 1..=3 {
        assert_eq!(http("POST", &url, Some(WRITER), Some(body(n))).status, 200);
        agent.wait_for("rotation applied", || {
            w.read("out.env").contains(&secret(n))
        });
    }
    let logs = format!(
        "{}{}{}{}",
        agent.stderr(),
        agent.stdout(),
        node.proc.stderr(),
        node.proc.stdout()
    );
    assert!(logs.contains("DEBUG"), "verbose logging was on:\n{logs}");
    for n in 0..=3 {
        assert!(!logs.contains(&secret(n)), "secret {n} reached the logs");
    }
    for token in [READER, WRITER] {
        assert!(!logs.contains(token), "a bearer token reached the logs");
    }
}

/// Only an admin starts a new history; every agent then takes a snapshot of the new epoch.
#[test]
fn an_admin_reset_starts_a_new_epoch_that_agents_follow() {
    let w = Work::new();
    let cfg = write_token_config(&w);
    let node = Node::start(&w, &["--config", &cfg]);
    let url = format!("{}/v1/envs/prod", node.url());
    let r = http(
        "POST",
        &format!("{url}/changes"),
        Some(WRITER),
        Some(serde_json::json!({"changes": [{"name": "A", "value": "1"}]})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let before = r.json["position"]["epoch"].as_str().unwrap().to_string();

    let agent = start_agent(&w, &node.url(), SIGNAL_USR1, &[("TETHER_TOKEN", READER)]);
    agent.wait_for("first render", || w.read("out.env").contains("A=1"));

    let r = http("POST", &format!("{url}/reset"), Some(WRITER), None);
    assert_eq!(r.status, 403, "a writer may not reset: {}", r.text);
    let r = http("POST", &format!("{url}/reset"), Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let after = r.json["position"]["epoch"].as_str().unwrap().to_string();
    assert!(
        after > before,
        "the new epoch is greater: {before} -> {after}"
    );
    agent.wait_for("the agent takes the new epoch's snapshot", || {
        stderr_count(&agent, "snapshot applied") >= 2
    });

    // Life goes on in the new history.
    let r = http(
        "POST",
        &format!("{url}/changes"),
        Some(WRITER),
        Some(serde_json::json!({"changes": [{"name": "A", "value": "2"}]})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    agent.wait_for("the next change", || w.read("out.env").contains("A=2"));
}
