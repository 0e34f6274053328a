//! One agent connection: hello, catch-up from the agent's position, then live change sets
//! in order without duplicates, heartbeats with current positions, acknowledgements into
//! the rollout registry. Live change sets are judged and, on a plain socket, written by the
//! fan-out (`outlet`); this task catches up, answers and drains. Generic over
//! `Sink`/`Stream` so it is tested without a socket.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, close_code};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
// tokio's, so that tests can stop the clock.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Node;
use super::auth::Grant;
use super::hub::{self, AckState, AgentInfo, Counters};
use super::outlet::Outlet;
use super::plain::PlainSocket;
use super::rollout::{self, AckVerdict};
use super::store::{CatchUp, StoreError};
use tether_core::protocol::{ClientMsg, EnvPosition, Position, ServerMsg, Subscription};

/// A frame that makes the connection panic, in the tests' builds only.
#[cfg(test)]
pub(crate) const PANIC_FRAME: &str = "panic, as a test asks";

/// How long an agent has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the close frame may take to go out. A peer that stopped reading would
/// otherwise hold the task (and its socket) until TCP gives up, which takes many minutes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The agent sent a close frame: the WebSocket layer queued the answer, to be flushed.
    PeerClosed,
    /// The peer went away (or is not there any more: nothing could reach it).
    Gone,
}

struct Conn<S> {
    socket: S,
    node: Arc<Node>,
    grant: Grant,
    /// The socket under `socket` when it is plain TCP: the fan-out writes to it directly.
    plain: Option<Arc<PlainSocket>>,
    /// Set once the agent said hello: where live change sets arrive.
    outlet: Option<Arc<Outlet>>,
    /// Set once the agent said hello: rollout frames (grants, holds, policies) for it.
    mailbox: Option<Arc<super::fleet::Mailbox>>,
    id: u64,
    /// The agent's last sign of life: a frame from it (pongs included), or a send that
    /// waited for it to read and then went through.
    alive_at: Instant,
    /// This connection's heartbeat in milliseconds, the node's when it opened (a reload
    /// changes new connections'). Milliseconds in a `u32`: connections are many.
    heartbeat_ms: u32,
}

/// Serve one agent until it leaves, misbehaves, or the node shuts down.
pub async fn serve<S, E>(
    socket: S,
    plain: Option<Arc<PlainSocket>>,
    node: Arc<Node>,
    grant: Grant,
    shutdown: CancellationToken,
) where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    E: std::fmt::Display,
{
    Counters::inc(&node.hub.counters.connections);
    let heartbeat_ms = u32::try_from(node.live.heartbeat().as_millis()).unwrap_or(u32::MAX);
    let mut conn = Conn {
        socket,
        node,
        grant,
        plain,
        outlet: None,
        mailbox: None,
        id: 0,
        alive_at: Instant::now(),
        heartbeat_ms,
    };
    // A panic (a bug) ends this connection only: it is logged and the agent gets 1011.
    let end = match AssertUnwindSafe(conn.run(shutdown)).catch_unwind().await {
        Ok(end) => end,
        Err(payload) => {
            conn.panicked(&*payload);
            End::Close(close_code::ERROR, "internal error".into())
        }
    };
    let agent = conn.id;
    // Before the close frame: nothing may be written after it.
    conn.leave();
    if let End::PeerClosed = end {
        // Flushes the answer to the agent's close frame; nothing else is written.
        if tokio::time::timeout(CLOSE_TIMEOUT, conn.socket.close())
            .await
            .is_err()
        {
            tracing::debug!(agent, "close answer not taken within {CLOSE_TIMEOUT:?}");
        }
    } else if let End::Close(code, mut reason) = end {
        tracing::debug!(code, reason = %reason, "closing agent connection");
        // A close frame's reason is at most 123 bytes.
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        let close = conn.socket.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        })));
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            tracing::debug!(
                agent,
                "close frame not taken within {CLOSE_TIMEOUT:?}; dropping the connection"
            );
        }
    }
}

impl<S> Conn<S> {
    /// Log a panic of this connection's task: the agent and what it follows, no value.
    fn panicked(&self, payload: &(dyn std::any::Any + Send)) {
        let envs = self.outlet.as_ref().map(|o| o.envs()).unwrap_or_default();
        tracing::error!(
            node = %self.node.id,
            agent = self.id,
            env = envs.first().map_or("", String::as_str),
            envs = envs.len(),
            panic = super::panics::describe(payload),
            "agent connection panicked; closing it with 1011"
        );
    }

