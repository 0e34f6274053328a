//! The agent's slot gate against a scripted fake node: under a rollout policy a change that
//! restarts the child (or signals it, when the policy says so) waits for `grant` before
//! anything is written or done; `hold` keeps it waiting, `policy null` lets it go, a change
//! that fires no paced action (or a file edit alone) never asks; without a node the agent
//! acts alone after its splay; a reconnect asks again.

use nix::sys::signal::Signal::SIGTERM;
use tether_core::protocol::{ClientMsg, Epoch, Position};
use tether_core::rollout::{Amount, Policy};

use crate::agent_ops::{endpoint_addr, get, sample};
use crate::fake_node::{Conn, FakeNode, agent_args, change, grant, hold, policy, pos};
use crate::support::{Tether, Work};

const E: Epoch = Epoch(0x0190_0000_0000_0001);
/// A heartbeat long enough that no test meets it by accident.
const LONG_HB: u64 = 60_000;

fn count(agent: &Tether, needle: &str) -> usize {
    agent.logs().lines().filter(|l| l.contains(needle)).count()
}

/// `tether run` following the fake node into `out.env`, plus `extra`. `restart`: values go
/// to the child's environment too and a change restarts it; otherwise a change sends USR1.
fn start_agent(w: &Work, fake: &FakeNode, restart: bool, extra: &[&str]) -> Tether {
    let mut args = agent_args(w, &[fake.url()]);
    if restart {
        args.extend(["--on-change", "restart"].map(String::from));
    } else {
        args.extend(["--no-env", "--on-change", "signal:USR1"].map(String::from));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(w.child_args(&[]));
    Tether::start(w.dir.path(), &args, &[])
}

/// Sync the first connection at v1 (`A=1`) under `p`; wait for the child to run it.
fn sync_under<'a>(w: &Work, fake: &'a FakeNode, agent: &Tether, p: Policy) -> Conn<'a> {
    let v1 = pos(E, 1);
    let c0 = fake.wait_hello(agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    c0.send(&policy(Some(p)));
    agent.wait_for("v1 rendered, the child started, v1 acked", || {
        w.read("out.env").contains("A=1") && w.starts().len() == 1 && c0.acked(v1)
    });
    c0
}

/// Nothing of a change was applied: the old file, the child's first start, no ack.
fn still_old(w: &Work, c: Conn<'_>, p: Position) {
    assert_eq!(w.read("out.env"), "A=1\n", "the file was rewritten");
    assert_eq!(w.starts().len(), 1, "the child restarted: {:?}", w.record());
    assert!(!c.acked(p), "{p} acknowledged before it was applied");
}

fn restarts_under_one_slot() -> Policy {
    Policy::new(Amount::Count(1))
}

