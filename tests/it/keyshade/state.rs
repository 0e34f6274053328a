//! The state tether ends with: live plaintext and encrypted events on top of the snapshot,
//! a deletion (which keyshade never announces) gone after the next snapshot, changes made
//! while disconnected picked up, and duplicate events causing one action.

use serde_json::json;

use super::{
    Ks, KsServer, follow, logs, map, rendered, running, start_agent, wait_registered,
    wait_rendered, write_config,
};
use crate::support::Work;

#[test]
fn live_plaintext_and_encrypted_events_reach_the_output_and_the_child() {
    let server = KsServer::start(&[]);
    server.variable("MODE", "blue", false, 1);
    let w = Work::new();
    // trace: the secret's plaintext must not show even at the most verbose level.
    let config = write_config(&w, &server.url(), &Ks::default());
    let mut agent = start_agent(&w, &config, &["--log-level", "trace"]);
    wait_registered(&agent, &w, &server, 1);
    wait_rendered(&agent, &w, "the snapshot", &map(&[("MODE", "blue")]));

    server.variable("MODE", "green", true, 1);
    wait_rendered(&agent, &w, "the live variable", &map(&[("MODE", "green")]));
    agent.wait_for("the first signal", || w.signals().len() == 1);

    let secret = "live-secret-plaintext-7c1e";
    let sent = server.secret("API_KEY", secret, true);
    assert!(
        sent["value"]
            .as_str()
            .is_some_and(|v| v.contains("ephemPublicKey")),
        "the event carries eccrypto's ciphertext"
    );
    wait_rendered(
        &agent,
        &w,
        "the live secret, decrypted",
        &map(&[("API_KEY", secret), ("MODE", "green")]),
    );
    agent.wait_for("the second signal", || w.signals().len() == 2);
    assert_eq!(w.signals(), ["SIGUSR1", "SIGUSR1"]);
    assert!(running(&mut agent));
    let log = logs(&agent);
    assert!(!log.contains(secret), "a secret's value is in the log");
    assert!(!log.contains(super::TOKEN), "the token is in the log");
}

/// keyshade sends nothing when a value is deleted: a name that had a live event, then was
/// deleted, disappears at the next periodic snapshot.
#[test]
fn a_name_deleted_after_its_event_is_gone_after_the_next_snapshot() {
    let server = KsServer::start(&[]);
    server.variable("STAYS", "1", false, 1);
    let w = Work::new();
    let agent = follow(&w, &server, "snapshot_interval = \"1s\"\n");
    wait_registered(&agent, &w, &server, 1);
    server.variable("GOES", "soon", true, 1);
    server.secret("GOES_TOO", "secret", true);
    wait_rendered(
        &agent,
        &w,
        "the live events",
        &map(&[("GOES", "soon"), ("GOES_TOO", "secret"), ("STAYS", "1")]),
    );
    let fetched = server.state()["rest"]["variable"].as_u64().unwrap_or(0);
    server.delete("GOES");
    server.delete("GOES_TOO");
    wait_rendered(
        &agent,
        &w,
        "the deletions, from a later snapshot",
        &map(&[("STAYS", "1")]),
    );
    assert!(server.state()["rest"]["variable"].as_u64().unwrap_or(0) > fetched);
    assert_eq!(server.count("connections"), 1, "no reconnect was needed");
}

/// The server drops the session; while the agent is away (its registrations refused),
/// values are changed, added and deleted without events. With a periodic snapshot far
/// off, the agent must end with exactly the server's state through the snapshot it takes
/// after registering again.
#[test]
fn changes_made_while_disconnected_end_in_exactly_the_servers_state() {
    let server = KsServer::start(&[]);
    server.variable("CHANGED", "old", false, 1);
    server.variable("DELETED", "x", false, 1);
    server.secret("ROTATED", "old-secret", false);
    let w = Work::new();
    let mut agent = follow(&w, &server, "snapshot_interval = \"1h\"\n");
    wait_registered(&agent, &w, &server, 1);
    wait_rendered(
        &agent,
        &w,
        "the first snapshot",
        &map(&[
            ("CHANGED", "old"),
            ("DELETED", "x"),
            ("ROTATED", "old-secret"),
        ]),
    );

    // The TCP connection is dropped without a close frame; registrations are refused until
    // every change is made.
    server.control("refuse", json!({"times": 1000}));
    server.control("disconnect", json!({"mode": "destroy"}));
    agent.wait_for("a refused registration", || {
        server.count("refusals") >= 1 && server.count("registered") == 0
    });
    server.variable("CHANGED", "new", false, 1);
    server.delete("DELETED");
    server.secret("ROTATED", "new-secret", false);
    server.variable("ADDED", "fresh", false, 1);
    server.control("refuse", json!({"times": 0}));

    let want = map(&[
        ("ADDED", "fresh"),
        ("CHANGED", "new"),
        ("ROTATED", "new-secret"),
    ]);
    wait_rendered(&agent, &w, "exactly the server's state", &want);
    agent.wait_for("the registration after the refusals", || {
        server.count("registered") == 1
    });
    assert_eq!(rendered(&w), want);
    assert!(running(&mut agent));
}

/// Several API instances deliver one change more than once: one signal per change. A
/// reconnect in between must not double the deliveries either (keyshade run adds a
/// listener per reconnect).
#[test]
fn duplicate_events_cause_one_action() {
    let server = KsServer::start(&[]);
    let w = Work::new();
    let agent = follow(&w, &server, "");
    wait_registered(&agent, &w, &server, 1);

    server.variable("V", "1", true, 3);
    agent.wait_for("a signal", || w.signals().len() == 1);
    let sent = server.secret("S", "s1", false);
    for _ in 0..3 {
        server.emit(json!({"name": "S", "value": sent["value"], "isPlaintext": false}));
    }
    agent.wait_for("the secret's signal", || w.signals().len() == 2);

    server.control("disconnect", json!({"mode": "server"}));
    agent.wait_for("the second registration", || {
        server.count("registrations") >= 2 && server.count("registered") == 1
    });
    server.variable("V", "2", true, 2);
    agent.wait_for("the third signal", || w.signals().len() == 3);
    // A last, different change: once its signal is in, every duplicate before it has been
    // handled, so the count is final.
    server.variable("LAST", "x", true, 1);
    agent.wait_for("the last signal", || w.signals().len() >= 4);
    wait_rendered(
        &agent,
        &w,
        "the final state",
        &map(&[("LAST", "x"), ("S", "s1"), ("V", "2")]),
    );
    assert_eq!(w.signals().len(), 4, "signals: {:?}", w.signals());
    assert_eq!(w.starts().len(), 1, "the child was never restarted");
}
