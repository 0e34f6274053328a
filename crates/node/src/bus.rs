//! Cluster mode's bus: each node keeps one Redis Pub/Sub subscriber and one feeder task
//! that is the only writer into the node's hub. The feeder tracks the last version it
//! delivered per environment and delivers each change set once, in order. On a gap, after
//! the subscriber reconnects, and periodically, it compares positions with Redis and repairs
//! from the history stream, or, when history is gone, tells connections to take a snapshot.
//! Pub/Sub may drop, duplicate or reorder; what agents see may not.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Node;
use super::store::redis::{CHANNEL, Notice};
use super::store::{CatchUp, ChangeSet};
use tether_core::protocol::{Position, Verdict, judge_change};

/// What the feeder hears about.
pub enum Feed {
    /// Committed through this node, at this instant.
    Local(ChangeSet, Instant),
    /// Heard on Pub/Sub, at this instant.
    Remote(ChangeSet, Instant),
    /// Compare every environment with Redis (after a reconnect, and periodically).
    Check,
}

/// The node's handle on its bus.
pub struct Bus {
    tx: mpsc::UnboundedSender<Feed>,
    /// The subscriber connection is up.
    pub subscribed: Arc<AtomicBool>,
}

impl Bus {
    pub fn send(&self, f: Feed) {
        let _ = self.tx.send(f);
    }
}

/// Start the subscriber and the feeder for `node`; the feeder compares positions with
/// Redis every `node.live.repair_interval()` (a reload may change it).
pub fn start(node: Arc<Node>, client: redis::Client, shutdown: CancellationToken) -> Bus {
    let (tx, rx) = mpsc::unbounded_channel();
    let subscribed = Arc::new(AtomicBool::new(false));
    let span = tracing::info_span!("bus", node = %node.id);
    let errors = match &node.store {
        crate::store::Store::Redis(r) => Some(r.clone()),
        crate::store::Store::Sqlite(_) => None,
    };
    node.tasks.spawn(
        crate::panics::vital(
            "redis subscriber",
            subscriber(
                client,
                tx.clone(),
                subscribed.clone(),
                errors,
                shutdown.clone(),
            ),
        )
        .instrument(span.clone()),
    );
    let tasks = node.tasks.clone();
    tasks.spawn(crate::panics::vital("bus feeder", feeder(node, rx, shutdown)).instrument(span));
    Bus { tx, subscribed }
}

/// `store`: where its errors are counted (`/metrics`).
async fn subscriber(
    client: redis::Client,
    tx: mpsc::UnboundedSender<Feed>,
    up: Arc<AtomicBool>,
    store: Option<Arc<crate::store::redis::RedisStore>>,
    shutdown: CancellationToken,
) {
    let failed = || {
        if let Some(s) = &store {
            s.errors.count(crate::store::redis::Op::Subscribe);
        }
    };
    let mut delay = Duration::from_millis(50);
    loop {
        let attempt = async {
            let mut pubsub =
                tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?;
            pubsub.subscribe(CHANNEL).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = attempt => r,
        };
        match pubsub {
            Ok(pubsub) => {
                up.store(true, Ordering::SeqCst);
                delay = Duration::from_millis(50);
                tracing::info!("subscribed to redis");
                // Anything published while we were away is found by comparing positions.
                let _ = tx.send(Feed::Check);
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => match serde_json::from_slice::<Notice>(msg.get_payload_bytes()) {
                                Ok(n) => {
                                    let set = ChangeSet { env: n.env, position: n.position, changes: n.changes };
                                    let _ = tx.send(Feed::Remote(set, Instant::now()));
                                }
                                Err(e) => tracing::warn!(error = %e, "unreadable change notice; the next check repairs"),
                            },
                            None => break,
                        }
                    }
                }
                up.store(false, Ordering::SeqCst);
                failed();
                tracing::warn!("redis subscriber connection lost; reconnecting");
            }
            Err(e) => {
                up.store(false, Ordering::SeqCst);
                failed();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot subscribe to redis");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

async fn feeder(
    node: Arc<Node>,
    mut rx: mpsc::UnboundedReceiver<Feed>,
    shutdown: CancellationToken,
) {
    let mut known: HashMap<String, Position> = HashMap::new();
    let mut interval = node.live.repair_interval();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if node.live.repair_interval() != interval {
            // Reloaded: the next check comes one new interval from now.
            interval = node.live.repair_interval();
            tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let feed = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => Feed::Check,
            f = rx.recv() => match f {
                Some(f) => f,
                None => return,
            },
        };
        match feed {
            Feed::Local(set, since) | Feed::Remote(set, since) => {
                deliver(&node, &mut known, set, since).await
            }
            Feed::Check => check(&node, &mut known).await,
        }
    }
}

