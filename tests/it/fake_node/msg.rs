//! The frames a test's fake node sends, for the environment the follower tests use.

use tether_core::protocol::{EnvPosition, Epoch, Position, ServerMsg, WireChange, WireEntry};
use tether_core::rollout::Policy;
use tether_core::secret::Value;

use super::ENV;

pub fn pos(epoch: Epoch, version: u64) -> Position {
    Position { epoch, version }
}

pub fn welcome(heartbeat_ms: u64) -> ServerMsg {
    ServerMsg::Welcome {
        node: "fake".into(),
        heartbeat_ms,
    }
}

pub fn entries(pairs: &[(&str, &str)]) -> Vec<WireEntry> {
    pairs
        .iter()
        .map(|(n, v)| WireEntry {
            name: n.to_string(),
            value: Some(Value::from(*v)),
            secret: false,
        })
        .collect()
}

pub fn change(p: Position, pairs: &[(&str, &str)]) -> ServerMsg {
    ServerMsg::Change {
        env: ENV.into(),
        position: p,
        changes: pairs
            .iter()
            .map(|(n, v)| WireChange {
                name: n.to_string(),
                value: Some(Value::from(*v)),
                secret: false,
                delete: false,
            })
            .collect(),
    }
}

pub fn snapshot(p: Position, pairs: &[(&str, &str)]) -> ServerMsg {
    ServerMsg::Snapshot {
        env: ENV.into(),
        position: p,
        entries: entries(pairs),
    }
}

pub fn synced(p: Position) -> ServerMsg {
    ServerMsg::Synced {
        env: ENV.into(),
        position: p,
    }
}

pub fn heartbeat(p: Position) -> ServerMsg {
    ServerMsg::Heartbeat {
        positions: vec![EnvPosition {
            env: ENV.into(),
            position: p,
        }],
    }
}

/// The environment's rollout policy (`None`: none).
pub fn policy(policy: Option<Policy>) -> ServerMsg {
    ServerMsg::Policy {
        env: ENV.into(),
        policy,
    }
}

/// A slot for `p` is the agent's.
pub fn grant(p: Position) -> ServerMsg {
    ServerMsg::Grant {
        env: ENV.into(),
        position: p,
    }
}

/// The agent's slot request waits, for `reason`.
pub fn hold(reason: &str, halted: bool) -> ServerMsg {
    ServerMsg::Hold {
        env: ENV.into(),
        reason: reason.into(),
        halted,
    }
}
