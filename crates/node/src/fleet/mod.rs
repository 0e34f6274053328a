//! Paced rollouts on the node side (`docs/rollouts.md`): each environment's policy, the
//! slots agents ask for before they act, health reports that give them back and may halt
//! the rollout, and what a node does for its own connections: pending requests answered
//! `hold` and retried, leases renewed, policies pushed.
//!
//! - `machine`: the rollout record and the one state machine that changes it (pure).
//! - `status`: the rollout object of `GET /v1/envs/{env}/rollout` and `/metrics`.
//! - `api`: the HTTP routes (policy, resume, rollout); `metrics`: the `/metrics` series.
//! - `tick`: the node's background task (retries, renewals, policy polling).
//!
//! The record lives in the store and is only changed by compare-and-swap of its JSON
//! ([`update`]), so every node of a cluster sees the same slots, waves and halt, and a
//! restart loses none of them.

pub mod api;
pub mod machine;
pub mod metrics;
mod pending;
pub mod status;
mod tick;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tether_core::protocol::{Position, ServerMsg};
use tether_core::rollout::Policy;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Node;
use super::store::{Store, StoreError};
use machine::{Outcome, Record, newer};

pub use tick::start;

/// Default lease of a slot (`slot_lease`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// How long a count of the agents following an environment is used.
const COUNT_TTL: Duration = Duration::from_secs(1);

/// Now, in Unix milliseconds (the record's clock, shared by the cluster).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Frames for one connection from outside its task (grants, holds, policies).
#[derive(Default)]
pub struct Mailbox {
    queue: Mutex<Vec<ServerMsg>>,
    notify: Notify,
}

impl Mailbox {
    pub fn post(&self, msg: ServerMsg) {
        lock(&self.queue).push(msg);
        self.notify.notify_one();
    }

    /// Resolves once something was posted (a post before the wait counts).
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    pub fn take(&self) -> Vec<ServerMsg> {
        std::mem::take(&mut *lock(&self.queue))
    }
}

struct Member {
    agent: String,
    envs: Vec<String>,
    mailbox: std::sync::Arc<Mailbox>,
}

/// A slot request that waits.
#[derive(Clone)]
struct Waiter {
    conn: u64,
    agent: String,
    position: Position,
    /// The hold reason last sent.
    told: Option<String>,
}

/// One node's share of the rollouts: its connections, their pending requests and held
/// slots, and what it knows of the policies.
pub struct Fleet {
    lease_ms: AtomicU64,
    /// Every environment's policy as last read; none until read once.
    policies: Mutex<Option<HashMap<String, Policy>>>,
    members: Mutex<HashMap<u64, Member>>,
    /// By environment, in arrival order.
    waiters: Mutex<HashMap<String, BTreeMap<u64, Waiter>>>,
    next_waiter: AtomicU64,
    /// Slots held by this node's connections: environment → connection → agent.
    holders: Mutex<HashMap<String, HashMap<u64, String>>>,
    counts: Mutex<Option<(Instant, HashMap<String, usize>)>>,
    /// Rollouts this node halted (`tether_rollout_halts_total`).
    pub halts: AtomicU64,
    /// Something freed a slot here: retry the waiters now.
    wake: Notify,
    /// Reports and releases the store did not take yet, in arrival order.
    unsent: Mutex<Vec<pending::Unsent>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new(DEFAULT_LEASE)
    }
}

impl Fleet {
    pub fn new(lease: Duration) -> Fleet {
        Fleet {
            lease_ms: AtomicU64::new(lease.as_millis() as u64),
            policies: Mutex::default(),
            members: Mutex::default(),
            waiters: Mutex::default(),
            next_waiter: AtomicU64::new(1),
            holders: Mutex::default(),
            counts: Mutex::default(),
            halts: AtomicU64::new(0),
            wake: Notify::new(),
            unsent: Mutex::default(),
        }
    }

