//! The agent's network follower against scripted fake nodes: silence detection, a
//! heartbeat that shows a lost change, failover between nodes, and refused connections.
//! Each test bounds its waits by the deadline only; none measures how long anything took.

use std::time::Duration;

use tether_core::protocol::{ClientMsg, Epoch, ServerMsg};

use crate::fake_node::{
    Conn, FakeNode, agent_args, change, heartbeat, pos, snapshot, synced, welcome,
};
use crate::support::{Tether, Work, alive};

const E1: Epoch = Epoch(0x0190_0000_0000_0001);
const E2: Epoch = Epoch(0x0190_0000_0001_0001);
/// A heartbeat long enough that no test meets it by accident.
const LONG_HB: u64 = 60_000;

/// `tether run` following `servers` (in this order on the command line), writing
/// `out.env`. `restart`: values go to the child's environment and a change restarts it;
/// otherwise they go to the file only and a change sends SIGUSR1.
fn start_agent(w: &Work, servers: &[String], restart: bool, envs: &[(&str, &str)]) -> Tether {
    let mut args = agent_args(w, servers);
    if restart {
        args.extend(["--on-change", "restart"].map(String::from));
    } else {
        args.extend(["--no-env", "--on-change", "signal:USR1"].map(String::from));
    }
    args.push("--".into());
    args.extend(w.child_args(&[]));
    Tether::start(w.dir.path(), &args, envs)
}

fn no_bad_frames(conns: &[Conn<'_>]) {
    for c in conns {
        assert_eq!(
            c.bad_frames(),
            Vec::<String>::new(),
            "connection {}",
            c.index()
        );
    }
}

/// The agent is still running (it never gives up on its nodes).
fn running(agent: &mut Tether) -> bool {
    agent
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().ok().flatten().is_none())
}

#[test]
fn a_silent_node_is_dropped_and_the_agent_reconnects_from_its_position() {
    let w = Work::new();
    let fake = FakeNode::start();
    let agent = start_agent(&w, &[fake.url()], false, &[]);
    let v1 = pos(E1, 1);

    // A short heartbeat (silence after 2.5 of them), kept up by the fake node until it
    // goes silent: the pump is several times faster so a busy machine does not break it.
    let hb = 400;
    let c0 = fake.wait_hello(&agent, 0);
    c0.send(&welcome(hb));
    c0.send(&snapshot(v1, &[("A", "1")]));
    c0.send(&synced(v1));
    c0.pump_heartbeats(Duration::from_millis(hb / 4), v1);
    agent.wait_for("v1 rendered, child started, v1 acked", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 1 && c0.acked(v1)
    });

    // Silent: the socket stays open, not a byte comes, not even a pong.
    c0.silence();
    let c1 = fake.wait_hello(&agent, 1);
    assert_eq!(
        c1.hello().and_then(|s| s.position),
        Some(v1),
        "the new hello says where the agent is"
    );
    agent.wait_for("the silence reported", || {
        agent.logs().contains("presumed dead")
    });
    agent.wait_for("the silent connection closed by the agent", || {
        c0.ended().is_some()
    });
    assert_eq!(
        c0.ended().as_deref(),
        Some("the agent dropped the silent connection")
    );

    // The new connection serves: a later change reaches the child, which was never stopped.
    let v2 = pos(E1, 2);
    c1.send(&welcome(LONG_HB));
    c1.send(&change(v2, &[("A", "2")]));
    c1.send(&synced(v2));
    agent.wait_for("v2 rendered, signalled, acked", || {
        w.read("out.env").contains("A=2") && w.signals().len() == 1 && c1.acked(v2)
    });
    assert_eq!(w.starts().len(), 1, "{:?}", w.record());
    no_bad_frames(&[c0, c1]);
}

