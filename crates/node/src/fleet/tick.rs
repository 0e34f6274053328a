//! The node's rollout task: retries the reports and releases the store did not take, and
//! its connections' pending slot requests (at once when a
//! slot frees here, and every 250 ms for frees on other nodes, expired leases and waves
//! that finished baking), renews the leases of slots its connections hold (every third of
//! a lease), and reads the policies every second to tell its agents of changes made
//! through other nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tether_core::protocol::ServerMsg;
use tokio::time::Instant;
use tracing::Instrument;

use super::machine::{self, Outcome};
use super::{Fleet, Waiter, lock, unavailable, unix_ms, update};
use crate::Node;

const RETRY: Duration = Duration::from_millis(250);
const POLL: Duration = Duration::from_secs(1);

/// Run the node's rollout task until the node shuts down.
pub fn start(node: Arc<Node>) {
    let span = tracing::info_span!("rollouts", node = %node.id);
    let tasks = node.tasks.clone();
    let work = async move {
        let shutdown = node.shutdown.clone();
        let (mut renewed, mut polled) = (Instant::now(), None::<Instant>);
        loop {
            if polled.is_none_or(|at| at.elapsed() >= POLL) {
                poll_policies(&node).await;
                polled = Some(Instant::now());
            }
            super::pending::flush(&node).await;
            retry(&node).await;
            if renewed.elapsed() >= node.fleet.lease() / 3 {
                renew(&node).await;
                renewed = Instant::now();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = node.fleet.wake.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    };
    tasks.spawn(crate::panics::vital("rollouts", work).instrument(span));
}

/// Read every policy; tell this node's agents of those that changed.
pub(super) async fn poll_policies(node: &Node) {
    let fleet = &node.fleet;
    let fresh = match Fleet::read_policies(&node.store).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the rollout policies");
            return;
        }
    };
    let old = lock(&fleet.policies).replace(fresh.clone());
    let old = old.unwrap_or_default();
    for (env, p) in &fresh {
        if old.get(env) != Some(p) {
            tracing::info!(env = %env, "rollout policy changed");
            fleet.push_policy(env, Some(p));
        }
    }
    for env in old.keys().filter(|e| !fresh.contains_key(*e)) {
        tracing::info!(env = %env, "rollout policy cleared");
        fleet.push_policy(env, None);
    }
}

/// Try every pending request again, one compare-and-swap per environment.
pub(super) async fn retry(node: &Node) {
    let fleet = &node.fleet;
    let pending: HashMap<String, BTreeMap<u64, Waiter>> = lock(&fleet.waiters).clone();
    for (env, waiters) in pending {
        let policy = match Fleet::current_policy(&node.store, &env).await {
            Ok(Some(p)) => p,
            // Cleared (perhaps set again since, unseen by the policy polling): its agents
            // are told now (`policy` null) and act on their own; a policy set again is
            // then news to the polling, which sends it.
            Ok(None) => {
                fleet.policy_changed(&env, None);
                continue;
            }
            Err(_) => continue,
        };
        let n = fleet.following(node, &env).await;
        let (now, lease) = (unix_ms(), fleet.lease_ms.load(Ordering::Relaxed));
        let list: Vec<(u64, Waiter)> = waiters.into_iter().collect();
        let outcomes = match update(&node.store, &env, |rec| {
            list.iter()
                .map(|(_, w)| machine::acquire(rec, &policy, n, &w.agent, w.position, now, lease))
                .collect::<Vec<_>>()
        })
        .await
        {
            Ok((o, _)) => o,
            Err(e) => {
                let reason = unavailable(&e);
                list.iter()
                    .map(|_| Outcome::Hold {
                        reason: reason.clone(),
                        halted: false,
                    })
                    .collect()
            }
        };
        for ((seq, w), outcome) in list.into_iter().zip(outcomes) {
            answer(fleet, &env, seq, w, outcome);
        }
    }
}

/// Send a retried request's outcome: a grant, or a hold whose reason changed.
fn answer(fleet: &Fleet, env: &str, seq: u64, w: Waiter, outcome: Outcome) {
    let mailbox = lock(&fleet.members).get(&w.conn).map(|m| m.mailbox.clone());
    let mut waiters = lock(&fleet.waiters);
    let Some(queue) = waiters.get_mut(env) else {
        return;
    };
    // Taken back meanwhile (a release, a new request, the connection gone).
    let Some(current) = queue.get_mut(&seq) else {
        return;
    };
    match outcome {
        Outcome::Grant => {
            queue.remove(&seq);
            if queue.is_empty() {
                waiters.remove(env);
            }
            drop(waiters);
            lock(&fleet.holders)
                .entry(env.to_string())
                .or_default()
                .insert(w.conn, w.agent);
            if let Some(m) = mailbox {
                m.post(ServerMsg::Grant {
                    env: env.to_string(),
                    position: w.position,
                });
            }
        }
        Outcome::Hold { reason, halted } => {
            if current.told.as_deref() == Some(reason.as_str()) {
                return;
            }
            current.told = Some(reason.clone());
            drop(waiters);
            if let Some(m) = mailbox {
                m.post(ServerMsg::Hold {
                    env: env.to_string(),
                    reason,
                    halted,
                });
            }
        }
    }
}

/// Extend the leases of the slots this node's connections hold; forget those the record
/// no longer has (expired, or the rollout was cleared).
async fn renew(node: &Node) {
    let fleet = &node.fleet;
    let held: HashMap<String, HashMap<u64, String>> = lock(&fleet.holders).clone();
    for (env, agents) in held {
        let (now, lease) = (unix_ms(), fleet.lease_ms.load(Ordering::Relaxed));
        let names: Vec<&str> = agents.values().map(String::as_str).collect();
        let rec = match update(&node.store, &env, |rec| {
            machine::renew(rec, names.iter().copied(), now, lease)
        })
        .await
        {
            Ok((_, rec)) => rec,
            Err(e) => {
                tracing::warn!(env = %env, error = %e, "cannot renew the slots of this node's agents");
                continue;
            }
        };
        if let Some(h) = lock(&fleet.holders).get_mut(&env) {
            h.retain(|_, agent| rec.slots.contains_key(agent.as_str()));
        }
    }
}