    pub fn set_lease(&self, lease: Duration) {
        self.lease_ms
            .store(lease.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::Relaxed))
    }

    /// A connection of `agent` following `envs`: its mailbox.
    pub fn join(&self, conn: u64, agent: &str, envs: Vec<String>) -> std::sync::Arc<Mailbox> {
        let mailbox = std::sync::Arc::new(Mailbox::default());
        lock(&self.members).insert(
            conn,
            Member {
                agent: agent.to_string(),
                envs,
                mailbox: mailbox.clone(),
            },
        );
        mailbox
    }

    /// The connection is gone: its requests are dropped and its slots no longer renewed
    /// (they expire with their lease unless the agent asks again through another node).
    pub fn leave(&self, conn: u64) {
        lock(&self.members).remove(&conn);
        lock(&self.waiters).retain(|_, w| {
            w.retain(|_, w| w.conn != conn);
            !w.is_empty()
        });
        lock(&self.holders).retain(|_, h| {
            h.remove(&conn);
            !h.is_empty()
        });
    }

    fn agent(&self, conn: u64) -> Option<String> {
        lock(&self.members).get(&conn).map(|m| m.agent.clone())
    }

    /// Every policy, from the store (not the cache).
    pub async fn read_policies(store: &Store) -> Result<HashMap<String, Policy>, StoreError> {
        let mut out = HashMap::new();
        for (env, json) in store.policies().await? {
            match serde_json::from_str(&json) {
                Ok(p) => {
                    out.insert(env, p);
                }
                Err(e) => {
                    tracing::warn!(env = %env, error = %e, "a stored rollout policy does not parse; ignored")
                }
            }
        }
        Ok(out)
    }

    /// `env`'s policy as the store has it now: slots are counted under the policy every
    /// node sees, not one this node has not heard of yet.
    pub async fn current_policy(store: &Store, env: &str) -> Result<Option<Policy>, StoreError> {
        Ok(Fleet::read_policies(store).await?.remove(env))
    }

    /// `env`'s policy as this node knows it, for the `policy` frames (read from the store
    /// the first time, then every second by the rollout task).
    pub async fn policy(&self, store: &Store, env: &str) -> Result<Option<Policy>, StoreError> {
        if let Some(all) = &*lock(&self.policies) {
            return Ok(all.get(env).cloned());
        }
        let all = Fleet::read_policies(store).await?;
        let p = all.get(env).cloned();
        lock(&self.policies).get_or_insert(all);
        Ok(p)
    }

    /// Tell this node's connections following `env` its policy (and, when it was cleared,
    /// drop their requests: they act on their own now).
    pub fn push_policy(&self, env: &str, policy: Option<&Policy>) {
        for m in lock(&self.members).values() {
            if m.envs.iter().any(|e| e == env) {
                m.mailbox.post(ServerMsg::Policy {
                    env: env.to_string(),
                    policy: policy.cloned(),
                });
            }
        }
        if policy.is_none() {
            lock(&self.waiters).remove(env);
            lock(&self.holders).remove(env);
        }
    }

    /// A policy was set or cleared through this node: remember it and tell the agents now.
    pub fn policy_changed(&self, env: &str, policy: Option<Policy>) {
        if let Some(all) = &mut *lock(&self.policies) {
            match &policy {
                Some(p) => all.insert(env.to_string(), p.clone()),
                None => all.remove(env),
            };
        }
        self.push_policy(env, policy.as_ref());
        self.wake.notify_one();
    }

    /// How many agents follow `env` in the cluster (this node's alone when it has no
    /// cluster registry); counted at most once a second.
    pub async fn following(&self, node: &Node, env: &str) -> usize {
        if let Some((at, counts)) = &*lock(&self.counts) {
            if at.elapsed() < COUNT_TTL {
                return counts.get(env).copied().unwrap_or(0);
            }
        }
        let registry = super::rollout::registry(node).await;
        let mut counts = HashMap::<String, usize>::new();
        for (_, a) in &registry.agents {
            for env in a.envs.keys() {
                *counts.entry(env.clone()).or_default() += 1;
            }
        }
        let n = counts.get(env).copied().unwrap_or(0);
        *lock(&self.counts) = Some((Instant::now(), counts));
        n
    }

    fn forget_request(&self, conn: u64, env: &str) {
        if let Some(w) = lock(&self.waiters).get_mut(env) {
            w.retain(|_, w| w.conn != conn);
        }
    }

    fn forget_slot(&self, conn: u64, env: &str) {
        if let Some(h) = lock(&self.holders).get_mut(env) {
            h.remove(&conn);
        }
    }

    /// A slot request of connection `conn` for `env` at `position`: the answer to send now
    /// (a grant, or a hold while it waits here).
    pub async fn request(
        &self,
        node: &Node,
        conn: u64,
        env: &str,
        position: Position,
    ) -> ServerMsg {
        let agent = self.agent(conn).unwrap_or_default();
        self.forget_request(conn, env);
        let grant = ServerMsg::Grant {
            env: env.to_string(),
            position,
        };
        let policy = match Fleet::current_policy(&node.store, env).await {
            Ok(None) => return grant,
            Ok(Some(p)) => p,
            Err(e) => return self.wait(conn, agent, env, position, unavailable(&e), false),
        };
        let n = self.following(node, env).await;
        let (now, lease) = (unix_ms(), self.lease_ms.load(Ordering::Relaxed));
        let done = update(&node.store, env, |rec| {
            machine::acquire(rec, &policy, n, &agent, position, now, lease)
        })
        .await;
        match done {
            Ok((Outcome::Grant, _)) => {
                self.hold_slot(conn, env, agent);
                grant
            }
            Ok((Outcome::Hold { reason, halted }, _)) => {
                self.wait(conn, agent, env, position, reason, halted)
            }
            Err(e) => self.wait(conn, agent, env, position, unavailable(&e), false),
        }
    }

    fn hold_slot(&self, conn: u64, env: &str, agent: String) {
        lock(&self.holders)
            .entry(env.to_string())
            .or_default()
            .insert(conn, agent);
    }

    fn wait(
        &self,
        conn: u64,
        agent: String,
        env: &str,
        position: Position,
        reason: String,
        halted: bool,
    ) -> ServerMsg {
        let seq = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        lock(&self.waiters)
            .entry(env.to_string())
            .or_default()
            .insert(
                seq,
                Waiter {
                    conn,
                    agent,
                    position,
                    told: Some(reason.clone()),
                },
            );
        ServerMsg::Hold {
            env: env.to_string(),
            reason,
            halted,
        }
    }

    /// Connection `conn` reported its health of `env` at `position`: its slot is free
    /// (when granted for that version or an older one); a failure counts against the
    /// rollout (and may halt it). A report the store does not take is retried later.
    pub async fn report(
        &self,
        node: &Node,
        conn: u64,
        env: &str,
        position: Position,
        healthy: bool,
    ) {
        // A request for a newer version stays: the agent reports a version it acted on
        // without a slot while the next one waits for one.
        if let Some(w) = lock(&self.waiters).get_mut(env) {
            w.retain(|_, w| w.conn != conn || newer(w.position, position));
        }
        let Some(agent) = self.agent(conn) else {
            return;
        };
        let op = pending::Op::Report { position, healthy };
        self.send(node, env, agent, op).await;
    }

    /// Connection `conn` gives back its slot (or its request) for `env`.
    pub async fn release(&self, node: &Node, conn: u64, env: &str) {
        self.forget_request(conn, env);
        self.forget_slot(conn, env);
        let Some(agent) = self.agent(conn) else {
            return;
        };
        self.send(node, env, agent, pending::Op::Release).await;
    }

    /// Apply what `agent` said to `env`'s record, or keep it for the rollout task.
    async fn send(&self, node: &Node, env: &str, agent: String, op: pending::Op) {
        let u = pending::Unsent {
            env: env.to_string(),
            agent,
            op,
        };
        let pending = lock(&self.unsent).iter().any(|p| p.env == env);
        // Behind one that waits: in order, after it.
        let done = if pending {
            Err(StoreError::Unavailable("earlier reports wait".into()))
        } else {
            self.apply(node, &u).await
        };
        if let Err(e) = done {
            tracing::warn!(env, agent = %u.agent, error = %e, "cannot record a rollout report now; it will be retried");
            self.queue(u);
        }
        self.wake.notify_one();
    }

    /// Lift `env`'s halt and forget its failures; whether it was halted.
    pub async fn resume(&self, node: &Node, env: &str) -> Result<bool, StoreError> {
        let (was, _) = update(&node.store, env, machine::resume).await?;
        if was {
            tracing::info!(env, "rollout resumed");
        }
        self.wake.notify_one();
        Ok(was)
    }
}

