//! The network source: follows one environment on tether nodes over the native protocol.
//!
//! Connects to a random node and fails over to the others, reconnecting with capped
//! exponential backoff and full jitter; treats a connection silent for 2.5 heartbeats as
//! dead; resumes from its last position; applies a change set only at local+1, drops
//! duplicates, resyncs on a gap, never moves backwards. Keeps the last state in a state
//! directory (0600) and can start from it while no node is reachable (degraded).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::seq::SliceRandom;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::state::Entries;
use tether_core::protocol::{
    ClientMsg, Position, ServerMsg, Subscription, Verdict, accept_snapshot, judge_change,
};
use tether_core::rollout::{HealthState, Policy};

pub(crate) mod backoff;
mod saved;
mod token;
mod wire;

use backoff::{Backoff, Outcome};

pub use saved::default_state_dir;
use saved::state_file_name;
pub use tether_core::endpoint::{http_url, tls_config, ws_url};
use wire::{apply_changes, to_entries};

/// The network source: nodes and the environment to follow.
#[derive(Clone, Debug)]
pub struct NetSpec {
    /// Base URLs as given (http(s):// or ws(s)://).
    pub servers: Vec<String>,
    pub env: String,
    /// The token as read at start (from `token_file` or `TETHER_TOKEN`).
    pub token: Option<tether_core::secret::Value>,
    /// Re-read at each connection attempt, so a rotated token is followed.
    pub token_file: Option<PathBuf>,
    /// Where the token came from, for messages (never the token itself).
    pub token_source: String,
    pub ca_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub start_without_server: bool,
}

/// Largest frame accepted from a node.
pub const MAX_FRAME: usize = tether_core::protocol::MAX_AGENT_FRAME;
/// Heartbeat assumed until the node's welcome says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// A new state of the followed environment.
#[derive(Debug)]
pub struct NetUpdate {
    pub entries: Entries,
    pub position: Position,
    /// Served from the saved state while no node is reachable.
    pub degraded: bool,
}

/// The agent's side of the network source. Dropping it stops the follower (and its
/// connection): a reload that changes the source starts a new one.
pub struct NetSource {
    pub updates: mpsc::UnboundedReceiver<NetUpdate>,
    /// What the nodes say of the rollout (policy, slots) and whether one is reachable.
    pub fleet: mpsc::UnboundedReceiver<FleetEvent>,
    reports: mpsc::UnboundedSender<Report>,
    _stop: tokio_util::sync::DropGuard,
    /// The last position whose acknowledgement went out on a connection.
    pub acked: watch::Receiver<Option<Position>>,
    /// The last connection failure, as `URL: why` (for a one-shot's error).
    pub problem: watch::Receiver<Option<String>>,
    /// A saved state was found at start (what `start_without_server` starts from).
    pub has_saved: bool,
}

impl NetSource {
    /// Report that `position` was applied (or failed to apply).
    pub fn ack(&self, position: Position, result: Result<(), String>) {
        let _ = self.reports.send(Report::Ack(position, result));
    }

    /// Report whether the app stayed healthy with `position` applied (gives back a slot).
    /// `error` says why it failed; it must hold no value.
    pub fn health(
        &self,
        position: Position,
        state: HealthState,
        error: Option<String>,
        rolled_back: bool,
    ) {
        let health = Health {
            position,
            state,
            error,
            rolled_back,
        };
        let _ = self.reports.send(Report::Health(health));
    }

    /// Ask for a slot to act on `position` (answered by [`FleetEvent::Grant`] or `Hold`).
    /// Asked again on every new connection until released or reported on.
    pub fn slot(&self, position: Position) {
        let _ = self.reports.send(Report::Slot(position));
    }

    /// Give back a slot, or the request for one, without a health report.
    pub fn release(&self) {
        let _ = self.reports.send(Report::Release);
    }

    /// Wait, up to `within`, until every report made so far went out on a connection (a
    /// stopping agent's last health report or release is not lost), which is then closed:
    /// the follower does nothing more. Whether they did.
    pub async fn flush(&self, within: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.reports.send(Report::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, rx).await, Ok(Ok(())))
    }
}

