//! What the agent tells about itself: one process-wide [`Stats`] that the places that know
//! update with one-line observation calls (the loop in `run`, the supervisor, the network
//! follower), read by the endpoints of `--listen-metrics` ([`http`]) and by systemd's
//! notifications (`READY=1` after the first render, `STATUS=` when what tether does
//! changes, `WATCHDOG=1` from the loop's [`Pulse`], `STOPPING=1`).
//!
//! Process-wide like the reaper and the notifier: one agent runs per process. Counters are
//! atomics; the few values that are not sit behind small mutexes taken for a moment. No
//! value and no token is ever recorded here: names of outputs, the environment, signals.
//!
//! - `/healthz` (liveness): 200 while the agent's loop has ticked within [`STALE_AFTER`]
//!   (it ticks every [`PULSE`] while endpoints or a watchdog exist; a loop stuck in an await
//!   stops ticking; a loop blocked outright cannot answer at all).
//! - `/readyz` (readiness): 503 until the first render is done (and, in run mode, the child
//!   started), which with a network source means its first state came (live, or saved with
//!   `start_without_server`); then 200, saying `degraded` while no node is connected (the
//!   agent goes on with the state it applied); 503 again once stopping.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tether_core::notify;
use tether_core::protocol::Position;
use tether_core::signal::Signal;

use crate::config::Config;
use crate::output::Output;
use crate::state::Entries;
use crate::supervisor::Exit;

pub mod http;
mod listen;
mod metrics;
mod slot;

pub use listen::{ListenAddr, ListenError};
pub use slot::{slot_status, slot_wait_ended, slot_wait_started, unpaced_action};

/// How often the loop ticks while there are endpoints to answer (or more often, as a
/// watchdog asks).
pub const PULSE: Duration = Duration::from_secs(5);
/// `/healthz` fails when the loop has not ticked for this long.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// Signal numbers counted one by one (1 to 64: every Linux signal).
const NSIG: usize = 65;

static STATS: Stats = Stats::new();
static BUILD: OnceLock<&'static str> = OnceLock::new();

/// Which build this binary is (`full` or `agent`), for `tether_build_info`. Set once by main.
pub fn set_build(kind: &'static str) {
    let _ = BUILD.set(kind);
}

/// The agent's counters and state.
pub struct Stats {
    /// The environment followed on nodes; `None` without a network source.
    env: Mutex<Option<String>>,
    sources: AtomicUsize,
    outputs_n: AtomicUsize,
    listening: AtomicBool,
    /// READY: the first render is done (and the child started, in run mode).
    started: AtomicBool,
    stopping: AtomicBool,
    connected: AtomicBool,
    ever_connected: AtomicBool,
    /// Running on the saved state because no node answered (`start_without_server`).
    saved_state: AtomicBool,
    reconnects: AtomicU64,
    /// The keyshade environment followed (`W/P/E`), its session, its reconnects.
    keyshade: Mutex<Option<String>>,
    ks_connected: AtomicBool,
    ks_ever_connected: AtomicBool,
    ks_reconnects: AtomicU64,
    changes: AtomicU64,
    position: Mutex<Option<Position>>,
    last_change: Mutex<Option<Instant>>,
    beat: Mutex<Option<Instant>>,
    outputs: Mutex<Vec<OutputCounts>>,
    signals: [AtomicU64; NSIG],
    restarts_change: AtomicU64,
    restarts_exit: AtomicU64,
    exits_success: AtomicU64,
    exits_failure: AtomicU64,
    exits_signal: [AtomicU64; NSIG],
    /// Health reports sent (`crate::bake`): healthy, failed; and rollbacks done.
    health_healthy: AtomicU64,
    health_failed: AtomicU64,
    rollbacks: AtomicU64,
    status_sent: Mutex<String>,
    /// The rollout slot gate's figures.
    slot: slot::SlotStats,
}

