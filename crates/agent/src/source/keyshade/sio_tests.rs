//! Golden tests of the Socket.IO framing, with the frames of the protocol reference.

use super::*;
use serde_json::json;

const NSP: &str = "/change-notifier";

#[test]
fn open_packet() {
    let f = parse(r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#)
        .unwrap();
    assert_eq!(
        f,
        Frame::Open(Handshake {
            sid: "abc".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
        })
    );
    // Without maxPayload (older servers): socket.io's default.
    let Frame::Open(h) = parse(r#"0{"sid":"x","pingInterval":1,"pingTimeout":2}"#).unwrap() else {
        panic!("not an open packet")
    };
    assert_eq!(h.max_payload, 1_000_000);
    for bad in [
        "0",
        "0{",
        r#"0{"sid":"x"}"#,
        r#"0{"pingInterval":1,"pingTimeout":2}"#,
        r#"0{"sid":"x","pingInterval":"25000","pingTimeout":2}"#,
    ] {
        assert!(
            matches!(parse(bad), Err(SioError::Malformed(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn engine_io_types() {
    assert_eq!(parse("1").unwrap(), Frame::Close);
    assert_eq!(parse("2").unwrap(), Frame::Ping);
    assert_eq!(parse("3").unwrap(), Frame::Other('3'));
    assert_eq!(parse("6").unwrap(), Frame::Other('6'));
    assert!(matches!(parse(""), Err(SioError::Malformed(_))));
    assert!(matches!(parse("9"), Err(SioError::Malformed(_))));
    assert!(matches!(parse("x42"), Err(SioError::Malformed(_))));
}

#[test]
fn namespace_connect_and_ack() {
    assert_eq!(connect_frame(NSP), "40/change-notifier,");
    assert_eq!(
        parse(r#"40/change-notifier,{"sid":"s1"}"#).unwrap(),
        Frame::Packet(Packet::Connect {
            nsp: NSP.into(),
            sid: Some("s1".into())
        })
    );
    assert_eq!(
        parse(r#"44/change-notifier,{"message":"Not authorized"}"#).unwrap(),
        Frame::Packet(Packet::ConnectError {
            nsp: NSP.into(),
            message: "Not authorized".into()
        })
    );
    assert_eq!(
        parse("41/change-notifier,").unwrap(),
        Frame::Packet(Packet::Disconnect { nsp: NSP.into() })
    );
    // The default namespace has no prefix.
    assert_eq!(
        parse(r#"40{"sid":"d"}"#).unwrap(),
        Frame::Packet(Packet::Connect {
            nsp: "/".into(),
            sid: Some("d".into())
        })
    );
}

#[test]
fn events_both_ways() {
    let register = event_frame(
        NSP,
        "register-client-app",
        &json!({"workspaceSlug":"W","projectSlug":"P","environmentSlug":"E"}),
    );
    assert_eq!(
        register,
        r#"42/change-notifier,["register-client-app",{"environmentSlug":"E","projectSlug":"P","workspaceSlug":"W"}]"#
    );
    let ok = parse(r#"42/change-notifier,["client-registered",{"success":true,"message":"Registration Successful"}]"#)
        .unwrap();
    assert_eq!(
        ok,
        Frame::Packet(Packet::Event {
            nsp: NSP.into(),
            id: None,
            name: "client-registered".into(),
            data: json!({"success":true,"message":"Registration Successful"}),
        })
    );
    // With an ack id between the namespace's comma and the array.
    let with_id =
        parse(r#"42/change-notifier,17["configuration-updated",{"name":"X","value":"v","isPlaintext":true}]"#)
            .unwrap();
    let Frame::Packet(Packet::Event { id, name, data, .. }) = with_id else {
        panic!("not an event")
    };
    assert_eq!((id, name.as_str()), (Some(17), "configuration-updated"));
    assert_eq!(data["value"], "v");
    // An event without data.
    let Frame::Packet(Packet::Event { data, .. }) = parse(r#"42/change-notifier,["x"]"#).unwrap()
    else {
        panic!("not an event")
    };
    assert_eq!(data, Json::Null);
}

#[test]
fn malformed_packets_are_errors_not_panics() {
    for bad in [
        "4",
        "42/change-notifier,",
        "42/change-notifier,{}",
        "42/change-notifier,[]",
        "42/change-notifier,[1,2]",
        r#"42/change-notifier,["x""#,
        "42/change-notifier,99999999999999999999999[\"x\"]",
        r#"451-/change-notifier,["x",{"_placeholder":true,"num":0}]"#,
        "47",
        "4\u{e9}",
    ] {
        match parse(bad) {
            Err(SioError::Malformed(m)) => assert!(!m.is_empty()),
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
    // An ack from the server is skipped, not an error.
    assert!(matches!(
        parse("43/change-notifier,1[]").unwrap(),
        Frame::Packet(Packet::Other { kind: '3', .. })
    ));
}

#[test]
fn socket_urls_use_only_the_host() {
    assert_eq!(
        socket_url("https://api.keyshade.xyz").unwrap(),
        "wss://api.keyshade.xyz/socket.io/?EIO=4&transport=websocket"
    );
    assert_eq!(
        socket_url("http://127.0.0.1:4200/some/base/").unwrap(),
        "ws://127.0.0.1:4200/socket.io/?EIO=4&transport=websocket"
    );
    assert!(socket_url("api.keyshade.xyz").is_err());
    assert!(socket_url("ftp://h").is_err());
    assert!(socket_url("http://").is_err());
    assert!(socket_url("http://u:p@h").is_err());
}

#[test]
fn error_bodies() {
    assert_eq!(
        error_message(br#"{"message":"Invalid token","error":"Unauthorized","statusCode":401}"#),
        "Invalid token"
    );
    assert_eq!(
        error_message(br#"{"message":["a","b"],"statusCode":400}"#),
        "a; b"
    );
    assert_eq!(error_message(b"  "), "no message");
    assert_eq!(error_message(b"Bad Gateway"), "Bad Gateway");
}

#[test]
fn debug_never_shows_event_data() {
    let f = parse(r#"42/change-notifier,["configuration-updated",{"name":"X","value":"hunter2"}]"#)
        .unwrap();
    let text = format!("{f:?}");
    assert!(
        text.contains("configuration-updated") && !text.contains("hunter2"),
        "{text}"
    );
}