/// What the agent tells the nodes, through the follower.
#[derive(Debug)]
enum Report {
    Ack(Position, Result<(), String>),
    Health(Health),
    Slot(Position),
    Release,
    /// Answered once the reports before it went out on a connection.
    Flush(tokio::sync::oneshot::Sender<()>),
}

#[derive(Clone, Debug)]
struct Health {
    position: Position,
    state: HealthState,
    error: Option<String>,
    rolled_back: bool,
}

/// The rollout as the node sees it, and whether a node is there to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetEvent {
    /// A connection is up (welcomed); the policy follows after `synced`.
    Connected,
    /// No node is reachable: every configured node's session failed in a row since one
    /// last welcomed this agent (sent once per such run). No node to ask for a slot until
    /// `Connected` again.
    Lost,
    /// The environment's policy (`None`: none; act at once).
    Policy(Option<Policy>),
    /// The slot asked for is this agent's: act on `position` or newer.
    Grant(Position),
    /// The slot request waits (`halted`: until a fix or a resume).
    Hold { reason: String, halted: bool },
}

/// How a follower treats what it is given: a dry run saves no state and sends no ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Follow,
    DryRun,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("node refused the connection: HTTP {status}: {reason}")]
    Refused { status: u16, reason: String },
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("node closed the connection: {0}")]
    Closed(String),
    #[error("connection silent for {0:?}; presumed dead")]
    Silent(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The token file cannot give a token now (the message names the file).
    #[error("no token: {0}")]
    Token(String),
}

struct Follower {
    spec: NetSpec,
    urls: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    state_file: Option<PathBuf>,
    entries: Entries,
    position: Option<Position>,
    /// The agent has been given a state (live or saved).
    emitted: bool,
    degraded: bool,
    last_ack: Option<(Position, Result<(), String>)>,
    /// The last health report, sent again on a new connection.
    last_health: Option<Health>,
    /// A slot asked for or held: asked again on a new connection (the node renews a hold).
    slot: Option<Position>,
    /// When the current session got its `synced`, if it did.
    synced_at: Option<tokio::time::Instant>,
    /// The current session was welcomed (a node was reached).
    welcomed: bool,
    /// Flushes waiting for a connection to send what they follow.
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
    updates: mpsc::UnboundedSender<NetUpdate>,
    reports: mpsc::UnboundedReceiver<Report>,
    fleet: mpsc::UnboundedSender<FleetEvent>,
    acked: watch::Sender<Option<Position>>,
    problem: watch::Sender<Option<String>>,
    agent_name: String,
    token: token::Token,
    mode: Mode,
}

/// Start following. Fails only on settings that can never work (bad CA file).
pub fn start(spec: NetSpec, tasks: &crate::tasks::Tasks) -> Result<NetSource, String> {
    start_as(spec, tasks, Mode::Follow)
}

/// Start following as `mode`; a dry run also says so in its name (`HOST/PID dry-run`).
pub fn start_as(
    spec: NetSpec,
    tasks: &crate::tasks::Tasks,
    mode: Mode,
) -> Result<NetSource, String> {
    let urls = spec
        .servers
        .iter()
        .map(|s| ws_url(s))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = if urls.iter().any(|u| u.starts_with("wss://")) {
        Some(tls_config(spec.ca_file.as_deref())?)
    } else {
        None
    };
    let state_file = spec
        .state_dir
        .clone()
        .or_else(default_state_dir)
        .map(|d| d.join(state_file_name(&spec)));
    let (utx, urx) = mpsc::unbounded_channel();
    let (atx, arx) = mpsc::unbounded_channel();
    let (ftx, frx) = mpsc::unbounded_channel();
    let (acked_tx, acked_rx) = watch::channel(None);
    let (problem_tx, problem_rx) = watch::channel(None);
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let suffix = if mode == Mode::DryRun { " dry-run" } else { "" };
    let mut f = Follower {
        token: token::Token::new(&spec),
        agent_name: format!("{host}/{}{suffix}", std::process::id()),
        mode,
        acked: acked_tx,
        problem: problem_tx,
        spec,
        urls,
        tls,
        state_file,
        entries: Entries::new(),
        position: None,
        emitted: false,
        degraded: false,
        last_ack: None,
        last_health: None,
        slot: None,
        synced_at: None,
        welcomed: false,
        flushes: Vec::new(),
        updates: utx,
        reports: arx,
        fleet: ftx,
    };
    f.load_saved();
    let has_saved = f.position.is_some();
    let span = tracing::info_span!("follow", agent = %f.agent_name, env = %f.spec.env);
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    tasks.spawn(span, async move {
        tokio::select! {
            _ = stopped.cancelled() => tracing::debug!("follower stopped"),
            _ = f.run() => {}
        }
    });
    Ok(NetSource {
        updates: urx,
        fleet: frx,
        reports: atx,
        _stop: stop.drop_guard(),
        acked: acked_rx,
        problem: problem_rx,
        has_saved,
    })
}