    /// Stop the fan-out writing to this connection and take it out of the hub and the
    /// registry. Safe to call twice.
    fn leave(&mut self) {
        if let Some(outlet) = self.outlet.take() {
            outlet.close();
            self.node.hub.detach(&outlet);
        }
        if self.id != 0 {
            self.node.fleet.leave(self.id);
            self.node.hub.unregister(std::mem::take(&mut self.id));
        }
    }
}

/// However the connection's task ends (returned, panicked, or dropped unfinished), it
/// leaves: otherwise the hub would keep its outlet, and with it the socket, and go on
/// writing to it.
impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        self.leave();
    }
}

impl<S, E> Conn<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    E: std::fmt::Display,
{
    async fn send(&mut self, frame: Utf8Bytes) -> Result<(), End> {
        self.send_message(Message::Text(frame)).await?;
        Counters::inc(&self.node.hub.counters.frames_sent);
        Ok(())
    }

    async fn send_message(&mut self, message: Message) -> Result<(), End> {
        // An agent that stops reading is dropped rather than holding frames forever.
        let limit = self.patience();
        let (result, waited) = {
            let mut send = std::pin::pin!(self.socket.send(message));
            // Nearly every send completes at once (room in the socket buffer): those need
            // no timer. The rest get one, boxed so that it lives only while such a send is
            // in flight, not in every idle connection.
            match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
                Poll::Ready(r) => (Ok(r), false),
                Poll::Pending => (Box::pin(tokio::time::timeout(limit, send)).await, true),
            }
        };
        match result {
            Ok(Ok(())) => {
                // It waited for room, which only the agent reading could make.
                if waited {
                    self.alive_at = Instant::now();
                }
                Ok(())
            }
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                tracing::warn!(
                    agent = self.id,
                    "agent stopped reading; dropping its connection"
                );
                Err(End::Gone)
            }
        }
    }

    async fn send_msg(&mut self, msg: &ServerMsg) -> Result<(), End> {
        self.send(hub::encode(msg)).await
    }

    fn outlet(&self) -> Result<Arc<Outlet>, End> {
        self.outlet.clone().ok_or(End::Gone)
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(u64::from(self.heartbeat_ms))
    }

    /// How long an agent may leave frames unread, or say nothing (not even a pong), before
    /// it is dropped.
    fn patience(&self) -> Duration {
        (self.heartbeat() * 2).max(Duration::from_secs(5))
    }

    /// How long an agent may answer nothing, judged at each heartbeat, whose ping a live
    /// agent answers within one: silent for 1.5 heartbeats (at least 5 s) is dropped at the
    /// next, 2 to 2.5 heartbeats after its last sign.
    fn silence_limit(&self) -> Duration {
        (self.heartbeat() * 3 / 2).max(Duration::from_secs(5))
    }

    /// The agent's last sign of life, counting bytes it took from the plain socket's backlog
    /// (a ping waits behind a large frame that a slow agent is still reading).
    fn last_sign(&self) -> Instant {
        let moved = self.plain.as_ref().and_then(|p| p.last_moved());
        moved.map_or(self.alive_at, |m| m.max(self.alive_at))
    }

    /// Next text frame from the agent; pings are answered by the WebSocket layer.
    async fn next_text(&mut self) -> Result<Utf8Bytes, End> {
        loop {
            let next = self.socket.next().await;
            if matches!(next, Some(Ok(_))) {
                self.alive_at = Instant::now();
            }
            match next {
                None => return Err(End::Gone),
                Some(Err(e)) => {
                    let e = e.to_string();
                    // tungstenite's capacity errors: the agent sent more than the limit.
                    if e.contains("too long") || e.contains("Space limit") || e.contains("too big")
                    {
                        return Err(End::Close(
                            close_code::SIZE,
                            format!(
                                "frame exceeds the {}-byte limit",
                                self.node.live.max_frame()
                            ),
                        ));
                    }
                    return Err(End::Gone);
                }
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Close(_))) => return Err(End::PeerClosed),
                Some(Ok(Message::Binary(_))) => {
                    return Err(End::Close(
                        close_code::UNSUPPORTED,
                        "binary frames are not part of the protocol".into(),
                    ));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn run(&mut self, shutdown: CancellationToken) -> End {
        match self.run_inner(shutdown).await {
            Ok(()) => End::Close(close_code::AWAY, "node shutting down".into()),
            Err(end) => end,
        }
    }

    async fn run_inner(&mut self, shutdown: CancellationToken) -> Result<(), End> {
        let first = tokio::time::timeout(HELLO_TIMEOUT, self.next_text())
            .await
            .map_err(|_| End::Close(close_code::POLICY, "no hello within 10s".into()))??;
        let (agent, subs) = match parse(&first)? {
            Parsed::Msg(ClientMsg::Hello { agent, subscribe }) => (agent, subscribe),
            _ => {
                return Err(End::Close(
                    close_code::POLICY,
                    "the first frame must be hello".into(),
                ));
            }
        };
        let mut subs_ok: Vec<Subscription> = Vec::new();
        // A hello may name tens of thousands of environments: past a few, duplicates are
        // found with a set rather than by searching the list.
        let mut seen: Option<HashSet<String>> =
            (subs.len() > super::outlet::LINEAR_MAX).then(|| HashSet::with_capacity(subs.len()));
        for s in subs {
            if super::store::validate_name("environment", &s.env).is_err()
                || !self.grant.can_read(&s.env)
            {
                Counters::inc(&self.node.hub.counters.rejected);
                self.send_msg(&ServerMsg::Error {
                    code: "forbidden".into(),
                    message: format!(
                        "token {:?} may not read environment {:?}",
                        self.grant.name, s.env
                    ),
                })
                .await?;
                continue;
            }
            // The same environment twice is followed once.
            let first = match &mut seen {
                Some(seen) => seen.insert(s.env.clone()),
                None => !subs_ok.iter().any(|o| o.env == s.env),
            };
            if first {
                subs_ok.push(s);
            }
        }
        if subs_ok.is_empty() {
            return Err(End::Close(
                close_code::POLICY,
                "no environment this token may read".into(),
            ));
        }
        let agent: String = agent.chars().take(200).collect();
        self.id = self.node.hub.register(AgentInfo {
            agent: agent.clone(),
            token: self.grant.name.clone(),
            envs: subs_ok.iter().map(|s| (s.env.clone(), None)).collect(),
        });
        let outlet = Arc::new(Outlet::new(
            self.id,
            self.grant.secrets,
            self.plain.clone(),
            subs_ok
                .iter()
                .map(|s| (s.env.clone(), s.position))
                .collect(),
            self.node.hub.deferred_cap(),
            super::BACKLOG_LIMIT,
        ));
        let mailbox = self.node.fleet.join(self.id, &agent, outlet.envs());
        self.mailbox = Some(mailbox.clone());
        // Attached (paused) before reading the store, so nothing committed in between is
        // missed: it waits in the outlet until the catch-up is done.
        self.node.hub.attach(&outlet);
        self.outlet = Some(outlet.clone());
        // Tokens reloaded since this connection's token was checked found no outlet to
        // wake: check again, now that a later reload will.
        self.recheck_token(&outlet)?;
        self.send_msg(&ServerMsg::Welcome {
            node: self.node.id.clone(),
            heartbeat_ms: u64::from(self.heartbeat_ms),
        })
        .await?;
        self.catch_up(subs_ok.into_iter().map(|s| s.env).collect(), None)
            .await?;
        self.send_policies(&outlet).await?;
        let mut heartbeat = tokio::time::interval(self.heartbeat());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        // Registered once: re-creating it in every turn of the loop would take the token's
        // lock for every frame of every connection.
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        // Every heartbeat carries a ping; an agent that answered nothing (no pong, no frame)
        // since `patience` is gone, however its socket looks: half-open (a vanished host, a
        // proxy that stopped forwarding) or a stopped process whose kernel still acks. It is
        // judged at each heartbeat (no timer of its own: connections are many and idle).
        let plain = self.plain.clone();
        loop {
            tokio::select! {
                _ = &mut cancelled => return Ok(()),
                _ = outlet.notified() => self.service(&outlet).await?,
                _ = mailbox.ready() => {
                    for msg in mailbox.take() {
                        self.send_msg(&msg).await?;
                    }
                }
                e = backlog(plain.as_deref()) => {
                    if plain.as_ref().is_some_and(|p| p.overflowed()) {
                        tracing::warn!(agent = self.id, "agent stopped reading; dropping its connection");
                    } else {
                        tracing::debug!(agent = self.id, error = %e, "agent socket failed");
                    }
                    return Err(End::Gone);
                }
                _ = heartbeat.tick() => {
                    let silent_for = self.last_sign().elapsed();
                    if silent_for >= self.silence_limit() {
                        tracing::warn!(
                            agent = self.id,
                            ?silent_for,
                            "agent answered nothing, not even a ping; dropping its connection"
                        );
                        return Err(End::Gone);
                    }
                    if plain.as_ref().and_then(|p| p.stalled_for()).is_some_and(|t| t > self.patience()) {
                        tracing::warn!(agent = self.id, "agent stopped reading; dropping its connection");
                        return Err(End::Gone);
                    }
                    let positions = outlet
                        .envs()
                        .into_iter()
                        .filter_map(|env| self.node.hub.position(&env).map(|position| EnvPosition { env, position }))
                        .collect();
                    self.send_msg(&ServerMsg::Heartbeat { positions }).await?;
                    self.send_message(Message::Ping(Default::default())).await?;
                }
                text = self.next_text() => {
                    let text = text?;
                    self.handle(&text).await?;
                }
            }
        }
    }

    /// The token table was reloaded: end the connection (with a close code the agent can
    /// tell apart) if its token is gone or no longer grants what it follows.
    fn recheck_token(&self, outlet: &Outlet) -> Result<(), End> {
        let auth = self.node.live.auth();
        auth.recheck(&self.grant, &outlet.envs()).map_err(|r| {
            tracing::info!(agent = self.id, token = %self.grant.name, code = r.code, reason = %r.reason, "closing an agent connection: its token changed");
            End::Close(r.code, r.reason)
        })
    }

    /// Do what the fan-out left: frames to send (no plain socket), environments to catch up.
    async fn service(&mut self, outlet: &Outlet) -> Result<(), End> {
        let work = outlet.take_work();
        if work.recheck {
            self.recheck_token(outlet)?;
        }
        if work.overflow {
            tracing::warn!(
                agent = self.id,
                "agent stopped reading; dropping its connection"
            );
            return Err(End::Gone);
        }
        for frame in work.frames {
            self.send(frame).await?;
        }
        if !work.resync.is_empty() {
            self.catch_up(work.resync, None).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, text: &str) -> Result<(), End> {
        #[cfg(test)]
        if text == PANIC_FRAME {
            panic!("a test asked this connection to panic");
        }
        let msg = match parse(text)? {
            Parsed::Msg(m) => m,
            Parsed::Unknown(kind) => {
                return self
                    .send_msg(&ServerMsg::Error {
                        code: "unknown_type".into(),
                        message: format!("unknown message type {kind:?}"),
                    })
                    .await;
            }
        };
        match msg {
            ClientMsg::Hello { .. } => {
                self.send_msg(&ServerMsg::Error {
                    code: "unexpected".into(),
                    message: "hello was already received".into(),
                })
                .await?;
            }
            ClientMsg::Ack {
                env,
                position,
                ok,
                error,
            } => {
                let outlet = self.outlet()?;
                if !outlet.follows(&env) {
                    return self
                        .send_msg(&ServerMsg::Error {
                            code: "not_subscribed".into(),
                            message: format!(
                                "ack of {env:?}, which this connection does not follow"
                            ),
                        })
                        .await;
                }
                let latest = self.node.hub.position(&env);
                match rollout::judge_ack(outlet.sent(&env), latest, position) {
                    AckVerdict::Record => {}
                    AckVerdict::Stale => {
                        tracing::debug!(agent = self.id, env = %env, %position, "ack of an older history ignored");
                        return Ok(());
                    }
                    AckVerdict::Unknown => {
                        tracing::warn!(agent = self.id, env = %env, %position, "ack of a position this node never sent; refused");
                        return self
                            .send_msg(&ServerMsg::Error {
                                code: "unknown_position".into(),
                                message: format!(
                                    "ack of {env:?} at {position}, a position this node never sent"
                                ),
                            })
                            .await;
                    }
                }
                if !ok {
                    tracing::warn!(env = %env, %position, error = error.as_deref().unwrap_or(""), "agent failed to apply");
                }
                self.node.hub.ack(
                    self.id,
                    &env,
                    AckState::acked(position, ok, error.map(|e| e.chars().take(500).collect())),
                );
            }
            ClientMsg::Resync { env, position } => {
                if !self.outlet()?.follows(&env) {
                    self.send_msg(&ServerMsg::Error {
                        code: "not_subscribed".into(),
                        message: format!(
                            "resync of {env:?}, which this connection does not follow"
                        ),
                    })
                    .await?;
                    return Ok(());
                }
                Counters::inc(&self.node.hub.counters.resyncs);
                self.catch_up(vec![env], Some(position)).await?;
            }
            ClientMsg::Health {
                env,
                position,
                state,
                error,
                rolled_back,
            } => {
                self.health(env, position, state, error, rolled_back)
                    .await?
            }
            ClientMsg::Slot { env, position } => self.slot(env, position).await?,
            ClientMsg::Release { env } => self.release(env).await?,
        }
        Ok(())
    }

    /// Send what the agent is missing in `envs` (from what was last sent, or from `from`
    /// when the agent said where it stands), each followed by `synced`; live change sets
    /// wait meanwhile and are judged after. Catches up again if too many waited.
    async fn catch_up(
        &mut self,
        mut envs: Vec<String>,
        mut from: Option<Option<Position>>,
    ) -> Result<(), End> {
        let outlet = self.outlet()?;
        for frame in outlet.pause() {
            self.send(frame).await?;
        }
        loop {
            for env in &envs {
                let start = match from {
                    Some(p) => p,
                    None => outlet.sent(env),
                };
                self.send_catch_up(&outlet, env, start).await?;
                if let Some(position) = outlet.sent(env) {
                    self.send_msg(&ServerMsg::Synced {
                        env: env.clone(),
                        position,
                    })
                    .await?;
                }
            }
            match outlet.resume() {
                Some(sent) => {
                    let c = &self.node.hub.counters.frames_sent;
                    c.fetch_add(sent, Ordering::Relaxed);
                    // No ping went out meanwhile: the agent's silence counts from here.
                    self.alive_at = Instant::now();
                    return Ok(());
                }
                None => {
                    tracing::warn!(
                        agent = self.id,
                        "too many changes while catching up; catching up again"
                    );
                    envs = outlet.envs();
                    from = None;
                }
            }
        }
    }

    async fn send_catch_up(
        &mut self,
        outlet: &Outlet,
        env: &str,
        from: Option<Position>,
    ) -> Result<(), End> {
        // Boxed: store futures are large and only live during a catch-up.
        let result = Box::pin(self.node.store.catch_up(env, from)).await;
        match result {
            Ok(CatchUp::UpToDate) => {
                if let Some(p) = from {
                    self.node.hub.note_position(env, p);
                    outlet.set_sent(env, Some(p));
                }
            }
            Ok(CatchUp::Changes(sets)) => {
                for set in sets {
                    let frame = hub::change_frame(&set, self.grant.secrets);
                    self.send(frame).await?;
                    self.node.hub.note_position(env, set.position);
                    outlet.set_sent(env, Some(set.position));
                }
            }
            Ok(CatchUp::Snapshot(snap)) => {
                Counters::inc(&self.node.hub.counters.snapshots);
                self.node.hub.note_position(env, snap.position);
                let frame = hub::snapshot_frame(&snap, self.grant.secrets);
                self.send(frame).await?;
                outlet.set_sent(env, Some(snap.position));
            }
            Err(e) => {
                self.store_error(e).await?;
            }
        }
        Ok(())
    }

    async fn store_error(&mut self, e: StoreError) -> Result<(), End> {
        tracing::warn!(error = %e, "catch-up failed");
        self.send_msg(&ServerMsg::Error {
            code: "unavailable".into(),
            message: e.to_string(),
        })
        .await
    }
}

/// Resolves when the plain socket's backlog can no longer be drained; never without one.
async fn backlog(plain: Option<&PlainSocket>) -> std::io::Error {
    match plain {
        Some(p) => std::future::poll_fn(|cx| p.poll_backlog(cx)).await,
        None => std::future::pending().await,
    }
}

enum Parsed {
    Msg(ClientMsg),
    /// Well-formed JSON with a type this node does not know: answered, not fatal.
    Unknown(String),
}

/// Parse an agent frame; anything malformed closes the connection with a reason.
fn parse(text: &str) -> Result<Parsed, End> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        End::Close(
            close_code::INVALID,
            format!("malformed frame: not JSON ({})", e.classify_str()),
        )
    })?;
    let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
        return Err(End::Close(
            close_code::INVALID,
            "malformed frame: no \"type\"".into(),
        ));
    };
    if !matches!(
        kind,
        "hello" | "resync" | "ack" | "health" | "slot" | "release"
    ) {
        return Ok(Parsed::Unknown(kind.chars().take(40).collect()));
    }
    let kind = kind.to_string();
    serde_json::from_value(value)
        .map(Parsed::Msg)
        .map_err(|e| End::Close(close_code::INVALID, format!("malformed {kind} frame: {e}")))
}

trait Classify {
    fn classify_str(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "bad data",
            serde_json::error::Category::Eof => "unexpected end",
        }
    }
}

mod fleet;
#[cfg(test)]
mod liveness_tests;
#[cfg(test)]
mod tests;
