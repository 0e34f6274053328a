//! The REST client against canned HTTP answers from a local listener.

use super::*;
use tokio::net::TcpListener;

/// Serve each of `answers` to one connection in turn, and give back the requests' heads.
async fn serve(answers: Vec<Vec<u8>>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut heads = Vec::new();
        for answer in answers {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            heads.push(String::from_utf8(head).unwrap());
            s.write_all(&answer).await.unwrap();
            s.shutdown().await.unwrap();
        }
        heads
    });
    (base, task)
}

fn client(base: &str) -> Client {
    Client {
        base: base.into(),
        token: "ks.pat.0123".into(),
        token_source: "token_file /run/ks/token".into(),
        tls: None,
    }
}

fn answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn snapshot_of_both_lists_with_the_token() {
    let secrets = r#"[{"name":"DB_PASS","value":"{\"iv\":1}","environment":{"id":"e"}}]"#;
    let variables = r#"[{"name":"PORT","value":"8080","isPlaintext":true}]"#;
    // The two lists are fetched side by side: each connection gets the answer for the
    // path it asked for.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/prefix/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut heads = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8(head).unwrap();
            let body = if head.starts_with("GET /prefix/api/secret/my%20proj/dev HTTP/1.1") {
                secrets
            } else {
                variables
            };
            s.write_all(&answer("200 OK", body)).await.unwrap();
            heads.push(head);
        }
        heads
    });
    let snap = client(&base).snapshot("my proj", "dev").await.unwrap();
    assert_eq!(
        snap.secrets,
        [WireSecret {
            name: "DB_PASS".into(),
            value: r#"{"iv":1}"#.into()
        }]
    );
    assert_eq!(snap.variables[0].name, "PORT");
    assert_eq!(snap.variables[0].value, "8080");
    let heads = server.await.unwrap();
    assert!(
        heads
            .iter()
            .any(|h| h.starts_with("GET /prefix/api/variable/my%20proj/dev HTTP/1.1\r\n"))
    );
    for h in &heads {
        assert!(h.contains("\r\nx-keyshade-token: ks.pat.0123\r\n"), "{h}");
        assert!(h.contains("\r\nHost: 127.0.0.1:"), "{h}");
    }
}

#[tokio::test]
async fn chunked_and_until_close_bodies() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[{\"na\r\n18;ext=1\r\nme\":\"A\",\"value\":\"1\"}]   \r\n0\r\nX-Trailer: t\r\n\r\n".to_vec();
    let close = b"HTTP/1.0 200 OK\r\n\r\nhello".to_vec();
    let (base, server) = serve(vec![chunked, close]).await;
    let c = client(&base);
    let (status, body) = c.get("/a").await.unwrap();
    assert_eq!(status, 200);
    let list: Vec<WireVariable> = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[0].value, "1");
    assert_eq!(c.get("/b").await.unwrap(), (200, b"hello".to_vec()));
    server.await.unwrap();
}

#[tokio::test]
async fn errors_name_the_setting_to_fix() {
    let (base, server) = serve(vec![
        answer(
            "401 Unauthorized",
            r#"{"message":"Invalid API key","error":"Unauthorized","statusCode":401}"#,
        ),
        answer(
            "404 Not Found",
            r#"{"message":"Environment prod not found","error":"Not Found","statusCode":404}"#,
        ),
        answer(
            "404 Not Found",
            r#"{"message":"Project web not found","statusCode":404}"#,
        ),
        answer("500 Internal Server Error", "oops"),
        answer("200 OK", r#"{"not":"a list"}"#),
    ])
    .await;
    let c = client(&base);
    let get = |path: &'static str| {
        let c = c.clone();
        async move { c.get_list::<WireVariable>(path, "web", "prod").await }
    };
    let e = get("/api/variable/web/prod").await.unwrap_err();
    assert!(e.is_settings());
    let text = e.to_string();
    assert!(
        text.contains("token_file /run/ks/token") && text.contains("Invalid API key"),
        "{text}"
    );
    assert!(!text.contains("ks.pat.0123"), "{text}");
    let e = get("/x").await.unwrap_err().to_string();
    assert!(
        e.contains("environment \"prod\"") && e.contains("check environment"),
        "{e}"
    );
    let e = get("/x").await.unwrap_err().to_string();
    assert!(
        e.contains("project \"web\"") && e.contains("check project"),
        "{e}"
    );
    let e = get("/x").await.unwrap_err();
    assert!(!e.is_settings());
    assert!(e.to_string().contains("HTTP 500: oops"), "{e}");
    let e = get("/x").await.unwrap_err();
    assert!(matches!(e, RestError::Malformed { .. }), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn unreachable_names_base_url() {
    // A port nothing listens on: bound, then closed.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let e = client(&base)
        .get("/api/health")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot reach keyshade") && e.contains("check base_url"),
        "{e}"
    );
    let e = client("http://no-such-host.invalid")
        .get("/")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("check base_url"), "{e}");
}

#[tokio::test]
async fn broken_answers_are_errors() {
    let big_head = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let (base, server) = serve(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
        b"SSH-2.0-OpenSSH\r\n".to_vec(),
        big_head.into_bytes(),
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        )
        .into_bytes(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
    ])
    .await;
    let c = client(&base);
    for want in [
        "cut short",
        "not an HTTP/1.x response",
        "over the limit",
        "over the limit",
        "bad chunk size",
        "closed in the middle",
    ] {
        let e = c.get("/x").await.unwrap_err();
        assert!(matches!(e, RestError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    server.await.unwrap();
}

#[test]
fn base_urls() {
    let u = Url::parse("https://api.keyshade.xyz").unwrap();
    assert_eq!(
        (u.tls, u.host.as_str(), u.port),
        (true, "api.keyshade.xyz", 443)
    );
    assert_eq!(u.prefix, "");
    let u = Url::parse("http://127.0.0.1:4200/base/").unwrap();
    assert_eq!(
        (u.port, u.authority.as_str(), u.prefix.as_str()),
        (4200, "127.0.0.1:4200", "/base")
    );
    let u = Url::parse("http://[::1]:8080").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
    let u = Url::parse("http://[::1]").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("::1", 80));
    for bad in [
        "api.keyshade.xyz",
        "ws://h",
        "http://",
        "http://h:x",
        "http://u:p@h",
        "http://h?x",
    ] {
        assert!(Url::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
    assert_eq!(encode("a/b c"), "a%2Fb%20c");
}
