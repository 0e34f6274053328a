//! A panic in one request or one agent connection, through the real server on a loopback
//! port: the request gets 500 and the JSON error, the agent gets close 1011, and the
//! connections opened before carry on.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::describe;
use crate::Node;
use crate::store::{Store, sqlite::SqliteStore};
use tether_core::protocol::ServerMsg;

const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn only_messages_written_as_is_are_described() {
    let fixed = std::panic::catch_unwind(|| panic!("fixed message")).unwrap_err();
    assert_eq!(describe(&*fixed), "fixed message");
    let secret = "s3cr3t";
    let formatted = std::panic::catch_unwind(|| panic!("value {secret}")).unwrap_err();
    assert_eq!(describe(&*formatted), "formatted message withheld");
    let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
    assert_eq!(describe(&*other), "no message");
}

fn node(dir: &std::path::Path) -> Arc<Node> {
    Arc::new(Node {
        id: "test".into(),
        store: Store::Sqlite(Arc::new(SqliteStore::open(dir, 100).unwrap())),
        hub: crate::hub::Hub::new(16),
        live: crate::live::Live::new(
            crate::auth::Auth::new(&[]).unwrap(),
            Duration::from_secs(3600),
            64 * 1024,
            Duration::from_secs(10),
        ),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        bus: std::sync::OnceLock::new(),
        fleet: crate::fleet::Fleet::default(),
    })
}

/// One HTTP/1.1 request on a kept-alive connection: the status and the body.
async fn request(s: &mut TcpStream, method: &str, path: &str, body: &str) -> (u16, String) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed without an answer");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let status = text[9..12].parse().unwrap();
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return (status, text[end + 4..end + 4 + length].to_string());
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("an answer within the deadline")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The next frame from the node, pings and pongs left out.
async fn next(ws: &mut Ws) -> Message {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("the connection is open")
            .expect("a frame");
        if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
            return frame;
        }
    }
}

/// The next frame but `policy` frames.
async fn next_msg(ws: &mut Ws) -> ServerMsg {
    loop {
        match next(ws).await {
            Message::Text(t) => match serde_json::from_str(&t).unwrap() {
                ServerMsg::Policy { .. } => continue,
                m => return m,
            },
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// An agent following `prod`, past its catch-up.
async fn agent(addr: std::net::SocketAddr) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .unwrap();
    let hello = r#"{"type":"hello","agent":"t","subscribe":[{"env":"prod"}]}"#;
    ws.send(Message::text(hello)).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, ServerMsg::Welcome { .. }));
    assert!(matches!(
        next_msg(&mut ws).await,
        ServerMsg::Snapshot { .. }
    ));
    assert!(matches!(next_msg(&mut ws).await, ServerMsg::Synced { .. }));
    // The catch-up ends with the environment's policy.
    assert!(matches!(next(&mut ws).await, Message::Text(t) if t.contains(r#""type":"policy""#)));
    ws
}

#[tokio::test]
async fn a_panic_ends_its_request_or_connection_and_the_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(crate::serve(
        listener,
        node.clone(),
        None,
        crate::front::Limits::default(),
        stop.clone().cancelled_owned(),
    ));
    // Opened before the panics: an HTTP connection and two agents.
    let mut http = TcpStream::connect(addr).await.unwrap();
    let put = |v: &str| format!(r#"{{"value":"{v}"}}"#);
    let (status, _) = request(&mut http, "PUT", "/v1/envs/prod/entries/A", &put("1")).await;
    assert_eq!(status, 200);
    let mut a = agent(addr).await;
    let mut b = agent(addr).await;

    // A request whose handler panics: 500 with the JSON error; its connection stays (one that
    // passed the token check first: unauthenticated ones are closed after each answer).
    let mut other = TcpStream::connect(addr).await.unwrap();
    assert_eq!(request(&mut other, "GET", "/v1/envs", "").await.0, 200);
    let (status, body) = request(&mut other, "GET", "/test/panic", "").await;
    assert_eq!(status, 500, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "internal", "{body}");
    assert_eq!(request(&mut other, "GET", "/healthz", "").await.0, 200);

    // An agent whose connection panics: close 1011.
    b.send(Message::text(crate::ws::PANIC_FRAME)).await.unwrap();
    match next(&mut b).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1011),
        other => panic!("expected close 1011, got {other:?}"),
    }

    // Everyone else carries on: a write over the first connection reaches the first agent.
    let (status, _) = request(&mut http, "PUT", "/v1/envs/prod/entries/A", &put("2")).await;
    assert_eq!(status, 200);
    match next_msg(&mut a).await {
        ServerMsg::Change { position, .. } => assert_eq!(position.version, 2),
        other => panic!("expected the change, got {other:?}"),
    }
    assert_eq!(
        node.hub.agent_count(),
        1,
        "the panicked agent left the registry"
    );

    // And the node still stops in good order: the agent is told it is going away.
    stop.cancel();
    match next(&mut a).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the node stops within the deadline")
        .unwrap();
}
