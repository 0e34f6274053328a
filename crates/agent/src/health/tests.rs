//! Tests of the stats: readiness, liveness and status lines as the agent's state moves,
//! and the metrics they render.

use super::*;
use tether_core::protocol::Epoch;

fn following(env: &str) -> Stats {
    let s = Stats::new();
    *lock(&s.env) = Some(env.into());
    s.sources.store(1, Relaxed);
    s.outputs_n.store(2, Relaxed);
    s
}

fn at(version: u64) -> Option<Position> {
    Some(Position {
        epoch: Epoch(0x0123_4567_89ab_cdef),
        version,
    })
}

#[test]
fn readiness_follows_the_network_source() {
    let s = following("prod");
    let (ok, why) = s.readiness();
    assert!(!ok);
    assert_eq!(why, "waiting for the first state from a node (env prod)");
    assert_eq!(
        s.status_line(),
        "waiting for a node: no state yet for env prod"
    );

    // First state from a live node, rendered, ready.
    s.connected.store(true, Relaxed);
    *lock(&s.position) = at(3);
    s.started.store(true, Relaxed);
    assert_eq!(
        s.readiness(),
        (true, "ready: following env prod at version 3".into())
    );

    // The connection drops: still ready (the agent goes on), but degraded.
    s.connected.store(false, Relaxed);
    let (ok, why) = s.readiness();
    assert!(ok);
    assert!(why.starts_with("degraded: node connection lost"), "{why}");

    s.stopping.store(true, Relaxed);
    assert_eq!(s.readiness(), (false, "stopping".into()));
}

#[test]
fn degraded_by_choice_is_ready_and_says_so() {
    let s = following("prod");
    s.saved_state.store(true, Relaxed);
    *lock(&s.position) = at(7);
    s.started.store(true, Relaxed);
    let (ok, why) = s.readiness();
    assert!(ok);
    assert_eq!(
        why,
        "degraded: running on saved state, no node reachable (env prod at version 7)"
    );
}

#[test]
fn without_a_network_source_ready_after_the_first_render() {
    let s = Stats::new();
    s.sources.store(2, Relaxed);
    s.outputs_n.store(1, Relaxed);
    assert_eq!(
        s.readiness(),
        (false, "starting: the first render is not done".into())
    );
    s.started.store(true, Relaxed);
    assert_eq!(
        s.readiness(),
        (true, "ready: watching 2 sources, 1 output".into())
    );
}

#[test]
fn liveness_fails_once_the_loop_stops_ticking() {
    let s = Stats::new();
    let t0 = Instant::now();
    *lock(&s.beat) = Some(t0);
    assert_eq!(
        s.liveness(t0 + Duration::from_secs(5)),
        (true, "alive".into())
    );
    let (ok, why) = s.liveness(t0 + STALE_AFTER + Duration::from_secs(2));
    assert!(!ok);
    assert_eq!(why, "stalled: the agent's loop has not run for 32s");
}

