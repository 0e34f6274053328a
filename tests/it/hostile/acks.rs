//! Hostile input: acknowledgements and what agents without secret rights hold (issue 11,
//! items 7 and 10). A failed ack is never counted current; acks of environments a
//! connection does not follow, or of positions it was never sent, are refused; a value
//! made secret leaves every agent without secret rights, live, caught up or fresh. Each
//! on one node and through Redis.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tether_core::protocol::{ClientMsg, Epoch, Position, ServerMsg};
use tokio_tungstenite::tungstenite::Message;

use crate::support::ws::{self, Ws, send_msg, ws_connect};
use crate::support::{DEADLINE, Tether, Work, free_port, start_node, wait_for};

const ADMIN: &str = "admin-token-acks-0123456789";
const NOSECRETS: &str = "nosecrets-token-acks-0123456789";

/// A node's config with an admin token and a read token for `prod` without secret rights.
fn token_config(w: &Work) -> String {
    use sha2::{Digest, Sha256};
    let mut toml = String::new();
    for (name, token, role, envs, secrets) in [
        ("admin", ADMIN, "admin", r#""*""#, true),
        ("plain", NOSECRETS, "read", r#""prod""#, false),
    ] {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        toml.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nhash = \"sha256:{hash}\"\nrole = \"{role}\"\nenvs = [{envs}]\nsecrets = {secrets}\n\n"
        ));
    }
    w.write("node.toml", &toml);
    w.path("node.toml").display().to_string()
}

fn http(method: &str, url: &str, token: Option<&str>, body: Option<Json>) -> (u16, Json) {
    let r = crate::support::http_request(method, url, token, body.as_ref());
    (r.status, r.json)
}

/// Set `name` in `env` through `base`, as one change set.
fn set(base: &str, token: Option<&str>, env: &str, name: &str, value: &str, secret: bool) {
    let body = json!({"changes": [{"name": name, "value": value, "secret": secret}]});
    let (status, r) = http(
        "POST",
        &format!("{base}/v1/envs/{env}/changes"),
        token,
        Some(body),
    );
    assert_eq!(status, 200, "{r}");
}

