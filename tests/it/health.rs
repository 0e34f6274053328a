//! Health after a change (`docs/rollouts.md`): the real agent, a scripted fake node that
//! records the `ack` and `health` frames, and a real child (`tether-bench child --exit-if`)
//! that a bad value makes exit at once. A bad version is reported `failed` and rolled back
//! (files, the child's environment), is not applied again, and a fix after it is healthy.

use tether_core::protocol::{ClientMsg, Epoch, Position};
use tether_core::rollout::HealthState;

use crate::agent_ops::{endpoint_addr, get, sample};
use crate::fake_node::{Conn, FakeNode, agent_args, change, pos};
use crate::support::{Tether, Work};

const E1: Epoch = Epoch(0x0190_0000_0000_0001);
/// A heartbeat long enough that no test meets it by accident.
const LONG_HB: u64 = 60_000;

/// `tether run` following the fake node into `out.env` and the child's environment, a
/// change restarting the child (which exits 3 when `A=bad`), with `extra` flags.
fn start_agent(w: &Work, fake: &FakeNode, extra: &[&str]) -> Tether {
    let mut args = agent_args(w, &[fake.url()]);
    args.extend(["--listen-metrics", "127.0.0.1:0"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(w.child_args(&["--exit-if", "A=bad"]));
    Tether::start(w.dir.path(), &args, &[])
}

/// The `health` frames received, as (position, state, error, rolled_back).
fn healths(c: &Conn<'_>) -> Vec<(Position, HealthState, Option<String>, bool)> {
    c.received()
        .into_iter()
        .filter_map(|m| match m {
            ClientMsg::Health {
                position,
                state,
                error,
                rolled_back,
                ..
            } => Some((position, state, error, rolled_back)),
            _ => None,
        })
        .collect()
}

fn health_of(c: &Conn<'_>, p: Position) -> Option<(HealthState, Option<String>, bool)> {
    healths(c)
        .into_iter()
        .find(|h| h.0 == p)
        .map(|h| (h.1, h.2, h.3))
}

/// Index of the first frame matching `f`.
fn index_of(c: &Conn<'_>, f: impl Fn(&ClientMsg) -> bool) -> Option<usize> {
    c.received().iter().position(f)
}

#[test]
fn a_version_that_kills_the_child_is_rolled_back_and_a_later_fix_is_healthy() {
    let w = Work::new();
    let fake = FakeNode::start();
    w.write("tether.toml", "start_without_server = false\n");
    let cfg = w.path("tether.toml").display().to_string();
    let agent = start_agent(&w, &fake, &["--bake", "1s", "--config", &cfg]);
    let (v1, v2, v3) = (pos(E1, 1), pos(E1, 2), pos(E1, 3));

    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "good"), ("B", "1")]);
    agent.wait_for("v1 applied and reported healthy after its bake", || {
        c0.acked(v1) && health_of(&c0, v1).is_some()
    });
    assert_eq!(
        health_of(&c0, v1),
        Some((HealthState::Healthy, None, false))
    );

    // v2 breaks the child: it starts with A=bad and exits 3 at once.
    c0.send(&change(v2, &[("A", "bad")]));
    agent.wait_for("v2 reported failed", || health_of(&c0, v2).is_some());
    assert_eq!(
        health_of(&c0, v2),
        Some((
            HealthState::Failed,
            Some("the child exited with status 3 within the bake time".into()),
            true
        ))
    );
    let ack = index_of(
        &c0,
        |m| matches!(m, ClientMsg::Ack { position, ok: true, .. } if *position == v2),
    );
    let health = index_of(
        &c0,
        |m| matches!(m, ClientMsg::Health { position, .. } if *position == v2),
    );
    assert!(
        ack.is_some() && ack < health,
        "ack ok before health: {:?}",
        c0.received()
    );
    assert!(
        w.record()
            .iter()
            .any(|l| l.starts_with("exit ") && l.ends_with(" 3")),
        "the child did exit with A=bad: {:?}",
        w.record()
    );
    // The old values are back: in the file and in a child started again with them.
    agent.wait_for("the child runs again with A=good", || {
        w.starts().len() == 3 && w.child_env().iter().any(|l| l == "A=good")
    });
    assert!(
        w.read("out.env").contains("A=good"),
        "{}",
        w.read("out.env")
    );
    assert!(!w.read("out.env").contains("bad"));
    let l = agent.logs();
    assert!(l.contains("rolling back"), "{l}");
    assert!(
        !l.contains("=bad") && !l.contains("\"bad\""),
        "no value in the logs:\n{l}"
    );

    // A reconnect: the failed version is reported again and not applied again.
    c0.close(1001, "going away");
    let c1 = fake.wait_hello(&agent, 1);
    assert_eq!(c1.hello().and_then(|s| s.position), Some(v2));
    c1.sync(LONG_HB, v2, &[("A", "bad"), ("B", "1")]);
    agent.wait_for("the last health report sent again", || {
        health_of(&c1, v2).is_some_and(|h| h.2)
    });
    assert!(w.read("out.env").contains("A=good"));

    // A reload that starts a new follower: it hands the failed version over again (from
    // its saved state, then from the node), and the agent does not apply it.
    w.write("tether.toml", "start_without_server = true\n");
    let c2 = fake.wait_hello(&agent, 2);
    c2.sync(LONG_HB, v2, &[("A", "bad"), ("B", "1")]);
    agent.wait_for("the failed version skipped", || {
        agent.logs().contains("not applied again")
    });
    assert!(
        w.read("out.env").contains("A=good"),
        "{}",
        w.read("out.env")
    );
    assert_eq!(w.starts().len(), 3, "{:?}", w.record());

    // A fix (v3) is applied as usual and is healthy.
    c2.send(&change(v3, &[("A", "fixed")]));
    agent.wait_for("v3 healthy", || health_of(&c2, v3).is_some());
    assert_eq!(
        health_of(&c2, v3),
        Some((HealthState::Healthy, None, false))
    );
    assert!(w.read("out.env").contains("A=fixed"));
    assert!(
        w.child_env().iter().any(|l| l == "A=fixed"),
        "{:?}",
        w.child_env()
    );
    assert_eq!(w.starts().len(), 4, "{:?}", w.record());

    let (status, metrics) = get(&endpoint_addr(&agent), "/metrics");
    assert_eq!(status, 200);
    let series = |state: &str| {
        format!("tether_agent_health_reports_total{{env=\"prod\",state=\"{state}\"}}")
    };
    assert_eq!(sample(&metrics, &series("healthy")), Some(2.0), "{metrics}");
    assert_eq!(sample(&metrics, &series("failed")), Some(1.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "tether_agent_rollbacks_total{env=\"prod\"}"),
        Some(1.0),
        "{metrics}"
    );
}

