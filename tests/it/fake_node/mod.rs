//! A scripted fake node: a WebSocket server on 127.0.0.1:0 that speaks the native protocol
//! as the test tells it, to drive the agent's network follower through what a real node
//! rarely does on cue (gaps, lost messages, silence, refusals, disconnects).
//!
//! It accepts any number of connections over time (so reconnects and failover can be
//! observed) and records, per connection, how the upgrade was answered, every frame the
//! agent sent (hello, acks, resyncs, slot requests, releases) and how the connection
//! ended. The test scripts each connection through a [`Conn`] handle: send frames (the
//! rollout's `policy`, `grant` and `hold` too), pump heartbeats, go silent, refuse the
//! hello, close, or drop the socket. Every wait has a deadline (the agent's `wait_for`, which
//! prints the agent's output on failure).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_core::protocol::{ClientMsg, EnvPosition, Position, ServerMsg, Subscription};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::support::{Tether, Work};

/// The flags every agent of the fake-node tests starts with: `tether run` following
/// `servers` (in this order), environment `prod`, its state in `state/`, the file
/// `out.env`, no debounce. The caller adds the action, its own flags, `--` and the child.
pub fn agent_args(w: &Work, servers: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into()];
    for s in servers {
        args.extend(["--server".into(), s.clone()]);
    }
    let out = w.path("out.env").display().to_string();
    let state = w.path("state").display().to_string();
    args.extend(
        [
            "--env",
            "prod",
            "--state-dir",
            &state,
            "--output",
            &out,
            "--debounce",
            "0",
        ]
        .map(String::from),
    );
    args
}

mod msg;
pub use msg::*;

/// The environment the follower tests use.
pub const ENV: &str = "prod";

/// What a connection's task is told to do next.
enum Cmd {
    Send(Message),
    /// Send a heartbeat with these positions every interval (None: stop).
    Pump(Option<(Duration, Vec<EnvPosition>)>),
    /// Keep the socket open, send nothing, read nothing (so not even a pong goes out).
    Silence,
    /// A close frame with this code and reason; then wait for the agent's answer.
    Close(u16, String),
    /// Drop the TCP socket at once (zero linger: a reset, no close frame).
    Abort,
}

/// How the next upgrade is answered.
#[derive(Clone, Copy, Debug)]
enum Upgrade {
    Accept,
    Refuse(u16),
}

/// What the fake node knows about one connection attempt.
#[derive(Default)]
struct ConnState {
    /// The HTTP status the upgrade was refused with, if it was.
    refused: Option<u16>,
    /// The upgrade's `Authorization` header, as sent.
    authorization: Option<String>,
    /// The agent's frames, in order.
    received: Vec<ClientMsg>,
    /// Text frames that are not a `ClientMsg` (a test asserts there are none).
    bad: Vec<String>,
    /// How the connection ended, once it did (as far as the fake node can tell).
    ended: Option<String>,
    /// Commands to the connection's task, once upgraded (kept after its end: they are dropped).
    cmds: Option<mpsc::UnboundedSender<Cmd>>,
}

#[derive(Default)]
struct State {
    /// Answers for the next upgrades, in order; accepted once it is empty.
    upgrades: VecDeque<Upgrade>,
    /// Every accepted TCP connection, in order: the agent's connection attempts.
    conns: Vec<ConnState>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fake node listening on a loopback port until dropped.
pub struct FakeNode {
    rt: Runtime,
    port: u16,
    state: Shared,
}

impl FakeNode {
    pub fn start() -> FakeNode {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fake node runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("fake node: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("fake node address").port();
        let state = Shared::default();
        let accepting = state.clone();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let index = {
                    let mut s = lock(&accepting);
                    s.conns.push(ConnState::default());
                    s.conns.len() - 1
                };
                tokio::spawn(serve(accepting.clone(), index, tcp));
            }
        });
        FakeNode { rt, port, state }
    }

    /// The base URL to give the agent's `--server`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answer the next upgrade (not yet accepted) with this HTTP status and a JSON error
    /// body, as a node refusing a token does. Queued: call it again for the one after.
    pub fn refuse_next_upgrade(&self, status: u16) {
        lock(&self.state)
            .upgrades
            .push_back(Upgrade::Refuse(status));
    }

    /// Connection attempts so far (every accepted TCP connection, refused ones included).
    pub fn attempts(&self) -> usize {
        lock(&self.state).conns.len()
    }

    /// The handle of connection `index` (0 is the first attempt), whatever its state.
    pub fn conn(&self, index: usize) -> Conn<'_> {
        Conn { node: self, index }
    }

    /// Wait for attempt `index` to be made and to bring its hello; its handle.
    pub fn wait_hello(&self, agent: &Tether, index: usize) -> Conn<'_> {
        let conn = self.conn(index);
        agent.wait_for(&format!("a hello on connection {index}"), || {
            conn.hello().is_some()
        });
        conn
    }

    /// Wait for at least `n` connection attempts.
    pub fn wait_attempts(&self, agent: &Tether, n: usize) {
        agent.wait_for(&format!("{n} connection attempts"), || self.attempts() >= n);
    }

    /// Every frame the agent sent on every connection, in connection order.
    pub fn all_received(&self) -> Vec<ClientMsg> {
        lock(&self.state)
            .conns
            .iter()
            .flat_map(|c| c.received.iter().cloned())
            .collect()
    }

    fn with<T>(&self, index: usize, f: impl FnOnce(&ConnState) -> T) -> Option<T> {
        lock(&self.state).conns.get(index).map(f)
    }

    fn command(&self, index: usize, cmd: Cmd) {
        let tx = self
            .with(index, |c| c.cmds.clone())
            .flatten()
            .unwrap_or_else(|| panic!("fake node: connection {index} was never upgraded"));
        // The connection may have ended meanwhile (the agent left first, which is its
        // choice): then there is no one to tell, and nothing to do.
        let _ = tx.send(cmd);
    }
}

