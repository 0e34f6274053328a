//! Rollouts end to end (issue 16): real agents (`tether run`) restarting real children
//! (`tether-bench child`, which exits 3 on `MODE=bad`), on one node and on three nodes over
//! Redis. How many children restarted at once is read from the children's start stamps and
//! the stamps of the agents' health commands, never from what tether says of itself.

pub mod fleet;
mod reconnect;

use std::sync::{Mutex, PoisonError};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value as Json;

use fleet::{ENV, Fleet, ROLLOUT_DEADLINE, most_at_once, now_nanos, timeline};

use crate::support::wait_for_within;

/// The rollout's slots as the node counts them: (held, max).
fn slots(r: &Json) -> (u64, u64) {
    (
        r.pointer("/slots/held").and_then(Json::as_u64).unwrap_or(0),
        r.pointer("/slots/max").and_then(Json::as_u64).unwrap_or(0),
    )
}

/// 50 agents, `max_unavailable = 5`: one write restarts every child, never more than 5 at
/// once, and the nodes never count more than 5 slots held.
fn fifty_agents_five_at_a_time(nodes: usize) {
    // One fleet of fifty at a time: two at once are a hundred agents on a small machine.
    static FIFTY: Mutex<()> = Mutex::new(());
    let _one = FIFTY.lock().unwrap_or_else(PoisonError::into_inner);
    let mut f = Fleet::start(nodes, &[]);
    let v1 = f.write(0, &[("MODE", "good"), ("N", "1")]);
    f.set_policy(&["--max-unavailable", "5"]);
    f.start_agents(50, "1s", &[]);
    f.wait_settled(v1);

    let since = now_nanos();
    let v2 = f.write(nodes - 1, &[("N", "2")]);
    let mut most_held = 0;
    let done = f.wait_rollout("every agent healthy at the new version", v2, |r| {
        let (held, max) = slots(r);
        assert_eq!(max, 5, "{r}");
        most_held = most_held.max(held);
        r["state"] == "done"
    });
    assert_eq!(done["healthy"].as_u64(), Some(50), "{done}");
    assert_eq!(done["failed"].as_u64(), Some(0), "{done}");
    assert!(most_held <= 5, "the node counted {most_held} slots held");
    for a in &f.agents {
        let after: Vec<u128> = a.starts().into_iter().filter(|&s| s > since).collect();
        assert_eq!(after.len(), 1, "{} restarted its child once", a.name);
        assert_eq!(a.child_env("N").as_deref(), Some("2"), "{}", a.name);
    }
    let most = most_at_once(&f.agents, since);
    assert!(
        (1..=5).contains(&most),
        "{most} children were restarting at once (max_unavailable 5):\n{}",
        timeline(&f.agents, since)
    );
}

#[test]
fn fifty_agents_on_one_node_restart_at_most_five_at_once() {
    fifty_agents_five_at_a_time(1);
}

#[test]
fn fifty_agents_on_three_nodes_restart_at_most_five_at_once() {
    fifty_agents_five_at_a_time(3);
}

