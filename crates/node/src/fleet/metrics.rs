//! The rollout series of the node's `/metrics` (`docs/rollouts.md`): for each environment
//! with a policy or with agents connected to this node, its agents by state for the newest
//! version, slots held, wave and halt, as the rollout object counts them; and the halts
//! this node made.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use tether_core::prom::{Kind, head, sample};

use super::{Fleet, read_record, status, unix_ms};
use crate::Node;

/// Append the rollout series; `covers` says which environments may be shown.
pub async fn render(node: &Node, out: &mut String, covers: &(dyn Fn(&str) -> bool + Sync)) {
    head(
        out,
        "tether_rollout_halts_total",
        Kind::Counter,
        "Rollouts halted by this node (max_failures agents reported a version failed).",
    );
    sample(
        out,
        "tether_rollout_halts_total",
        &[],
        node.fleet.halts.load(Ordering::Relaxed),
    );
    let Ok(policies) = Fleet::read_policies(&node.store).await else {
        return;
    };
    let Ok(envs) = node.store.list().await else {
        return;
    };
    let local: BTreeSet<String> = node
        .hub
        .agents()
        .into_iter()
        .flat_map(|a| a.envs.into_keys())
        .collect();
    let shown: Vec<_> = envs
        .into_iter()
        .filter(|e| (policies.contains_key(&e.env) || local.contains(&e.env)) && covers(&e.env))
        .collect();
    if shown.is_empty() {
        return;
    }
    let registry = crate::rollout::registry(node).await;
    let now = unix_ms();
    let mut rows = Vec::new();
    for e in shown {
        let policy = policies.get(&e.env);
        let record = match policy {
            Some(_) => match node.store.rollout(&e.env).await {
                Ok(raw) => Some(read_record(&e.env, raw.as_deref())),
                Err(_) => None,
            },
            None => None,
        };
        let counts = status::count(e.position, status::acks(&e.env, &registry));
        let object = status::object(e.position, counts, policy, record.as_ref(), now);
        rows.push((e.env, counts, object));
    }
    head(
        out,
        "tether_rollout_agents",
        Kind::Gauge,
        "Agents following each environment by where they stand on its newest version: applied, healthy, failed, pending.",
    );
    for (env, c, _) in &rows {
        for (state, n) in [
            ("applied", c.applied),
            ("healthy", c.healthy),
            ("failed", c.failed),
            ("pending", c.pending()),
        ] {
            sample(
                out,
                "tether_rollout_agents",
                &[("env", env), ("state", state)],
                n,
            );
        }
    }
    let gauges = [
        (
            "tether_rollout_slots_held",
            "Rollout slots held (agents acting on a change) under the environment's policy.",
        ),
        (
            "tether_rollout_wave",
            "The rollout's current wave, 1 to the number of waves (0: no policy).",
        ),
        (
            "tether_rollout_halted",
            "1 while the environment's rollout is halted.",
        ),
    ];
    for (name, help) in gauges {
        head(out, name, Kind::Gauge, help);
        for (env, _, o) in &rows {
            let value = match name {
                "tether_rollout_slots_held" => o["slots"]["held"].as_u64().unwrap_or(0),
                "tether_rollout_wave" => o["wave"].as_u64().unwrap_or(0),
                _ => u64::from(o["state"] == "halted"),
            };
            sample(out, name, &[("env", env)], value);
        }
    }
}