fn unavailable(e: &StoreError) -> String {
    format!("the rollout state is unavailable ({e}); waiting")
}

/// Run `f` on `env`'s record and store the result if it changed, by compare-and-swap:
/// when another node changed the record meanwhile, read it again and run `f` again. `f`
/// is a state machine step, so running it again is safe.
pub async fn update<T>(
    store: &Store,
    env: &str,
    mut f: impl FnMut(&mut Record) -> T,
) -> Result<(T, Record), StoreError> {
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let raw = store.rollout(env).await?;
        let mut rec = read_record(env, raw.as_deref());
        let before = rec.clone();
        let out = f(&mut rec);
        if rec == before {
            return Ok((out, rec));
        }
        let new = serde_json::to_string(&rec)
            .map_err(|e| StoreError::Unavailable(format!("rollout record: {e}")))?;
        if store.swap_rollout(env, raw, new).await? {
            return Ok((out, rec));
        }
    }
    Err(StoreError::Unavailable(format!(
        "the rollout of {env:?} changed too often to be updated"
    )))
}

/// Compare-and-swap attempts of one [`update`] before it gives up (about 1.5 s at most).
const ATTEMPTS: u32 = 20;

/// The pause before attempt `attempt` (from 1): random in the upper half of a window that
/// doubles from 2 ms to 100 ms, so nodes that collided spread out.
fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let window = (2u64 << attempt.min(16)).min(100);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(window / 2 + random % (window / 2 + 1))
}

#[cfg(test)]
mod tests;

/// `env`'s record from its stored JSON (a record that does not parse starts over).
pub fn read_record(env: &str, raw: Option<&str>) -> Record {
    match raw.map(serde_json::from_str::<Record>) {
        None => Record::default(),
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            tracing::warn!(env, error = %e, "the stored rollout record does not parse; starting it over");
            Record::default()
        }
    }
}