impl Follower {
    fn emit(&mut self) {
        let Some(position) = self.position else {
            return;
        };
        self.emitted = true;
        let _ = self.updates.send(NetUpdate {
            entries: self.entries.clone(),
            position,
            degraded: self.degraded,
        });
    }

    async fn run(&mut self) {
        let mut order: Vec<usize> = (0..self.urls.len()).collect();
        order.shuffle(&mut rand::thread_rng());
        let mut backoff = Backoff::new();
        let mut attempt = 0usize;
        // Sessions that failed since a node last welcomed this agent: once every node
        // failed in a row, none is reachable (`FleetEvent::Lost`).
        let mut failed = 0usize;
        loop {
            let url = self.urls[order[attempt % order.len()]].clone();
            attempt += 1;
            let round_done = attempt % self.urls.len() == 0;
            self.synced_at = None;
            self.welcomed = false;
            let e = match self.session(&url).await {
                Ok(never) => match never {},
                Err(e) => e,
            };
            crate::health::net_lost();
            failed = if self.welcomed { 1 } else { failed + 1 };
            if failed == self.urls.len() {
                let _ = self.fleet.send(FleetEvent::Lost);
            }
            self.problem.send_replace(Some(format!("{url}: {e}")));
            let outcome = Outcome::of(&e, self.synced_at, tokio::time::Instant::now());
            let delay = backoff.after(outcome, round_done);
            match outcome {
                Outcome::Refused if self.spec.token_file.is_some() => tracing::error!(
                    node = %url,
                    error = %e,
                    token = %self.spec.token_source,
                    retry_in = ?delay,
                    "the node refused this agent's token ({}): put a valid one there; it is \
                     read again at once when the file changes, and at each retry (every few \
                     minutes while no node takes it)",
                    self.spec.token_source
                ),
                Outcome::Refused => tracing::error!(
                    node = %url,
                    error = %e,
                    token = %self.spec.token_source,
                    retry_in = ?delay,
                    "the node refused this agent's token ({}): fix it and restart the agent; \
                     while no node takes it, it retries every few minutes",
                    self.spec.token_source
                ),
                _ if matches!(e, SessionError::Token(_)) => {
                    tracing::error!(error = %e, retry_in = ?delay, "cannot connect to a node")
                }
                _ if matches!(e, SessionError::Refused { .. }) => {
                    tracing::error!(node = %url, error = %e, retry_in = ?delay, "node connection failed")
                }
                _ => {
                    tracing::warn!(node = %url, error = %e, retry_in = ?delay, "node connection failed")
                }
            }
            // Every node failed once: run on the saved state if allowed.
            if !self.emitted
                && attempt >= self.urls.len()
                && self.spec.start_without_server
                && self.position.is_some()
            {
                self.degraded = true;
                crate::health::net_degraded();
                tracing::warn!(env = %self.spec.env, "DEGRADED: no node reachable; starting from the saved state");
                self.emit();
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.token.changed() => {
                    tracing::info!(token = %self.spec.token_source, "the token file changed; connecting at once");
                }
            }
        }
    }

