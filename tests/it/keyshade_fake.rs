//! The keyshade source against a small in-test fake of keyshade's API: one loopback port
//! that answers the Socket.IO upgrade (Engine.IO v4 frames, written out by hand as the
//! protocol reference gives them) and the two REST snapshot calls. The real Socket.IO
//! server tests live elsewhere; this fake scripts what a real one does rarely on cue
//! (refusals, silence, duplicates). Every wait has a deadline.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;

use crate::support::{Tether, Work, strip_ansi};

const VECTORS: &str =
    include_str!("../../crates/agent/src/source/keyshade/testdata/eccrypto-vectors.json");
const NSP: &str = "/change-notifier";

#[derive(Default)]
struct State {
    secrets: BTreeMap<String, String>,
    variables: BTreeMap<String, String>,
    /// Answers to the next registrations: `Some(message)` refuses.
    refusals: VecDeque<String>,
    registers: Vec<serde_json::Value>,
    tokens: Vec<String>,
    pongs: usize,
    snapshots: usize,
    /// Registered connections' outboxes.
    live: Vec<mpsc::UnboundedSender<String>>,
    /// Stop pinging (and so look dead to the client).
    silent: bool,
    /// Answers to the next upgrades: refused with this status and keyshade's error body.
    refuse_upgrades: VecDeque<u16>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

struct FakeKeyshade {
    rt: Runtime,
    port: u16,
    state: Shared,
}

impl FakeKeyshade {
    /// Listening on 127.0.0.1:0, pinging every `ping` and announcing `timeout`.
    fn start(ping: Duration, timeout: Duration) -> FakeKeyshade {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Shared::default();
        let shared = state.clone();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(shared.clone(), tcp, ping, timeout));
            }
        });
        FakeKeyshade { rt, port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Change a variable as keyshade does: stored, then announced to every registered
    /// client `copies` times (several API instances deliver one change more than once).
    fn update_variable(&self, name: &str, value: &str, copies: usize) {
        let mut s = self.state();
        s.variables.insert(name.into(), value.into());
        let data = serde_json::json!({"name": name, "value": value, "isPlaintext": true});
        let frame = format!("42{NSP},[\"configuration-updated\",{data}]");
        for _ in 0..copies {
            s.live.retain(|tx| tx.send(frame.clone()).is_ok());
        }
    }
}

impl Drop for FakeKeyshade {
    fn drop(&mut self) {
        let rt = std::mem::replace(
            &mut self.rt,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
        );
        rt.shutdown_background();
    }
}