async fn deliver(
    node: &Node,
    known: &mut HashMap<String, Position>,
    set: ChangeSet,
    since: Instant,
) {
    if set.changes.is_empty() {
        // A new history was started (a reset): catch up, which means a snapshot.
        let from = known.get(&set.env).copied();
        repair(node, known, &set.env, from).await;
        return;
    }
    match known.get(&set.env).copied() {
        // First news of this environment here: connections judge it against what they sent.
        None => {
            known.insert(set.env.clone(), set.position);
            node.hub.publish(set, Some(since));
        }
        Some(k) => match judge_change(Some(k), set.position) {
            Verdict::Apply => {
                known.insert(set.env.clone(), set.position);
                node.hub.publish(set, Some(since));
            }
            Verdict::Drop => {}
            Verdict::Resync => {
                tracing::info!(env = %set.env, have = %k, got = %set.position, "gap on the bus; repairing from redis");
                repair(node, known, &set.env, Some(k)).await;
            }
        },
    }
}

/// Bring `env` up to what Redis holds, delivering what is missing in order.
async fn repair(
    node: &Node,
    known: &mut HashMap<String, Position>,
    env: &str,
    from: Option<Position>,
) {
    match node.store.catch_up(env, from).await {
        Ok(CatchUp::UpToDate) => {}
        Ok(CatchUp::Changes(sets)) => {
            for set in sets {
                known.insert(env.to_string(), set.position);
                node.hub.publish(set, None);
            }
        }
        Ok(CatchUp::Snapshot(snap)) => {
            // History cannot bridge the gap: connections fetch a snapshot themselves.
            known.insert(env.to_string(), snap.position);
            node.hub.moved(env, snap.position);
        }
        Err(e) => tracing::warn!(env, error = %e, "repair failed; the next check retries"),
    }
}

async fn check(node: &Node, known: &mut HashMap<String, Position>) {
    let envs = match node.store.list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "position check skipped: store unavailable");
            return;
        }
    };
    for info in envs {
        let k = known.get(&info.env).copied();
        if k == Some(info.position) {
            continue;
        }
        match k {
            None => {
                known.insert(info.env.clone(), info.position);
                node.hub.note_position(&info.env, info.position);
            }
            Some(k) if (info.position.epoch, info.position.version) < (k.epoch, k.version) => {
                // Redis went back (reloaded an older snapshot, or restored): versions this
                // node already delivered would be reused for other changes. Start a new
                // history above what agents have, so they all take a snapshot.
                tracing::warn!(env = %info.env, node = %k, redis = %info.position, "redis is behind this node; starting a new history");
                if let Err(e) = node.store.reset(&info.env, Some(k)).await {
                    tracing::warn!(env = %info.env, error = %e, "reset failed; the next check retries");
                    continue;
                }
                repair(node, known, &info.env, Some(k)).await;
            }
            Some(k) => {
                tracing::info!(env = %info.env, have = %k, redis = %info.position, "missed changes; repairing");
                repair(node, known, &info.env, Some(k)).await;
            }
        }
    }
}