fn status(base: &str, token: Option<&str>) -> Json {
    let (code, r) = http("GET", &format!("{base}/v1/envs/prod/status"), token, None);
    assert_eq!(code, 200, "{r}");
    r
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(port: u16, token: Option<&str>) -> Ws {
    ws_connect(&format!("ws://127.0.0.1:{port}/v1/ws"), token)
        .await
        .expect("upgrade")
}

/// The next frame from the node, heartbeats skipped.
async fn next(ws: &mut Ws) -> ServerMsg {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame from the node within the deadline");
        match frame {
            Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                Ok(ServerMsg::Heartbeat { .. }) => continue,
                Ok(m) => return m,
                Err(e) => panic!("not a server frame ({e}): {t}"),
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Hello for `prod` from `position`; every frame up to `synced` (and the `policy` after
/// it), and that position.
async fn hello(ws: &mut Ws, position: Option<Position>) -> (Vec<ServerMsg>, Position) {
    send_msg(ws, &ws::hello("prod", position)).await;
    let mut frames = Vec::new();
    loop {
        match next(ws).await {
            ServerMsg::Synced { position, .. } => {
                // The catch-up ends with the environment's rollout policy.
                let policy = next(ws).await;
                assert!(matches!(policy, ServerMsg::Policy { .. }), "{policy:?}");
                return (frames, position);
            }
            ServerMsg::Welcome { .. } => {}
            ServerMsg::Error { code, message } => panic!("node error {code}: {message}"),
            m => frames.push(m),
        }
    }
}

fn ack(env: &str, position: Position, ok: bool) -> ClientMsg {
    ClientMsg::Ack {
        env: env.into(),
        position,
        ok,
        error: (!ok).then(|| "output /run/app.env: permission denied".into()),
    }
}

/// Send an ack and return the error frame it drew, if any: a frame of unknown type
/// follows it, whose answer shows the node is past the ack.
async fn ack_answer(ws: &mut Ws, msg: &ClientMsg) -> Option<String> {
    send_msg(ws, msg).await;
    ws.send(Message::text(r#"{"type":"probe-marker"}"#))
        .await
        .expect("send a frame");
    let mut refused = None;
    loop {
        match next(ws).await {
            ServerMsg::Error { code, .. } if code == "unknown_type" => return refused,
            ServerMsg::Error { code, .. } => refused = Some(code),
            _ => {}
        }
    }
}

/// An acknowledged failure at the current version is `failed`, never `current`, in the
/// status and in `tether status` (text and JSON). Issue 11, item 7.
fn failed_ack_is_not_current(ws_port: u16, status_base: &str) {
    let rt = runtime();
    rt.block_on(async {
        let mut ws = connect(ws_port, Some(ADMIN)).await;
        let (_, at) = hello(&mut ws, None).await;
        assert_eq!(ack_answer(&mut ws, &ack("prod", at, false)).await, None);
        wait_for("the failed ack in the status", || {
            status(status_base, Some(ADMIN))["connected"][0]["ack"]["ok"] == false
        });
        let s = status(status_base, Some(ADMIN));
        assert_eq!(s["current"], 0, "{s}");
        assert_eq!(s["failed"], 1, "{s}");
        let failed_key = format!("{} (failed)", at.version);
        assert_eq!(s["by_version"], json!({ failed_key.as_str(): 1 }), "{s}");

        let w = Work::new();
        let verb = |json: bool| {
            let mut args = vec!["status", "--server", status_base, "--env", "prod"];
            if json {
                args.push("--json");
            }
            let (code, out, err) = run_to_end_token(w.dir.path(), &args);
            assert_eq!(code, 0, "{err}");
            out
        };
        let text = verb(false);
        assert!(text.contains("0 current, 1 failed"), "{text}");
        assert!(text.contains(&format!("version {failed_key}: 1")), "{text}");
        assert!(text.contains("permission denied"), "{text}");
        let j: Json = serde_json::from_str(verb(true).trim()).expect("JSON");
        assert_eq!((&j["current"], &j["failed"]), (&json!(0), &json!(1)), "{j}");

        // It recovers: the same agent applies the version after all.
        assert_eq!(ack_answer(&mut ws, &ack("prod", at, true)).await, None);
        wait_for("the agent current", || {
            let s = status(status_base, Some(ADMIN));
            s["current"] == 1 && s["failed"] == 0
        });
    });
}

fn run_to_end_token(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    crate::support::run_to_end_env(cwd, args, &[("TETHER_TOKEN", ADMIN)])
}

/// Acks of an environment the connection does not follow, of a version or an epoch it
/// was never sent, are refused with an error frame and never reach the status; an ack of
/// an older history is dropped quietly. Issue 11, item 7.
fn unknown_acks_are_refused(ws_port: u16, status_base: &str) {
    let rt = runtime();
    rt.block_on(async {
        let mut ws = connect(ws_port, Some(ADMIN)).await;
        let (_, at) = hello(&mut ws, None).await;
        let e = at.epoch.0;
        let ahead = Position {
            version: at.version + 1,
            ..at
        };
        let newer = Position {
            epoch: Epoch(e + 1),
            ..at
        };
        let older = Position {
            epoch: Epoch(e - 1),
            ..at
        };
        let refused = [
            (ack("dev", at, true), "not_subscribed"),
            (ack("prod", ahead, true), "unknown_position"),
            (ack("prod", ahead, false), "unknown_position"),
            (ack("prod", newer, true), "unknown_position"),
        ];
        for (msg, code) in refused {
            let got = ack_answer(&mut ws, &msg).await;
            assert_eq!(got.as_deref(), Some(code), "{msg:?}");
        }
        assert_eq!(ack_answer(&mut ws, &ack("prod", older, true)).await, None);
        // A second connection: once the status shows it, it shows the first one as it was
        // after the refused acks (a cluster shares each node's registry whole).
        let mut second = connect(ws_port, Some(ADMIN)).await;
        hello(&mut second, None).await;
        wait_for(
            "both connections in the status, neither with an ack",
            || {
                let s = status(status_base, Some(ADMIN));
                let connected = s["connected"].as_array().cloned().unwrap_or_default();
                connected.len() == 2 && connected.iter().all(|a| a["ack"].is_null())
            },
        );
        // The good ack after them is recorded.
        assert_eq!(ack_answer(&mut ws, &ack("prod", at, false)).await, None);
        wait_for("the good ack in the status", || {
            status(status_base, Some(ADMIN))["failed"] == 1
        });
    });
}

/// X is public at version 1, then made secret. An agent without secret rights that was
/// connected throughout, one that was away and catches up from history, and a fresh one
/// hold the same content: no X. Made public again, all of them have it. Issue 11, item 10.
fn secret_reclassification_reaches_every_reader(write_base: &str, ws_port: u16) {
    let rt = runtime();
    rt.block_on(async {
        set(write_base, Some(ADMIN), "prod", "X", "public-x", false);
        set(write_base, Some(ADMIN), "prod", "HOST", "db", false);
        let mut live = connect(ws_port, Some(NOSECRETS)).await;
        let (frames, v1) = hello(&mut live, None).await;
        let mut live_model = Model::default();
        live_model.apply_all(frames);
        assert_eq!(live_model.get("X"), Some("public-x"));
        let mut away = connect(ws_port, Some(NOSECRETS)).await;
        let (frames, _) = hello(&mut away, None).await;
        let mut away_model = Model::default();
        away_model.apply_all(frames);
        drop(away);

        set(write_base, Some(ADMIN), "prod", "X", "now-secret", true);
        live_model.apply(next(&mut live).await);
        let mut away = connect(ws_port, Some(NOSECRETS)).await;
        let (frames, v2) = hello(&mut away, Some(v1)).await;
        assert!(
            frames.iter().all(|f| matches!(f, ServerMsg::Change { .. })),
            "caught up from history: {frames:?}"
        );
        away_model.apply_all(frames);
        let mut fresh = connect(ws_port, Some(NOSECRETS)).await;
        let (frames, _) = hello(&mut fresh, None).await;
        let mut fresh_model = Model::default();
        fresh_model.apply_all(frames);
        assert_eq!(v2.version, v1.version + 1);
        let held = |m: &Model| (m.at, m.values.clone());
        assert_eq!(
            [held(&live_model), held(&away_model)],
            [held(&fresh_model), held(&fresh_model)],
            "live and caught-up readers hold what a fresh one holds"
        );
        assert_eq!(fresh_model.at, Some(v2));
        assert_eq!(fresh_model.get("X"), None);
        assert_eq!(fresh_model.get("HOST"), Some("db"));

        // Secret to public: every reader gets the value.
        set(write_base, Some(ADMIN), "prod", "X", "public-again", false);
        live_model.apply(next(&mut live).await);
        away_model.apply(next(&mut away).await);
        for m in [&live_model, &away_model] {
            assert_eq!(m.get("X"), Some("public-again"));
        }
    });
}

/// What an agent holds, by the agent's rules: a snapshot replaces, a change applies (a
/// deletion removes; an entry without a value is skipped).
#[derive(Default)]
struct Model {
    values: std::collections::BTreeMap<String, String>,
    at: Option<Position>,
}

impl Model {
    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn apply_all(&mut self, frames: Vec<ServerMsg>) {
        for f in frames {
            self.apply(f);
        }
    }

    fn apply(&mut self, frame: ServerMsg) {
        let text =
            |v: &tether_core::secret::Value| String::from_utf8_lossy(v.expose()).into_owned();
        match frame {
            ServerMsg::Snapshot {
                position, entries, ..
            } => {
                self.values = entries
                    .iter()
                    .filter_map(|e| Some((e.name.clone(), text(e.value.as_ref()?))))
                    .collect();
                self.at = Some(position);
            }
            ServerMsg::Change {
                position, changes, ..
            } => {
                for c in changes {
                    match (c.delete, &c.value) {
                        (true, _) => {
                            self.values.remove(&c.name);
                        }
                        (false, Some(v)) => {
                            self.values.insert(c.name.clone(), text(v));
                        }
                        (false, None) => {}
                    }
                }
                self.at = Some(position);
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn single_node(w: &Work) -> (Tether, u16) {
    let cfg = token_config(w);
    let data = w.path("data").display().to_string();
    start_node(w.dir.path(), &["--data", &data, "--config", &cfg])
}

#[test]
fn a_failed_ack_is_never_current() {
    let w = Work::new();
    let (_node, port) = single_node(&w);
    let base = format!("http://127.0.0.1:{port}");
    set(&base, Some(ADMIN), "prod", "A", "1", false);
    failed_ack_is_not_current(port, &base);
}

#[test]
fn acks_of_unknown_environments_and_positions_are_refused() {
    let w = Work::new();
    let (_node, port) = single_node(&w);
    let base = format!("http://127.0.0.1:{port}");
    set(&base, Some(ADMIN), "prod", "A", "1", false);
    set(&base, Some(ADMIN), "dev", "A", "1", false);
    unknown_acks_are_refused(port, &base);
}

#[test]
fn a_value_made_secret_leaves_readers_without_secret_rights() {
    let w = Work::new();
    let (_node, port) = single_node(&w);
    let base = format!("http://127.0.0.1:{port}");
    secret_reclassification_reaches_every_reader(&base, port);
}

/// A redis-server on a loopback port, without persistence; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis { child, port };
        wait_for("redis-server answers", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        redis
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two nodes over Redis: acks on one, status and writes through the other, so the
/// registry and the change sets cross Redis.
#[test]
fn in_a_cluster_acks_and_secrets_are_judged_the_same() {
    let w = Work::new();
    let redis = Redis::start(w.dir.path());
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let cfg = token_config(&w);
    let node = |id: &str| {
        start_node(
            w.dir.path(),
            &["--redis", &url, "--node-id", id, "--config", &cfg],
        )
    };
    let ((_a, a), (_b, b)) = (node("a"), node("b"));
    let base_b = format!("http://127.0.0.1:{b}");
    set(&base_b, Some(ADMIN), "prod", "A", "1", false);
    set(&base_b, Some(ADMIN), "dev", "A", "1", false);
    failed_ack_is_not_current(a, &base_b);
    unknown_acks_are_refused(a, &base_b);
    secret_reclassification_reaches_every_reader(&base_b, a);
}
