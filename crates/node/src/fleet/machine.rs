//! The rollout of one environment as the store keeps it ([`Record`]), and the one state
//! machine that changes it: pure functions of the record, the policy, how many agents
//! follow the environment and the time. Every node runs them between a read of the record
//! and a compare-and-swap of it (`fleet::update`), so the cluster agrees without a lock.
//!
//! Agents are named by their hello's `agent` (it survives a reconnect to another node).
//! Times are Unix milliseconds (shared by the nodes of a cluster and across restarts).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tether_core::protocol::Position;
use tether_core::rollout::Policy;

/// The rollout of the newest version an agent asked a slot for (or reported on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    /// The version this rollout is of; none before the first request.
    pub version: Option<Position>,
    /// Index of the current wave (0: the first), as last advanced.
    pub wave: usize,
    /// Agents given a slot for this version (they are the waves' members).
    pub granted: BTreeSet<String>,
    pub healthy: BTreeSet<String>,
    /// Agents that reported this version failed since the rollout started or resumed.
    pub failed: BTreeSet<String>,
    /// Agents whose failure a resume forgave: they reported, they no longer count.
    pub forgiven: BTreeSet<String>,
    /// When an agent last reported health of this version (the bake counts from there).
    pub last_report_ms: Option<u64>,
    /// Why the rollout stopped; none while it runs.
    pub halted: Option<String>,
    /// Slots held: agent → lease expiry.
    pub slots: BTreeMap<String, u64>,
    /// The version each slot was granted for (or last asked again for): only a report of
    /// that version or a newer one gives it back. A slot missing here (a record written
    /// before this was kept) is given back by any report.
    pub slot_at: BTreeMap<String, Position>,
    /// The most agents seen following the environment during this rollout: the slots and
    /// waves are sized on it, so a count that lags (a node just restarted) cannot shrink
    /// them mid-rollout. 0 in a record written before this was kept.
    pub agents: usize,
}

/// What a slot request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Grant,
    Hold { reason: String, halted: bool },
}

/// Newest first by epoch, then version.
pub fn newer(a: Position, b: Position) -> bool {
    (a.epoch, a.version) > (b.epoch, b.version)
}

impl Record {
    /// A request or report of `position`: a newer version than the record's starts a new
    /// rollout (which lifts a halt: a fix). Slots held stay held (their agents still act).
    /// The agents holding a slot (they act on the newer version under it) are its first
    /// members.
    fn follow(&mut self, position: Position) {
        if self.version.is_none_or(|v| newer(position, v)) {
            let slots = std::mem::take(&mut self.slots);
            let slot_at = std::mem::take(&mut self.slot_at);
            *self = Record {
                version: Some(position),
                granted: slots.keys().cloned().collect(),
                slots,
                slot_at,
                ..Record::default()
            };
        }
    }

    /// Whether `agent` reported its health of this rollout's version.
    fn reported(&self, agent: &str) -> bool {
        self.healthy.contains(agent) || self.failed.contains(agent) || self.forgiven.contains(agent)
    }

    /// Give back `agent`'s slot; it stays a member of its wave only if it reported.
    fn free(&mut self, agent: &str) -> bool {
        self.slot_at.remove(agent);
        if self.slots.remove(agent).is_none() {
            return false;
        }
        if !self.reported(agent) {
            self.granted.remove(agent);
        }
        true
    }

    /// Whether every agent granted so far reported its health.
    fn all_reported(&self) -> bool {
        self.granted.iter().all(|a| self.reported(a))
    }

    /// The wave the rollout is in at `now` for `sizes`, past the stored one when it is
    /// complete (full, every member reported) and baked; never past the last.
    pub fn current_wave(&self, sizes: &[usize], bake_ms: u64, now: u64) -> usize {
        let last = sizes.len().saturating_sub(1);
        let mut wave = self.wave.min(last);
        let baked = self
            .last_report_ms
            .is_none_or(|at| now >= at.saturating_add(bake_ms));
        while wave < last
            && self.halted.is_none()
            && self.granted.len() >= sizes[wave]
            && self.all_reported()
            && baked
        {
            wave += 1;
        }
        wave
    }

    /// Slots whose lease is still running at `now`.
    pub fn held(&self, now: u64) -> usize {
        self.slots.values().filter(|&&until| until > now).count()
    }
}

/// Drop the slots whose lease ran out at `now`: their agents vanished. One that never
/// reported is no longer a member of its wave either, so the slot goes to the next agent.
pub fn expire(rec: &mut Record, now: u64) -> Vec<String> {
    let gone: Vec<String> = rec
        .slots
        .iter()
        .filter(|(_, until)| **until <= now)
        .map(|(a, _)| a.clone())
        .collect();
    for a in &gone {
        rec.free(a);
    }
    gone
}