/// One connection of a [`FakeNode`], to script and to inspect.
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    node: &'a FakeNode,
    index: usize,
}

impl Conn<'_> {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn send(&self, msg: &ServerMsg) {
        let text = serde_json::to_string(msg).expect("serialize a server message");
        self.node
            .command(self.index, Cmd::Send(Message::text(text)));
    }

    /// Send a frame as raw text (for frames the agent should not understand).
    pub fn send_text(&self, text: &str) {
        self.node
            .command(self.index, Cmd::Send(Message::text(text.to_string())));
    }

    /// Welcome, then the snapshot and `synced` at `p`: what a node answers a fresh agent.
    pub fn sync(&self, heartbeat_ms: u64, p: Position, pairs: &[(&str, &str)]) {
        self.send(&welcome(heartbeat_ms));
        self.send(&snapshot(p, pairs));
        self.send(&synced(p));
    }

    /// Send a heartbeat at `p` every `every` until [`Conn::silence`] or the end.
    pub fn pump_heartbeats(&self, every: Duration, p: Position) {
        let positions = vec![EnvPosition {
            env: ENV.into(),
            position: p,
        }];
        self.node
            .command(self.index, Cmd::Pump(Some((every, positions))));
    }

    /// Go silent: the socket stays open, nothing is sent, nothing is read (no pongs).
    pub fn silence(&self) {
        self.node.command(self.index, Cmd::Silence);
    }

    /// Refuse the hello as a node does when the token may read none of the environments:
    /// an `error` frame (`forbidden`), then close 1008.
    pub fn refuse_hello(&self, message: &str) {
        self.send(&ServerMsg::Error {
            code: "forbidden".into(),
            message: message.into(),
        });
        self.close(1008, "no environment this token may read");
    }

    /// A close frame with `code` and `reason`.
    pub fn close(&self, code: u16, reason: &str) {
        self.node
            .command(self.index, Cmd::Close(code, reason.to_string()));
    }

    /// Drop the TCP connection abruptly (a reset, no close frame), as a crashed node would.
    pub fn abort(&self) {
        self.node.command(self.index, Cmd::Abort);
    }

    /// The agent's frames on this connection, in order.
    pub fn received(&self) -> Vec<ClientMsg> {
        self.node
            .with(self.index, |c| c.received.clone())
            .unwrap_or_default()
    }

    /// Text frames that did not parse as an agent message.
    pub fn bad_frames(&self) -> Vec<String> {
        self.node
            .with(self.index, |c| c.bad.clone())
            .unwrap_or_default()
    }

    /// The HTTP status the upgrade was refused with, if it was.
    pub fn refused(&self) -> Option<u16> {
        self.node.with(self.index, |c| c.refused).flatten()
    }

    pub fn authorization(&self) -> Option<String> {
        self.node
            .with(self.index, |c| c.authorization.clone())
            .flatten()
    }

    /// How the connection ended, once the fake node saw it end.
    pub fn ended(&self) -> Option<String> {
        self.node.with(self.index, |c| c.ended.clone()).flatten()
    }

    /// The subscription of the hello (the first frame), once it came.
    pub fn hello(&self) -> Option<Subscription> {
        match self.received().first() {
            Some(ClientMsg::Hello { subscribe, .. }) => subscribe.first().cloned(),
            _ => None,
        }
    }

    /// Whether the agent acknowledged `p` as applied on this connection.
    pub fn acked(&self, p: Position) -> bool {
        self.received()
            .iter()
            .any(|m| matches!(m, ClientMsg::Ack { position, ok: true, .. } if *position == p))
    }

    /// The positions the agent asked a rollout slot for on this connection, in order.
    pub fn slots(&self) -> Vec<Position> {
        self.received()
            .iter()
            .filter_map(|m| match m {
                ClientMsg::Slot { position, .. } => Some(*position),
                _ => None,
            })
            .collect()
    }

    /// How many times the agent gave a slot (or its request) back on this connection.
    pub fn releases(&self) -> usize {
        self.received()
            .iter()
            .filter(|m| matches!(m, ClientMsg::Release { .. }))
            .count()
    }

    /// The positions the agent asked to resync from on this connection, in order.
    pub fn resyncs(&self) -> Vec<Option<Position>> {
        self.received()
            .iter()
            .filter_map(|m| match m {
                ClientMsg::Resync { position, .. } => Some(*position),
                _ => None,
            })
            .collect()
    }
}