/// Writes and failures of one output (by path: bounded by the config).
struct OutputCounts {
    path: std::path::PathBuf,
    writes: u64,
    failures: u64,
}

/// Why the child was started again.
#[derive(Clone, Copy, Debug)]
pub enum Restart {
    /// A change needed it (`restart` action, or new injected values).
    Change,
    /// It exited and `restart_on_exit` asked for it.
    Exit,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub const fn new() -> Stats {
        Stats {
            env: Mutex::new(None),
            sources: AtomicUsize::new(0),
            outputs_n: AtomicUsize::new(0),
            listening: AtomicBool::new(false),
            started: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            saved_state: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            keyshade: Mutex::new(None),
            ks_connected: AtomicBool::new(false),
            ks_ever_connected: AtomicBool::new(false),
            ks_reconnects: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            position: Mutex::new(None),
            last_change: Mutex::new(None),
            beat: Mutex::new(None),
            outputs: Mutex::new(Vec::new()),
            signals: [const { AtomicU64::new(0) }; NSIG],
            restarts_change: AtomicU64::new(0),
            restarts_exit: AtomicU64::new(0),
            exits_success: AtomicU64::new(0),
            exits_failure: AtomicU64::new(0),
            exits_signal: [const { AtomicU64::new(0) }; NSIG],
            health_healthy: AtomicU64::new(0),
            health_failed: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            status_sent: Mutex::new(String::new()),
            slot: slot::SlotStats::new(),
        }
    }

    fn configure(&self, cfg: &Config) {
        *lock(&self.env) = cfg.net.as_ref().map(|n| n.env.clone());
        *lock(&self.keyshade) = cfg.keyshade.as_ref().map(crate::source::keyshade::label);
        let remote = usize::from(cfg.net.is_some()) + usize::from(cfg.keyshade.is_some());
        self.sources.store(cfg.sources.len() + remote, Relaxed);
        self.outputs_n.store(cfg.outputs.len(), Relaxed);
        *lock(&self.beat) = Some(Instant::now());
    }

    fn output(&self, path: &Path, ok: bool) {
        let mut outputs = lock(&self.outputs);
        let i = match outputs.iter().position(|o| o.path == path) {
            Some(i) => i,
            None => {
                outputs.push(OutputCounts {
                    path: path.to_path_buf(),
                    writes: 0,
                    failures: 0,
                });
                outputs.len() - 1
            }
        };
        if ok {
            outputs[i].writes += 1;
        } else {
            outputs[i].failures += 1;
        }
    }

    fn child_exited(&self, exit: Exit) {
        match exit {
            Exit::Code(0) => &self.exits_success,
            Exit::Code(_) => &self.exits_failure,
            Exit::Signaled(n) => match self.exits_signal.get(n as usize) {
                Some(c) => c,
                None => &self.exits_failure,
            },
        }
        .fetch_add(1, Relaxed);
    }

    /// One line saying what the agent does (systemd's `STATUS=`, the body of `/readyz`).
    pub fn status_line(&self) -> String {
        let mut line = self.net_status_line();
        if let Some(waiting) = self.slot.status() {
            line = format!("{line}; {waiting}");
        }
        let Some(ks) = lock(&self.keyshade).clone() else {
            return line;
        };
        let ks = if self.ks_connected.load(Relaxed) {
            format!("following keyshade {ks}")
        } else if !self.ks_ever_connected.load(Relaxed) {
            format!("waiting for keyshade {ks}")
        } else {
            format!(
                "degraded: keyshade connection lost, reconnecting; running on the last state of {ks}"
            )
        };
        if lock(&self.env).is_some() {
            format!("{line}; {ks}")
        } else {
            ks
        }
    }

