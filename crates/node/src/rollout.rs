//! Rollout status across a cluster. A node knows only the agents connected to it, and behind
//! a load balancer a status request reaches one node at random; so in cluster mode every
//! node also keeps its agent registry in Redis (one expiring key per node, rewritten when it
//! changes and refreshed while the node lives), and a status request merges the registries
//! of every live node. A node that dies drops out when its key expires. Also the rules
//! that keep the registry honest: which acknowledgements a connection may record, and how
//! a status request counts them (a failed agent is never current).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Node;
use super::hub::AgentInfo;
use super::store::redis::RedisStore;
use tether_core::protocol::Position;

/// How long a node's registry outlives its last refresh.
const TTL: Duration = Duration::from_secs(6);
/// Rewritten at least this often, changed or not.
const REFRESH: Duration = Duration::from_secs(2);
/// How often a change (a connection, a departure, an acknowledgement) is looked for.
const TICK: Duration = Duration::from_millis(500);

/// The agents of the whole cluster (or of this node alone), each with the node it is on.
pub struct Registry {
    pub agents: Vec<(String, AgentInfo)>,
    /// `cluster`: every live node's agents; `node`: this node's only.
    pub scope: &'static str,
    /// Agents per node.
    pub nodes: Vec<(String, usize)>,
    /// Why the registry is this node's only although the node is in a cluster.
    pub warning: Option<String>,
}

/// Keep this node's registry in Redis until `shutdown`, then remove it.
pub fn start(node: Arc<Node>, store: Arc<RedisStore>, shutdown: CancellationToken) {
    let span = tracing::info_span!("registry", node = %node.id);
    let tasks = node.tasks.clone();
    let work = async move {
        let mut written: Option<(u64, Instant)> = None;
        // Reused: with thousands of agents the registry is hundreds of KiB of JSON.
        let mut json = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(TICK) => {}
            }
            let generation = node.hub.generation();
            if written.is_some_and(|(g, at)| g == generation && at.elapsed() < REFRESH) {
                continue;
            }
            node.hub.agents_json(&mut json);
            match store.put_agents(&node.id, &json, TTL).await {
                Ok(()) => written = Some((generation, Instant::now())),
                // Redis being down is reported by /readyz; try again next tick.
                Err(e) => tracing::debug!(error = %e, "cannot share the agent registry"),
            }
        }
        let _ = store.drop_agents(&node.id).await;
    };
    tasks.spawn(crate::panics::vital("agent registry", work).instrument(span));
}

/// The agents connected to this node only.
pub fn this_node(node: &Node) -> Registry {
    single(&node.id, local(node), None)
}

fn local(node: &Node) -> Vec<(String, AgentInfo)> {
    node.hub
        .agents()
        .into_iter()
        .map(|a| (node.id.clone(), a))
        .collect()
}

/// The registry a status request reports: the cluster's when this node shares one.
pub async fn registry(node: &Node) -> Registry {
    let local = local(node);
    let shared = match (&node.store, node.bus.get()) {
        (super::store::Store::Redis(r), Some(_)) => Some(r.all_agents().await),
        _ => None,
    };
    let remote = match shared {
        None => return single(&node.id, local, None),
        Some(Err(e)) => {
            return single(
                &node.id,
                local,
                Some(format!(
                    "this node's agents only: the cluster registry is unavailable ({e})"
                )),
            );
        }
        Some(Ok(remote)) => remote,
    };
    let mut nodes = vec![(node.id.clone(), local.len())];
    let mut agents = local;
    for (id, json) in remote {
        // This node's own copy may lag behind its live registry.
        if id == node.id {
            continue;
        }
        match serde_json::from_str::<Vec<AgentInfo>>(&json) {
            Ok(list) => {
                nodes.push((id.clone(), list.len()));
                agents.extend(list.into_iter().map(|a| (id.clone(), a)));
            }
            Err(e) => {
                tracing::warn!(node = %id, error = %e, "unreadable agent registry of a node; left out")
            }
        }
    }
    nodes.sort();
    Registry {
        agents,
        scope: "cluster",
        nodes,
        warning: None,
    }
}

fn single(id: &str, agents: Vec<(String, AgentInfo)>, warning: Option<String>) -> Registry {
    let nodes = vec![(id.to_string(), agents.len())];
    Registry {
        agents,
        scope: "node",
        nodes,
        warning,
    }
}

/// What becomes of an agent's acknowledgement of a position.
#[derive(Debug, PartialEq, Eq)]
pub enum AckVerdict {
    /// Recorded in the registry.
    Record,
    /// Of an older history than the connection was last sent: overtaken (an ack sent just
    /// before a reset reached the agent), left out without complaint.
    Stale,
    /// A position this connection was never sent, or that this node never had: refused.
    Unknown,
}