#[test]
fn a_heartbeat_ahead_of_the_agent_triggers_a_resync() {
    let w = Work::new();
    let fake = FakeNode::start();
    let agent = start_agent(&w, &[fake.url()], false, &[]);
    let (v1, v2, v3) = (pos(E1, 1), pos(E1, 2), pos(E1, 3));

    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    agent.wait_for("v1 rendered, child started, v1 acked", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 1 && c0.acked(v1)
    });

    // v2 was committed but its change never arrived: the next heartbeat shows it.
    c0.send(&heartbeat(v2));
    agent.wait_for("a resync from v1", || c0.resyncs() == [Some(v1)]);
    assert!(w.read("out.env").contains("A=1"), "{}", w.read("out.env"));
    assert!(!c0.acked(v2));

    // Until an answer comes, another heartbeat asks nothing more; a catch-up the node could
    // not serve (`unavailable`) is asked for again at the next heartbeat.
    c0.send(&heartbeat(v2));
    c0.send(&ServerMsg::Error {
        code: "unavailable".into(),
        message: "the store is unavailable".into(),
    });
    c0.send(&heartbeat(v2));
    agent.wait_for("a second resync from v1", || {
        c0.resyncs() == [Some(v1), Some(v1)]
    });

    // The answer, as to a resync: the missed change set, then synced.
    c0.send(&change(v2, &[("A", "2")]));
    c0.send(&synced(v2));
    agent.wait_for("v2 rendered, signalled, acked", || {
        w.read("out.env").contains("A=2") && w.signals().len() == 1 && c0.acked(v2)
    });

    // A heartbeat at the agent's own position asks for nothing. The change after it is
    // the barrier: once v3 is acked the heartbeat before it was handled.
    c0.send(&heartbeat(v2));
    c0.send(&change(v3, &[("B", "3")]));
    agent.wait_for("v3 applied and acked", || {
        w.read("out.env").contains("B=3") && c0.acked(v3)
    });
    assert_eq!(c0.resyncs(), [Some(v1), Some(v1)], "{:?}", c0.received());

    // A heartbeat of a newer epoch (history was reset, its snapshot lost): resync too.
    let new = pos(E2, 1);
    c0.send(&heartbeat(new));
    agent.wait_for("a resync from v3", || {
        c0.resyncs() == [Some(v1), Some(v1), Some(v3)]
    });
    c0.send(&snapshot(new, &[("A", "new")]));
    c0.send(&synced(new));
    agent.wait_for("the new history rendered and acked", || {
        let out = w.read("out.env");
        out.contains("A=new") && !out.contains("B=3") && c0.acked(new)
    });

    assert_eq!(fake.attempts(), 1, "one connection throughout");
    assert_eq!(w.starts().len(), 1);
    no_bad_frames(&[c0]);
}

/// Wait for the first hello on either node; (the node that got it, the other one).
fn first_contacted<'a>(
    agent: &Tether,
    a: &'a FakeNode,
    b: &'a FakeNode,
) -> (&'a FakeNode, &'a FakeNode) {
    agent.wait_for("a hello on one of the nodes", || {
        a.conn(0).hello().is_some() || b.conn(0).hello().is_some()
    });
    if a.conn(0).hello().is_some() {
        (a, b)
    } else {
        (b, a)
    }
}

#[test]
fn failover_to_another_node_resumes_from_the_position() {
    let w = Work::new();
    let (a, b) = (FakeNode::start(), FakeNode::start());
    let mut agent = start_agent(&w, &[a.url(), b.url()], true, &[]);
    let (v1, v2, v3) = (pos(E1, 1), pos(E1, 2), pos(E1, 3));

    // The agent picks a node at random; whichever it is serves v1, then crashes.
    let (first, second) = first_contacted(&agent, &a, &b);
    let f0 = first.conn(0);
    f0.sync(LONG_HB, v1, &[("A", "1")]);
    agent.wait_for("child started with A=1, v1 acked", || {
        w.child_env().contains(&"A=1".to_string()) && w.starts().len() == 1 && f0.acked(v1)
    });
    f0.abort();

    // The other node is asked next, from v1, and gets the last ack again.
    let s0 = second.wait_hello(&agent, 0);
    assert_eq!(s0.hello().and_then(|s| s.position), Some(v1));
    s0.send(&welcome(LONG_HB));
    s0.send(&change(v2, &[("A", "2")]));
    s0.send(&synced(v2));
    agent.wait_for("child restarted with A=2, v2 acked", || {
        w.child_env().contains(&"A=2".to_string()) && w.starts().len() == 2 && s0.acked(v2)
    });
    assert!(
        matches!(s0.received().get(1), Some(ClientMsg::Ack { position, ok: true, .. }) if *position == v1),
        "the last ack is sent again after the welcome: {:?}",
        s0.received()
    );

    // That node shuts down cleanly (close 1001); the agent goes back to the first, from v2.
    s0.close(1001, "node shutting down");
    let f1 = first.wait_hello(&agent, 1);
    assert_eq!(f1.hello().and_then(|s| s.position), Some(v2));
    f1.send(&welcome(LONG_HB));
    f1.send(&change(v3, &[("A", "3")]));
    f1.send(&synced(v3));
    agent.wait_for("child restarted with A=3, v3 acked", || {
        w.child_env().contains(&"A=3".to_string()) && w.starts().len() == 3 && f1.acked(v3)
    });
    assert!(running(&mut agent));
    no_bad_frames(&[f0, f1, s0]);
}

