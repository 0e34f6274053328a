//! The Socket.IO session with the keyshade server: the handshake and registration, pongs
//! over several ping intervals, a silent server, refusals (among them "already connected")
//! retried until registration succeeds, forced disconnects and a frame cut in half.

use serde_json::json;

use super::{
    ENVIRONMENT, Ks, KsServer, PROJECT, WORKSPACE, follow, logs, map, running, start_agent,
    wait_registered, wait_rendered, write_config,
};
use crate::support::Work;

#[test]
fn handshake_registers_with_the_slugs_and_renders_the_snapshot() {
    let server = KsServer::start(&[]);
    server.variable("PORT", "8080", false, 1);
    server.secret("DB_PASSWORD", "hunter2 ünïcødé \"quoted\"", false);
    let w = Work::new();
    let agent = follow(&w, &server, "");

    wait_rendered(
        &agent,
        &w,
        "the snapshot: a variable and a decrypted secret",
        &map(&[
            ("DB_PASSWORD", "hunter2 ünïcødé \"quoted\""),
            ("PORT", "8080"),
        ]),
    );
    wait_registered(&agent, &w, &server, 1);
    let state = server.state();
    assert_eq!(
        state["lastRegistration"],
        json!({"workspaceSlug": WORKSPACE, "projectSlug": PROJECT, "environmentSlug": ENVIRONMENT})
    );
    assert_eq!(state["upgrades"], 1, "one websocket upgrade: {state}");
    assert!(state["rest"]["secret"].as_u64() >= Some(1), "{state}");
    assert!(state["rest"]["variable"].as_u64() >= Some(1), "{state}");
    assert_eq!(state["refusals"], 0);
}

/// With a generous timeout, the server keeps the one connection over many short ping
/// intervals only if each ping is answered; a client that never answered would be dropped
/// ("ping timeout") and reconnect.
#[test]
fn pongs_keep_one_connection_over_several_ping_intervals() {
    for interval in ["50", "150", "400"] {
        let server = KsServer::start(&["--ping-interval", interval, "--ping-timeout", "4000"]);
        let w = Work::new();
        let agent = follow(&w, &server, "");
        wait_registered(&agent, &w, &server, 1);
        agent.wait_for(&format!("6 pongs at a {interval} ms interval"), || {
            server.count("pongs") >= 6
        });
        let state = server.state();
        assert_eq!(state["connections"], 1, "interval {interval}: {state}");
        assert_eq!(state["closeReasons"], json!([]), "interval {interval}");
        assert!(
            state["pings"].as_u64() >= state["pongs"].as_u64(),
            "a pong answers a ping: {state}"
        );
    }
}

/// A server that stops pinging is presumed dead after pingInterval + pingTimeout, and the
/// agent connects again on its own.
#[test]
fn a_silent_server_is_dropped_and_joined_again() {
    let server = KsServer::start(&["--ping-interval", "200", "--ping-timeout", "300"]);
    let w = Work::new();
    let mut agent = follow(&w, &server, "");
    wait_registered(&agent, &w, &server, 1);
    server.control("mute", json!({}));
    agent.wait_for("a new connection after the silence", || {
        server.count("connections") >= 2 && server.count("registered") == 1
    });
    server.variable("AFTER", "silence", true, 1);
    wait_rendered(
        &agent,
        &w,
        "the change after",
        &map(&[("AFTER", "silence")]),
    );
    assert!(running(&mut agent));
}

