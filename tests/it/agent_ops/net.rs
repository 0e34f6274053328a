//! Readiness and status while following nodes: not ready until the first state came, then
//! ready (degraded while the connection is lost), ready and degraded on saved state by
//! choice; the metrics of the connection; systemd told each step.

use nix::sys::signal::Signal;

use super::notify::Notify;
use super::{SECRET, endpoint_addr, get, sample};
use crate::fake_node::{FakeNode, change, pos, synced};
use crate::support::{Tether, Work};
use tether_core::protocol::Epoch;

const E1: Epoch = Epoch(0x0190_0000_0000_0001);

#[test]
fn readyz_waits_for_a_node_then_follows_it_and_notifies_systemd() {
    let w = Work::new();
    let fake = FakeNode::start();
    let out = w.path("out.env");
    let notify = Notify::bind(&w, {
        let out = out.clone();
        move || out.exists()
    });
    let state = w.path("state").display().to_string();
    let args = [
        "watch",
        "--server",
        &fake.url(),
        "--env",
        "prod",
        "--state-dir",
        &state,
        "--output",
        &out.display().to_string(),
        "--debounce",
        "0",
        "--listen-metrics",
        "127.0.0.1:0",
    ];
    let agent = Tether::start(w.dir.path(), args, &[("NOTIFY_SOCKET", &notify.env())]);
    let addr = endpoint_addr(&agent);
    let c0 = fake.wait_hello(&agent, 0);

    // Connected but no state yet: alive, not ready, and systemd is told why.
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(
        get(&addr, "/readyz"),
        (
            503,
            "waiting for the first state from a node (env prod)\n".into()
        )
    );
    agent.wait_for("the waiting status", || {
        notify
            .statuses()
            .iter()
            .any(|s| s == "waiting for a node: no state yet for env prod")
    });
    assert!(!notify.has_line("READY=1"));

    c0.sync(60_000, pos(E1, 1), &[("A", "1"), ("TOKEN", SECRET)]);
    agent.wait_for("ready", || get(&addr, "/readyz").0 == 200);
    assert_eq!(
        get(&addr, "/readyz").1,
        "ready: following env prod at version 1\n"
    );
    agent.wait_for("READY=1", || notify.has_line("READY=1"));
    assert_eq!(
        notify.ready_check(),
        Some(true),
        "READY=1 before the output existed"
    );

    c0.send(&change(pos(E1, 2), &[("A", "2")]));
    agent.wait_for("the change acked", || c0.acked(pos(E1, 2)));
    agent.wait_for("the new status", || {
        notify
            .statuses()
            .iter()
            .any(|s| s == "following env prod at version 2")
    });
    let text = get(&addr, "/metrics").1;
    for (series, want) in [
        ("tether_agent_applied_version{env=\"prod\"}", 2.0),
        ("tether_agent_applied_epoch{env=\"prod\"}", E1.0 as f64),
        ("tether_agent_source_connected{env=\"prod\"}", 1.0),
        ("tether_agent_source_degraded{env=\"prod\"}", 0.0),
        ("tether_agent_source_reconnects_total{env=\"prod\"}", 0.0),
        ("tether_agent_changes_applied_total", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }

    // The node goes away: the agent stays ready on what it applied, and says degraded.
    c0.abort();
    agent.wait_for("degraded while reconnecting", || {
        let (code, body) = get(&addr, "/readyz");
        code == 200 && body.starts_with("degraded: node connection lost")
    });
    let c1 = fake.wait_hello(&agent, 1);
    c1.send(&crate::fake_node::welcome(60_000));
    c1.send(&synced(pos(E1, 2)));
    agent.wait_for("reconnected", || {
        let text = get(&addr, "/metrics").1;
        sample(&text, "tether_agent_source_reconnects_total{env=\"prod\"}") == Some(1.0)
            && sample(&text, "tether_agent_source_connected{env=\"prod\"}") == Some(1.0)
    });
    for path in ["/readyz", "/metrics"] {
        assert!(!get(&addr, path).1.contains(SECRET), "{path}");
    }
    assert!(notify.all().iter().all(|m| !m.contains(SECRET)));
}

#[test]
fn a_start_on_saved_state_is_ready_and_degraded() {
    let w = Work::new();
    let fake = FakeNode::start();
    let state = w.path("state").display().to_string();
    let out = w.path("out.env").display().to_string();
    let url = fake.url();
    let args = |listen: bool| {
        let mut a = vec![
            "watch",
            "--server",
            &url,
            "--env",
            "prod",
            "--state-dir",
            &state,
            "--output",
            &out,
            "--start-without-server",
        ];
        if listen {
            a.extend(["--listen-metrics", "127.0.0.1:0"]);
        }
        a
    };
    // A first run leaves the state of version 4.
    let mut first = Tether::start(w.dir.path(), args(false), &[]);
    let c0 = fake.wait_hello(&first, 0);
    c0.sync(60_000, pos(E1, 4), &[("A", "4")]);
    first.wait_for("acked", || c0.acked(pos(E1, 4)));
    first.signal(Signal::SIGTERM);
    assert!(first.wait().success());

    // No node answers the second: it starts from the saved state, by choice.
    let notify = Notify::bind(&w, || true);
    let agent = Tether::start(
        w.dir.path(),
        args(true),
        &[("NOTIFY_SOCKET", &notify.env())],
    );
    let addr = endpoint_addr(&agent);
    fake.wait_hello(&agent, 1).abort();
    agent.wait_for("ready on saved state", || get(&addr, "/readyz").0 == 200);
    let want = "degraded: running on saved state, no node reachable (env prod at version 4)";
    assert_eq!(get(&addr, "/readyz").1, format!("{want}\n"));
    agent.wait_for("READY=1 saying degraded", || {
        notify
            .all()
            .iter()
            .any(|m| m == &format!("READY=1\nSTATUS={want}"))
    });
    let text = get(&addr, "/metrics").1;
    assert_eq!(
        sample(&text, "tether_agent_source_degraded{env=\"prod\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tether_agent_source_connected{env=\"prod\"}"),
        Some(0.0),
        "{text}"
    );
}
