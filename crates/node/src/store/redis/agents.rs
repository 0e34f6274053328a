//! Each node's agent registry kept in Redis, so that any node answers rollout status for
//! the whole cluster; a node that stops refreshing its registry drops out by itself.

use std::time::Duration;

use redis::AsyncCommands;

use super::{Op, RedisStore};
use crate::store::StoreError;

/// The nodes that keep their agent registry in Redis (for cluster-wide rollout status).
const AGENT_NODES: &str = "tether:agent-nodes";

fn agents_key(node: &str) -> String {
    format!("tether:agents:{node}")
}

impl RedisStore {
    /// Keep this node's agent registry (JSON) in Redis for `ttl`: a node that stops
    /// refreshing it drops out of the cluster's rollout status by itself.
    pub async fn put_agents(
        &self,
        node: &str,
        json: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .cmd("SET")
            .arg(agents_key(node))
            .arg(json)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore()
            .sadd(AGENT_NODES, node)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(self.failed(Op::Registry))
    }

    /// Remove this node's agent registry (a clean shutdown).
    pub async fn drop_agents(&self, node: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .del(agents_key(node))
            .ignore()
            .srem(AGENT_NODES, node)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(self.failed(Op::Registry))
    }

    /// Every live node's agent registry, as node id and JSON. Nodes whose registry expired
    /// are forgotten.
    pub async fn all_agents(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.conn().await?;
        let mut nodes: Vec<String> = conn
            .smembers(AGENT_NODES)
            .await
            .map_err(self.failed(Op::Registry))?;
        nodes.sort();
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| agents_key(n)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(self.failed(Op::Registry))?;
        let mut out = Vec::new();
        for (node, value) in nodes.into_iter().zip(values) {
            match value {
                Some(json) => out.push((node, json)),
                None => {
                    let _: Result<(), _> = conn.srem(AGENT_NODES, &node).await;
                }
            }
        }
        Ok(out)
    }
}
