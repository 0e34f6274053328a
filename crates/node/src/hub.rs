//! The node's fan-out point: committed change sets are published here once (frames
//! serialized once, with and without secret values, also as ready WebSocket frames) and
//! handed to a few fan-out threads, each of which offers them to its share of the agent
//! connections following that environment (see `outlet`). Also the registry of connected
//! agents and their acknowledgements (rollout status), and the node's counters.
//!
//! Not a `broadcast` channel with one receiving task per connection: waking ten thousand
//! tasks to each write one frame cost more than the writes themselves.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::histogram::Histogram;
use super::outlet::Outlet;
use super::store::{ChangeSet, Snapshot};
use tether_core::protocol::{Position, ServerMsg, WireChange, WireEntry};
use tether_core::rollout::HealthState;

/// A change set with its frames ready to send.
pub struct Published {
    pub set: ChangeSet,
    /// With every value.
    pub full: Utf8Bytes,
    /// Secret values left out, for tokens that may not read them.
    pub redacted: Utf8Bytes,
    /// `full` and `redacted` as whole server-to-client WebSocket frames.
    wire_full: Bytes,
    wire_redacted: Bytes,
    /// When the change set was committed through this node (or heard of on the bus): the
    /// fan-out latency counts from here. None: not timed (repairs, resets).
    since: Option<Instant>,
    /// Shards that have not offered it to their connections yet; the last one observes
    /// the fan-out latency.
    pending: AtomicUsize,
}

impl Published {
    pub fn new(set: ChangeSet, full: Utf8Bytes, redacted: Utf8Bytes) -> Published {
        Published {
            wire_full: ws_text_frame(full.as_bytes()),
            wire_redacted: ws_text_frame(redacted.as_bytes()),
            set,
            full,
            redacted,
            since: None,
            pending: AtomicUsize::new(0),
        }
    }

    /// One shard offered it to all its connections; the last of `pending` observes the
    /// fan-out latency (one clock read and one observation per change set).
    fn shard_done(&self, counters: &Counters) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(since) = self.since {
                counters.fanout_latency.observe(since.elapsed());
            }
        }
    }

    pub fn frame(&self, secrets: bool) -> Utf8Bytes {
        if secrets {
            self.full.clone()
        } else {
            self.redacted.clone()
        }
    }

    pub fn wire(&self, secrets: bool) -> &Bytes {
        if secrets {
            &self.wire_full
        } else {
            &self.wire_redacted
        }
    }
}

/// A final, unmasked text frame (RFC 6455 §5.2), as a server sends it.
pub fn ws_text_frame(payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    Bytes::from(f)
}

/// Serialize a change frame, leaving out secret values unless `secrets`. For a reader
/// without secret rights a secret's change is a deletion: the entry may have been public
/// until this change, and a snapshot at this position would not hold it. So live fan-out,
/// catch-up from history and a fresh snapshot give every such reader the same content.
pub fn change_frame(set: &ChangeSet, secrets: bool) -> Utf8Bytes {
    let changes: Vec<WireChange> = set.changes.iter().map(|c| visible(c, secrets)).collect();
    encode(&ServerMsg::Change {
        env: set.env.clone(),
        position: set.position,
        changes,
    })
}

/// A change as a reader with or without secret rights gets it.
fn visible(c: &WireChange, secrets: bool) -> WireChange {
    if c.secret && !secrets {
        WireChange {
            name: c.name.clone(),
            value: None,
            secret: true,
            delete: true,
        }
    } else {
        c.clone()
    }
}

pub fn snapshot_frame(snap: &Snapshot, secrets: bool) -> Utf8Bytes {
    let entries: Vec<WireEntry> = snap
        .entries
        .iter()
        .map(|e| WireEntry {
            value: if e.secret && !secrets {
                None
            } else {
                e.value.clone()
            },
            ..e.clone()
        })
        .collect();
    encode(&ServerMsg::Snapshot {
        env: snap.env.clone(),
        position: snap.position,
        entries,
    })
}

pub fn encode(msg: &ServerMsg) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(msg).unwrap_or_default())
}

/// One agent's acknowledgement of an environment, and its health report of that
/// version once it made one (agents of older versions never do).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AckState {
    pub position: Position,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthState>,
    /// Why the version failed its health check (bounded like `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_error: Option<String>,
    /// The agent went back to its last healthy values.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
}