    fn net_status_line(&self) -> String {
        let env = lock(&self.env).clone();
        let Some(env) = env else {
            let (s, o) = (self.sources.load(Relaxed), self.outputs_n.load(Relaxed));
            let plural = |n: usize| if n == 1 { "" } else { "s" };
            return format!("watching {s} source{}, {o} output{}", plural(s), plural(o));
        };
        let at = match *lock(&self.position) {
            Some(p) => format!("env {env} at version {}", p.version),
            None => format!("env {env}"),
        };
        if !self.started.load(Relaxed) && lock(&self.position).is_none() {
            return format!("waiting for a node: no state yet for env {env}");
        }
        if self.connected.load(Relaxed) {
            format!("following {at}")
        } else if self.saved_state.load(Relaxed) {
            format!("degraded: running on saved state, no node reachable ({at})")
        } else {
            format!("degraded: node connection lost, reconnecting; running on {at}")
        }
    }

    /// `/readyz`: ready or not, and the one line that says why.
    pub fn readiness(&self) -> (bool, String) {
        if self.stopping.load(Relaxed) {
            return (false, "stopping".into());
        }
        if !self.started.load(Relaxed) {
            return match lock(&self.env).as_deref() {
                Some(env) if lock(&self.position).is_none() => (
                    false,
                    format!("waiting for the first state from a node (env {env})"),
                ),
                _ => match lock(&self.keyshade).as_deref() {
                    Some(ks) => (
                        false,
                        format!("waiting for the first state from keyshade {ks}"),
                    ),
                    None => (false, "starting: the first render is not done".into()),
                },
            };
        }
        let status = self.status_line();
        if status.starts_with("degraded") {
            (true, status)
        } else {
            (true, format!("ready: {status}"))
        }
    }

    /// `/healthz`: whether the loop ticked recently enough, and the one line that says so.
    pub fn liveness(&self, now: Instant) -> (bool, String) {
        match *lock(&self.beat) {
            Some(b) if now.saturating_duration_since(b) > STALE_AFTER => (
                false,
                format!(
                    "stalled: the agent's loop has not run for {}s",
                    now.saturating_duration_since(b).as_secs()
                ),
            ),
            _ => (true, "alive".into()),
        }
    }
}

/// The process's stats, for the endpoints.
pub fn stats() -> &'static Stats {
    &STATS
}

/// Record what the agent runs with, and open the endpoints when `--listen-metrics` asks.
pub async fn start(cfg: &Config, tasks: &crate::tasks::Tasks) -> Result<(), ListenError> {
    STATS.configure(cfg);
    if let Some(addr) = &cfg.listen_metrics {
        http::start(addr, tasks).await?;
        STATS.listening.store(true, Relaxed);
    }
    refresh_status();
    Ok(())
}

/// The config was reloaded: the sources, outputs and environment the status counts.
/// (`listen_metrics` itself takes a restart to change.)
pub fn config_changed(cfg: &Config) {
    STATS.configure(cfg);
    refresh_status();
}

/// Render `entries` to output `o` ([`Output::apply`]), counting a write or a failure.
pub(crate) async fn render(
    o: &mut Output,
    entries: &Entries,
) -> Result<bool, crate::output::OutputError> {
    let r = o.apply(entries).await;
    match &r {
        Ok(true) => STATS.output(&o.spec.path, true),
        Ok(false) => {}
        Err(_) => STATS.output(&o.spec.path, false),
    }
    r
}

/// An output was written (`ok`) or failed to be (render, check or write).
pub(crate) fn output_done(path: &std::path::Path, ok: bool) {
    STATS.output(path, ok);
}

/// The first render is done and, in run mode, the child started: `READY=1` (again after a
/// reload, following `notify::reloading`).
pub fn ready() {
    lock(&STATS.last_change).get_or_insert_with(Instant::now);
    STATS.started.store(true, Relaxed);
    let status = STATS.status_line();
    notify::ready(&status);
    *lock(&STATS.status_sent) = status;
}

/// A change reached every output.
pub fn change_applied() {
    STATS.changes.fetch_add(1, Relaxed);
    *lock(&STATS.last_change) = Some(Instant::now());
}

