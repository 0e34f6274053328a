//! Liveness of one agent connection, with the clock stopped: every heartbeat carries a
//! ping, and an agent that answers nothing for 2 to 2.5 heartbeats (at least 5 s) is dropped.

use super::*;
use crate::store::{Store, sqlite::SqliteStore};
use tokio::sync::mpsc;

use super::tests::FakeSocket as Socket;

struct Agent {
    node: Arc<Node>,
    to_node: mpsc::UnboundedSender<Message>,
    from_node: mpsc::UnboundedReceiver<Message>,
    /// The connection's task has ended (its socket was dropped).
    gone: bool,
    pings: usize,
    _dir: tempfile::TempDir,
}

/// An agent following `prod` on a node with a 1 s heartbeat, synced; then the clock stops.
async fn synced_agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite(Arc::new(SqliteStore::open(dir.path(), 100).unwrap()));
    let node = Arc::new(Node {
        id: "test".into(),
        store,
        hub: hub::Hub::new(16),
        live: crate::live::Live::new(
            super::super::auth::Auth::new(&[]).unwrap(),
            Duration::from_secs(1),
            64 * 1024,
            Duration::from_secs(10),
        ),
        shutdown: CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        bus: std::sync::OnceLock::new(),
        fleet: crate::fleet::Fleet::default(),
    });
    let (to_node, rx) = mpsc::unbounded_channel();
    let (tx, mut from_node) = mpsc::unbounded_channel();
    tokio::spawn(serve(
        Socket { rx, tx },
        None,
        node.clone(),
        Grant::dev(),
        node.shutdown.clone(),
    ));
    let hello = ClientMsg::Hello {
        agent: "t".into(),
        subscribe: vec![Subscription {
            env: "prod".into(),
            position: None,
        }],
    };
    let hello = serde_json::to_string(&hello).unwrap();
    to_node.send(Message::Text(Utf8Bytes::from(hello))).unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), from_node.recv())
            .await
            .expect("a frame within the deadline")
            .expect("socket open");
        if let Message::Text(t) = m {
            // The policy frame is the last of the catch-up.
            if matches!(serde_json::from_str(&t), Ok(ServerMsg::Policy { .. })) {
                break;
            }
        }
    }
    tokio::time::pause();
    Agent {
        node,
        to_node,
        from_node,
        gone: false,
        pings: 0,
        _dir: dir,
    }
}

impl Agent {
    /// Let `d` pass on the stopped clock, reading what the node sends; answer its pings
    /// when `pong`.
    async fn pass(&mut self, d: Duration, pong: bool) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.gone {
            tokio::time::advance(Duration::from_millis(100)).await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            loop {
                match self.from_node.try_recv() {
                    Ok(Message::Ping(p)) => {
                        self.pings += 1;
                        if pong {
                            let _ = self.to_node.send(Message::Pong(p));
                        }
                    }
                    Ok(_) => {}
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.gone = true;
                        break;
                    }
                }
            }
        }
    }
}

/// A stopped or half-open agent answers nothing: dropped after 2 to 2.5 heartbeats (here the
/// 5 s floor), not left connected, and current in status, for the 15 minutes TCP takes.
#[tokio::test]
async fn an_agent_that_answers_nothing_is_dropped() {
    let mut a = synced_agent().await;
    a.pass(Duration::from_secs(4), false).await;
    assert!(!a.gone, "dropped before its time");
    assert!(a.pings >= 3, "a ping with every heartbeat: {}", a.pings);
    a.pass(Duration::from_secs(3), false).await;
    assert!(a.gone, "still connected after 7 s of silence");
    assert_eq!(a.node.hub.agent_count(), 0, "the agent is unregistered");
}

/// An agent that answers the pings stays, however long nothing else happens.
#[tokio::test]
async fn an_agent_that_answers_pings_stays() {
    let mut a = synced_agent().await;
    a.pass(Duration::from_secs(60), true).await;
    assert!(!a.gone, "a live agent was dropped");
    assert!(a.pings >= 50, "{}", a.pings);
    assert_eq!(a.node.hub.agent_count(), 1);
}