/// `agent` asks to act on `position`, with `n` agents following the environment. A holder
/// asking again (a reconnect) keeps its slot, renewed, and is granted again.
pub fn acquire(
    rec: &mut Record,
    policy: &Policy,
    n: usize,
    agent: &str,
    position: Position,
    now: u64,
    lease_ms: u64,
) -> Outcome {
    expire(rec, now);
    rec.follow(position);
    let until = now.saturating_add(lease_ms);
    if let Some(held) = rec.slots.get_mut(agent) {
        *held = until;
        let at = rec.slot_at.entry(agent.to_string()).or_insert(position);
        if newer(position, *at) {
            *at = position;
        }
        return Outcome::Grant;
    }
    if let Some(reason) = &rec.halted {
        return Outcome::Hold {
            reason: reason.clone(),
            halted: true,
        };
    }
    rec.agents = rec.agents.max(n);
    let n = rec.agents.max(1);
    let max = policy.slots(n);
    let held = rec.slots.len();
    if held >= max {
        return Outcome::Hold {
            reason: format!("{held} of {max} slots in use"),
            halted: false,
        };
    }
    if !rec.granted.contains(agent) {
        let sizes = policy.wave_sizes(n);
        rec.wave = rec.current_wave(&sizes, policy.bake_ms, now);
        let size = sizes[rec.wave];
        // The last wave is everyone, however many the count says (it may lag behind
        // agents that just connected).
        let last = rec.wave + 1 == sizes.len();
        if !last && rec.granted.len() >= size {
            let (k, w) = (rec.wave + 1, sizes.len());
            let reason = if rec.all_reported() {
                format!("wave {k} of {w} is baking ({} ms)", policy.bake_ms)
            } else {
                format!("wave {k} of {w} is full: waiting for its {size} agents' health")
            };
            return Outcome::Hold {
                reason,
                halted: false,
            };
        }
        rec.granted.insert(agent.to_string());
    }
    rec.slots.insert(agent.to_string(), until);
    rec.slot_at.insert(agent.to_string(), position);
    Outcome::Grant
}

/// `agent` reports its health of `position`: its slot is free when it was granted for
/// this version or an older one (a report of an older version, re-sent on a reconnect,
/// leaves a newer slot held); a failure of the rollout's version counts, and the rollout
/// halts at `max_failures`. The same word again (a reconnect re-sends it) changes nothing:
/// a failure a resume forgave stays forgiven. Returns the halt's reason when this report
/// halted it (once).
pub fn report(
    rec: &mut Record,
    policy: &Policy,
    agent: &str,
    position: Position,
    healthy: bool,
    now: u64,
) -> Option<String> {
    let frees = rec
        .slot_at
        .get(agent)
        .is_none_or(|&at| !newer(at, position));
    rec.follow(position);
    if rec.version != Some(position) {
        // An older version: only the slot counts. A holder carried over into this
        // rollout that reports the older one did not act on this one under it.
        if frees {
            rec.free(agent);
        }
        return None;
    }
    if frees {
        rec.slots.remove(agent);
        rec.slot_at.remove(agent);
    }
    let again = if healthy {
        rec.healthy.contains(agent)
    } else {
        rec.failed.contains(agent) || rec.forgiven.contains(agent)
    };
    if again {
        return None;
    }
    rec.forgiven.remove(agent);
    if healthy {
        rec.failed.remove(agent);
        rec.healthy.insert(agent.to_string());
    } else {
        rec.healthy.remove(agent);
        rec.failed.insert(agent.to_string());
    }
    rec.last_report_ms = Some(now);
    let failures = rec.failed.len();
    if rec.halted.is_none() && failures >= policy.max_failures as usize {
        let reason = format!(
            "halted: {failures} agent{} failed version {} (max_failures {})",
            if failures == 1 { "" } else { "s" },
            position.version,
            policy.max_failures
        );
        rec.halted = Some(reason.clone());
        return Some(reason);
    }
    None
}

/// `agent` gives its slot back without a report (nothing to act on, or it stops): it is
/// no longer a member of its wave unless it reported.
pub fn release(rec: &mut Record, agent: &str) {
    rec.free(agent);
}

/// Extend the leases of `agents`' slots (those connected to the renewing node).
pub fn renew<'a>(
    rec: &mut Record,
    agents: impl IntoIterator<Item = &'a str>,
    now: u64,
    lease_ms: u64,
) {
    for a in agents {
        if let Some(until) = rec.slots.get_mut(a) {
            *until = (*until).max(now.saturating_add(lease_ms));
        }
    }
}

/// Lift a halt and forget the failures (the failed agents stay reported).
pub fn resume(rec: &mut Record) -> bool {
    let was = rec.halted.take().is_some();
    let failed = std::mem::take(&mut rec.failed);
    rec.forgiven.extend(failed);
    was
}

#[cfg(test)]
mod tests;