#[test]
fn the_first_version_has_nothing_to_go_back_to() {
    let w = Work::new();
    let fake = FakeNode::start();
    let mut agent = start_agent(&w, &fake, &["--bake", "5s"]);
    let v1 = pos(E1, 1);
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "bad")]);
    agent.wait_for("v1 reported failed", || health_of(&c0, v1).is_some());
    assert_eq!(
        health_of(&c0, v1),
        Some((
            HealthState::Failed,
            Some("the child exited with status 3 within the bake time".into()),
            false
        ))
    );
    // As without a bake: the child is not restarted (restart_on_exit never), and tether
    // ends with its status.
    assert_eq!(agent.wait().code(), Some(3));
    assert!(
        agent.logs().contains("nothing to roll back to"),
        "{}",
        agent.logs()
    );
}

/// A health command that fails on the new values (read from the file the child is
/// signalled to re-read): the change is rolled back and the child signalled again.
#[test]
fn a_failing_health_command_rolls_a_signalled_change_back() {
    let w = Work::new();
    let fake = FakeNode::start();
    let out = w.path("out.env").display().to_string();
    let check = format!("sh -c '! grep -q B=broken {out}'");
    let agent = start_agent(
        &w,
        &fake,
        &[
            "--no-env",
            "--on-change",
            "signal:USR1",
            "--health-cmd",
            &check,
            "--bake",
            "1s",
            "--health-interval",
            "100ms",
            "--health-timeout",
            "1s",
        ],
    );
    let (v1, v2, v3) = (pos(E1, 1), pos(E1, 2), pos(E1, 3));
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("B", "ok")]);
    agent.wait_for("v1 healthy", || health_of(&c0, v1).is_some());
    assert_eq!(
        health_of(&c0, v1),
        Some((HealthState::Healthy, None, false))
    );

    c0.send(&change(v2, &[("B", "broken")]));
    agent.wait_for("v2 failed", || health_of(&c0, v2).is_some());
    let (state, error, rolled_back) = health_of(&c0, v2).unwrap_or_else(|| unreachable!());
    assert_eq!((state, rolled_back), (HealthState::Failed, true));
    let error = error.unwrap_or_default();
    assert!(
        error.starts_with("health check did not pass within 1s: sh ended with exit code 1"),
        "{error}"
    );
    assert!(w.read("out.env").contains("B=ok"), "{}", w.read("out.env"));
    agent.wait_for("signalled for v2 and again for the rollback", || {
        w.signals() == ["SIGUSR1", "SIGUSR1"]
    });
    assert_eq!(w.starts().len(), 1, "a signal action restarts nothing");

    c0.send(&change(v3, &[("B", "fine")]));
    agent.wait_for("v3 healthy", || health_of(&c0, v3).is_some());
    assert_eq!(
        health_of(&c0, v3),
        Some((HealthState::Healthy, None, false))
    );
}