#[test]
fn a_restart_waits_for_its_slot_through_holds_and_acts_on_the_newest_state_once_granted() {
    let w = Work::new();
    let fake = FakeNode::start();
    let agent = start_agent(&w, &fake, true, &["--listen-metrics", "127.0.0.1:0"]);
    let addr = endpoint_addr(&agent);
    let c0 = sync_under(&w, &fake, &agent, restarts_under_one_slot());
    let (v2, v3) = (pos(E, 2), pos(E, 3));

    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("a slot asked for v2", || c0.slots() == [v2]);
    c0.send(&hold("1 of 1 slots in use", false));
    agent.wait_for("the hold told", || {
        count(&agent, "1 of 1 slots in use") == 1
    });
    still_old(&w, c0, v2);
    assert!(!w.child_env().contains(&"A=2".to_string()));
    let ready = get(&addr, "/readyz").1;
    assert!(
        ready.contains("waiting for a rollout slot (1 of 1 slots in use)"),
        "{ready}"
    );
    let metrics = get(&addr, "/metrics").1;
    assert_eq!(sample(&metrics, "tether_agent_slot_waiting"), Some(1.0));
    assert_eq!(sample(&metrics, "tether_agent_slot_waits_total"), Some(1.0));

    // The same hold again is not told again; a newer version is asked for under the wait.
    c0.send(&hold("1 of 1 slots in use", false));
    c0.send(&change(v3, &[("A", "3")]));
    agent.wait_for("a slot asked for v3", || c0.slots() == [v2, v3]);
    c0.send(&hold(
        "halted: 1 agent failed version 3 (max_failures 1)",
        true,
    ));
    agent.wait_for("the halt told", || {
        count(&agent, "the rollout is halted") == 1
    });
    assert_eq!(count(&agent, "1 of 1 slots in use"), 1, "{}", agent.logs());
    still_old(&w, c0, v3);

    // The grant (for the version asked first) covers the newest state.
    c0.send(&grant(v2));
    agent.wait_for("v3 applied: file, restart, ack", || {
        w.read("out.env") == "A=3\n" && w.starts().len() == 2 && c0.acked(v3)
    });
    assert!(w.child_env().contains(&"A=3".to_string()));
    agent.wait_for("the slot given back", || c0.releases() == 1);
    assert_eq!(c0.slots(), [v2, v3], "nothing more asked");
    let mut metrics = String::new();
    agent.wait_for("the wait over in the metrics", || {
        metrics = get(&addr, "/metrics").1;
        sample(&metrics, "tether_agent_slot_waiting") == Some(0.0)
    });
    assert!(
        sample(&metrics, "tether_agent_slot_wait_seconds").is_some(),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "tether_agent_unpaced_actions_total"),
        Some(0.0)
    );
    assert!(!get(&addr, "/readyz").1.contains("rollout slot"));
}

#[test]
fn a_policy_cleared_while_waiting_lets_the_change_act_at_once() {
    let w = Work::new();
    let fake = FakeNode::start();
    let mut agent = start_agent(&w, &fake, true, &[]);
    let c0 = sync_under(&w, &fake, &agent, restarts_under_one_slot());
    let (v2, v3, v4) = (pos(E, 2), pos(E, 3), pos(E, 4));

    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("a slot asked for v2", || c0.slots() == [v2]);
    still_old(&w, c0, v2);
    c0.send(&policy(None));
    agent.wait_for("v2 applied without a grant", || {
        w.read("out.env") == "A=2\n" && w.starts().len() == 2 && c0.acked(v2)
    });
    agent.wait_for("the request withdrawn", || c0.releases() == 1);

    // No policy: the next change acts at once, asking nothing.
    c0.send(&change(v3, &[("A", "3")]));
    agent.wait_for("v3 applied", || {
        w.read("out.env") == "A=3\n" && w.starts().len() == 3 && c0.acked(v3)
    });
    assert_eq!(c0.slots(), [v2]);

    // Under a policy again, a change waits; stopping the agent gives its request back.
    c0.send(&policy(Some(restarts_under_one_slot())));
    c0.send(&change(v4, &[("A", "4")]));
    agent.wait_for("a slot asked for v4", || c0.slots() == [v2, v4]);
    agent.signal(SIGTERM);
    agent.wait();
    agent.wait_for("the request given back at the stop", || c0.releases() == 2);
    assert_eq!(w.starts().len(), 3, "{:?}", w.record());
}