    /// One connection, until it fails. Sets `synced_at` when it gets as far as a `synced`
    /// for the followed environment (see `backoff` for what that does to the waits).
    async fn session(&mut self, url: &str) -> Result<std::convert::Infallible, SessionError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        let token = self.token.for_connection().map_err(SessionError::Token)?;
        if let Some(token) = &token {
            let value = format!("Bearer {}", token.expose_str().unwrap_or_default());
            let header = value
                .parse()
                .map_err(|_| SessionError::Connect("token is not a valid header value".into()))?;
            request.headers_mut().insert("authorization", header);
        }
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_FRAME);
        config.max_frame_size = Some(MAX_FRAME);
        config.read_buffer_size = 16 * 1024;
        config.write_buffer_size = 0;
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            connector,
        );
        let (mut ws, _) = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Err(_) => return Err(SessionError::Connect("timed out after 10s".into())),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let reason = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/error/message")
                            .and_then(|m| m.as_str())
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| body.chars().take(200).collect());
                return Err(SessionError::Refused { status, reason });
            }
            Ok(Err(e)) => return Err(SessionError::Connect(e.to_string())),
            Ok(Ok(x)) => x,
        };
        let hello = ClientMsg::Hello {
            agent: self.agent_name.clone(),
            subscribe: vec![Subscription {
                env: self.spec.env.clone(),
                position: self.position,
            }],
        };
        let mut silence = DEFAULT_HEARTBEAT.mul_f32(2.5);
        let start = tokio::time::Instant::now();
        send(&mut ws, &hello, start + silence).await?;
        let mut welcomed = false;
        let mut resync_pending = false;
        // Silence is measured from the node's last frame, whatever else happens meanwhile.
        let mut last_frame = start;
        loop {
            tokio::select! {
                frame = tokio::time::timeout_at(last_frame + silence, ws.next()) => {
                    last_frame = tokio::time::Instant::now();
                    let text = match frame {
                        Err(_) => return Err(SessionError::Silent(silence)),
                        Ok(None) => return Err(SessionError::Lost("end of stream".into())),
                        Ok(Some(Err(e))) => return Err(SessionError::Lost(e.to_string())),
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        Ok(Some(Ok(Message::Close(c)))) => {
                            let reason = c.map(|c| format!("{} {}", u16::from(c.code), c.reason)).unwrap_or_default();
                            return Err(SessionError::Closed(reason));
                        }
                        Ok(Some(Ok(_))) => continue,
                    };
                    let msg: ServerMsg = match serde_json::from_str(&text) {
                        Ok(m) => m,
                        Err(e) => {
                            // Unknown frames from a newer node are skipped, not fatal.
                            tracing::warn!(error = %e, "ignoring a frame this agent does not understand");
                            continue;
                        }
                    };
                    match msg {
                        ServerMsg::Welcome { node, heartbeat_ms } => {
                            welcomed = true;
                            self.welcomed = true;
                            silence = Duration::from_millis(heartbeat_ms.max(10)).mul_f32(2.5);
                            tracing::info!(node = %node, url = %url, "connected to node");
                            crate::health::net_connected();
                            if let Some((pos, result)) = self.last_ack.clone() {
                                send(&mut ws, &ack_msg(&self.spec.env, pos, result), last_frame + silence).await?;
                                self.acked.send_replace(Some(pos));
                            }
                            // The slot first: a node that frees a slot on a health report
                            // must know of the newer request before it sees an older report.
                            if let Some(position) = self.slot {
                                let m = ClientMsg::Slot { env: self.spec.env.clone(), position };
                                send(&mut ws, &m, last_frame + silence).await?;
                            }
                            // Only a report of the last position acknowledged is news; an
                            // older one was superseded (and would undo a resume).
                            let last_acked = self.last_ack.as_ref().map(|(p, _)| *p);
                            if let Some(h) = self.last_health.clone().filter(|h| Some(h.position) == last_acked) {
                                send(&mut ws, &health_msg(&self.spec.env, h), last_frame + silence).await?;
                            }
                            // Everything reported so far went out with the above.
                            if !self.flushes.is_empty() {
                                let flushes = std::mem::take(&mut self.flushes);
                                return close_and_stop(&mut ws, flushes).await;
                            }
                            let _ = self.fleet.send(FleetEvent::Connected);
                        }
                        ServerMsg::Snapshot { env, position, entries } if env == self.spec.env => {
                            resync_pending = false;
                            if accept_snapshot(self.position, position) {
                                tracing::info!(%position, entries = entries.len(), "snapshot applied");
                                if position == Position::default() {
                                    tracing::warn!(env = %self.spec.env, "the environment is empty on the node (never written; is the name right?)");
                                }
                                self.entries = to_entries(entries);
                                self.position = Some(position);
                                self.changed();
                            } else {
                                tracing::debug!(%position, "older snapshot ignored");
                            }
                        }
                        ServerMsg::Change { env, position, changes } if env == self.spec.env => {
                            match judge_change(self.position, position) {
                                Verdict::Apply => {
                                    resync_pending = false;
                                    apply_changes(&mut self.entries, changes);
                                    self.position = Some(position);
                                    tracing::debug!(%position, "change set applied");
                                    self.changed();
                                }
                                Verdict::Drop => tracing::debug!(%position, "duplicate change set dropped"),
                                Verdict::Resync if resync_pending => {}
                                Verdict::Resync => {
                                    tracing::info!(have = ?self.position.map(|p| p.to_string()), got = %position, "gap in change sets; resyncing");
                                    resync_pending = true;
                                    let m = ClientMsg::Resync { env: self.spec.env.clone(), position: self.position };
                                    send(&mut ws, &m, last_frame + silence).await?;
                                }
                            }
                        }
                        ServerMsg::Synced { env, position } if env == self.spec.env => {
                            resync_pending = false;
                            self.synced_at.get_or_insert_with(tokio::time::Instant::now);
                            crate::health::net_synced();
                            // The node sent all it has. A node behind us (its store lost its
                            // data, or was restored) has nothing newer: our state stands.
                            let current = self.position.is_some()
                                && !accept_snapshot(self.position, position);
                            if current && (!self.emitted || self.degraded) {
                                if self.degraded {
                                    tracing::info!("node reachable again; no longer degraded");
                                }
                                self.degraded = false;
                                self.emit();
                            }
                        }
                        ServerMsg::Heartbeat { positions } => {
                            let theirs = positions.iter().find(|p| p.env == self.spec.env).map(|p| p.position);
                            if let Some(theirs) = theirs {
                                let behind = match self.position {
                                    None => true,
                                    Some(mine) => (theirs.epoch, theirs.version) > (mine.epoch, mine.version),
                                };
                                if behind && !resync_pending {
                                    tracing::info!(node = %theirs, "heartbeat shows a newer version; resyncing");
                                    resync_pending = true;
                                    let m = ClientMsg::Resync { env: self.spec.env.clone(), position: self.position };
                                    send(&mut ws, &m, last_frame + silence).await?;
                                }
                            }
                        }
                        ServerMsg::Error { code, message } if code == "forbidden" && !welcomed => {
                            // The token may not read the environment of the hello; the node
                            // closes next (1008). A refused token: reported and waited on as one.
                            let reason = format!("{message} (forbidden, in answer to the hello)");
                            return Err(SessionError::Refused { status: 403, reason });
                        }
                        ServerMsg::Error { code, message } => {
                            tracing::warn!(code = %code, message = %message, "node reported an error");
                            if code == "unavailable" {
                                // A catch-up failed (store down): no answer to a pending resync
                                // is coming. The next heartbeat that shows us behind asks again.
                                resync_pending = false;
                            }
                        }
                        ServerMsg::Policy { env, policy } if env == self.spec.env => {
                            let _ = self.fleet.send(FleetEvent::Policy(policy));
                        }
                        ServerMsg::Grant { env, position } if env == self.spec.env => {
                            let _ = self.fleet.send(FleetEvent::Grant(position));
                        }
                        ServerMsg::Hold { env, reason, halted } if env == self.spec.env => {
                            let _ = self.fleet.send(FleetEvent::Hold { reason, halted });
                        }
                        ServerMsg::Snapshot { .. } | ServerMsg::Change { .. } | ServerMsg::Synced { .. }
                        | ServerMsg::Policy { .. } | ServerMsg::Grant { .. } | ServerMsg::Hold { .. } => {}
                    }
                }
                _ = self.token.changed() => {
                    tracing::info!(token = %self.spec.token_source, "the token file changed; the new token is used for the next connection (this one stays up)");
                }
                Some(report) = self.reports.recv(), if self.mode == Mode::Follow => {
                    let msg = match report {
                        Report::Ack(pos, result) => {
                            self.last_ack = Some((pos, result.clone()));
                            if welcomed {
                                send(&mut ws, &ack_msg(&self.spec.env, pos, result), last_frame + silence).await?;
                                self.acked.send_replace(Some(pos));
                            }
                            continue;
                        }
                        Report::Health(h) => {
                            // A health report gives a held slot back on the node; the agent
                            // then forgets it with `release`. A request still waiting (for a
                            // newer version) stays.
                            self.last_health = Some(h.clone());
                            health_msg(&self.spec.env, h)
                        }
                        Report::Slot(position) => {
                            self.slot = Some(position);
                            // A report of an older version is not re-sent after a reconnect
                            // any more: the node would take it as giving back the slot now
                            // asked for (or held) for this newer one.
                            if self.last_health.as_ref().is_some_and(|h| h.position != position) {
                                self.last_health = None;
                            }
                            ClientMsg::Slot { env: self.spec.env.clone(), position }
                        }
                        Report::Release => {
                            self.slot = None;
                            ClientMsg::Release { env: self.spec.env.clone() }
                        }
                        Report::Flush(tx) => {
                            if welcomed {
                                return close_and_stop(&mut ws, vec![tx]).await;
                            }
                            self.flushes.push(tx);
                            continue;
                        }
                    };
                    if welcomed {
                        send(&mut ws, &msg, last_frame + silence).await?;
                    }
                }
            }
        }
    }

    /// State moved: save it and hand it to the agent (once it has had its first).
    fn changed(&mut self) {
        // Hand the state to the agent first: saving (an fsync) is not on the change's path.
        if self.emitted {
            self.degraded = false;
            self.emit();
        }
        self.save();
    }
}

