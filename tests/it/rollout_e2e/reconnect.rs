//! Agents losing their node mid-rollout, against scripted nodes (both found by the
//! three-node test, where they let more agents restart at once than the policy allows):
//! one that reconnects while it holds a slot asks for it again and does not re-send the
//! health report of the version before (which a node takes as the slot given back); one
//! that loses its node while waiting for a slot fails over to another and waits there,
//! rather than act alone as if no node were reachable.

use tether_core::protocol::{ClientMsg, Epoch, Position};
use tether_core::rollout::{Amount, Policy};

use crate::fake_node::{FakeNode, change, grant, policy, pos};
use crate::support::{Tether, Work};

const E: Epoch = Epoch(0x0190_0000_0000_0002);
const LONG_HB: u64 = 60_000;

/// `tether run` of the fixture child following `servers`, restarting it on change, baking
/// each change for `bake`.
fn start_agent(w: &Work, servers: &[String], bake: &str) -> Tether {
    let mut args: Vec<String> = vec!["run".into()];
    for s in servers {
        args.extend(["--server".into(), s.clone()]);
    }
    let (out, state) = (w.path("out.env"), w.path("state"));
    args.extend(
        [
            "--env",
            "prod",
            "--state-dir",
            &state.display().to_string(),
            "--output",
            &out.display().to_string(),
            "--debounce",
            "0",
            "--on-change",
            "restart",
            "--bake",
            bake,
            "--",
        ]
        .map(String::from),
    );
    args.extend(w.child_args(&[]));
    Tether::start(w.dir.path(), &args, &[])
}

fn healths(msgs: &[ClientMsg]) -> Vec<Position> {
    msgs.iter()
        .filter_map(|m| match m {
            ClientMsg::Health { position, .. } => Some(*position),
            _ => None,
        })
        .collect()
}

#[test]
fn a_reconnect_holding_a_slot_re_sends_no_older_health_report() {
    let w = Work::new();
    let fake = FakeNode::start();
    // Long enough that the connection is lost while v2 bakes.
    let agent = start_agent(&w, &[fake.url()], "4s");
    let (v1, v2) = (pos(E, 1), pos(E, 2));

    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    c0.send(&policy(Some(Policy::new(Amount::Count(1)))));
    agent.wait_for("v1 baked and reported", || healths(&c0.received()) == [v1]);
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("a slot asked for v2", || c0.slots() == [v2]);
    c0.send(&grant(v2));
    agent.wait_for("the child restarted under the slot", || {
        w.starts().len() == 2
    });
    c0.abort();

    let c1 = fake.wait_hello(&agent, 1);
    c1.sync(LONG_HB, v2, &[("A", "2")]);
    agent.wait_for("the slot asked again on the new connection", || {
        c1.slots() == [v2]
    });
    assert_eq!(
        healths(&c1.received()),
        [],
        "no report of v1 re-sent while v2 holds the slot"
    );
    agent.wait_for("v2 reported once its bake is over", || {
        healths(&c1.received()) == [v2]
    });
}

#[test]
fn an_agent_waiting_for_a_slot_fails_over_to_another_node_and_waits_there() {
    let w = Work::new();
    let nodes = [FakeNode::start(), FakeNode::start()];
    let agent = start_agent(&w, &[nodes[0].url(), nodes[1].url()], "0s");
    // It picks one of the two at random.
    agent.wait_for("a first connection", || {
        nodes.iter().any(|n| n.conn(0).hello().is_some())
    });
    let first = usize::from(nodes[0].conn(0).hello().is_none());
    let (v1, v2) = (pos(E, 1), pos(E, 2));
    let c0 = nodes[first].conn(0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    c0.send(&policy(Some(Policy::new(Amount::Count(1)))));
    agent.wait_for("v1 applied", || w.starts().len() == 1 && c0.acked(v1));
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("a slot asked for v2", || c0.slots() == [v2]);
    c0.abort();

    let c1 = nodes[1 - first].wait_hello(&agent, 0);
    c1.sync(LONG_HB, v2, &[("A", "2")]);
    agent.wait_for("the slot asked for on the other node", || {
        c1.slots() == [v2]
    });
    assert_eq!(
        w.starts().len(),
        1,
        "acted without a slot: {:?}",
        w.record()
    );
    assert_eq!(w.read("out.env"), "A=1\n");
    assert!(
        !agent.stderr().contains("acting on my own"),
        "{}",
        agent.stderr()
    );
    c1.send(&grant(v2));
    agent.wait_for("v2 applied under the slot", || {
        w.read("out.env") == "A=2\n" && w.starts().len() == 2 && c1.acked(v2)
    });
}
