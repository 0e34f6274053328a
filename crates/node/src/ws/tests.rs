//! One agent connection driven through an in-memory socket: hello and catch-up, live change
//! sets in order, unknown and malformed frames, withheld secrets, acks, shutdown.

use super::*;
use crate::store::{Store, sqlite::SqliteStore};
use std::pin::Pin;
use std::task::{Context, Poll};
use tether_core::protocol::{WireChange, WireEntry};
use tether_core::secret::Value;
use tokio::sync::mpsc;

/// A socket made of two channels: what the test sends, and what the handler sent (also
/// the liveness tests' socket).
pub(super) struct FakeSocket {
    pub(super) rx: mpsc::UnboundedReceiver<Message>,
    pub(super) tx: mpsc::UnboundedSender<Message>,
}

impl Stream for FakeSocket {
    type Item = Result<Message, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for FakeSocket {
    type Error = std::io::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.tx
            .send(item)
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

struct Harness {
    node: Arc<Node>,
    to_node: mpsc::UnboundedSender<Message>,
    from_node: mpsc::UnboundedReceiver<Message>,
    _dir: tempfile::TempDir,
}

fn node(dir: &std::path::Path) -> Arc<Node> {
    let store = Store::Sqlite(Arc::new(SqliteStore::open(dir, 100).unwrap()));
    Arc::new(Node {
        id: "test".into(),
        store,
        hub: hub::Hub::new(16),
        live: crate::live::Live::new(
            super::super::auth::Auth::new(&[]).unwrap(),
            Duration::from_secs(3600),
            64 * 1024,
            Duration::from_secs(10),
        ),
        shutdown: CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        bus: std::sync::OnceLock::new(),
        fleet: crate::fleet::Fleet::default(),
    })
}

fn start(grant: Grant) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let (to_node, rx) = mpsc::unbounded_channel();
    let (tx, from_node) = mpsc::unbounded_channel();
    tokio::spawn(serve(
        FakeSocket { rx, tx },
        None,
        node.clone(),
        grant,
        node.shutdown.clone(),
    ));
    Harness {
        node,
        to_node,
        from_node,
        _dir: dir,
    }
}

impl Harness {
    fn send(&self, text: &str) {
        self.to_node
            .send(Message::Text(Utf8Bytes::from(text)))
            .unwrap();
    }

    async fn recv(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(10), self.from_node.recv())
            .await
            .expect("a frame within the deadline")
            .expect("socket open")
    }

    /// The next frame but the `policy` frames (`policy_follows_synced_and_its_changes`
    /// has those).
    async fn recv_msg(&mut self) -> ServerMsg {
        loop {
            match self.recv_any().await {
                ServerMsg::Policy { .. } => continue,
                m => return m,
            }
        }
    }