/// A bad value to an environment with waves: the first wave's one agent takes it, its
/// child exits, it rolls back to the good values; the rollout halts there; nobody else
/// restarts; `tether status prod --json` says halted and `--watch` exits 65. A fix then
/// reaches everyone.
fn a_bad_value_halts_in_the_first_wave(nodes: usize) {
    let mut f = Fleet::start(nodes, &[]);
    let v1 = f.write(0, &[("MODE", "good")]);
    f.set_policy(&[
        "--max-unavailable",
        "5",
        "--waves",
        "1,10%,50%,100%",
        "--bake",
        "1s",
        "--max-failures",
        "1",
    ]);
    f.start_agents(12, "1s", &[]);
    f.wait_settled(v1);

    let since = now_nanos();
    let v2 = f.write(nodes - 1, &[("MODE", "bad")]);
    // In a cluster the agents' reports reach the status a moment after the halt.
    let halted = f.wait_rollout("the rollout to halt", v2, |r| {
        r["state"] == "halted" && r["failed"].as_u64() >= Some(1)
    });
    assert_eq!(halted["failed"].as_u64(), Some(1), "{halted}");
    assert!(
        halted["halted_reason"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{halted}"
    );

    let restarted: Vec<&fleet::Agent> = f
        .agents
        .iter()
        .filter(|a| a.starts().iter().any(|&s| s > since))
        .collect();
    assert_eq!(
        restarted.len(),
        1,
        "only the first wave's agent took the bad value"
    );
    let bad = restarted[0];
    wait_for_within(
        &format!("{} to roll back to MODE=good", bad.name),
        ROLLOUT_DEADLINE,
        &mut || bad.child_env("MODE").as_deref() == Some("good") && bad.starts().len() >= 3,
    );
    let (code, out, err) = f.cli(&["status", ENV, "--watch", "--timeout", "3s"]);
    assert_eq!(code, 65, "status --watch on a halted rollout:\n{out}{err}");
    assert!(out.contains("halted"), "{out}");
    for a in &f.agents {
        if a.name != bad.name {
            assert_eq!(a.starts().len(), 1, "{} never restarted", a.name);
            assert_eq!(a.child_env("MODE").as_deref(), Some("good"), "{}", a.name);
        }
    }
    let (code, out, err) = f.cli(&["status", ENV, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let json: Json = serde_json::from_str(out.lines().next().unwrap_or("")).expect("JSON");
    assert_eq!(json["rollout"]["state"], "halted", "{out}");
    assert_eq!(json["rollout"]["version"].as_u64(), Some(v2), "{out}");

    // A fix starts a new rollout, which reaches everyone.
    let v3 = f.write(0, &[("MODE", "fixed")]);
    f.wait_rollout("the fix everywhere", v3, |r| r["state"] == "done");
    for a in &f.agents {
        wait_for_within(
            &format!("{} on the fix", a.name),
            ROLLOUT_DEADLINE,
            &mut || a.child_env("MODE").as_deref() == Some("fixed"),
        );
    }
}

#[test]
fn a_bad_value_on_one_node_halts_in_the_first_wave_and_rolls_back() {
    a_bad_value_halts_in_the_first_wave(1);
}

#[test]
fn a_bad_value_on_three_nodes_halts_in_the_first_wave_and_rolls_back() {
    a_bad_value_halts_in_the_first_wave(3);
}

/// Three nodes; a node is killed while agents on it hold slots: the agents fail over, the
/// slots they held are still counted (never more than `max_unavailable` restarting), and
/// the rollout completes. Then a halt survives the node that reported it being killed and
/// restarted, and agents failing over: nobody else acts on the bad value.
#[test]
fn a_node_killed_mid_rollout_loses_no_slot_accounting_and_no_halt() {
    let mut f = Fleet::start(3, &[]);
    let v1 = f.write(0, &[("MODE", "good"), ("N", "1")]);
    // A first wave of one, so that a bad value reaches one agent only.
    f.set_policy(&[
        "--max-unavailable",
        "2",
        "--waves",
        "1,100%",
        "--max-failures",
        "1",
    ]);
    f.start_agents(9, "2s", &[]);
    f.wait_settled(v1);

    let since = now_nanos();
    let v2 = f.write(1, &[("N", "2")]);
    f.wait_rollout("two slots held", v2, |r| slots(r).0 == 2);
    // Kill the node of the agent that restarted last, which bakes for 2s holding its slot.
    let baking = (0..f.agents.len())
        .max_by_key(|&k| f.agents[k].starts().last().copied().unwrap_or(0))
        .expect("agents");
    assert!(
        f.agents[baking].starts().iter().any(|&s| s > since),
        "an agent restarted"
    );
    let victim = f.node_of(baking).expect("the baking agent's node");
    f.nodes[victim].kill();
    let mut most_held = 0;
    let done = f.wait_rollout("the rollout to complete after the kill", v2, |r| {
        most_held = most_held.max(slots(r).0);
        r["state"] == "done" && r["healthy"].as_u64() == Some(9)
    });
    assert!(most_held <= 2, "{most_held} slots held: {done}");
    let most = most_at_once(&f.agents, since);
    assert!(
        most <= 2,
        "{most} children restarting at once (max_unavailable 2):\n{}",
        timeline(&f.agents, since)
    );

    // A halt, then two nodes are killed (their agents fail over to the third) and restarted.
    f.nodes[victim].restart(&f.work);
    let since = now_nanos();
    let v3 = f.write(victim, &[("MODE", "bad")]);
    f.wait_rollout("the rollout to halt", v3, |r| r["state"] == "halted");
    let (a, b, kept) = ((victim + 1) % 3, (victim + 2) % 3, victim);
    f.nodes[a].kill();
    f.nodes[b].kill();
    let halted = f.rollout_at(kept);
    assert_eq!(
        halted["state"], "halted",
        "the halt is in the store: {halted}"
    );
    f.nodes[a].restart(&f.work);
    f.nodes[b].restart(&f.work);
    for i in 0..3 {
        let r = f.rollout_at(i);
        assert_eq!(r["state"], "halted", "node {i} after the restarts: {r}");
    }
    f.wait_rollout("every agent back after the restarts", v3, |r| {
        r["agents"].as_u64() == Some(9)
    });
    let (code, out, err) = f.cli(&["status", ENV, "--watch", "--timeout", "4s"]);
    assert_eq!(code, 65, "{out}{err}");
    let took: Vec<&str> = f
        .agents
        .iter()
        .filter(|a| a.starts().iter().any(|&s| s > since))
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(took.len(), 1, "only one agent took the bad value: {took:?}");
}

/// An agent killed (SIGKILL) while it holds a slot: its slot comes back after the lease
/// (`--slot-lease 2s`), and the other agents finish the rollout one at a time.
#[test]
fn an_agent_that_dies_holding_a_slot_gives_it_back_after_the_lease() {
    let mut f = Fleet::start(1, &["--slot-lease", "2s"]);
    let v1 = f.write(0, &[("N", "1")]);
    f.set_policy(&["--max-unavailable", "1"]);
    f.start_agents(3, "5s", &[]);
    f.wait_settled(v1);

    let since = now_nanos();
    let v2 = f.write(0, &[("N", "2")]);
    let mut holder = None;
    // Its child restarted and passed its first check; it bakes for 5s, holding the slot.
    wait_for_within(
        "an agent to restart holding the slot",
        ROLLOUT_DEADLINE,
        &mut || {
            // Its child started, and a check passed after that start.
            holder = f.agents.iter().position(|a| {
                let last = a.starts().last().copied().unwrap_or(0);
                last > since && a.healthy().iter().any(|&h| h > last)
            });
            holder.is_some()
        },
    );
    let holder = holder.expect("found");
    assert_eq!(slots(&f.rollout()).0, 1, "the slot is held while it bakes");
    let pid = f.agents[holder].proc.pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the agent");
    let _ = f.agents[holder].proc.wait();

    let done = f.wait_rollout("the others to finish after the lease", v2, |r| {
        r["state"] == "done" && r["healthy"].as_u64() == Some(2)
    });
    assert_eq!(
        done["agents"].as_u64(),
        Some(2),
        "the dead agent follows no more: {done}"
    );
    for (i, a) in f.agents.iter().enumerate() {
        if i != holder {
            assert_eq!(a.child_env("N").as_deref(), Some("2"), "{}", a.name);
        }
    }
    let most = most_at_once(&f.agents, since);
    assert!(
        most <= 1,
        "{most} children restarting at once (max_unavailable 1):\n{}",
        timeline(&f.agents, since)
    );
}
