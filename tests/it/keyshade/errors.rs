//! Errors users must be able to act on, each naming what to fix: an unreachable URL (which
//! heals when the server comes up), a wrong token, an environment that does not exist, a
//! secret and no private key; and a value that fails to decrypt, reported by name only,
//! kept at its last good value or, with `quit_on_decryption_failure`, ending the agent.

use serde_json::json;

use super::{
    ENVIRONMENT, Ks, KsServer, OTHER_KEY, follow, logs, map, running, start_agent, wait_registered,
    wait_rendered, write_config,
};
use crate::support::{Work, alive, free_port};

#[test]
fn an_unreachable_url_is_reported_and_retried_until_the_server_is_up() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let w = Work::new();
    let config = write_config(&w, &url, &Ks::default());
    let mut agent = start_agent(&w, &config, &[]);
    agent.wait_for("an error naming the server's address", || {
        logs(&agent).contains(&format!("127.0.0.1:{port}"))
    });
    assert!(running(&mut agent), "a server that is down may come up");

    let port_arg = port.to_string();
    let server = KsServer::start(&["--port", &port_arg]);
    server.variable("UP", "at last", false, 1);
    wait_rendered(
        &agent,
        &w,
        "the snapshot once up",
        &map(&[("UP", "at last")]),
    );
    wait_registered(&agent, &w, &server, 1);
}

#[test]
fn a_wrong_token_is_a_clear_error_that_never_shows_the_token() {
    let server = KsServer::start(&[]);
    let wrong = "ks.pat.ffffffffffffffffwrongwrong";
    let w = Work::new();
    let config = write_config(
        &w,
        &server.url(),
        &Ks {
            token: wrong,
            ..Ks::default()
        },
    );
    let agent = start_agent(&w, &config, &[]);
    agent.wait_for("an error about the token", || {
        let l = logs(&agent).to_lowercase();
        l.contains("token") && (l.contains("401") || l.contains("unauthorized"))
    });
    assert_eq!(server.count("registrations"), 0);
    assert_eq!(server.count("upgrades"), 0, "the upgrade was refused");
    assert!(!logs(&agent).contains(wrong), "the token is in the log");
    assert!(!w.path("out.json").exists(), "nothing was rendered");
}

#[test]
fn an_environment_that_does_not_exist_is_a_clear_error() {
    let server = KsServer::start(&[]);
    let w = Work::new();
    let config = write_config(
        &w,
        &server.url(),
        &Ks {
            environment: "staging-nope",
            ..Ks::default()
        },
    );
    let agent = start_agent(&w, &config, &[]);
    agent.wait_for("an error naming the environment", || {
        let l = logs(&agent).to_lowercase();
        l.contains("environment") && l.contains("staging-nope") && l.contains("not found")
    });
    assert_eq!(server.count("registrations"), 0);
    assert!(!w.path("out.json").exists(), "nothing was rendered");
}

#[test]
fn a_secret_without_a_private_key_is_a_clear_error() {
    let server = KsServer::start(&[]);
    server.secret("DB_PASSWORD", "never-rendered-or-logged", false);
    let w = Work::new();
    let config = write_config(
        &w,
        &server.url(),
        &Ks {
            private_key: None,
            ..Ks::default()
        },
    );
    let agent = start_agent(&w, &config, &[]);
    agent.wait_for("an error naming the private key setting", || {
        let l = logs(&agent).to_lowercase();
        l.contains("private_key") || l.contains("private key")
    });
    let log = logs(&agent);
    assert!(!log.contains("never-rendered-or-logged"));
    assert!(!w.read("out.json").contains("never-rendered-or-logged"));
}

/// A ciphertext made for another project's key: a real MAC failure, as a rotated key gives.
fn foreign_ciphertext(server: &KsServer, plaintext: &str) -> String {
    server.control(
        "project",
        json!({"slug": "other", "privateKey": OTHER_KEY, "environments": [ENVIRONMENT]}),
    );
    let sent = server.control(
        "secret",
        json!({"project": "other", "environment": ENVIRONMENT, "name": "X",
               "value": plaintext, "emit": false}),
    );
    sent["value"].as_str().expect("ciphertext").to_string()
}

#[test]
fn an_undecryptable_event_keeps_the_last_good_value_and_is_reported_by_name() {
    let server = KsServer::start(&[]);
    server.secret("TOKEN_A", "good-value", false);
    let w = Work::new();
    let mut agent = follow(&w, &server, "");
    wait_registered(&agent, &w, &server, 1);
    wait_rendered(
        &agent,
        &w,
        "the snapshot",
        &map(&[("TOKEN_A", "good-value")]),
    );

    let bad = foreign_ciphertext(&server, "bad-plaintext-9d2f");
    assert_eq!(
        server.emit(json!({"name": "TOKEN_A", "value": bad, "isPlaintext": false})),
        1
    );
    agent.wait_for("the failure, by name", || {
        let l = logs(&agent);
        l.contains("TOKEN_A") && l.to_lowercase().contains("decrypt")
    });
    // Still following: a later change arrives, and TOKEN_A kept its last good value.
    server.variable("LATER", "1", true, 1);
    wait_rendered(
        &agent,
        &w,
        "the later change beside the kept value",
        &map(&[("LATER", "1"), ("TOKEN_A", "good-value")]),
    );
    assert!(running(&mut agent));
    assert!(!logs(&agent).contains("bad-plaintext-9d2f"));
    assert!(
        !logs(&agent).contains(&bad[..40]),
        "the ciphertext is in the log"
    );
}

#[test]
fn quit_on_decryption_failure_ends_the_agent_and_its_child() {
    let server = KsServer::start(&[]);
    server.secret("TOKEN_A", "good-value", false);
    let w = Work::new();
    let mut agent = follow(&w, &server, "quit_on_decryption_failure = true\n");
    wait_registered(&agent, &w, &server, 1);
    wait_rendered(
        &agent,
        &w,
        "the snapshot",
        &map(&[("TOKEN_A", "good-value")]),
    );
    let child = w.starts()[0];

    let bad = foreign_ciphertext(&server, "bad-plaintext-9d2f");
    server.emit(json!({"name": "TOKEN_A", "value": bad, "isPlaintext": false}));
    let status = agent.wait();
    assert!(!status.success(), "exit status {status}");
    let log = logs(&agent);
    assert!(log.contains("TOKEN_A"), "the failing name is reported");
    assert!(!log.contains("bad-plaintext-9d2f"));
    agent.wait_for("the child to be gone", || !alive(child));
}

/// The same at start: the snapshot's secret cannot be decrypted with the configured key.
#[test]
fn quit_on_decryption_failure_applies_to_the_snapshot() {
    let server = KsServer::start(&[]);
    server.secret("TOKEN_B", "made-for-the-other-key", false);
    let w = Work::new();
    let config = write_config(
        &w,
        &server.url(),
        &Ks {
            private_key: Some(OTHER_KEY),
            extra: "quit_on_decryption_failure = true\n",
            ..Ks::default()
        },
    );
    let mut agent = start_agent(&w, &config, &[]);
    let status = agent.wait();
    assert!(!status.success(), "exit status {status}");
    let log = logs(&agent);
    assert!(log.contains("TOKEN_B"), "the failing name is reported");
    assert!(!log.contains("made-for-the-other-key"));
    assert!(!w.read("out.json").contains("made-for-the-other-key"));
}