/// The network source's position was applied (acknowledged as such to the node).
pub fn position_applied(p: Position) {
    *lock(&STATS.position) = Some(p);
    refresh_status();
}

/// A signal reached the child's group or a watch target.
pub fn signal_sent(sig: Signal) {
    if let Some(c) = STATS.signals.get(sig.number() as usize) {
        c.fetch_add(1, Relaxed);
    }
}

pub fn child_restarted(why: Restart) {
    match why {
        Restart::Change => &STATS.restarts_change,
        Restart::Exit => &STATS.restarts_exit,
    }
    .fetch_add(1, Relaxed);
}

pub fn child_exited(exit: Exit) {
    STATS.child_exited(exit);
}

/// A version's health was reported to the node.
pub fn health_reported(state: tether_core::rollout::HealthState) {
    match state {
        tether_core::rollout::HealthState::Healthy => &STATS.health_healthy,
        tether_core::rollout::HealthState::Failed => &STATS.health_failed,
    }
    .fetch_add(1, Relaxed);
}

/// A failed version was rolled back to the last healthy values.
pub fn rolled_back() {
    STATS.rollbacks.fetch_add(1, Relaxed);
}

/// The network follower's session was welcomed by a node.
pub fn net_connected() {
    if STATS.ever_connected.swap(true, Relaxed) {
        STATS.reconnects.fetch_add(1, Relaxed);
    }
    STATS.connected.store(true, Relaxed);
    refresh_status();
}

/// The node sent all it has: the agent is up to date, not on its saved state.
pub fn net_synced() {
    STATS.saved_state.store(false, Relaxed);
    refresh_status();
}

/// The network follower's session ended.
pub fn net_lost() {
    if STATS.connected.swap(false, Relaxed) {
        refresh_status();
    }
}

/// The keyshade follower registered with keyshade.
pub fn keyshade_connected() {
    if STATS.ks_ever_connected.swap(true, Relaxed) {
        STATS.ks_reconnects.fetch_add(1, Relaxed);
    }
    STATS.ks_connected.store(true, Relaxed);
    refresh_status();
}

/// The keyshade follower's session ended.
pub fn keyshade_lost() {
    if STATS.ks_connected.swap(false, Relaxed) {
        refresh_status();
    }
}

/// No node answered: the agent starts from its saved state (`start_without_server`).
pub fn net_degraded() {
    STATS.saved_state.store(true, Relaxed);
    refresh_status();
}

/// tether is stopping: `STOPPING=1` (once), and `/readyz` says so.
pub fn stopping() {
    if !STATS.stopping.swap(true, Relaxed) {
        notify::stopping();
    }
}

/// Send `STATUS=` when the line changed since the last one sent.
fn refresh_status() {
    if !notify::enabled() || STATS.stopping.load(Relaxed) {
        return;
    }
    let status = STATS.status_line();
    let mut sent = lock(&STATS.status_sent);
    if *sent != status {
        notify::status(&status);
        *sent = status;
    }
}

/// The loop's heartbeat: a `select!` arm of the agent's loop. It ticks every [`PULSE`]
/// while there are endpoints, and as often as systemd's watchdog asks (sending
/// `WATCHDOG=1`); without either it never fires and costs no wake-up.
pub struct Pulse {
    every: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pulse {
    pub fn start() -> Pulse {
        let listening = STATS.listening.load(Relaxed).then_some(PULSE);
        let every = match (notify::watchdog_interval(), listening) {
            (Some(w), Some(p)) => Some(w.min(p)),
            (w, p) => w.or(p),
        };
        Pulse {
            every,
            next: tokio::time::Instant::now(),
        }
    }

    /// Resolves at the next tick, having recorded it (and fed the watchdog).
    pub async fn tick(&mut self) {
        let Some(every) = self.every else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now() + every;
        *lock(&STATS.beat) = Some(Instant::now());
        notify::watchdog();
    }
}

#[cfg(test)]
mod tests;