    async fn recv_any(&mut self) -> ServerMsg {
        match self.recv().await {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    async fn commit(&self, env: &str, name: &str, value: &str, secret: bool) {
        let set = self
            .node
            .store
            .commit(
                env,
                vec![WireChange {
                    name: name.into(),
                    value: Some(Value::from(value)),
                    secret,
                    delete: false,
                }],
                None,
            )
            .await
            .unwrap();
        self.node.publish(set, std::time::Instant::now()).await;
    }
}

fn hello(env: &str, position: Option<Position>) -> String {
    serde_json::to_string(&ClientMsg::Hello {
        agent: "t".into(),
        subscribe: vec![Subscription {
            env: env.into(),
            position,
        }],
    })
    .unwrap()
}

#[tokio::test]
async fn hello_snapshot_then_live_changes_in_order() {
    let mut h = start(Grant::dev());
    h.commit("prod", "A", "1", false).await;
    h.send(&hello("prod", None));
    assert!(matches!(h.recv_msg().await, ServerMsg::Welcome { .. }));
    let ServerMsg::Snapshot {
        position, entries, ..
    } = h.recv_msg().await
    else {
        panic!()
    };
    assert_eq!(position.version, 1);
    assert_eq!(entries.len(), 1);
    assert!(matches!(h.recv_msg().await, ServerMsg::Synced { position: p, .. } if p == position));
    h.commit("prod", "A", "2", false).await;
    h.commit("other", "X", "1", false).await;
    h.commit("prod", "B", "1", false).await;
    let ServerMsg::Change { position: p2, .. } = h.recv_msg().await else {
        panic!()
    };
    let ServerMsg::Change {
        position: p3,
        changes,
        ..
    } = h.recv_msg().await
    else {
        panic!()
    };
    assert_eq!((p2.version, p3.version), (2, 3));
    assert_eq!(changes[0].name, "B");
}

#[tokio::test]
async fn resume_sends_only_missed_change_sets() {
    let mut h = start(Grant::dev());
    h.commit("prod", "A", "1", false).await;
    let at1 = h.node.store.position("prod").await.unwrap();
    h.commit("prod", "A", "2", false).await;
    h.send(&hello("prod", Some(at1)));
    assert!(matches!(h.recv_msg().await, ServerMsg::Welcome { .. }));
    assert!(
        matches!(h.recv_msg().await, ServerMsg::Change { position, .. } if position.version == 2)
    );
    assert!(
        matches!(h.recv_msg().await, ServerMsg::Synced { position, .. } if position.version == 2)
    );
}

#[tokio::test]
async fn unknown_type_is_answered_and_the_connection_stays() {
    let mut h = start(Grant::dev());
    h.send(&hello("prod", None));
    h.recv_msg().await;
    h.recv_msg().await;
    h.recv_msg().await;
    h.send(r#"{"type":"bogus"}"#);
    assert!(matches!(h.recv_msg().await, ServerMsg::Error { code, .. } if code == "unknown_type"));
    // The environment's first commit starts its history: a new epoch, so a snapshot.
    h.commit("prod", "A", "1", false).await;
    assert!(
        matches!(h.recv_msg().await, ServerMsg::Snapshot { position, .. } if position.version == 1)
    );
}

#[tokio::test]
async fn malformed_frame_closes_with_a_reason() {
    let mut h = start(Grant::dev());
    h.send("{not json");
    match h.recv().await {
        Message::Close(Some(c)) => {
            assert_eq!(c.code, close_code::INVALID);
            assert!(c.reason.contains("malformed"), "{}", c.reason);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn secrets_are_withheld_from_tokens_without_the_right() {
    let mut grant = Grant::dev();
    grant.secrets = false;
    let mut h = start(grant);
    h.commit("prod", "PASSWORD", "s3cr3t", true).await;
    h.commit("prod", "HOST", "db", false).await;
    h.send(&hello("prod", None));
    h.recv_msg().await;
    let ServerMsg::Snapshot { entries, .. } = h.recv_msg().await else {
        panic!()
    };
    let by_name = |n: &str| {
        entries
            .iter()
            .find(|e: &&WireEntry| e.name == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("PASSWORD").value, None);
    assert_eq!(by_name("HOST").value, Some(Value::from("db")));
    h.recv_msg().await;
    h.commit("prod", "PASSWORD", "n3w", true).await;
    match h.recv().await {
        Message::Text(t) => assert!(!t.contains("n3w")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn acks_reach_the_rollout_registry() {
    let mut h = start(Grant::dev());
    h.commit("prod", "A", "1", false).await;
    h.send(&hello("prod", None));
    h.recv_msg().await;
    let ServerMsg::Snapshot { position, .. } = h.recv_msg().await else {
        panic!()
    };
    h.recv_msg().await;
    h.send(
        &serde_json::to_string(&ClientMsg::Ack {
            env: "prod".into(),
            position,
            ok: true,
            error: None,
        })
        .unwrap(),
    );
    // The ack is handled before the next frame is answered.
    h.send(r#"{"type":"bogus"}"#);
    h.recv_msg().await;
    let agents = h.node.hub.agents();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].envs["prod"].as_ref().unwrap().position, position);
}

#[tokio::test]
async fn connection_state_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let (_to, rx) = mpsc::unbounded_channel();
    let (tx, _from) = mpsc::unbounded_channel();
    let fut = serve(
        FakeSocket { rx, tx },
        None,
        node.clone(),
        Grant::dev(),
        node.shutdown.clone(),
    );
    let size = std::mem::size_of_val(&fut);
    eprintln!("connection future: {size} bytes");
    assert!(size < 4096, "{size}");
}

#[tokio::test]
async fn shutdown_closes_with_going_away() {
    let mut h = start(Grant::dev());
    h.send(&hello("prod", None));
    // Welcome, snapshot, synced, policy.
    for _ in 0..4 {
        h.recv_any().await;
    }
    h.node.shutdown.cancel();
    assert!(matches!(h.recv().await, Message::Close(Some(c)) if c.code == close_code::AWAY));
}

/// An environment named twice in hello (or more) is followed once, in the order first
/// named; forbidden and invalid ones are answered with an error and left out.
/// Short lists are searched, long ones go through a set: both are checked.
#[tokio::test]
async fn hello_follows_each_environment_once() {
    hello_follows_each_once(&["prod", "dev", "prod", "a/b", "dev", "prod"]).await;
    let mut long = vec!["prod", "dev", "a/b"];
    long.extend(["dev", "prod"].repeat(10));
    hello_follows_each_once(&long).await;
}

async fn hello_follows_each_once(names: &[&str]) {
    let mut h = start(Grant::dev());
    h.commit("prod", "A", "1", false).await;
    h.commit("dev", "B", "1", false).await;
    let subscribe = names
        .iter()
        .map(|e| Subscription {
            env: e.to_string(),
            position: None,
        })
        .collect();
    h.send(
        &serde_json::to_string(&ClientMsg::Hello {
            agent: "t".into(),
            subscribe,
        })
        .unwrap(),
    );
    assert!(matches!(h.recv_msg().await, ServerMsg::Error { code, .. } if code == "forbidden"));
    assert!(matches!(h.recv_msg().await, ServerMsg::Welcome { .. }));
    let mut synced = Vec::new();
    while synced.len() < 2 {
        match h.recv_msg().await {
            ServerMsg::Synced { env, .. } => synced.push(env),
            ServerMsg::Snapshot { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(synced, vec!["prod", "dev"]);
    let agents = h.node.hub.agents();
    assert_eq!(
        agents[0].envs.keys().collect::<Vec<_>>(),
        vec!["dev", "prod"]
    );
    assert_eq!(h.node.hub.attached(), 2);
    h.commit("prod", "A", "2", false).await;
    assert!(
        matches!(h.recv_msg().await, ServerMsg::Change { position, .. } if position.version == 2)
    );
}

/// A socket that takes frames from the agent but never has room to send one.
struct Unwritable(mpsc::UnboundedReceiver<Message>);

impl Stream for Unwritable {
    type Item = Result<Message, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for Unwritable {
    type Error = std::io::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Pending
    }
    fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), Self::Error> {
        unreachable!("never ready")
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Pending
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Pending
    }
}

/// The close frame gets a few seconds to go out: a peer that never reads does not hold the
/// connection's task until TCP gives up.
#[tokio::test(start_paused = true)]
async fn the_close_frame_does_not_wait_forever() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let (to_node, rx) = mpsc::unbounded_channel();
    to_node
        .send(Message::Text(Utf8Bytes::from("{not json")))
        .unwrap();
    let served = serve(
        Unwritable(rx),
        None,
        node.clone(),
        Grant::dev(),
        node.shutdown.clone(),
    );
    tokio::time::timeout(Duration::from_secs(60), served)
        .await
        .expect("the task ends though the close frame cannot be sent");
}

/// A socket that panics when the agent sends "boom", as a bug under the handler would.
struct Panicky(FakeSocket);

impl Stream for Panicky {
    type Item = Result<Message, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.0).poll_next(cx) {
            Poll::Ready(Some(Ok(Message::Text(t)))) if t == "boom" => panic!("socket failed"),
            other => other,
        }
    }
}

impl Sink<Message> for Panicky {
    type Error = std::io::Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.0).start_send(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// A connection past hello and catch-up, served by its own task.
async fn following(
    node: &Arc<Node>,
) -> (tokio::task::JoinHandle<()>, mpsc::UnboundedSender<Message>) {
    let (to_node, rx) = mpsc::unbounded_channel();
    let (tx, mut from_node) = mpsc::unbounded_channel();
    let task = tokio::spawn(serve(
        Panicky(FakeSocket { rx, tx }),
        None,
        node.clone(),
        Grant::dev(),
        node.shutdown.clone(),
    ));
    to_node
        .send(Message::Text(Utf8Bytes::from(hello("prod", None))))
        .unwrap();
    // Welcome, snapshot, synced.
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), from_node.recv())
            .await
            .expect("a frame within the deadline")
            .expect("socket open");
    }
    assert_eq!(node.hub.agent_count(), 1);
    assert_eq!(node.hub.attached(), 1);
    (task, to_node)
}

/// However the connection's task ends, its outlet leaves the hub and the agent the
/// registry: nothing keeps the socket open or goes on writing to it. Here the task is
/// aborted, as when the runtime drops it.
#[tokio::test]
async fn an_aborted_connection_leaves_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let (task, _to_node) = following(&node).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(node.hub.attached(), 0, "the outlet is detached");
    assert_eq!(node.hub.agent_count(), 0, "the agent is unregistered");
}

/// The same when the task panics: the panic is caught and the task ends by itself.
#[tokio::test]
async fn a_panicking_connection_leaves_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let (task, to_node) = following(&node).await;
    to_node
        .send(Message::Text(Utf8Bytes::from("boom")))
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the task ends within the deadline");
    assert!(end.is_ok(), "the panic is caught in the task");
    assert_eq!(node.hub.attached(), 0, "the outlet is detached");
    assert_eq!(node.hub.agent_count(), 0, "the agent is unregistered");
}

/// `tether_frames_sent_total` counts each frame once, when it goes to the agent: not also
/// when the fan-out queues it for the connection's task.
#[tokio::test]
async fn each_frame_sent_counts_once() {
    let mut h = start(Grant::dev());
    h.commit("prod", "A", "1", false).await;
    h.send(&hello("prod", None));
    assert!(matches!(h.recv_msg().await, ServerMsg::Welcome { .. }));
    assert!(matches!(h.recv_msg().await, ServerMsg::Snapshot { .. }));
    assert!(matches!(h.recv_msg().await, ServerMsg::Synced { .. }));
    for v in 2..=4 {
        h.commit("prod", "A", &v.to_string(), false).await;
    }
    for v in 2..=4 {
        assert!(
            matches!(h.recv_msg().await, ServerMsg::Change { position, .. } if position.version == v)
        );
    }
    // The task counts a frame once its send returned, which may be just after it arrived.
    let sent = &h.node.hub.counters.frames_sent;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sent.load(Ordering::Relaxed) < 7 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let counted = sent.load(Ordering::Relaxed);
    assert_eq!(
        counted, 7,
        "welcome, snapshot, synced, policy and three changes"
    );
}

/// After `synced` the agent hears its environment's policy (`null`: none), and later
/// every change of it; a slot without a policy is granted at once.
#[tokio::test]
async fn policy_follows_synced_and_its_changes() {
    use tether_core::rollout::{Amount, Policy};
    let mut h = start(Grant::dev());
    h.commit("prod", "A", "1", false).await;
    h.send(&hello("prod", None));
    assert!(matches!(h.recv_any().await, ServerMsg::Welcome { .. }));
    assert!(matches!(h.recv_any().await, ServerMsg::Snapshot { .. }));
    let ServerMsg::Synced { position, .. } = h.recv_any().await else {
        panic!("synced")
    };
    assert_eq!(
        h.recv_any().await,
        ServerMsg::Policy {
            env: "prod".into(),
            policy: None
        }
    );
    let slot = ClientMsg::Slot {
        env: "prod".into(),
        position,
    };
    h.send(&serde_json::to_string(&slot).unwrap());
    assert_eq!(
        h.recv_any().await,
        ServerMsg::Grant {
            env: "prod".into(),
            position
        }
    );
    let policy = Policy::new(Amount::Count(2));
    h.node.fleet.policy_changed("prod", Some(policy.clone()));
    h.node.fleet.policy_changed("other", Some(policy.clone()));
    assert_eq!(
        h.recv_any().await,
        ServerMsg::Policy {
            env: "prod".into(),
            policy: Some(policy)
        }
    );
    h.node.fleet.policy_changed("prod", None);
    assert_eq!(
        h.recv_any().await,
        ServerMsg::Policy {
            env: "prod".into(),
            policy: None
        }
    );
}