/// `--no-rollback`: the failure is reported, the new values stay.
#[test]
fn without_rollback_a_failed_version_keeps_its_values() {
    let w = Work::new();
    let fake = FakeNode::start();
    let agent = start_agent(
        &w,
        &fake,
        &[
            "--bake",
            "1s",
            "--no-rollback",
            "--restart-on-exit",
            "on-failure",
        ],
    );
    let (v1, v2) = (pos(E1, 1), pos(E1, 2));
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "good")]);
    agent.wait_for("v1 healthy", || health_of(&c0, v1).is_some());
    c0.send(&change(v2, &[("A", "bad")]));
    agent.wait_for("v2 failed", || health_of(&c0, v2).is_some());
    let (state, _, rolled_back) = health_of(&c0, v2).unwrap_or_else(|| unreachable!());
    assert_eq!((state, rolled_back), (HealthState::Failed, false));
    assert!(w.read("out.env").contains("A=bad"), "{}", w.read("out.env"));
    assert!(agent.logs().contains("rollback is off"), "{}", agent.logs());
}

/// A newer version applied while one bakes ends that bake: only the newer is reported.
#[test]
fn a_newer_version_ends_the_bake_of_the_one_before() {
    let w = Work::new();
    let fake = FakeNode::start();
    let ok = w.path("ok").display().to_string();
    let check = format!("test -f {ok}");
    let agent = start_agent(
        &w,
        &fake,
        &[
            "--no-env",
            "--on-change",
            "signal:USR1",
            "--health-cmd",
            &check,
            "--bake",
            "300ms",
            "--health-interval",
            "50ms",
        ],
    );
    let (v1, v2, v3) = (pos(E1, 1), pos(E1, 2), pos(E1, 3));
    w.write("ok", "");
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    agent.wait_for("v1 healthy", || health_of(&c0, v1).is_some());

    // v2's check cannot pass (its first pass may take up to the 60s health timeout)...
    std::fs::remove_file(w.path("ok")).expect("remove ok");
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("v2 applied and baking", || {
        c0.acked(v2) && agent.logs().matches("baking the change").count() == 2
    });
    // ...when v3 arrives: v2's bake ends unreported, v3 is baked and healthy.
    c0.send(&change(v3, &[("A", "3")]));
    agent.wait_for("v3 applied", || c0.acked(v3));
    w.write("ok", "");
    agent.wait_for("v3 healthy", || health_of(&c0, v3).is_some());
    assert_eq!(
        health_of(&c0, v3),
        Some((HealthState::Healthy, None, false))
    );
    assert_eq!(health_of(&c0, v2), None, "{:?}", healths(&c0));
    assert!(
        agent.logs().contains("bake ends unreported"),
        "{}",
        agent.logs()
    );
}

/// Watch mode without a check: healthy as soon as it acted, whatever `bake` says (there is
/// no child to watch).
#[test]
fn watch_mode_without_a_check_is_healthy_at_once() {
    let w = Work::new();
    let fake = FakeNode::start();
    let out = w.path("out.env").display().to_string();
    let state = w.path("state").display().to_string();
    let hooked = w.path("hooked").display().to_string();
    let hook = format!("exec:touch {hooked}");
    let agent = Tether::start(
        w.dir.path(),
        [
            "watch",
            "--server",
            &fake.url(),
            "--env",
            "prod",
            "--state-dir",
            &state,
            "--output",
            &out,
            "--debounce",
            "0",
            "--on-change",
            &hook,
            "--bake",
            "1h",
        ],
        &[],
    );
    let (v1, v2) = (pos(E1, 1), pos(E1, 2));
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    agent.wait_for("v1 healthy", || health_of(&c0, v1).is_some());
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("v2 healthy", || health_of(&c0, v2).is_some());
    assert_eq!(
        health_of(&c0, v2),
        Some((HealthState::Healthy, None, false))
    );
    agent.wait_for("the hook ran for v2", || w.path("hooked").exists());
    assert!(
        !agent.logs().contains("baking the change"),
        "{}",
        agent.logs()
    );
}

