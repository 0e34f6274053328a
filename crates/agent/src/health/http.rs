//! The endpoints' server: a small HTTP/1.1 server written by hand on tokio (the agent build
//! links no HTTP server). `GET` and `HEAD` of `/healthz`, `/readyz` and `/metrics`; every
//! answer closes its connection. A request head is at most [`MAX_HEAD`] bytes and must
//! arrive within [`READ_TIMEOUT`]; at most [`MAX_CONNECTIONS`] are served at once (the
//! others wait in the listen backlog). Garbage gets a 400, never a panic.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

use super::listen::{ListenAddr, ListenError, SocketFile, bind_unix};
use super::{Stats, metrics};
use crate::tasks::Tasks;

/// Largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head, and then to take the answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix {
        listener: tokio::net::UnixListener,
        /// Removes the socket file when the server stops.
        _file: SocketFile,
    },
}

/// Bind `addr` (failing now if it cannot be) and serve it in a task of `tasks` until the
/// shutdown; a unix socket file is removed then.
pub async fn start(addr: &ListenAddr, tasks: &Tasks) -> Result<(), ListenError> {
    let listener = match addr {
        ListenAddr::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| ListenError::Bind {
                    addr: a.to_string(),
                    source,
                })?;
            let bound = l
                .local_addr()
                .map_or_else(|_| a.to_string(), |a| a.to_string());
            tracing::info!(addr = %bound, "agent endpoints listening (/healthz, /readyz, /metrics)");
            Listener::Tcp(l)
        }
        ListenAddr::Unix(path) => {
            let (l, file) = bind_unix(path)?;
            tracing::info!(addr = %addr, "agent endpoints listening (/healthz, /readyz, /metrics)");
            Listener::Unix {
                listener: l,
                _file: file,
            }
        }
    };
    tasks.spawn(tracing::info_span!("endpoints"), serve(listener));
    Ok(())
}

async fn serve(listener: Listener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = accept(&listener), if conns.len() < MAX_CONNECTIONS => match accepted {
                Ok(Conn::Tcp(s)) => { conns.spawn(answer(s)); }
                Ok(Conn::Unix(s)) => { conns.spawn(answer(s)); }
                Err(e) => {
                    // Out of descriptors, most likely: wait a little rather than spin.
                    tracing::warn!(error = %e, "endpoints: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Conn> {
    match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
        Listener::Unix { listener, .. } => listener.accept().await.map(|(s, _)| Conn::Unix(s)),
    }
}

/// Read one request head, answer it, close.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; MAX_HEAD];
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream, &mut buf)).await;
    let response = match head {
        Err(_) => Response::plain(408, "request timeout: the request head took too long"),
        Ok(Err(_)) => return,
        Ok(Ok(Head::Closed)) => return,
        Ok(Ok(Head::TooLarge)) => Response::plain(431, "request head too large"),
        Ok(Ok(Head::Incomplete)) => Response::plain(400, "bad request: incomplete request head"),
        Ok(Ok(Head::Complete(n))) => route(&buf[..n], super::stats(), Instant::now()),
    };
    let bytes = response.to_bytes();
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

enum Head {
    /// The head ends at this many bytes of the buffer.
    Complete(usize),
    /// The client closed before sending anything.
    Closed,
    /// The client closed in the middle of a head.
    Incomplete,
    TooLarge,
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> std::io::Result<Head> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Ok(Head::TooLarge);
        }
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(if filled == 0 {
                Head::Closed
            } else {
                Head::Incomplete
            });
        }
        // Search from a little before the new bytes: the end may straddle two reads.
        let from = filled.saturating_sub(3);
        filled += n;
        if let Some(end) = head_end(&buf[from..filled]) {
            return Ok(Head::Complete(from + end));
        }
    }
}

/// Where a head ends (after its empty line, `\r\n\r\n` or a bare `\n\n`), if it does.
fn head_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// An answer: status, content type, body; `head_only` for `HEAD`.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    allow: bool,
    head_only: bool,
}

impl Response {
    fn plain(status: u16, line: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{line}\n"),
            allow: false,
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// The answer to a complete request head.
fn route(head: &[u8], stats: &Stats, now: Instant) -> Response {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let Some((method, target)) = request_line(line) else {
        return Response::plain(400, "bad request: malformed request line");
    };
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => {
            let mut r = Response::plain(405, "method not allowed: only GET and HEAD");
            r.allow = true;
            return r;
        }
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let mut r = match path {
        b"/healthz" => {
            let (ok, line) = stats.liveness(now);
            Response::plain(if ok { 200 } else { 503 }, &line)
        }
        b"/readyz" => {
            let (ok, line) = stats.readiness();
            Response::plain(if ok { 200 } else { 503 }, &line)
        }
        b"/metrics" => Response {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(stats, super::BUILD.get().copied().unwrap_or("full"), now),
            allow: false,
            head_only: false,
        },
        _ => Response::plain(404, "not found: try /healthz, /readyz or /metrics"),
    };
    r.head_only = head_only;
    r
}

/// `METHOD SP TARGET SP HTTP/1.x`: the method (a token) and an origin-form target.
fn request_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
        || !target.starts_with(b"/")
        || target.iter().any(|b| b.is_ascii_control())
        || !(version == b"HTTP/1.1" || version == b"HTTP/1.0")
    {
        return None;
    }
    Some((method, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str) -> u16 {
        route(head.as_bytes(), &Stats::new(), Instant::now()).status
    }

    #[test]
    fn routes_and_refuses() {
        assert_eq!(status("GET /healthz HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET /healthz?x=1 HTTP/1.0\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status("GET /readyz HTTP/1.1\r\n\r\n"), 503, "not started");
        assert_eq!(status("GET /metrics HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("DELETE /x HTTP/1.1\r\n\r\n"), 405);
        for bad in [
            "",
            "\r\n\r\n",
            "GET\r\n\r\n",
            "GET /healthz\r\n\r\n",
            "GET /healthz HTTP/2\r\n\r\n",
            "GET healthz HTTP/1.1\r\n\r\n",
            "GET  /healthz HTTP/1.1\r\n\r\n",
            "G(T /healthz HTTP/1.1\r\n\r\n",
            "GET /a\x01b HTTP/1.1\r\n\r\n",
            "\u{0}\u{ff}garbage",
        ] {
            assert_eq!(status(bad), 400, "{bad:?}");
        }
    }

    #[test]
    fn head_has_no_body_and_405_says_allow() {
        let r = route(
            b"HEAD /healthz HTTP/1.1\r\n\r\n",
            &Stats::new(),
            Instant::now(),
        );
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 6\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let r = route(b"PUT / HTTP/1.1\r\n\r\n", &Stats::new(), Instant::now());
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.contains("Allow: GET, HEAD\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
    }

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[tokio::test]
    async fn reads_heads_split_across_reads_and_bounds_them() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64];
            let h = read_head(&mut server, &mut buf).await.unwrap();
            matches!(h, Head::Complete(18))
        });
        client.write_all(b"GET / HTTP/1.1\r\n\r").await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(b"\n").await.unwrap();
        assert!(reader.await.unwrap());

        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 16];
            matches!(read_head(&mut server, &mut buf).await, Ok(Head::TooLarge))
        });
        client.write_all(&[b'a'; 32]).await.unwrap();
        assert!(reader.await.unwrap());

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let mut buf = vec![0u8; 16];
        assert!(matches!(
            read_head(&mut server, &mut buf).await,
            Ok(Head::Closed)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_answered_408_and_closed() {
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(answer(server));
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        task.await.unwrap();
    }
}