#[test]
fn metrics_show_what_happened_and_nothing_else() {
    let s = following("prod \"x\"");
    s.started.store(true, Relaxed);
    s.connected.store(true, Relaxed);
    *lock(&s.position) = at(42);
    s.changes.fetch_add(3, Relaxed);
    s.output(Path::new("/run/app.env"), true);
    s.output(Path::new("/run/app.env"), true);
    s.output(Path::new("/run/app.env"), false);
    s.signals[Signal::HUP.number() as usize].fetch_add(2, Relaxed);
    s.restarts_change.fetch_add(1, Relaxed);
    s.child_exited(Exit::Code(0));
    s.child_exited(Exit::Code(3));
    s.child_exited(Exit::Signaled(9));
    s.reconnects.fetch_add(1, Relaxed);
    let now = Instant::now();
    *lock(&s.last_change) = Some(now - Duration::from_secs(90));
    let text = metrics::render(&s, "agent", now);
    for line in [
        "tether_build_info{version=\"",
        "\",build=\"agent\"} 1",
        "tether_agent_ready 1",
        "tether_agent_changes_applied_total 3",
        "tether_agent_seconds_since_last_change 90.000",
        "tether_agent_renders_total{output=\"/run/app.env\"} 2",
        "tether_agent_render_failures_total{output=\"/run/app.env\"} 1",
        "tether_agent_signals_sent_total{signal=\"SIGHUP\"} 2",
        "tether_agent_child_restarts_total{reason=\"change\"} 1",
        "tether_agent_child_restarts_total{reason=\"exit\"} 0",
        "tether_agent_child_exits_total{kind=\"success\"} 1",
        "tether_agent_child_exits_total{kind=\"failure\"} 1",
        "tether_agent_child_exits_total{kind=\"signal\",signal=\"SIGKILL\"} 1",
        "tether_agent_source_connected{env=\"prod \\\"x\\\"\"} 1",
        "tether_agent_source_degraded{env=\"prod \\\"x\\\"\"} 0",
        "tether_agent_source_reconnects_total{env=\"prod \\\"x\\\"\"} 1",
        "tether_agent_applied_version{env=\"prod \\\"x\\\"\"} 42",
        "tether_agent_applied_epoch{env=\"prod \\\"x\\\"\"} 81985529216486895",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // Every sample line is `name{labels} value` with a number; every family is declared.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = l.rsplit_once(' ').expect("a sample");
        assert!(value.parse::<f64>().is_ok(), "{l}");
        let family = name.split('{').next().unwrap_or_default();
        assert!(text.contains(&format!("# TYPE {family} ")), "{l}");
    }
}

#[test]
fn no_source_metrics_without_a_network_source() {
    let text = metrics::render(&Stats::new(), "full", Instant::now());
    assert!(!text.contains("tether_agent_source_"), "{text}");
    assert!(!text.contains("tether_agent_applied_"), "{text}");
    assert!(text.contains("build=\"full\""), "{text}");
}

#[test]
fn the_status_line_follows_the_keyshade_source() {
    let s = Stats::new();
    *lock(&s.keyshade) = Some("acme/web/prod".into());
    assert_eq!(s.status_line(), "waiting for keyshade acme/web/prod");
    assert_eq!(
        s.readiness(),
        (
            false,
            "waiting for the first state from keyshade acme/web/prod".into()
        )
    );
    s.ks_connected.store(true, Relaxed);
    s.ks_ever_connected.store(true, Relaxed);
    s.started.store(true, Relaxed);
    assert_eq!(
        s.readiness(),
        (true, "ready: following keyshade acme/web/prod".into())
    );
    s.ks_connected.store(false, Relaxed);
    let (ok, why) = s.readiness();
    assert!(ok);
    assert!(
        why.starts_with("degraded: keyshade connection lost"),
        "{why}"
    );
    // With tether nodes too: both are told.
    *lock(&s.env) = Some("prod".into());
    s.connected.store(true, Relaxed);
    s.ks_connected.store(true, Relaxed);
    assert_eq!(
        s.status_line(),
        "following env prod; following keyshade acme/web/prod"
    );
    s.ks_reconnects.fetch_add(2, Relaxed);
    let m = metrics::render(&s, "agent", Instant::now());
    assert!(
        m.contains("tether_agent_keyshade_connected{keyshade=\"acme/web/prod\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tether_agent_keyshade_reconnects_total{keyshade=\"acme/web/prod\"} 2"),
        "{m}"
    );
}

#[test]
fn a_wait_for_a_rollout_slot_is_on_the_status_line() {
    let s = following("prod");
    s.connected.store(true, Relaxed);
    *lock(&s.position) = at(3);
    s.started.store(true, Relaxed);
    *lock(&s.slot.waiting) = Some("waiting for a rollout slot (1 of 1 slots in use)".into());
    assert_eq!(
        s.readiness(),
        (
            true,
            "ready: following env prod at version 3; waiting for a rollout slot (1 of 1 slots in use)"
                .into()
        )
    );
}
