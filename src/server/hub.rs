//! The node's fan-out point: committed change sets are published here once (frames
//! serialized once, with and without secret values) and every agent connection of this
//! node picks up those of its environments. Also the registry of connected agents and
//! their acknowledgements (rollout status), and the node's counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::store::{ChangeSet, Snapshot};
use crate::protocol::{Position, ServerMsg, WireChange, WireEntry};

/// A change set with its frames ready to send.
pub struct Published {
    pub set: ChangeSet,
    /// With every value.
    pub full: Utf8Bytes,
    /// Secret values left out, for tokens that may not read them.
    pub redacted: Utf8Bytes,
}

impl Published {
    pub fn frame(&self, secrets: bool) -> Utf8Bytes {
        if secrets {
            self.full.clone()
        } else {
            self.redacted.clone()
        }
    }
}

/// Serialize a change frame, leaving out secret values unless `secrets`.
pub fn change_frame(set: &ChangeSet, secrets: bool) -> Utf8Bytes {
    let changes: Vec<WireChange> = set
        .changes
        .iter()
        .map(|c| WireChange {
            value: if c.secret && !secrets {
                None
            } else {
                c.value.clone()
            },
            ..c.clone()
        })
        .collect();
    encode(&ServerMsg::Change {
        env: set.env.clone(),
        position: set.position,
        changes,
    })
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

/// One agent's acknowledgement of an environment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AckState {
    pub position: Position,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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

pub struct Hub {
    tx: broadcast::Sender<Arc<Published>>,
    latest: Mutex<HashMap<String, Position>>,
    agents: Mutex<HashMap<u64, AgentInfo>>,
    /// Bumped by every change to `agents`, so that a copy kept elsewhere knows it is stale.
    generation: AtomicU64,
    next_id: AtomicU64,
    pub counters: Counters,
}

impl Hub {
    pub fn new(capacity: usize) -> Hub {
        let (tx, _) = broadcast::channel(capacity);
        Hub {
            tx,
            latest: Mutex::default(),
            agents: Mutex::default(),
            generation: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// Publish a committed change set to every connection of this node.
    pub fn publish(&self, set: ChangeSet) {
        self.note_position(&set.env, set.position);
        let p = Published {
            full: change_frame(&set, true),
            redacted: change_frame(&set, false),
            set,
        };
        // No receivers is fine: no agent follows anything on this node right now.
        let _ = self.tx.send(Arc::new(p));
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
        let p = Published {
            full: Utf8Bytes::from_static(""),
            redacted: Utf8Bytes::from_static(""),
            set,
        };
        let _ = self.tx.send(Arc::new(p));
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

    pub fn agent_count(&self) -> usize {
        self.agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