#[test]
fn a_node_that_refuses_the_hello_is_passed_over_for_the_next() {
    let w = Work::new();
    let (a, b) = (FakeNode::start(), FakeNode::start());
    let agent = start_agent(&w, &[a.url(), b.url()], false, &[]);
    let v1 = pos(E1, 1);

    let (first, second) = first_contacted(&agent, &a, &b);
    first
        .conn(0)
        .refuse_hello("token \"t\" may not read environment \"prod\"");
    let s0 = second.wait_hello(&agent, 0);
    assert_eq!(s0.hello().and_then(|s| s.position), None);
    s0.sync(LONG_HB, v1, &[("A", "1")]);
    agent.wait_for("v1 rendered, child started, v1 acked", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 1 && s0.acked(v1)
    });
    let logs = agent.logs();
    assert!(
        logs.contains("refused this agent's token") && logs.contains("forbidden"),
        "the refusal is logged:\n{logs}"
    );
    no_bad_frames(&[first.conn(0), s0]);
}

/// How the node refuses the agent's reconnection.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// An HTTP status on the upgrade, as for a bad token.
    Upgrade(u16),
    /// An `error` frame (`forbidden`) and close 1008 in answer to the hello, as for a token
    /// that may not read the environment.
    Hello,
}

/// An agent synced at v1 loses its node, whose next answer is `refusal`. The agent reports
/// a refused token (naming its source, never the token), tries again after a wait, and its
/// child runs on the last good values meanwhile; the retry is served and the same child
/// sees the next change.
fn refused_then_retried(refusal: Refusal) {
    let w = Work::new();
    let fake = FakeNode::start();
    let token = "follower-token-0123456789";
    let mut agent = start_agent(&w, &[fake.url()], false, &[("TETHER_TOKEN", token)]);
    let (v1, v2) = (pos(E1, 1), pos(E1, 2));

    let c0 = fake.wait_hello(&agent, 0);
    assert_eq!(c0.authorization(), Some(format!("Bearer {token}")));
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    agent.wait_for("v1 rendered, child started, v1 acked", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 1 && c0.acked(v1)
    });
    let child = w.starts()[0];

    match refusal {
        Refusal::Upgrade(status) => {
            fake.refuse_next_upgrade(status);
            c0.abort();
            fake.wait_attempts(&agent, 2);
            agent.wait_for("the upgrade refused", || {
                fake.conn(1).refused() == Some(status)
            });
        }
        Refusal::Hello => {
            c0.abort();
            let c1 = fake.wait_hello(&agent, 1);
            assert_eq!(c1.hello().and_then(|s| s.position), Some(v1));
            c1.refuse_hello("token \"t\" may not read environment \"prod\"");
        }
    }
    agent.wait_for("the refused token reported", || {
        agent.logs().contains("refused this agent's token")
    });

    // The agent tries again; meanwhile the child runs on, on the last good values.
    let c2 = fake.wait_hello(&agent, 2);
    assert_eq!(c2.hello().and_then(|s| s.position), Some(v1));
    assert!(running(&mut agent), "the agent never gives up");
    assert!(alive(child), "the child runs on");
    assert_eq!(w.starts(), [child]);
    assert!(w.read("out.env").contains("A=1"));
    assert!(w.signals().is_empty(), "{:?}", w.record());

    // Once the node takes it again, a later change reaches the same child.
    c2.send(&welcome(LONG_HB));
    c2.send(&change(v2, &[("A", "2")]));
    c2.send(&synced(v2));
    agent.wait_for("v2 rendered, signalled, acked", || {
        w.read("out.env").contains("A=2") && w.signals().len() == 1 && c2.acked(v2)
    });
    assert_eq!(w.starts(), [child]);
    let logs = agent.logs();
    assert!(
        logs.contains("TETHER_TOKEN"),
        "names the token's source:\n{logs}"
    );
    assert!(!logs.contains(token), "the token never appears in the logs");
    assert_eq!(fake.attempts(), 3, "one retry after the refusal");
    no_bad_frames(&[c0, fake.conn(1), c2]);
}

#[test]
fn a_token_refused_on_the_upgrade_is_retried_while_the_child_runs_on() {
    refused_then_retried(Refusal::Upgrade(401));
}

/// A token that may not read the environment is refused in answer to the hello: reported
/// and waited on as a refused token, not retried at once as a failed connection.
#[test]
fn a_refused_hello_is_reported_as_a_refused_token_and_retried() {
    refused_then_retried(Refusal::Hello);
}