/// The body of a refused upgrade, as a real node sends it.
fn refusal(status: u16) -> ErrorResponse {
    let body = format!(
        r#"{{"error":{{"code":"unauthorized","message":"the fake node refuses this token ({status})"}}}}"#
    );
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Some(body))
        .expect("a refusal response")
}

/// One connection: answer the upgrade, then follow the test's commands while recording what
/// the agent sends.
async fn serve(state: Shared, index: usize, tcp: TcpStream) {
    let plan = lock(&state).upgrades.pop_front().unwrap_or(Upgrade::Accept);
    let headers = state.clone();
    // The callback's shape is tungstenite's (its error is the whole HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut s = lock(&headers);
        s.conns[index].authorization = auth;
        match plan {
            Upgrade::Accept => Ok(resp),
            Upgrade::Refuse(status) => {
                s.conns[index].refused = Some(status);
                Err(refusal(status))
            }
        }
    };
    let end = |why: String| lock(&state).conns[index].ended.get_or_insert(why).clone();
    let ws = match tokio_tungstenite::accept_hdr_async(tcp, callback).await {
        Ok(ws) => ws,
        Err(e) => {
            end(format!("upgrade not completed: {e}"));
            return;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    lock(&state).conns[index].cmds = Some(tx);
    let why = live(&state, index, ws, rx).await;
    lock(&state).conns[index].ended.get_or_insert(why);
}

/// The connection's loop; returns how it ended.
async fn live(
    state: &Shared,
    index: usize,
    mut ws: WebSocketStream<TcpStream>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) -> String {
    let mut pump: Option<(tokio::time::Interval, Vec<EnvPosition>)> = None;
    loop {
        let tick = async {
            match &mut pump {
                Some((every, _)) => {
                    every.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = ws.next() => match frame {
                None => return "the agent ended the connection".into(),
                Some(Err(e)) => return format!("the agent's side failed: {e}"),
                Some(Ok(Message::Text(t))) => record(state, index, &t),
                Some(Ok(Message::Close(c))) => {
                    // tungstenite answers the close; the stream ends next.
                    let c = c.map(|c| format!("{} {}", u16::from(c.code), c.reason));
                    lock(state).conns[index].ended.get_or_insert(format!("close {}", c.unwrap_or_default()));
                }
                Some(Ok(_)) => {}
            },
            () = tick => {
                if let Some((_, positions)) = &pump {
                    let hb = ServerMsg::Heartbeat { positions: positions.clone() };
                    let text = serde_json::to_string(&hb).expect("serialize a heartbeat");
                    if let Err(e) = ws.send(Message::text(text)).await {
                        return format!("sending a heartbeat failed: {e}");
                    }
                }
            }
            cmd = rx.recv() => match cmd {
                // The fake node is gone.
                None => return "the fake node stopped".into(),
                Some(Cmd::Send(m)) => {
                    if let Err(e) = ws.send(m).await {
                        return format!("sending failed: {e}");
                    }
                }
                Some(Cmd::Pump(p)) => {
                    pump = p.map(|(every, positions)| {
                        let mut i = tokio::time::interval(every);
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        (i, positions)
                    });
                }
                Some(Cmd::Silence) => return silent(ws, rx).await,
                Some(Cmd::Close(code, reason)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(reason) };
                    if let Err(e) = ws.close(Some(frame)).await {
                        return format!("closing failed: {e}");
                    }
                }
                Some(Cmd::Abort) => return abort(ws),
            },
        }
    }
}

/// Silent: neither read nor write (tungstenite answers pings only while reading). Only
/// the end of the agent's side is watched, by peeking at the socket, and the test's abort.
async fn silent(ws: WebSocketStream<TcpStream>, mut rx: mpsc::UnboundedReceiver<Cmd>) -> String {
    let mut watching = true;
    loop {
        let mut byte = [0u8; 1];
        tokio::select! {
            peeked = ws.get_ref().peek(&mut byte), if watching => match peeked {
                Ok(0) => return "the agent dropped the silent connection".into(),
                // The agent sent something (left unread): stop peeking, it would not wait.
                Ok(_) => watching = false,
                Err(e) => return format!("the agent's side failed while silent: {e}"),
            },
            cmd = rx.recv() => match cmd {
                None => return "the fake node stopped".into(),
                Some(Cmd::Abort) => return abort(ws),
                // Silent means silent: whatever else the test asks is not done.
                Some(_) => {}
            },
        }
    }
}

fn abort(ws: WebSocketStream<TcpStream>) -> String {
    let _ = ws.get_ref().set_zero_linger();
    drop(ws);
    "the fake node dropped the socket".into()
}

fn record(state: &Shared, index: usize, text: &str) {
    let mut s = lock(state);
    match serde_json::from_str::<ClientMsg>(text) {
        Ok(m) => s.conns[index].received.push(m),
        Err(e) => s.conns[index].bad.push(format!("{e}: {text}")),
    }
}