impl AckState {
    /// An acknowledgement, with no health report yet.
    pub fn acked(position: Position, ok: bool, error: Option<String>) -> AckState {
        AckState {
            position,
            ok,
            error,
            health: None,
            health_error: None,
            rolled_back: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent: String,
    pub token: String,
    pub envs: BTreeMap<String, Option<AckState>>,
}

#[derive(Default)]
pub struct Counters {
    pub commits: AtomicU64,
    pub frames_sent: AtomicU64,
    pub resyncs: AtomicU64,
    pub snapshots: AtomicU64,
    pub rejected: AtomicU64,
    pub connections: AtomicU64,
    /// A write's request (token checked) to its commit in the store.
    pub commit_latency: Histogram,
    /// A commit (or its arrival on the bus) to its change set offered to every local
    /// connection: written into plain sockets, queued for the others.
    pub fanout_latency: Histogram,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serializes the values of the registry map as a JSON array.
struct AllAgents<'a>(&'a HashMap<u64, AgentInfo>);

impl Serialize for AllAgents<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.values())
    }
}

/// The outlets of one fan-out thread by environment and connection id, each with the index
/// of the environment in its list.
type OutletMap = HashMap<String, HashMap<u64, (Arc<Outlet>, usize)>>;
type Outlets = Mutex<OutletMap>;

/// A share of the connections and the thread that writes to them.
struct Shard {
    outlets: Arc<Outlets>,
    /// None when the thread could not be started: the publisher delivers itself.
    tx: Option<mpsc::Sender<Arc<Published>>>,
}

pub struct Hub {
    shards: Vec<Shard>,
    deferred_cap: usize,
    latest: Mutex<HashMap<String, Position>>,
    agents: Mutex<HashMap<u64, AgentInfo>>,
    /// Bumped by every change to `agents`, so that a copy kept elsewhere knows it is stale.
    generation: AtomicU64,
    next_id: AtomicU64,
    pub counters: Arc<Counters>,
}

impl Hub {
    /// `capacity`: change sets a connection holds while it catches up from the store;
    /// past that it catches up again instead.
    pub fn new(capacity: usize) -> Hub {
        let threads = fan_out_threads();
        let counters = Arc::new(Counters::default());
        let shards = (0..threads)
            .map(|i| {
                let outlets = Arc::new(Outlets::default());
                let (tx, rx) = mpsc::channel();
                let (o, c) = (outlets.clone(), counters.clone());
                let span = tracing::info_span!("fanout", shard = i);
                let tx = std::thread::Builder::new()
                    .name(format!("tether-fanout-{i}"))
                    .spawn(move || span.in_scope(|| fan_out(rx, o, c)))
                    .map_err(|e| tracing::warn!(error = %e, "cannot start a fan-out thread"))
                    .ok()
                    .map(|_| tx);
                Shard { outlets, tx }
            })
            .collect();
        Hub {
            shards,
            deferred_cap: capacity,
            latest: Mutex::default(),
            agents: Mutex::default(),
            generation: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            counters,
        }
    }

    pub fn deferred_cap(&self) -> usize {
        self.deferred_cap
    }

    fn shard(&self, id: u64) -> &Shard {
        &self.shards[(id % self.shards.len() as u64) as usize]
    }

    /// Offer this node's change sets of the outlet's environments to it from now on.
    pub fn attach(&self, outlet: &Arc<Outlet>) {
        let mut map = lock(&self.shard(outlet.id).outlets);
        for (i, env) in outlet.envs().into_iter().enumerate() {
            map.entry(env)
                .or_default()
                .insert(outlet.id, (outlet.clone(), i));
        }
    }

    pub fn detach(&self, outlet: &Outlet) {
        let mut map = lock(&self.shard(outlet.id).outlets);
        for env in outlet.envs() {
            if let Some(m) = map.get_mut(&env) {
                m.remove(&outlet.id);
                if m.is_empty() {
                    map.remove(&env);
                }
            }
        }
    }

    /// Publish a committed change set to every connection of this node; `since` (when it
    /// was committed or heard of) times the fan-out.
    pub fn publish(&self, set: ChangeSet, since: Option<Instant>) {
        self.note_position(&set.env, set.position);
        let full = change_frame(&set, true);
        let redacted = change_frame(&set, false);
        let mut p = Published::new(set, full, redacted);
        p.since = since;
        self.deliver(Arc::new(p));
    }

    /// Wake every connection to check its token against a reloaded token table.
    pub fn recheck_tokens(&self) {
        for shard in &self.shards {
            for by_id in lock(&shard.outlets).values() {
                for (outlet, _) in by_id.values() {
                    outlet.recheck();
                }
            }
        }
    }

    /// Tell connections that `env` moved to `pos` in a way only a snapshot can follow (a new
    /// epoch, or history too short). Sent as a change set without changes.
    pub fn moved(&self, env: &str, pos: Position) {
        self.note_position(env, pos);
        let set = ChangeSet {
            env: env.to_string(),
            position: pos,
            changes: Vec::new(),
        };
        let empty = Utf8Bytes::from_static("");
        self.deliver(Arc::new(Published::new(set, empty.clone(), empty)));
    }

