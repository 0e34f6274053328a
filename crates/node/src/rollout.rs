//! Rollout status across a cluster. A node knows only the agents connected to it, and behind
//! a load balancer a status request reaches one node at random; so in cluster mode every
//! node also keeps its agent registry in Redis (one expiring key per node, rewritten when it
//! changes and refreshed while the node lives), and a status request merges the registries
//! of every live node. A node that dies drops out when its key expires.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Node;
use super::hub::AgentInfo;
use super::store::redis::RedisStore;

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
    tokio::spawn(async move {
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
    });
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