/// One connection: the Socket.IO upgrade, or a REST call.
async fn serve(state: Shared, tcp: TcpStream, ping: Duration, timeout: Duration) {
    let mut head = [0u8; 2048];
    let n = loop {
        let n = tcp.peek(&mut head).await.unwrap_or(0);
        if n == 0 || head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    if head.starts_with("GET /socket.io/?EIO=4&transport=websocket") {
        socket(state, tcp, ping, timeout).await;
    } else {
        rest(state, tcp, &head).await;
    }
}

async fn rest(state: Shared, mut tcp: TcpStream, head: &str) {
    let mut buf = vec![0u8; head.len()];
    let _ = tcp.read_exact(&mut buf).await;
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let body = {
        let mut s = lock(&state);
        if path.starts_with("/api/secret/P/E") {
            s.snapshots += 1;
            let list: Vec<_> = s
                .secrets
                .iter()
                .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
                .collect();
            Some(serde_json::Value::Array(list).to_string())
        } else if path.starts_with("/api/variable/P/E") {
            let list: Vec<_> = s
                .variables
                .iter()
                .map(|(n, v)| serde_json::json!({"name": n, "value": v, "isPlaintext": true}))
                .collect();
            Some(serde_json::Value::Array(list).to_string())
        } else {
            None
        }
    };
    let answer = match body {
        Some(b) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        ),
        None => {
            let b = r#"{"message":"Environment E not found","error":"Not Found","statusCode":404}"#;
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )
        }
    };
    let _ = tcp.write_all(answer.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

async fn socket(state: Shared, tcp: TcpStream, ping: Duration, timeout: Duration) {
    let tokens = state.clone();
    // The callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let record = move |req: &Request, resp: Response| {
        let token = req
            .headers()
            .get("x-keyshade-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut s = lock(&tokens);
        s.tokens.push(token);
        match s.refuse_upgrades.pop_front() {
            None => Ok(resp),
            Some(status) => {
                let body = format!(
                    r#"{{"message":"Invalid API key","error":"Unauthorized","statusCode":{status}}}"#
                );
                let mut e = ErrorResponse::new(Some(body));
                *e.status_mut() = http::StatusCode::from_u16(status).expect("status");
                Err(e)
            }
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, record).await else {
        return;
    };
    let open = format!(
        r#"0{{"sid":"s1","upgrades":[],"pingInterval":{},"pingTimeout":{},"maxPayload":1000000}}"#,
        ping.as_millis(),
        timeout.as_millis()
    );
    if ws.send(Message::text(open)).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let mut pings = tokio::time::interval(ping);
    pings.tick().await;
    loop {
        tokio::select! {
            _ = pings.tick() => {
                if !lock(&state).silent && ws.send(Message::text("2")).await.is_err() {
                    return;
                }
            }
            Some(out) = rx.recv() => {
                if ws.send(Message::text(out)).await.is_err() {
                    return;
                }
            }
            frame = ws.next() => {
                let Some(Ok(Message::Text(text))) = frame else { return };
                let text = text.to_string();
                if text == "3" {
                    lock(&state).pongs += 1;
                } else if text == format!("40{NSP},") {
                    let _ = ws.send(Message::text(format!("40{NSP},{{\"sid\":\"n1\"}}"))).await;
                } else if let Some(body) = text.strip_prefix(&format!("42{NSP},")) {
                    let v: serde_json::Value = serde_json::from_str(body).expect("event is JSON");
                    assert_eq!(v[0], "register-client-app");
                    let answer = {
                        let mut s = lock(&state);
                        s.registers.push(v[1].clone());
                        match s.refusals.pop_front() {
                            Some(m) => serde_json::json!({"success": false, "message": m}),
                            None => {
                                s.live.push(tx.clone());
                                serde_json::json!({"success": true, "message": "Registration Successful"})
                            }
                        }
                    };
                    let frame = format!("42{NSP},[\"client-registered\",{answer}]");
                    let _ = ws.send(Message::text(frame)).await;
                }
            }
        }
    }
}

/// (private key hex, wire, plaintext) of an eccrypto vector.
fn vector(name: &str) -> (String, String, String) {
    let all: Vec<serde_json::Value> = serde_json::from_str(VECTORS).expect("vectors");
    let v = all.iter().find(|v| v["name"] == name).expect("vector");
    let s = |k: &str| v[k].as_str().expect("string").to_string();
    (s("privateKeyHex"), s("wire"), s("plaintext"))
}

/// `tether run` following the fake's W/P/E into `out.env`, signalling USR1 on change.
fn start_agent(w: &Work, fake: &FakeKeyshade, key: Option<&str>, extra: &[&str]) -> Tether {
    w.write("token", "ks.pat.abc123\n");
    let mut args: Vec<String> = [
        "run",
        "--keyshade-url",
        &fake.url(),
        "--keyshade-workspace",
        "W",
        "--keyshade-project",
        "P",
        "--keyshade-environment",
        "E",
        "--keyshade-token-file",
        &w.path("token").display().to_string(),
        "--output",
        &w.path("out.env").display().to_string(),
        "--no-env",
        "--on-change",
        "signal:USR1",
        "--debounce",
        "0",
        "--reload-grace",
        "0",
    ]
    .map(String::from)
    .into();
    if let Some(key) = key {
        w.write("key", key);
        args.extend([
            "--keyshade-private-key-file".into(),
            w.path("key").display().to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(w.child_args(&[]));
    Tether::start(w.dir.path(), &args, &[("RUST_LOG", "debug")])
}

fn logs(agent: &Tether) -> String {
    strip_ansi(&agent.stderr())
}

fn usr1(w: &Work) -> usize {
    w.signals().iter().filter(|s| *s == "SIGUSR1").count()
}

#[test]
fn register_refused_then_snapshot_pings_live_events_and_duplicates() {
    let w = Work::new();
    let fake = FakeKeyshade::start(Duration::from_millis(100), Duration::from_secs(10));
    let (key, wire, plaintext) = vector("len15");
    {
        let mut s = fake.state();
        s.variables.insert("PORT".into(), "80".into());
        s.secrets.insert("DB".into(), wire);
        s.refusals.push_back("User already connected".into());
    }
    let agent = start_agent(&w, &fake, Some(&key), &[]);
    agent.wait_for("the first render", || {
        let out = w.read("out.env");
        out.contains("PORT=80") && out.contains(&format!("DB={plaintext}"))
    });
    agent.wait_for("the child", || !w.starts().is_empty());
    {
        let s = fake.state();
        assert_eq!(s.registers.len(), 2, "refused, then registered again");
        assert_eq!(
            s.registers[1],
            serde_json::json!({"workspaceSlug":"W","projectSlug":"P","environmentSlug":"E"})
        );
        assert!(
            s.tokens.iter().all(|t| t == "ks.pat.abc123"),
            "{:?}",
            s.tokens
        );
    }
    let l = logs(&agent);
    assert!(l.contains("User already connected"), "{l}");
    // Pings over several intervals, each answered.
    agent.wait_for("five pongs", || fake.state().pongs >= 5);

    // A live change reaches the file and signals once, even delivered twice.
    fake.update_variable("PORT", "81", 2);
    agent.wait_for("the change in the file", || {
        w.read("out.env").contains("PORT=81")
    });
    // A later change, delivered once: when it is in, the duplicate has long been handled.
    fake.update_variable("MARK", "1", 1);
    agent.wait_for("the second change", || w.read("out.env").contains("MARK=1"));
    // tether's own count of actions (the child may merge signals that arrive together).
    let actions = || logs(&agent).matches("signalling the child").count();
    agent.wait_for("two actions", || actions() >= 2 && usr1(&w) >= 1);
    assert_eq!(actions(), 2, "one action per change");
    let l = logs(&agent);
    assert_eq!(
        l.matches("configuration changed keys=[PORT]").count(),
        1,
        "{l}"
    );
    assert!(
        !logs(&agent).contains(&plaintext),
        "a secret value in the logs"
    );
}

#[test]
fn a_silent_server_is_left_and_changes_made_meanwhile_are_picked_up() {
    let w = Work::new();
    let fake = FakeKeyshade::start(Duration::from_millis(100), Duration::from_millis(400));
    {
        let mut s = fake.state();
        s.variables.insert("A".into(), "1".into());
        s.variables.insert("GONE".into(), "x".into());
    }
    let agent = start_agent(&w, &fake, None, &[]);
    agent.wait_for("the first render", || w.read("out.env").contains("GONE=x"));
    // The server stops pinging; meanwhile A changes and GONE is deleted (keyshade sends
    // nothing for a deletion, and nothing reaches a client it considers gone).
    {
        let mut s = fake.state();
        s.silent = true;
        s.live.clear();
        s.variables.insert("A".into(), "2".into());
        s.variables.remove("GONE");
    }
    agent.wait_for("a second registration", || {
        fake.state().registers.len() >= 2
    });
    fake.state().silent = false;
    agent.wait_for("the server's state", || {
        let out = w.read("out.env");
        out.contains("A=2") && !out.contains("GONE")
    });
    let l = logs(&agent);
    assert!(l.contains("no ping from the server"), "{l}");
}

#[test]
fn a_deletion_converges_at_the_periodic_snapshot() {
    let w = Work::new();
    let fake = FakeKeyshade::start(Duration::from_millis(200), Duration::from_secs(10));
    {
        let mut s = fake.state();
        s.variables.insert("KEEP".into(), "1".into());
        s.variables.insert("GONE".into(), "x".into());
    }
    w.write("tether.toml", "[keyshade]\nsnapshot_interval = \"1s\"\n");
    let config = w.path("tether.toml").display().to_string();
    let agent = start_agent(&w, &fake, None, &["--config", &config]);
    agent.wait_for("the first render", || w.read("out.env").contains("GONE=x"));
    fake.state().variables.remove("GONE");
    agent.wait_for("the deletion", || !w.read("out.env").contains("GONE"));
    assert!(w.read("out.env").contains("KEEP=1"));
    assert_eq!(fake.state().registers.len(), 1, "no reconnect was needed");
}

#[test]
fn a_secret_without_a_private_key_names_the_setting_and_can_end_the_agent() {
    let w = Work::new();
    let fake = FakeKeyshade::start(Duration::from_millis(200), Duration::from_secs(10));
    let (_, wire, plaintext) = vector("len16");
    {
        let mut s = fake.state();
        s.variables.insert("V".into(), "1".into());
        s.secrets.insert("S".into(), wire);
    }
    // Without quit_on_decryption_failure: the variables are served, the secret reported.
    let agent = start_agent(&w, &fake, None, &[]);
    agent.wait_for("the variables", || w.read("out.env").contains("V=1"));
    agent.wait_for("the report", || logs(&agent).contains("private_key"));
    let l = logs(&agent);
    assert!(l.contains("cannot decrypt keyshade secret S"), "{l}");
    assert!(l.contains("private-keys.json"), "{l}");
    assert!(!w.read("out.env").contains("S="));
    drop(agent);

    // With it: the agent ends, non-zero, saying why, and its child is stopped.
    let w2 = Work::new();
    w2.write(
        "tether.toml",
        "[keyshade]\nquit_on_decryption_failure = true\n",
    );
    let config = w2.path("tether.toml").display().to_string();
    let mut agent = start_agent(&w2, &fake, None, &["--config", &config]);
    let status = agent.wait();
    assert!(!status.success(), "{status:?}");
    let l = logs(&agent);
    assert!(l.contains("quit_on_decryption_failure"), "{l}");
    assert!(!l.contains(&plaintext));
}

#[test]
fn a_refused_token_names_its_file_and_is_retried() {
    let w = Work::new();
    let fake = FakeKeyshade::start(Duration::from_millis(200), Duration::from_secs(10));
    {
        let mut s = fake.state();
        s.variables.insert("A".into(), "1".into());
        s.refuse_upgrades.push_back(401);
    }
    let agent = start_agent(&w, &fake, None, &[]);
    agent.wait_for("the report", || logs(&agent).contains("Invalid API key"));
    let l = logs(&agent);
    let token_file = w.path("token").display().to_string();
    assert!(
        l.contains("refused the token") && l.contains(&token_file),
        "{l}"
    );
    assert!(!l.contains("ks.pat.abc123"), "the token in the logs: {l}");
    // It heals by itself once the server takes the token (the first wait is a few seconds).
    agent.wait_for("the first render", || w.read("out.env").contains("A=1"));
}