/// A child that fails the first version's bake under `restart_on_exit = never`, with
/// nothing to roll back to, ends tether while its node connection is down: tether waits
/// for the next connection to send the failure before it exits.
#[test]
fn a_failure_reported_as_tether_exits_reaches_the_node() {
    let w = Work::new();
    let fake = FakeNode::start();
    let mut agent = start_agent(&w, &fake, &["--bake", "1h"]);
    let v1 = pos(E1, 1);
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "good")]);
    agent.wait_for("v1 baking", || {
        agent.logs().contains("baking the change") && w.starts().len() == 1
    });
    c0.abort();
    let c1 = fake.wait_hello(&agent, 1);
    // Not welcomed yet: the child dies, the bake fails, tether is about to exit.
    let child = nix::unistd::Pid::from_raw(w.starts()[0]);
    nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
    agent.wait_for("the bake failed", || {
        agent.logs().contains("the change failed its bake")
    });
    c1.sync(LONG_HB, v1, &[("A", "good")]);
    let status = agent.wait();
    assert_eq!(status.code(), Some(137), "{}", agent.logs());
    crate::support::wait_for("the failure report at the node", || {
        health_of(&c1, v1).is_some()
    });
    assert_eq!(
        health_of(&c1, v1).map(|h| h.0),
        Some(HealthState::Failed),
        "{:?}",
        c1.received()
    );
}

/// Stopping tether during a bake is not a failure of the version: nothing is reported
/// for it, and nothing is rolled back.
#[test]
fn stopping_tether_during_a_bake_reports_nothing() {
    let w = Work::new();
    let fake = FakeNode::start();
    let mut agent = start_agent(&w, &fake, &["--bake", "1h"]);
    let v1 = pos(E1, 1);
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "good")]);
    agent.wait_for("v1 baking", || agent.logs().contains("baking the change"));
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait();
    assert_eq!(healths(&c0), [], "{}", agent.logs());
    assert!(!agent.logs().contains("rolling back"), "{}", agent.logs());
}

/// A reload that adds a file source during a bake does not leave the version unreported:
/// the bake goes on and its verdict reaches the node.
#[test]
fn a_reload_that_changes_the_sources_during_a_bake_still_reports_it() {
    let w = Work::new();
    let fake = FakeNode::start();
    let ok = w.path("ok");
    std::fs::write(&ok, "").unwrap();
    w.write("tether.toml", "");
    w.write("local.env", "B=1\n");
    let check = format!("test -e {}", ok.display());
    let cfg = w.path("tether.toml").display().to_string();
    let agent = start_agent(
        &w,
        &fake,
        &[
            "--config",
            &cfg,
            "--no-env",
            "--on-change",
            "signal:USR1",
            "--health-cmd",
            &check,
            "--bake",
            "0s",
            "--health-interval",
            "100ms",
        ],
    );
    let (v1, v2) = (pos(E1, 1), pos(E1, 2));
    let c0 = fake.wait_hello(&agent, 0);
    c0.sync(LONG_HB, v1, &[("A", "1")]);
    agent.wait_for("v1 healthy", || health_of(&c0, v1).is_some());
    std::fs::remove_file(&ok).unwrap();
    c0.send(&change(v2, &[("A", "2")]));
    agent.wait_for("v2 acked and baking", || {
        c0.acked(v2) && agent.logs().matches("baking the change").count() == 2
    });
    w.write("tether.toml", "source = [\"file:local.env\"]\n");
    agent.wait_for("the reload", || {
        agent.logs().contains("configuration reloaded")
    });
    std::fs::write(&ok, "").unwrap();
    agent.wait_for("v2 reported", || health_of(&c0, v2).is_some());
    assert_eq!(
        health_of(&c0, v2),
        Some((HealthState::Healthy, None, false))
    );
}