/// Judge an ack of `ack` from a connection last sent `sent` of the environment, on a node
/// whose newest known position of it is `latest`. An agent can only have applied what it
/// was sent, and it was only sent what the node had.
pub fn judge_ack(sent: Option<Position>, latest: Option<Position>, ack: Position) -> AckVerdict {
    let (Some(sent), Some(latest)) = (sent, latest) else {
        return AckVerdict::Unknown;
    };
    let key = |p: Position| (p.epoch, p.version);
    if ack.epoch < sent.epoch {
        return AckVerdict::Stale;
    }
    if ack.epoch > sent.epoch || ack.version > sent.version || key(ack) > key(latest) {
        return AckVerdict::Unknown;
    }
    AckVerdict::Record
}

/// The rollout of `env` (at `current`) over `registry`, as `GET /v1/envs/{env}/status`
/// answers it (`docs/api.md`). An agent is `current` only when its last ack succeeded at
/// the current position; a failed ack counts in `failed` and under `"N (failed)"` in
/// `by_version`, whatever its version.
pub fn summary(env: &str, current: Position, registry: Registry) -> serde_json::Value {
    let mut by_version = BTreeMap::<String, usize>::new();
    let mut agents = Vec::new();
    let (mut current_count, mut failed) = (0, 0);
    for (on, a) in registry.agents {
        let Some(ack) = a.envs.get(env) else {
            continue;
        };
        let key = match ack {
            None => "none".to_string(),
            Some(s) if !s.ok => {
                failed += 1;
                format!("{} (failed)", s.position.version)
            }
            Some(s) if s.position == current => {
                current_count += 1;
                s.position.version.to_string()
            }
            Some(s) if s.position.epoch != current.epoch => {
                format!("{} (other epoch)", s.position.version)
            }
            Some(s) => s.position.version.to_string(),
        };
        *by_version.entry(key).or_default() += 1;
        agents.push(json!({"agent": a.agent, "token": a.token, "node": on, "ack": ack}));
    }
    let nodes: Vec<serde_json::Value> = registry
        .nodes
        .iter()
        .map(|(id, n)| json!({"node": id, "agents": n}))
        .collect();
    let mut body = json!({
        "env": env,
        "position": current,
        "scope": registry.scope,
        "agents": agents.len(),
        "current": current_count,
        "failed": failed,
        "by_version": by_version,
        "connected": agents,
        "node_registries": nodes,
    });
    if let Some(w) = registry.warning {
        body["warning"] = json!(w);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::AckState;
    use tether_core::protocol::Epoch;

    fn pos(epoch: u64, version: u64) -> Position {
        Position {
            epoch: Epoch(epoch),
            version,
        }
    }

    #[test]
    fn acks_are_recorded_only_for_positions_sent() {
        use AckVerdict::*;
        let (sent, latest) = (Some(pos(2, 5)), Some(pos(2, 7)));
        assert_eq!(judge_ack(sent, latest, pos(2, 5)), Record);
        assert_eq!(
            judge_ack(sent, latest, pos(2, 3)),
            Record,
            "behind, not wrong"
        );
        assert_eq!(judge_ack(sent, latest, pos(2, 6)), Unknown, "never sent");
        assert_eq!(judge_ack(sent, latest, pos(3, 1)), Unknown, "unknown epoch");
        assert_eq!(judge_ack(sent, latest, pos(1, 9)), Stale, "older history");
        assert_eq!(judge_ack(None, latest, pos(2, 1)), Unknown, "nothing sent");
        assert_eq!(
            judge_ack(sent, None, pos(2, 1)),
            Unknown,
            "node knows nothing"
        );
        // Sent on the agent's word (a catch-up that failed) but never seen by the node.
        assert_eq!(judge_ack(Some(pos(2, 9)), latest, pos(2, 9)), Unknown);
        assert_eq!(
            judge_ack(Some(pos(0, 0)), Some(pos(0, 0)), pos(0, 0)),
            Record
        );
    }

    fn agent(name: &str, ack: Option<(Position, bool)>) -> (String, AgentInfo) {
        let state = ack.map(|(position, ok)| {
            AckState::acked(
                position,
                ok,
                (!ok).then(|| "output /run/x: permission denied".to_string()),
            )
        });
        let info = AgentInfo {
            agent: name.into(),
            token: "t".into(),
            envs: [("prod".to_string(), state)].into_iter().collect(),
        };
        ("n1".into(), info)
    }

    #[test]
    fn a_failed_agent_is_counted_failed_never_current() {
        let registry = Registry {
            agents: vec![
                agent("ok", Some((pos(1, 5), true))),
                agent("failed-now", Some((pos(1, 5), false))),
                agent("failed-before", Some((pos(1, 4), false))),
                agent("behind", Some((pos(1, 4), true))),
                agent("old", Some((pos(0, 5), true))),
                agent("new", None),
            ],
            scope: "node",
            nodes: vec![("n1".into(), 6)],
            warning: None,
        };
        let s = summary("prod", pos(1, 5), registry);
        assert_eq!(s["agents"], 6);
        assert_eq!(s["current"], 1);
        assert_eq!(s["failed"], 2);
        assert_eq!(
            s["by_version"],
            json!({"5": 1, "5 (failed)": 1, "4 (failed)": 1, "4": 1, "5 (other epoch)": 1, "none": 1})
        );
    }
}
