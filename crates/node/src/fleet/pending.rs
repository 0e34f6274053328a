//! Health reports and releases the store did not take (too much contention, an outage):
//! kept in order and retried by the rollout task until it does, so a slot is never left
//! held, nor a failure uncounted, because one write was dropped.

use std::sync::atomic::Ordering;

use tether_core::protocol::Position;

use super::{Fleet, lock, machine, unix_ms, update};
use crate::Node;
use crate::store::StoreError;

/// At most this many are kept (the oldest go first, with a warning).
const MAX_UNSENT: usize = 10_000;

/// What an agent said that must reach its environment's rollout record.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Report { position: Position, healthy: bool },
    Release,
}

#[derive(Clone, Debug)]
pub(super) struct Unsent {
    pub env: String,
    pub agent: String,
    pub op: Op,
}

impl Fleet {
    /// Keep `u` for the rollout task to retry.
    pub(super) fn queue(&self, u: Unsent) {
        let mut q = lock(&self.unsent);
        if q.len() >= MAX_UNSENT {
            let gone = q.remove(0);
            tracing::warn!(env = %gone.env, agent = %gone.agent, "too many rollout reports waiting for the store; the oldest is dropped");
        }
        q.push(u);
    }

    /// Apply `u` to its record (nothing when the environment has no policy now). A slot
    /// the record no longer has is no longer renewed by this node.
    pub(super) async fn apply(&self, node: &Node, u: &Unsent) -> Result<(), StoreError> {
        let Some(policy) = Fleet::current_policy(&node.store, &u.env).await? else {
            self.forget_agent_slot(&u.env, &u.agent, None);
            return Ok(());
        };
        let (halt, rec) = match u.op {
            Op::Report { position, healthy } => {
                let now = unix_ms();
                update(&node.store, &u.env, |rec| {
                    machine::report(rec, &policy, &u.agent, position, healthy, now)
                })
                .await?
            }
            Op::Release => update(&node.store, &u.env, |rec| machine::release(rec, &u.agent))
                .await
                .map(|((), rec)| (None, rec))?,
        };
        if let (Some(reason), Op::Report { position, .. }) = (halt, &u.op) {
            self.halts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(env = %u.env, %position, agent = %u.agent, reason = %reason, "rollout halted");
        }
        self.forget_agent_slot(&u.env, &u.agent, Some(&rec));
        self.wake.notify_one();
        Ok(())
    }

    /// Stop renewing `agent`'s slot of `env` unless `rec` (when given) still has it.
    fn forget_agent_slot(&self, env: &str, agent: &str, rec: Option<&machine::Record>) {
        if rec.is_some_and(|r| r.slots.contains_key(agent)) {
            return;
        }
        if let Some(h) = lock(&self.holders).get_mut(env) {
            h.retain(|_, a| a != agent);
        }
    }
}

/// Retry what the store did not take, in order; what fails again (and anything after it
/// for the same environment) waits for the next round.
pub(super) async fn flush(node: &Node) {
    let fleet = &node.fleet;
    let list = std::mem::take(&mut *lock(&fleet.unsent));
    let mut again: Vec<Unsent> = Vec::new();
    for u in list {
        if again.iter().any(|a| a.env == u.env) {
            again.push(u);
            continue;
        }
        if let Err(e) = fleet.apply(node, &u).await {
            tracing::debug!(env = %u.env, agent = %u.agent, error = %e, "a rollout report still waits for the store");
            again.push(u);
        }
    }
    let mut q = lock(&fleet.unsent);
    let newer = std::mem::take(&mut *q);
    *q = again;
    q.extend(newer);
}