#[test]
fn a_change_that_fires_no_paced_action_does_not_ask_for_a_slot() {
    let w = Work::new();
    w.write("local.env", "B=1\n");
    let local = format!("file:{}", w.path("local.env").display());
    let fake = FakeNode::start();
    let agent = start_agent(&w, &fake, false, &["--source", &local]);
    let v1 = pos(E, 1);
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    c0.send(&policy(Some(restarts_under_one_slot())));
    agent.wait_for("v1 rendered", || {
        w.read("out.env") == "A=1\nB=1\n" && w.starts().len() == 1 && c0.acked(v1)
    });
    let (v2, v3, v4) = (pos(E, 2), pos(E, 3), pos(E, 4));

    // A signal is not paced without the policy's `signals`.
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("v2 applied and signalled", || {
        w.read("out.env").contains("A=2") && w.signals().len() == 1 && c0.acked(v2)
    });
    // A version that changes nothing rendered acts on nothing.
    c0.send(&change(v3, &[("A", "2")]));
    agent.wait_for("v3 acked", || c0.acked(v3));
    assert_eq!(c0.slots(), Vec::<Position>::new());
    assert_eq!(w.signals().len(), 1);

    // With `signals`, the signal waits for its slot...
    let signals = Policy {
        signals: true,
        ..restarts_under_one_slot()
    };
    c0.send(&policy(Some(signals)));
    c0.send(&change(v4, &[("A", "4")]));
    agent.wait_for("a slot asked for v4", || c0.slots() == [v4]);
    assert!(w.read("out.env").contains("A=2"));
    assert_eq!(w.signals().len(), 1);
    c0.send(&grant(v4));
    agent.wait_for("v4 applied and signalled", || {
        w.read("out.env").contains("A=4") && w.signals().len() == 2 && c0.acked(v4)
    });
    agent.wait_for("the slot given back", || c0.releases() == 1);

    // ...but a local file edit alone applies at once: the node paces only what it sends.
    w.write("local.env", "B=2\n");
    agent.wait_for("the file edit applied and signalled", || {
        w.read("out.env") == "A=4\nB=2\n" && w.signals().len() == 3
    });
    assert_eq!(c0.slots(), [v4]);
    assert_eq!(w.starts().len(), 1);
}