/// keyshade refuses a second live session of one user with "already connected" until it
/// notices the old socket is gone: the refusal is logged with the server's message and
/// retried, and the agent neither exits nor gives up.
#[test]
fn already_connected_refusals_are_retried_until_registration_succeeds() {
    let server = KsServer::start(&[]);
    server.variable("A", "1", false, 1);
    server.control(
        "refuse",
        json!({"times": 3, "message": "User tester is already connected"}),
    );
    let w = Work::new();
    let mut agent = follow(&w, &server, "");
    wait_registered(&agent, &w, &server, 1);
    assert_eq!(server.count("refusals"), 3);
    assert!(
        logs(&agent).contains("already connected"),
        "the server's message is logged"
    );
    wait_rendered(&agent, &w, "the snapshot", &map(&[("A", "1")]));
    assert!(running(&mut agent));

    // A live second session of the same user (another agent) is refused by the server's own
    // rule; when the first one goes away, the second registers.
    let w2 = Work::new();
    let mut second = follow(&w2, &server, "");
    second.wait_for("the second agent's refusal", || {
        logs(&second).contains("already connected")
    });
    assert_eq!(server.count("registrations"), 1);
    drop(agent);
    second.wait_for("the second agent to register", || {
        server.count("registrations") >= 2 && server.count("registered") == 1
    });
    wait_rendered(
        &second,
        &w2,
        "the second agent's snapshot",
        &map(&[("A", "1")]),
    );
    assert!(running(&mut second));
}

/// The server ends the session (a Socket.IO "io server disconnect", after which
/// socket.io-client would not reconnect); the agent connects and registers again.
#[test]
fn a_server_disconnect_is_followed_by_a_new_session() {
    let server = KsServer::start(&[]);
    let w = Work::new();
    let mut agent = follow(&w, &server, "");
    wait_registered(&agent, &w, &server, 1);
    for round in 2..=3 {
        server.control("disconnect", json!({"mode": "server"}));
        agent.wait_for(&format!("registration {round}"), || {
            server.count("registrations") >= round && server.count("registered") == 1
        });
    }
    server.variable("LIVE", "yes", true, 1);
    wait_rendered(&agent, &w, "a live change", &map(&[("LIVE", "yes")]));
    assert!(running(&mut agent));
}

/// The server writes half of an event's frame and drops the TCP connection: the agent sees
/// a broken connection (not a value), reconnects, and the change the frame carried arrives
/// through the snapshot after registration.
#[test]
fn a_connection_closed_mid_frame_loses_nothing() {
    let server = KsServer::start(&[]);
    server.variable("KEEP", "same", false, 1);
    let w = Work::new();
    let mut agent = follow(&w, &server, "");
    wait_registered(&agent, &w, &server, 1);
    let closed = server.control(
        "close-mid-frame",
        json!({"project": PROJECT, "environment": ENVIRONMENT, "name": "CUT",
               "value": "carried by the cut frame ".repeat(20), "isPlaintext": true}),
    );
    assert_eq!(closed["closed"], 1);
    wait_rendered(
        &agent,
        &w,
        "the cut change, from the snapshot after reconnecting",
        &map(&[
            ("CUT", &"carried by the cut frame ".repeat(20)),
            ("KEEP", "same"),
        ]),
    );
    agent.wait_for("the second registration", || {
        server.count("registrations") >= 2
    });
    assert!(running(&mut agent));
}

/// `https://` base URL: REST over https and the socket over wss, trusting the test CA
/// through `ca_file`; without it the certificate is refused, and the error says so.
#[test]
fn wss_with_the_ca_file_and_a_clear_error_without() {
    let w = Work::new();
    let server = KsServer::start_tls(&w);
    server.secret("OVER_TLS", "sealed", false);
    let ca = w.path("ca.pem").display().to_string();
    let extra = format!("ca_file = \"{ca}\"\n");
    let config = write_config(
        &w,
        &server.url(),
        &Ks {
            extra: &extra,
            ..Ks::default()
        },
    );
    let agent = start_agent(&w, &config, &[]);
    wait_rendered(
        &agent,
        &w,
        "the snapshot over https",
        &map(&[("OVER_TLS", "sealed")]),
    );
    wait_registered(&agent, &w, &server, 1);
    server.variable("LIVE", "over wss", true, 1);
    wait_rendered(
        &agent,
        &w,
        "a live event over wss",
        &map(&[("LIVE", "over wss"), ("OVER_TLS", "sealed")]),
    );
    drop(agent);

    let w2 = Work::new();
    let config = write_config(&w2, &server.url(), &Ks::default());
    let untrusted = start_agent(&w2, &config, &[]);
    untrusted.wait_for("an error about the certificate", || {
        logs(&untrusted).to_lowercase().contains("certificate")
    });
    assert!(!w2.path("out.json").exists());
}
