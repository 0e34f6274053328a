//! Scripted agents for the rollout tests: each says hello under its own name, reads up to
//! its `policy` frame, and then asks for slots, acknowledges and reports health as a test
//! tells it; plus the HTTP calls the tests make.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value as Json, json};
use tether_core::protocol::{ClientMsg, Position, ServerMsg, Subscription};
use tether_core::rollout::HealthState;
use tokio_tungstenite::tungstenite::Message;

use crate::support::ws::{Ws, send_msg, ws_connect};
use crate::support::{DEADLINE, http_request};

pub const ENV: &str = "prod";

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One HTTP call; (status, JSON body).
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<Json>) -> (u16, Json) {
    let r = http_request(method, url, token, body.as_ref());
    (r.status, r.json)
}

/// Write `A=value` to `prod` through `base`; the new position.
pub fn write(base: &str, value: &str) -> u64 {
    let body = json!({"changes": [{"name": "A", "value": value}]});
    let (code, r) = http(
        "POST",
        &format!("{base}/v1/envs/{ENV}/changes"),
        None,
        Some(body),
    );
    assert_eq!(code, 200, "{r}");
    r["position"]["version"].as_u64().expect("a version")
}

pub fn set_policy(base: &str, policy: Json) {
    let (code, r) = http(
        "PUT",
        &format!("{base}/v1/envs/{ENV}/policy"),
        None,
        Some(policy),
    );
    assert_eq!(code, 200, "{r}");
}

/// `GET /v1/envs/prod/rollout`.
pub fn rollout(base: &str) -> Json {
    let (code, r) = http("GET", &format!("{base}/v1/envs/{ENV}/rollout"), None, None);
    assert_eq!(code, 200, "{r}");
    r
}

/// A scripted agent following `prod`.
pub struct Bot {
    pub name: String,
    ws: Ws,
    /// The newest position the node sent.
    pub at: Position,
    /// Frames read but not yet looked at by the test.
    pending: Vec<ServerMsg>,
}

impl Bot {
    /// Connect to the node on `port` as `name` and read up to the policy frame.
    pub async fn connect(port: u16, name: &str) -> Bot {
        let mut ws = ws_connect(&format!("ws://127.0.0.1:{port}/v1/ws"), None)
            .await
            .expect("upgrade");
        let hello = ClientMsg::Hello {
            agent: name.into(),
            subscribe: vec![Subscription {
                env: ENV.into(),
                position: None,
            }],
        };
        send_msg(&mut ws, &hello).await;
        let mut bot = Bot {
            name: name.into(),
            ws,
            at: Position::default(),
            pending: Vec::new(),
        };
        let start = std::time::Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match bot.read(left).await {
                Some(ServerMsg::Policy { .. }) => return bot,
                Some(ServerMsg::Error { code, message }) => {
                    panic!("node error {code}: {message}")
                }
                Some(_) => {}
                None => panic!("{name}: no policy frame after the catch-up within {DEADLINE:?}"),
            }
        }
    }

    /// The next frame within `wait` (heartbeats skipped, within the same `wait`;
    /// positions noted).
    async fn read(&mut self, wait: Duration) -> Option<ServerMsg> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(until, self.ws.next()).await.ok()?;
            let msg: ServerMsg = match frame {
                Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("not a server frame ({e}): {t}")),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("{}: expected a text frame, got {other:?}", self.name),
            };
            match &msg {
                ServerMsg::Heartbeat { .. } => continue,
                ServerMsg::Snapshot { position, .. }
                | ServerMsg::Change { position, .. }
                | ServerMsg::Synced { position, .. } => self.at = *position,
                _ => {}
            }
            return Some(msg);
        }
    }

    /// The next frame from the socket, within the deadline.
    async fn fresh(&mut self) -> ServerMsg {
        match self.read(DEADLINE).await {
            Some(m) => m,
            None => panic!("{}: no frame from the node within {DEADLINE:?}", self.name),
        }
    }

    /// The next frame (kept ones first), within the deadline.
    pub async fn next(&mut self) -> ServerMsg {
        if !self.pending.is_empty() {
            return self.pending.remove(0);
        }
        self.fresh().await
    }

    /// Frames already sent by the node, without waiting for more than a moment.
    pub async fn drain(&mut self) -> Vec<ServerMsg> {
        let mut out = std::mem::take(&mut self.pending);
        while let Some(m) = self.read(Duration::from_millis(50)).await {
            out.push(m);
        }
        out
    }

    /// Read until the node sent `version` of `prod`; other frames are kept.
    pub async fn until_version(&mut self, version: u64) {
        let start = std::time::Instant::now();
        while self.at.version < version {
            assert!(
                start.elapsed() < DEADLINE,
                "{}: version {version} never came",
                self.name
            );
            let m = self.fresh().await;
            if !matches!(m, ServerMsg::Change { .. } | ServerMsg::Snapshot { .. }) {
                self.pending.push(m);
            }
        }
    }

    pub async fn send(&mut self, msg: ClientMsg) {
        send_msg(&mut self.ws, &msg).await;
    }

    pub async fn slot(&mut self) {
        let position = self.at;
        self.send(ClientMsg::Slot {
            env: ENV.into(),
            position,
        })
        .await;
    }

    /// The answer to a slot request: true for a grant, false for a hold (its reason and
    /// whether halted in `holds`). Other frames are kept for later.
    pub async fn answer(&mut self, holds: &mut Vec<(String, bool)>) -> bool {
        let kept = self
            .pending
            .iter()
            .position(|m| matches!(m, ServerMsg::Grant { .. } | ServerMsg::Hold { .. }));
        let start = std::time::Instant::now();
        let mut first = kept.map(|i| self.pending.remove(i));
        loop {
            assert!(
                start.elapsed() < DEADLINE,
                "{}: no answer to its slot request",
                self.name
            );
            let m = match first.take() {
                Some(m) => m,
                None => self.fresh().await,
            };
            match m {
                ServerMsg::Grant { .. } => return true,
                ServerMsg::Hold { reason, halted, .. } => {
                    holds.push((reason, halted));
                    return false;
                }
                ServerMsg::Error { code, message } => {
                    panic!("{}: node error {code}: {message}", self.name)
                }
                m => self.pending.push(m),
            }
        }
    }

    /// Wait for a grant, answering nothing; the holds seen meanwhile.
    pub async fn granted(&mut self) -> Vec<(String, bool)> {
        let mut holds = Vec::new();
        let start = std::time::Instant::now();
        while !self.answer(&mut holds).await {
            assert!(
                start.elapsed() < DEADLINE,
                "{}: never granted: {holds:?}",
                self.name
            );
        }
        holds
    }

    /// Acknowledge the current position, then report it healthy or failed.
    pub async fn report(&mut self, healthy: bool) {
        let position = self.at;
        self.send(ClientMsg::Ack {
            env: ENV.into(),
            position,
            ok: true,
            error: None,
        })
        .await;
        self.send(ClientMsg::Health {
            env: ENV.into(),
            position,
            state: if healthy {
                HealthState::Healthy
            } else {
                HealthState::Failed
            },
            error: (!healthy).then(|| "the child exited with status 3 within the bake time".into()),
            rolled_back: !healthy,
        })
        .await;
    }

    pub async fn release(&mut self) {
        self.send(ClientMsg::Release { env: ENV.into() }).await;
    }
}

/// The value of the `/metrics` sample that starts with `series` (name and labels).
pub fn metric(base: &str, series: &str) -> Option<u64> {
    let r = http_request("GET", &format!("{base}/metrics"), None, None);
    r.text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
