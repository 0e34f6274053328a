//! Redis errors by what the node was doing (`tether_redis_errors_total{op=…}` on
//! `/metrics`): one relaxed atomic addition per error.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the node was doing when Redis failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Connecting (the connection manager's first connection).
    Connect,
    /// The commit script.
    Commit,
    /// Reading entries, positions, the list of environments or history.
    Read,
    /// Starting a new history.
    Reset,
    /// The cluster's agent registry (rollout status).
    Registry,
    /// The Pub/Sub subscriber: it could not subscribe, or lost its connection.
    Subscribe,
    /// Rollout policies and rollout records (slots, waves, halts).
    Rollout,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Connect,
        Op::Commit,
        Op::Read,
        Op::Reset,
        Op::Registry,
        Op::Subscribe,
        Op::Rollout,
    ];

    /// The `op` label.
    pub fn label(self) -> &'static str {
        match self {
            Op::Connect => "connect",
            Op::Commit => "commit",
            Op::Read => "read",
            Op::Reset => "reset",
            Op::Registry => "registry",
            Op::Subscribe => "subscribe",
            Op::Rollout => "rollout",
        }
    }
}

/// Errors counted per [`Op`].
#[derive(Default)]
pub struct Errors([AtomicU64; Op::ALL.len()]);

impl Errors {
    pub fn count(&self, op: Op) {
        self.0[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, op: Op) -> u64 {
        self.0[op as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_per_op() {
        let e = Errors::default();
        e.count(Op::Read);
        e.count(Op::Read);
        e.count(Op::Subscribe);
        let got: Vec<(&str, u64)> = Op::ALL.iter().map(|&o| (o.label(), e.get(o))).collect();
        assert_eq!(
            got,
            [
                ("connect", 0),
                ("commit", 0),
                ("read", 2),
                ("reset", 0),
                ("registry", 0),
                ("subscribe", 1),
                ("rollout", 0)
            ]
        );
    }
}
