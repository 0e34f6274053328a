//! What systemd hears from a node (`tether_core::notify`; nothing without `NOTIFY_SOCKET`):
//! `READY=1` once the store is open and the listener bound, and after each reload; a
//! `STATUS=` line kept current (agents, environments, store, or what is degraded);
//! `WATCHDOG=1` from the accept loop ([`Watchdog`]); `STOPPING=1` at shutdown (`serve`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tether_core::notify;

use super::Node;

/// How often the status task looks whether something changed.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often the status is computed again even when nothing seemed to change (the count
/// of environments, damage found in the store).
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Longest the store may take to list its environments for a status line.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// What the node is doing, in one line for `systemctl status`: "serving 3 agents, 4
/// environments, store sqlite", or "degraded: …; serving …" when the store does not answer
/// or is damaged, or the Redis subscriber is down.
pub async fn status_line(node: &Node) -> String {
    let agents = node.hub.agent_count();
    let store = node.store.kind();
    let listed = tokio::time::timeout(STORE_WAIT, node.store.list()).await;
    let serving = match &listed {
        Ok(Ok(envs)) => format!(
            "serving {agents} agent{}, {} environment{}, store {store}",
            plural(agents),
            envs.len(),
            plural(envs.len())
        ),
        _ => format!("serving {agents} agent{}, store {store}", plural(agents)),
    };
    let mut degraded = Vec::new();
    if !matches!(listed, Ok(Ok(_))) {
        degraded.push("store not answering");
    } else if node.store.damage().await.is_some() {
        degraded.push("store damaged (see the log)");
    }
    if subscriber_down(node) {
        degraded.push("redis subscriber down");
    }
    if degraded.is_empty() {
        serving
    } else {
        format!("degraded: {}; {serving}", degraded.join(", "))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn subscriber_down(node: &Node) -> bool {
    node.bus
        .get()
        .is_some_and(|b| !b.subscribed.load(Ordering::SeqCst))
}

/// Listening: `READY=1` with the status, and a task that keeps the status current.
pub async fn ready(node: Arc<Node>) {
    if !notify::enabled() {
        return;
    }
    let first = status_line(&node).await;
    notify::ready(&first);
    let tasks = node.tasks.clone();
    tasks.spawn(keep_status(node, first));
}

/// Send a new `STATUS=` line whenever it changes: looked at every second when agents,
/// acknowledgements, commits or the subscriber changed, and every 30 s regardless.
async fn keep_status(node: Arc<Node>, mut sent: String) {
    let seen = |node: &Node| {
        (
            node.hub.generation(),
            node.hub.counters.commits.load(Ordering::Relaxed),
            subscriber_down(node),
        )
    };
    let mut last = seen(&node);
    let mut computed = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = seen(&node);
        if now == last && computed.elapsed() < REFRESH_EVERY {
            continue;
        }
        last = now;
        computed = tokio::time::Instant::now();
        let line = status_line(&node).await;
        if line != sent {
            notify::status(&line);
            sent = line;
        }
    }
}

/// When the accept loop sends `WATCHDOG=1`: every `notify::watchdog_interval()` (half of
/// systemd's `WatchdogSec`), never without one.
pub struct Watchdog(Option<tokio::time::Interval>);

impl Watchdog {
    pub fn new() -> Watchdog {
        Watchdog(notify::watchdog_interval().map(|every| {
            let mut i = tokio::time::interval(every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }))
    }

    /// Resolves when the next `WATCHDOG=1` is due.
    pub async fn due(&mut self) {
        match &mut self.0 {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, sqlite::SqliteStore};

    #[tokio::test]
    async fn the_status_counts_agents_and_environments() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Sqlite(Arc::new(SqliteStore::open(dir.path(), 10).unwrap()));
        let node = Node::with(
            "t".into(),
            store,
            crate::auth::Auth::new(&[]).unwrap(),
            Duration::from_secs(15),
            4096,
        );
        assert_eq!(
            status_line(&node).await,
            "serving 0 agents, 0 environments, store sqlite"
        );
        node.store
            .commit("prod", vec![change()], None)
            .await
            .unwrap();
        node.hub.register(crate::hub::AgentInfo {
            agent: "a".into(),
            token: "t".into(),
            envs: Default::default(),
        });
        assert_eq!(
            status_line(&node).await,
            "serving 1 agent, 1 environment, store sqlite"
        );
    }

    fn change() -> tether_core::protocol::WireChange {
        tether_core::protocol::WireChange {
            name: "A".into(),
            value: Some(tether_core::secret::Value::from("1")),
            secret: false,
            delete: false,
        }
    }
}
