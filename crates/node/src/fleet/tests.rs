//! A node's share of the rollouts against a real store: what happens to reports and
//! requests the store or the policy turn away.

use std::sync::Arc;
use std::time::Duration;

use tether_core::protocol::{Epoch, Position, ServerMsg};
use tether_core::rollout::{Amount, Policy};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::sqlite::SqliteStore;

fn at(version: u64) -> Position {
    Position {
        epoch: Epoch(1),
        version,
    }
}

pub(super) fn node(dir: &std::path::Path) -> Arc<Node> {
    let store = Store::Sqlite(Arc::new(SqliteStore::open(dir, 100).unwrap()));
    Arc::new(Node {
        id: "test".into(),
        store,
        hub: crate::hub::Hub::new(16),
        live: crate::live::Live::new(
            crate::auth::Auth::new(&[]).unwrap(),
            Duration::from_secs(3600),
            64 * 1024,
            Duration::from_secs(10),
        ),
        shutdown: CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        bus: std::sync::OnceLock::new(),
        fleet: Fleet::default(),
    })
}

async fn set_policy(node: &Node, max: u32) {
    let p = serde_json::to_string(&Policy::new(Amount::Count(max))).unwrap();
    node.store.set_policy("prod", Some(p)).await.unwrap();
}

async fn record(node: &Node) -> Record {
    read_record("prod", node.store.rollout("prod").await.unwrap().as_deref())
}

/// A health report the store cannot take (another process holds its write lock) is kept
/// and written by the next retry: the slot is given back, not held until its lease ends.
#[tokio::test]
async fn a_report_the_store_refuses_is_kept_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    set_policy(&node, 1).await;
    node.fleet.join(1, "a", vec!["prod".into()]);
    let answer = node.fleet.request(&node, 1, "prod", at(2)).await;
    assert!(matches!(answer, ServerMsg::Grant { .. }), "{answer:?}");
    let other = rusqlite::Connection::open(dir.path().join("tether.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    node.fleet.report(&node, 1, "prod", at(2), false).await;
    node.fleet.release(&node, 1, "prod").await;
    assert!(
        record(&node).await.slots.contains_key("a"),
        "not written yet"
    );
    assert_eq!(lock(&node.fleet.unsent).len(), 2, "both kept, in order");
    other.execute_batch("COMMIT").unwrap();
    pending::flush(&node).await;
    let rec = record(&node).await;
    assert!(rec.slots.is_empty(), "{rec:?}");
    assert!(rec.failed.contains("a") && rec.halted.is_some(), "{rec:?}");
    assert!(lock(&node.fleet.unsent).is_empty());
}

/// A request the node drops because the policy is gone (cleared through another node,
/// perhaps set again before this node's polling saw it) is answered with `policy` null,
/// and the policy set again is sent by the next polling.
#[tokio::test]
async fn a_request_dropped_with_its_policy_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    set_policy(&node, 1).await;
    tick::poll_policies(&node).await;
    node.fleet.join(1, "a", vec!["prod".into()]);
    let b = node.fleet.join(2, "b", vec!["prod".into()]);
    let answer = node.fleet.request(&node, 1, "prod", at(2)).await;
    assert!(matches!(answer, ServerMsg::Grant { .. }), "{answer:?}");
    let answer = node.fleet.request(&node, 2, "prod", at(2)).await;
    assert!(matches!(answer, ServerMsg::Hold { .. }), "{answer:?}");
    node.store.set_policy("prod", None).await.unwrap();
    tick::retry(&node).await;
    let told = b.take();
    assert!(
        told.iter()
            .any(|m| matches!(m, ServerMsg::Policy { policy: None, .. })),
        "{told:?}"
    );
    assert!(lock(&node.fleet.waiters).is_empty());
    set_policy(&node, 1).await;
    tick::poll_policies(&node).await;
    let told = b.take();
    assert!(
        told.iter().any(|m| matches!(
            m,
            ServerMsg::Policy {
                policy: Some(_),
                ..
            }
        )),
        "{told:?}"
    );
}