/// The agent is stopping and every report went out: close the connection cleanly (what
/// the node sent is read, so the kernel does not reset the connection and lose our last
/// frames at the node), answer the flushes, and do nothing more.
async fn close_and_stop<S>(
    ws: &mut S,
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
) -> Result<std::convert::Infallible, SessionError>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if ws.send(Message::Close(None)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    for tx in flushes {
        let _ = tx.send(());
    }
    std::future::pending().await
}

fn health_msg(env: &str, h: Health) -> ClientMsg {
    ClientMsg::Health {
        env: env.to_string(),
        position: h.position,
        state: h.state,
        error: h.error,
        rolled_back: h.rolled_back,
    }
}

fn ack_msg(env: &str, position: Position, result: Result<(), String>) -> ClientMsg {
    ClientMsg::Ack {
        env: env.to_string(),
        position,
        ok: result.is_ok(),
        error: result.err(),
    }
}

/// Send `msg`, giving up at `deadline` (when the node's silence makes it dead anyway): a
/// node that vanished leaves our writes stuck in a full socket buffer.
async fn send<S>(
    ws: &mut S,
    msg: &ClientMsg,
    deadline: tokio::time::Instant,
) -> Result<(), SessionError>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let text = serde_json::to_string(msg).map_err(|e| SessionError::Protocol(e.to_string()))?;
    match tokio::time::timeout_at(deadline, ws.send(Message::text(text))).await {
        Ok(r) => r.map_err(|e| SessionError::Lost(e.to_string())),
        Err(_) => Err(SessionError::Lost(
            "the node took no data in time; presumed dead".into(),
        )),
    }
}