    fn deliver(&self, p: Arc<Published>) {
        let mut batch = Vec::new();
        p.pending.store(self.shards.len(), Ordering::Release);
        for shard in &self.shards {
            let undelivered = match &shard.tx {
                Some(tx) => tx.send(p.clone()).err().map(|e| e.0),
                None => Some(p.clone()),
            };
            if let Some(p) = undelivered {
                let sent = offer_all(&shard.outlets, &p, &mut batch);
                self.counters.frames_sent.fetch_add(sent, Ordering::Relaxed);
                p.shard_done(&self.counters);
            }
        }
    }

    /// Record a position seen for an environment (newest wins).
    pub fn note_position(&self, env: &str, pos: Position) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = latest.entry(env.to_string()).or_default();
        if (pos.epoch, pos.version) > (slot.epoch, slot.version) {
            *slot = pos;
        }
    }

    pub fn position(&self, env: &str) -> Option<Position> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(env)
            .copied()
    }

    pub fn register(&self, info: AgentInfo) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, info);
        self.generation.fetch_add(1, Ordering::Relaxed);
        id
    }

    pub fn unregister(&self, id: u64) {
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ack(&self, id: u64, env: &str, state: AckState) {
        if let Some(a) = self
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&id)
        {
            if let Some(slot) = a.envs.get_mut(env) {
                *slot = Some(state);
                self.generation.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Record connection `id`'s health report of `env` at `position`: on its ack of that
    /// position, or (a report sent again after a reconnect, with no ack on this
    /// connection) as an ack that succeeded. A report of an older position than the
    /// recorded ack (re-sent after a reconnect) is ignored: status never goes backwards.
    pub fn health(
        &self,
        id: u64,
        env: &str,
        position: Position,
        state: HealthState,
        error: Option<String>,
        rolled_back: bool,
    ) {
        let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = agents.get_mut(&id).and_then(|a| a.envs.get_mut(env)) else {
            return;
        };
        let ack = match slot {
            Some(a) if a.position == position => a,
            Some(a)
                if (a.position.epoch, a.position.version) > (position.epoch, position.version) =>
            {
                return;
            }
            _ => slot.insert(AckState::acked(position, true, None)),
        };
        ack.health = Some(state);
        ack.health_error = error;
        ack.rolled_back = rolled_back;
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    pub fn agents(&self) -> Vec<AgentInfo> {
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The registry as a JSON array of [`AgentInfo`], written into `out` (cleared first)
    /// straight from the map: no copy of the registry is made.
    pub fn agents_json(&self, out: &mut Vec<u8>) {
        out.clear();
        let agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = serde_json::to_writer(&mut *out, &AllAgents(&agents));
    }

    /// Changes with every registration, departure and acknowledgement.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Connections attached to the fan-out (each counted once per environment it follows).
    #[cfg(test)]
    pub fn attached(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(&s.outlets).values().map(HashMap::len).sum::<usize>())
            .sum()
    }

    pub fn agent_count(&self) -> usize {
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// How many fan-out threads a node runs: one per core, at most 4.
pub fn fan_out_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

fn lock(outlets: &Outlets) -> std::sync::MutexGuard<'_, OutletMap> {
    outlets.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fan-out thread: offers each change set, in the order published, to its outlets, until
/// the hub is dropped. A std thread, not a task: it blocks on its channel and in `send(2)`,
/// so no task tracker can own it; it holds nothing that needs closing.
///
/// A panic while offering a change set (a bug) ends that change set's fan-out, not the
/// thread: it is logged, and the thread goes on with the next one. Connections it did not
/// reach are behind by one version; the next change set or heartbeat shows them the gap
/// and they catch up from the store. The catch is once per change set: nothing is added
/// per connection.
fn fan_out(rx: mpsc::Receiver<Arc<Published>>, outlets: Arc<Outlets>, counters: Arc<Counters>) {
    let mut batch = Vec::new();
    while let Ok(p) = rx.recv() {
        let offered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            offer_all(&outlets, &p, &mut batch)
        }));
        match offered {
            Ok(sent) => {
                counters.frames_sent.fetch_add(sent, Ordering::Relaxed);
                p.shard_done(&counters);
            }
            Err(payload) => {
                batch.clear();
                p.shard_done(&counters);
                tracing::error!(
                    env = %p.set.env,
                    position = %p.set.position,
                    panic = super::panics::describe(&*payload),
                    "fan-out of a change set panicked; the connections it missed catch up"
                );
            }
        }
    }
}

/// Offer `p` to the outlets following its environment; the map is locked only to copy
/// them out, so connections come and go while frames are written.
fn offer_all(outlets: &Outlets, p: &Arc<Published>, batch: &mut Vec<(Arc<Outlet>, usize)>) -> u64 {
    #[cfg(test)]
    if p.set.env == tests::PANIC_ENV {
        panic!("a test asked the fan-out to panic");
    }
    if let Some(m) = lock(outlets).get(&p.set.env) {
        batch.extend(m.values().cloned());
    }
    // Each offer spends microseconds in the kernel; meanwhile the memory of the next outlets
    // comes in: two ahead the outlet, one ahead its socket (found through the outlet,
    // brought in one offer earlier). Without it, every offer waits on a few cache misses.
    let mut sent = 0;
    for (k, (o, i)) in batch.iter().enumerate() {
        if let Some((two_ahead, _)) = batch.get(k + 2) {
            two_ahead.prefetch();
        }
        if let Some((next, _)) = batch.get(k + 1) {
            next.prefetch_socket();
        }
        sent += o.offer(p, *i);
    }
    batch.clear();
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::protocol::Epoch;
    use tether_core::secret::Value;

    fn set(version: u64, name: &str, value: &str, secret: bool) -> ChangeSet {
        ChangeSet {
            env: "prod".into(),
            position: Position {
                epoch: Epoch(1),
                version,
            },
            changes: vec![WireChange {
                name: name.into(),
                value: Some(Value::from(value)),
                secret,
                delete: false,
            }],
        }
    }

    /// Change sets of this environment make the fan-out panic.
    pub(super) const PANIC_ENV: &str = "panic-for-test";

    /// A panic while offering one change set ends that change set's fan-out only: the
    /// thread goes on with the next ones (before, it died, and the publisher offered every
    /// later change set itself, panics included).
    #[tokio::test]
    async fn a_panic_in_the_fan_out_ends_that_change_set_only() {
        let hub = Hub::new(16);
        let at = |version| Position {
            epoch: Epoch(1),
            version,
        };
        let outlet = Arc::new(Outlet::new(
            7,
            true,
            None,
            vec![("prod".into(), Some(at(1)))],
            16,
            1 << 20,
        ));
        hub.attach(&outlet);
        outlet.resume();
        for version in [2, 3] {
            hub.publish(
                ChangeSet {
                    env: PANIC_ENV.into(),
                    ..set(version, "A", "x", false)
                },
                None,
            );
            hub.publish(set(version, "A", "v", false), None);
            tokio::time::timeout(std::time::Duration::from_secs(10), outlet.notified())
                .await
                .expect("the change set after the panic arrives within the deadline");
            let frames = outlet.take_work().frames;
            assert_eq!(frames.len(), 1);
            assert!(
                matches!(serde_json::from_str(frames[0].as_str()).unwrap(), ServerMsg::Change { position, .. } if position == at(version))
            );
        }
    }

    /// A health report of an older position than the recorded ack leaves the ack alone.
    #[test]
    fn an_older_health_report_does_not_move_the_ack_back() {
        let hub = Hub::new(16);
        let at = |version| Position {
            epoch: Epoch(1),
            version,
        };
        let id = hub.register(AgentInfo {
            agent: "a".into(),
            token: "t".into(),
            envs: [("prod".to_string(), None)].into(),
        });
        hub.ack(id, "prod", AckState::acked(at(3), true, None));
        hub.health(id, "prod", at(2), HealthState::Failed, None, true);
        let ack = hub.agents()[0].envs["prod"].clone().expect("acked");
        assert_eq!((ack.position, ack.health), (at(3), None));
        hub.health(id, "prod", at(3), HealthState::Healthy, None, false);
        let ack = hub.agents()[0].envs["prod"].clone().expect("acked");
        assert_eq!(
            (ack.position, ack.health),
            (at(3), Some(HealthState::Healthy))
        );
    }

    fn changes(frame: &Utf8Bytes) -> Vec<WireChange> {
        match serde_json::from_str(frame.as_str()).unwrap() {
            ServerMsg::Change { changes, .. } => changes,
            other => panic!("{other:?}"),
        }
    }

    /// A value made secret is deleted for readers without secret rights (they would
    /// otherwise keep its old public value); readers with the right get the value, and a
    /// value made public again reaches everyone.
    #[test]
    fn a_value_made_secret_is_a_deletion_for_readers_without_secret_rights() {
        let secret = set(2, "X", "s3cr3t", true);
        let redacted = change_frame(&secret, false);
        assert!(!redacted.as_str().contains("s3cr3t"));
        let c = &changes(&redacted)[0];
        assert_eq!(
            (c.name.as_str(), c.delete, c.value.is_none()),
            ("X", true, true)
        );
        let c = &changes(&change_frame(&secret, true))[0];
        assert_eq!(
            (c.delete, c.value.clone()),
            (false, Some(Value::from("s3cr3t")))
        );
        let public = set(3, "X", "open", false);
        let c = &changes(&change_frame(&public, false))[0];
        assert_eq!(
            (c.delete, c.value.clone()),
            (false, Some(Value::from("open")))
        );
    }
}