#[test]
fn without_a_node_the_agent_acts_on_its_own_after_its_splay() {
    let w = Work::new();
    let fake = FakeNode::start();
    let agent = start_agent(
        &w,
        &fake,
        true,
        &["--splay", "300ms", "--listen-metrics", "127.0.0.1:0"],
    );
    let addr = endpoint_addr(&agent);
    let c0 = sync_under(&w, &fake, &agent, restarts_under_one_slot());
    let v2 = pos(E, 2);

    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("a slot asked for v2", || c0.slots() == [v2]);
    still_old(&w, c0, v2);
    // The node vanishes; the next one never welcomes the agent.
    c0.abort();
    agent.wait_for("the change applied alone", || {
        w.read("out.env") == "A=2\n" && w.starts().len() == 2
    });
    assert_eq!(
        count(
            &agent,
            "no node reachable to pace this change; acting on my own after a splay of"
        ),
        1,
        "{}",
        agent.logs()
    );
    let metrics = get(&addr, "/metrics").1;
    assert_eq!(
        sample(&metrics, "tether_agent_unpaced_actions_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "tether_agent_slot_waiting"), Some(0.0));
}

#[test]
fn a_reconnect_asks_for_the_slot_again_and_calls_off_acting_alone() {
    let w = Work::new();
    let fake = FakeNode::start();
    let cfg = |splay: &str| {
        format!(
            "server = [\"{url}\"]\nenvironment = \"prod\"\nstate_dir = \"{state}\"\n\
             debounce = \"0\"\nmax_wait = \"0\"\nsplay = \"{splay}\"\n\
             [[output]]\npath = \"{out}\"\non_change = \"restart\"\n",
            url = fake.url(),
            state = w.path("state").display(),
            out = w.path("out.env").display(),
        )
    };
    w.write("tether.toml", &cfg("0s"));
    let mut args = vec![
        "run".to_string(),
        "--config".into(),
        w.path("tether.toml").display().to_string(),
        "--".into(),
    ];
    args.extend(w.child_args(&[]));
    let agent = Tether::start(w.dir.path(), &args, &[]);
    let c0 = sync_under(&w, &fake, &agent, restarts_under_one_slot());
    let v2 = pos(E, 2);

    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("a slot asked for v2", || c0.slots() == [v2]);
    // A splay so long that the agent cannot act alone before it reconnects (set now: the
    // change itself was not delayed by it).
    w.write("tether.toml", &cfg("24h"));
    agent.wait_for("the splay reloaded", || {
        agent
            .logs()
            .lines()
            .any(|l| l.contains("configuration reloaded") && l.contains("splay"))
    });
    c0.abort();
    agent.wait_for("acting alone scheduled", || {
        count(&agent, "acting on my own after a splay of") == 1
    });
    let c1 = fake.wait_hello(&agent, 1);
    assert_eq!(c1.hello().and_then(|s| s.position), Some(v2));
    c1.sync(LONG_HB, v2, &[("A", "2")]);
    agent.wait_for("the slot asked again on the new connection", || {
        c1.slots() == [v2]
    });
    agent.wait_for("acting alone called off", || {
        count(
            &agent,
            "a node is reachable again; waiting for the rollout slot",
        ) == 1
    });
    still_old(&w, c1, v2);

    c1.send(&grant(v2));
    agent.wait_for("v2 applied under the slot", || {
        w.read("out.env") == "A=2\n" && w.starts().len() == 2 && c1.acked(v2)
    });
    agent.wait_for("the slot given back", || c1.releases() == 1);
    assert_eq!(count(&agent, "acting on my own now"), 0, "{}", agent.logs());
}

/// The positions of the `health` frames on `c`, in order.
fn health_positions(c: &Conn<'_>) -> Vec<Position> {
    c.received()
        .into_iter()
        .filter_map(|m| match m {
            ClientMsg::Health { position, .. } => Some(position),
            _ => None,
        })
        .collect()
}

/// One node failing while another is there is a failover, not "no node reachable": the
/// waiting agent asks the other node and never schedules acting alone (splay 0).
#[test]
fn a_failover_to_another_node_is_not_acting_alone() {
    let w = Work::new();
    let (a, b) = (FakeNode::start(), FakeNode::start());
    let agent = start_agent(&w, &a, true, &["--server", &b.url()]);
    agent.wait_for("a hello on either node", || {
        a.conn(0).hello().is_some() || b.conn(0).hello().is_some()
    });
    let (first, second) = if a.conn(0).hello().is_some() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let c0 = sync_under(&w, first, &agent, restarts_under_one_slot());
    let v2 = pos(E, 2);
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("a slot asked for v2", || c0.slots() == [v2]);
    c0.abort();
    let n = second.attempts().saturating_sub(1);
    let c1 = second.wait_hello(&agent, n);
    c1.sync(LONG_HB, v2, &[("A", "2")]);
    agent.wait_for("the slot asked of the other node", || c1.slots() == [v2]);
    still_old(&w, c1, v2);
    assert_eq!(count(&agent, "acting on my own"), 0, "{}", agent.logs());
}

/// On a reconnect the request for the newer version is asked again, and the older
/// version's health report is not repeated (a node frees a slot on a report).
#[test]
fn a_reconnect_asks_for_the_slot_and_never_repeats_an_older_health_report() {
    let w = Work::new();
    let fake = FakeNode::start();
    let agent = start_agent(&w, &fake, true, &["--bake", "0s"]);
    let c0 = sync_under(&w, &fake, &agent, restarts_under_one_slot());
    let (v1, v2) = (pos(E, 1), pos(E, 2));
    agent.wait_for("v1 reported", || health_positions(&c0) == [v1]);
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("a slot asked for v2", || c0.slots() == [v2]);
    c0.abort();
    let c1 = fake.wait_hello(&agent, 1);
    c1.sync(LONG_HB, v2, &[("A", "2")]);
    agent.wait_for("the slot asked again", || c1.slots() == [v2]);
    // v1's report is not sent again at all once a slot for v2 was asked (the node already
    // has it, and it must never be taken as giving back v2's slot); nothing else precedes
    // the slot request but the hello and the ack.
    let frames = c1.received();
    let slot = frames
        .iter()
        .position(|m| matches!(m, ClientMsg::Slot { .. }));
    let health = frames
        .iter()
        .position(|m| matches!(m, ClientMsg::Health { .. }));
    assert!(health.is_none() || slot < health, "{frames:?}");
    assert!(!health_positions(&c1).contains(&v1), "{frames:?}");
}

/// A health report older than the last acknowledged version is not sent again on a
/// reconnect: only the newest version's report is news.
#[test]
fn a_reconnect_does_not_repeat_a_health_report_older_than_the_last_ack() {
    let w = Work::new();
    let fake = FakeNode::start();
    let ok = w.path("ok");
    std::fs::write(&ok, "").unwrap();
    let check = format!("test -e {}", ok.display());
    let agent = start_agent(
        &w,
        &fake,
        false,
        &[
            "--health-cmd",
            &check,
            "--bake",
            "0s",
            "--health-interval",
            "100ms",
        ],
    );
    let (v1, v2) = (pos(E, 1), pos(E, 2));
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    agent.wait_for("v1 healthy", || health_positions(&c0) == [v1]);
    // v2 is acknowledged but its check does not pass yet.
    std::fs::remove_file(&ok).unwrap();
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("v2 acked", || c0.acked(v2));
    c0.abort();
    let c1 = fake.wait_hello(&agent, 1);
    c1.sync(LONG_HB, v2, &[("A", "2")]);
    agent.wait_for("v2's ack sent again", || c1.acked(v2));
    std::fs::write(&ok, "").unwrap();
    agent.wait_for("v2 healthy", || health_positions(&c1).contains(&v2));
    assert_eq!(health_positions(&c1), [v2], "{:?}", c1.received());
}

/// A version whose output could not be written is reported failed and its slot given
/// back; the outputs' retry then asks for a slot again (no unpaced action, no spinning
/// while it waits) and, granted, writes, restarts, acknowledges and reports it.
#[test]
fn a_version_that_failed_to_write_is_retried_under_a_new_slot() {
    let w = Work::new();
    let fake = FakeNode::start();
    std::fs::create_dir(w.path("out")).unwrap();
    let out = w.path("out/app.env");
    let (url, state) = (fake.url(), w.path("state").display().to_string());
    let mut args: Vec<String> = [
        "run",
        "--server",
        &url,
        "--env",
        "prod",
        "--state-dir",
        &state,
        "--output",
        &out.display().to_string(),
        "--on-change",
        "restart",
        "--debounce",
        "0",
        "--bake",
        "0s",
    ]
    .map(String::from)
    .to_vec();
    args.push("--".into());
    args.extend(w.child_args(&[]));
    let agent = Tether::start(w.dir.path(), &args, &[]);
    let (v1, v2) = (pos(E, 1), pos(E, 2));
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    c0.send(&policy(Some(restarts_under_one_slot())));
    agent.wait_for("v1 running", || w.starts().len() == 1 && c0.acked(v1));

    // The output's directory turns into a file: the write fails.
    std::fs::rename(w.path("out"), w.path("out.away")).unwrap();
    std::fs::write(w.path("out"), "not a dir").unwrap();
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("a slot asked for v2", || c0.slots() == [v2]);
    c0.send(&grant(v2));
    agent.wait_for("v2 not applied, reported and given back", || {
        let r = c0.received();
        r.iter()
            .any(|m| matches!(m, ClientMsg::Ack { position, ok: false, .. } if *position == v2))
            && health_positions(&c0) == [v1, v2]
            && c0.releases() == 1
    });
    agent.wait_for("the retry asks for a slot again", || c0.slots() == [v2, v2]);
    c0.send(&hold("1 of 1 slots in use", false));
    agent.wait_for("the hold logged", || {
        count(&agent, "1 of 1 slots in use") == 1
    });
    assert!(
        count(&agent, "retrying the outputs that failed") <= 2,
        "the retry spins while waiting:\n{}",
        agent.logs()
    );
    assert_eq!(
        w.starts().len(),
        1,
        "acted without a slot: {:?}",
        w.record()
    );

    std::fs::remove_file(w.path("out")).unwrap();
    std::fs::rename(w.path("out.away"), w.path("out")).unwrap();
    c0.send(&grant(v2));
    agent.wait_for("v2 written, restarted, acked and healthy", || {
        std::fs::read_to_string(&out).unwrap_or_default() == "A=2\n"
            && w.starts().len() == 2
            && c0.acked(v2)
            && health_positions(&c0) == [v1, v2, v2]
    });
    assert_eq!(count(&agent, "acting on my own"), 0);
}
