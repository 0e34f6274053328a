//! The state merge: snapshots, live events on top, duplicates, deletions, decryption
//! failures; with real ciphertexts from the eccrypto vectors.

use super::*;
use crate::source::keyshade::rest::{WireSecret, WireVariable};
use serde_json::json;

const VECTORS: &str = include_str!("testdata/eccrypto-vectors.json");

/// (private key, wire) of the vector `name`.
fn vector(name: &str) -> (PrivateKey, String, String) {
    let all: Vec<Json> = serde_json::from_str(VECTORS).unwrap();
    let v = all.iter().find(|v| v["name"] == name).unwrap();
    (
        PrivateKey::from_hex(v["privateKeyHex"].as_str().unwrap()).unwrap(),
        v["wire"].as_str().unwrap().to_string(),
        v["plaintext"].as_str().unwrap().to_string(),
    )
}

fn snap(secrets: &[(&str, &str)], variables: &[(&str, &str)]) -> Snapshot {
    Snapshot {
        secrets: secrets
            .iter()
            .map(|(n, v)| WireSecret {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        variables: variables
            .iter()
            .map(|(n, v)| WireVariable {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
    }
}

fn plain_update(name: &str, value: &str) -> Update {
    Update {
        name: name.into(),
        value: value.into(),
        plaintext: true,
    }
}

fn value(view: &View, name: &str) -> Option<(String, bool)> {
    view.entries()
        .get(name)
        .map(|e| (e.value.expose_str().unwrap().to_string(), e.secret))
}

#[test]
fn snapshot_then_events_on_top_and_deletions_by_resnapshot() {
    let (key, wire, plaintext) = vector("len15");
    let mut v = View::default();
    assert!(!v.is_ready());
    let p = v.snapshot(
        &snap(&[("DB", &wire)], &[("PORT", "80"), ("OLD", "x")]),
        &[],
        Some(&key),
    );
    assert!(p.is_empty());
    assert!(v.is_ready());
    assert_eq!(value(&v, "DB"), Some((plaintext.clone(), true)));
    assert_eq!(value(&v, "PORT"), Some(("80".into(), false)));

    // A live event changes one name; its duplicate changes nothing.
    let before = v.entries().clone();
    assert!(v.update(&plain_update("PORT", "81"), Some(&key)).is_none());
    assert_ne!(v.entries(), &before);
    let after = v.entries().clone();
    v.update(&plain_update("PORT", "81"), Some(&key));
    assert_eq!(v.entries(), &after, "a duplicate event is no change");

    // keyshade sends nothing for a deletion: the next snapshot drops the name.
    v.snapshot(&snap(&[("DB", &wire)], &[("PORT", "81")]), &[], Some(&key));
    assert_eq!(value(&v, "OLD"), None);
    assert_eq!(v.entries().len(), 2);
}

#[test]
fn events_received_during_the_fetch_are_applied_again_on_top() {
    let mut v = View::default();
    v.snapshot(&snap(&[], &[("A", "1")]), &[], None);
    // The snapshot asked for before A became 2 answers with A=1; the event for A=2
    // arrived meanwhile: it stands.
    let during = [plain_update("A", "2"), plain_update("B", "new")];
    v.snapshot(&snap(&[], &[("A", "1")]), &during, None);
    assert_eq!(value(&v, "A"), Some(("2".into(), false)));
    assert_eq!(value(&v, "B"), Some(("new".into(), false)));
}

#[test]
fn encrypted_events_decrypt_and_duplicates_cost_nothing() {
    let (key, wire, plaintext) = vector("utf8-non-ascii");
    let (_, other_wire, other_plain) = vector("len1");
    let mut v = View::default();
    v.snapshot(&snap(&[], &[]), &[], Some(&key));
    let u = Update {
        name: "S".into(),
        value: wire.clone(),
        plaintext: false,
    };
    assert!(v.update(&u, Some(&key)).is_none());
    assert_eq!(value(&v, "S"), Some((plaintext.clone(), true)));
    // The same ciphertext again is served from the last decryption (no key needed).
    assert!(v.update(&u, None).is_none());
    assert_eq!(value(&v, "S"), Some((plaintext, true)));
    let u2 = Update {
        value: other_wire,
        ..u
    };
    assert!(v.update(&u2, Some(&key)).is_none());
    assert_eq!(value(&v, "S"), Some((other_plain, true)));
}

#[test]
fn a_failed_decryption_keeps_the_last_good_value_and_is_reported_once() {
    let (key, good, plaintext) = vector("len16");
    // Encrypted for another key: the MAC fails with ours.
    let (_, wrong, _) = vector("other-private-key");
    let mut v = View::default();
    v.snapshot(&snap(&[("S", &good)], &[]), &[], Some(&key));
    let p = v
        .update(
            &Update {
                name: "S".into(),
                value: wrong.clone(),
                plaintext: false,
            },
            Some(&key),
        )
        .expect("reported");
    assert_eq!(p.name, "S");
    assert!(!p.no_key);
    assert!(p.why.contains("MAC"), "{}", p.why);
    assert_eq!(value(&v, "S"), Some((plaintext.clone(), true)));
    // The next snapshot has the bad ciphertext: the last good value stays, not reported again.
    let p = v.snapshot(&snap(&[("S", &wrong)], &[]), &[], Some(&key));
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(value(&v, "S"), Some((plaintext.clone(), true)));
    // Still so at the snapshot after (the last good value's ciphertext is remembered).
    v.snapshot(&snap(&[("S", &wrong)], &[]), &[], Some(&key));
    assert_eq!(value(&v, "S"), Some((plaintext, true)));
    // A name with no good value before is left out.
    let p = v.snapshot(&snap(&[("S", &good), ("T", &wrong)], &[]), &[], Some(&key));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].name, "T");
    assert!(!v.entries().contains_key("T"));
    // Text of the problem never holds the value or the ciphertext.
    let text = format!("{p:?}");
    assert!(!text.contains(&wrong[..40]));
}

#[test]
fn a_secret_without_a_private_key_is_reported_as_such() {
    let (_, wire, _) = vector("len1");
    let mut v = View::default();
    let p = v.snapshot(&snap(&[("S", &wire)], &[("V", "1")]), &[], None);
    assert_eq!(p.len(), 1);
    assert!(p[0].no_key);
    assert_eq!(value(&v, "V"), Some(("1".into(), false)));
    assert!(!v.entries().contains_key("S"));
}

#[test]
fn a_plain_event_for_a_secret_name_stays_secret() {
    let (key, wire, _) = vector("len1");
    let mut v = View::default();
    v.snapshot(&snap(&[("S", &wire)], &[]), &[], Some(&key));
    v.update(&plain_update("S", "plain now"), Some(&key));
    assert_eq!(value(&v, "S"), Some(("plain now".into(), true)));
}

#[test]
fn update_payloads() {
    let u = Update::parse(&json!({"name":"X","value":"v","isPlaintext":true})).unwrap();
    assert_eq!(u, plain_update("X", "v"));
    let u = Update::parse(&json!({"name":"X","value":"c","isPlaintext":false})).unwrap();
    assert!(!u.plaintext);
    // Older servers: isSecret.
    assert!(
        !Update::parse(&json!({"name":"X","value":"c","isSecret":true}))
            .unwrap()
            .plaintext
    );
    assert!(
        Update::parse(&json!({"name":"X","value":"c","isSecret":false}))
            .unwrap()
            .plaintext
    );
    // Neither: an eccrypto JSON value is a secret.
    let (_, wire, _) = vector("len1");
    assert!(
        !Update::parse(&json!({"name":"X","value":wire}))
            .unwrap()
            .plaintext
    );
    assert!(
        Update::parse(&json!({"name":"X","value":"{}"}))
            .unwrap()
            .plaintext
    );
    assert_eq!(
        Update::parse(&json!({"name":"N","value":5})).unwrap().value,
        "5"
    );
    for bad in [
        json!({"value":"v"}),
        json!({"name":"X"}),
        json!({"name":"X","value":[1]}),
        json!(null),
    ] {
        let e = Update::parse(&bad).unwrap_err();
        assert!(!e.contains("v\""), "{e}");
    }
}
