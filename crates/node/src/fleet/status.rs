//! The rollout object (`docs/rollouts.md`, "Seeing it"): for the newest version, how many
//! of the agents following an environment applied it, are healthy, failed or pending; and,
//! under a policy, the wave, the slots and the halt. Counted from the agent registry (the
//! cluster's) and the rollout record; answered by `GET /v1/envs/{env}/rollout`, inside
//! `/status`, and as `/metrics`.

use serde_json::{Value, json};
use tether_core::protocol::Position;
use tether_core::rollout::{HealthState, Policy};

use super::machine::Record;
use crate::hub::AckState;
use crate::rollout::Registry;

/// The counts of one environment's agents for the newest version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub agents: usize,
    /// Acknowledged it applied (healthy ones included, failed ones not).
    pub applied: usize,
    pub healthy: usize,
    /// Failed to apply it, or reported it failed.
    pub failed: usize,
    /// Of the failed, those that went back to their last healthy values.
    pub rolled_back: usize,
}

impl Counts {
    pub fn pending(&self) -> usize {
        self.agents - self.applied - self.failed
    }
}

/// Count the agents of `registry` following `env` by their last word on `current`.
pub fn count<'a>(
    current: Position,
    acks: impl IntoIterator<Item = Option<&'a AckState>>,
) -> Counts {
    let mut c = Counts::default();
    for ack in acks {
        c.agents += 1;
        let Some(a) = ack.filter(|a| a.position == current) else {
            continue;
        };
        if !a.ok || a.health == Some(HealthState::Failed) {
            c.failed += 1;
            c.rolled_back += usize::from(a.rolled_back);
        } else {
            c.applied += 1;
            c.healthy += usize::from(a.health == Some(HealthState::Healthy));
        }
    }
    c
}

/// The acks of `env`'s followers in `registry`.
pub fn acks<'a>(
    env: &'a str,
    registry: &'a Registry,
) -> impl Iterator<Item = Option<&'a AckState>> {
    registry
        .agents
        .iter()
        .filter_map(move |(_, a)| a.envs.get(env).map(Option::as_ref))
}

/// The rollout object. `record` is the stored rollout (under `policy` only); `now` in
/// Unix milliseconds.
pub fn object(
    current: Position,
    c: Counts,
    policy: Option<&Policy>,
    record: Option<&Record>,
    now: u64,
) -> Value {
    // Slots held for any version count (an older rollout's agents still act); the rest
    // of the record only when it is of the newest version.
    let held = record.map_or(0, |r| r.held(now));
    let record = record.filter(|r| r.version == Some(current));
    let halted = policy.and(record).and_then(|r| r.halted.clone());
    let state = if halted.is_some() {
        "halted"
    } else if c.agents == 0 {
        "idle"
    } else if c.healthy + c.failed == c.agents {
        "done"
    } else {
        "rolling"
    };
    let mut body = json!({
        "state": state,
        "version": current.version,
        "agents": c.agents,
        "applied": c.applied,
        "healthy": c.healthy,
        "failed": c.failed,
        "rolled_back": c.rolled_back,
        "pending": c.pending(),
    });
    if let Some(reason) = halted {
        body["halted_reason"] = json!(reason);
    }
    if let Some(p) = policy {
        // Sized as the rollout is: on the most agents it saw following.
        let n = record.map_or(0, |r| r.agents).max(c.agents).max(1);
        let sizes = p.wave_sizes(n);
        let wave = record.map_or(0, |r| r.current_wave(&sizes, p.bake_ms, now));
        body["wave"] = json!(wave + 1);
        body["waves"] = json!(sizes.len());
        body["wave_sizes"] = json!(sizes);
        body["slots"] = json!({"held": held, "max": p.slots(n)});
        body["policy"] = json!(p);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::protocol::Epoch;
    use tether_core::rollout::Amount;

    fn at(version: u64) -> Position {
        Position {
            epoch: Epoch(1),
            version,
        }
    }

    fn ack(version: u64, ok: bool, health: Option<HealthState>, rolled_back: bool) -> AckState {
        AckState {
            position: at(version),
            ok,
            error: None,
            health,
            health_error: None,
            rolled_back,
        }
    }

    #[test]
    fn agents_count_by_their_last_word_on_the_newest_version() {
        let acks = [
            ack(5, true, Some(HealthState::Healthy), false),
            ack(5, true, None, false),
            ack(5, true, Some(HealthState::Failed), true),
            ack(5, false, None, false),
            ack(4, true, Some(HealthState::Healthy), false),
        ];
        let mut list: Vec<Option<&AckState>> = acks.iter().map(Some).collect();
        list.push(None);
        let c = count(at(5), list);
        assert_eq!(
            c,
            Counts {
                agents: 6,
                applied: 2,
                healthy: 1,
                failed: 2,
                rolled_back: 1
            }
        );
        assert_eq!(c.pending(), 2);
        let o = object(at(5), c, None, None, 0);
        assert_eq!(o["state"], "rolling");
        assert!(o.get("wave").is_none() && o.get("slots").is_none());
    }

    #[test]
    fn under_a_policy_the_object_has_waves_slots_and_the_halt() {
        let mut p = Policy::new(Amount::Count(2));
        p.waves = vec![Amount::Count(1), Amount::Percent(50)];
        let mut r = Record {
            version: Some(at(7)),
            halted: Some("halted: 1 agent failed version 7 (max_failures 1)".into()),
            ..Record::default()
        };
        r.slots.insert("a".into(), 10_000);
        r.slots.insert("b".into(), 10);
        let c = Counts {
            agents: 4,
            failed: 1,
            ..Counts::default()
        };
        let o = object(at(7), c, Some(&p), Some(&r), 100);
        assert_eq!(o["state"], "halted");
        assert_eq!(
            o["halted_reason"],
            "halted: 1 agent failed version 7 (max_failures 1)"
        );
        assert_eq!(o["wave"], 1);
        assert_eq!(o["waves"], 3);
        assert_eq!(o["wave_sizes"], json!([1, 2, 4]));
        assert_eq!(o["slots"], json!({"held": 1, "max": 2}));
        assert_eq!(o["policy"]["max_unavailable"], 2);
        // Sized as the rollout is, on the most agents it saw (this node may count fewer).
        let big = Record {
            agents: 10,
            ..r.clone()
        };
        let o = object(at(7), c, Some(&p), Some(&big), 100);
        assert_eq!(o["wave_sizes"], json!([1, 5, 10]));
        // A newer version than the halted one: a fix, not halted.
        let o = object(at(8), c, Some(&p), Some(&r), 100);
        assert_eq!(o["state"], "rolling");
        assert_eq!(o["version"], 8);
        let done = Counts {
            agents: 2,
            applied: 1,
            healthy: 1,
            failed: 1,
            rolled_back: 1,
        };
        assert_eq!(object(at(8), done, None, None, 0)["state"], "done");
        assert_eq!(
            object(at(8), Counts::default(), None, None, 0)["state"],
            "idle"
        );
    }
}
