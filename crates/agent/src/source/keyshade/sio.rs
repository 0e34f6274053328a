//! A small Socket.IO v4 client (Engine.IO v4, WebSocket transport only), written for what
//! keyshade's change notifier needs and no more: the upgrade with its token header, the
//! Engine.IO open packet, answering the server's pings, one namespace's connect, events
//! both ways (with or without an ack id), disconnect and close. No long-polling, no binary
//! packets, no acks of our own.
//!
//! Frames are bounded: a frame larger than [`MAX_FRAME`] from the server ends the
//! connection, and nothing larger than the server's `maxPayload` is sent. A server that
//! sends no ping within `pingInterval + pingTimeout` is dead. Anything malformed is an
//! error that says what was wrong (never a panic); unknown packet types are skipped with a
//! debug line. Frames are never logged whole: they carry values.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value as Json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// Largest frame accepted from the server (a keyshade event carries one value).
pub const MAX_FRAME: usize = 4 << 20;
/// How long the upgrade and the open packet may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SioError {
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The upgrade was answered with an HTTP error (401/403: the token).
    #[error("the server refused the connection: HTTP {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("the server closed the connection{0}")]
    Closed(String),
    #[error("no ping from the server for {0:?}; connection presumed dead")]
    Silent(Duration),
    #[error("the server refused to join namespace {nsp}: {message}")]
    ConnectError { nsp: String, message: String },
    #[error("the server left namespace {0}")]
    Disconnected(String),
    #[error("frame of {size} bytes is over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// The Engine.IO open packet's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub sid: String,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_payload: usize,
}

/// One frame from the server, parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Open(Handshake),
    Close,
    Ping,
    /// Engine.IO types this client has no use for (pong, upgrade, noop): skipped.
    Other(char),
    Packet(Packet),
}

/// A Socket.IO packet (inside an Engine.IO message, type `4`). `Debug` never shows an
/// event's data (it carries values).
#[derive(Clone, PartialEq)]
pub enum Packet {
    Connect {
        nsp: String,
        sid: Option<String>,
    },
    Disconnect {
        nsp: String,
    },
    Event {
        nsp: String,
        id: Option<u64>,
        name: String,
        data: Json,
    },
    ConnectError {
        nsp: String,
        message: String,
    },
    /// Acks and anything else a client of this server never needs: skipped.
    Other {
        nsp: String,
        kind: char,
    },
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Packet::Connect { nsp, sid } => write!(f, "Connect({nsp}, {sid:?})"),
            Packet::Disconnect { nsp } => write!(f, "Disconnect({nsp})"),
            Packet::Event { nsp, id, name, .. } => {
                write!(f, "Event({nsp}, {id:?}, {name:?}, <data>)")
            }
            Packet::ConnectError { nsp, message } => write!(f, "ConnectError({nsp}, {message:?})"),
            Packet::Other { nsp, kind } => write!(f, "Other({nsp}, {kind})"),
        }
    }
}

fn malformed(what: impl Into<String>) -> SioError {
    SioError::Malformed(what.into())
}

/// Parse one text frame from the server.
pub fn parse(text: &str) -> Result<Frame, SioError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or_else(|| malformed("empty frame"))?;
    let rest = chars.as_str();
    match kind {
        '0' => parse_open(rest).map(Frame::Open),
        '1' => Ok(Frame::Close),
        '2' => Ok(Frame::Ping),
        '4' => parse_packet(rest).map(Frame::Packet),
        '3' | '5' | '6' => Ok(Frame::Other(kind)),
        _ => Err(malformed(format!(
            "unknown Engine.IO packet type {:?}",
            kind.escape_debug().to_string()
        ))),
    }
}

fn parse_open(json: &str) -> Result<Handshake, SioError> {
    let v: Json = serde_json::from_str(json).map_err(|e| malformed(format!("open packet: {e}")))?;
    let ms = |key: &str| {
        v.get(key)
            .and_then(Json::as_u64)
            .ok_or_else(|| malformed(format!("open packet has no number {key:?}")))
    };
    let sid = v
        .get("sid")
        .and_then(Json::as_str)
        .ok_or_else(|| malformed("open packet has no \"sid\""))?;
    Ok(Handshake {
        sid: sid.to_string(),
        ping_interval: Duration::from_millis(ms("pingInterval")?),
        ping_timeout: Duration::from_millis(ms("pingTimeout")?),
        // Optional in older servers; the socket.io default then.
        max_payload: v
            .get("maxPayload")
            .and_then(Json::as_u64)
            .map_or(1_000_000, |n| usize::try_from(n).unwrap_or(usize::MAX)),
    })
}

/// `<type>[<nsp>,][<id>][<json>]` (binary packets, with their attachment count, refused).
fn parse_packet(s: &str) -> Result<Packet, SioError> {
    let mut chars = s.chars();
    let kind = chars
        .next()
        .ok_or_else(|| malformed("empty Socket.IO packet"))?;
    let mut rest = chars.as_str();
    let nsp = if rest.starts_with('/') {
        let (nsp, after) = rest.split_once(',').unwrap_or((rest, ""));
        rest = after;
        nsp.to_string()
    } else {
        "/".to_string()
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        let id = rest[..digits]
            .parse()
            .map_err(|_| malformed("ack id out of range"))?;
        rest = &rest[digits..];
        Some(id)
    } else {
        None
    };
    let data = || -> Result<Option<Json>, SioError> {
        if rest.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(rest)
            .map(Some)
            .map_err(|e| malformed(format!("packet data in {nsp}: {e}")))
    };
    match kind {
        '0' => {
            let sid = data()?.and_then(|d| d.get("sid")?.as_str().map(str::to_owned));
            Ok(Packet::Connect { nsp, sid })
        }
        '1' => Ok(Packet::Disconnect { nsp }),
        '2' => {
            let Some(Json::Array(mut items)) = data()? else {
                return Err(malformed(format!("event in {nsp} is not a JSON array")));
            };
            if items.is_empty() {
                return Err(malformed(format!("event in {nsp} has no name")));
            }
            let Json::String(name) = items.remove(0) else {
                return Err(malformed(format!(
                    "event in {nsp} does not start with its name"
                )));
            };
            let data = if items.is_empty() {
                Json::Null
            } else {
                items.remove(0)
            };
            Ok(Packet::Event {
                nsp,
                id,
                name,
                data,
            })
        }
        '4' => {
            let message = match data()? {
                Some(Json::Object(m)) => m
                    .get("message")
                    .and_then(Json::as_str)
                    .unwrap_or("no reason given")
                    .to_string(),
                Some(Json::String(s)) => s,
                _ => "no reason given".to_string(),
            };
            Ok(Packet::ConnectError { nsp, message })
        }
        '5' | '6' => Err(malformed(format!(
            "binary packet in {nsp} (not used by this client)"
        ))),
        '3' => Ok(Packet::Other { nsp, kind }),
        other => Err(malformed(format!(
            "unknown Socket.IO packet type {:?}",
            other.escape_debug().to_string()
        ))),
    }
}

/// The frame that joins namespace `nsp` (`40/change-notifier,`).
pub fn connect_frame(nsp: &str) -> String {
    format!("40{nsp},")
}

/// The frame that emits event `name` with `data` in namespace `nsp`.
pub fn event_frame(nsp: &str, name: &str, data: &Json) -> String {
    let body = Json::Array(vec![Json::String(name.to_string()), data.clone()]);
    format!("42{nsp},{body}")
}

/// The WebSocket address of a server from its base URL: only its scheme and host count.
pub fn socket_url(base: &str) -> Result<String, String> {
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| format!("{base:?} is not a URL like https://api.keyshade.xyz"))?;
    let scheme = match scheme {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(format!("{base:?}: the scheme must be http or https")),
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        return Err(format!("{base:?} has no host (or has credentials in it)"));
    }
    Ok(format!(
        "{scheme}://{host}/socket.io/?EIO=4&transport=websocket"
    ))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One Engine.IO connection, after its open packet.
pub struct Socket {
    ws: Ws,
    pub handshake: Handshake,
    /// When the server last pinged (or opened).
    last_ping: Instant,
    /// A ping is still to be answered (kept across a cancelled read, so none is lost).
    pong_due: bool,
}

impl Socket {
    /// Upgrade `url` ([`socket_url`]) with the token header and read the open packet.
    pub async fn connect(
        url: &str,
        token: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Socket, SioError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| SioError::Connect(e.to_string()))?;
        let header = token
            .parse()
            .map_err(|_| SioError::Connect("the token is not a valid header value".into()))?;
        request.headers_mut().insert("x-keyshade-token", header);
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_FRAME);
        config.max_frame_size = Some(MAX_FRAME);
        config.read_buffer_size = 16 * 1024;
        config.write_buffer_size = 0;
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            connector,
        );
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut ws = match tokio::time::timeout_at(deadline, connect).await {
            Err(_) => return Err(SioError::Timeout("the WebSocket upgrade")),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().unwrap_or_default();
                return Err(SioError::Refused {
                    status,
                    message: error_message(body),
                });
            }
            Ok(Err(e)) => return Err(SioError::Connect(e.to_string())),
            Ok(Ok((ws, _))) => ws,
        };
        let text = match tokio::time::timeout_at(deadline, next_text(&mut ws)).await {
            Err(_) => return Err(SioError::Timeout("the Engine.IO open packet")),
            Ok(t) => t?,
        };
        match parse(&text)? {
            Frame::Open(handshake) => Ok(Socket {
                ws,
                handshake,
                last_ping: Instant::now(),
                pong_due: false,
            }),
            _ => Err(malformed("the first frame is not an Engine.IO open packet")),
        }
    }

    /// Send one text frame, refusing one over the server's `maxPayload`. Gives up when the
    /// server would be presumed dead anyway (a vanished server leaves writes stuck).
    pub async fn send(&mut self, text: String) -> Result<(), SioError> {
        if text.len() > self.handshake.max_payload {
            return Err(SioError::TooLarge {
                size: text.len(),
                limit: self.handshake.max_payload,
            });
        }
        match tokio::time::timeout_at(self.dead_at(), self.ws.send(Message::text(text))).await {
            Ok(r) => r.map_err(|e| SioError::Lost(e.to_string())),
            Err(_) => Err(SioError::Silent(self.silence())),
        }
    }

    /// Join namespace `nsp`: its connect, then the server's ack (or its refusal).
    pub async fn join(&mut self, nsp: &str) -> Result<(), SioError> {
        self.send(connect_frame(nsp)).await?;
        loop {
            match self.next_packet().await? {
                Packet::Connect { nsp: n, .. } if n == nsp => return Ok(()),
                Packet::ConnectError { nsp: n, message } if n == nsp => {
                    return Err(SioError::ConnectError { nsp: n, message });
                }
                other => tracing::debug!(
                    packet = kind_of(&other),
                    "packet before the namespace ack skipped"
                ),
            }
        }
    }

    /// The next event in namespace `nsp`: `(name, data)`. Answers pings on the way; a
    /// disconnect of `nsp`, a close, silence or a broken frame ends the connection.
    /// Cancel-safe (a frame is handled whole once read).
    pub async fn next_event(&mut self, nsp: &str) -> Result<(String, Json), SioError> {
        loop {
            match self.next_packet().await? {
                Packet::Event {
                    nsp: n, name, data, ..
                } if n == nsp => return Ok((name, data)),
                Packet::Disconnect { nsp: n } if n == nsp => {
                    return Err(SioError::Disconnected(n));
                }
                Packet::ConnectError { nsp: n, message } if n == nsp => {
                    return Err(SioError::ConnectError { nsp: n, message });
                }
                other => tracing::debug!(packet = kind_of(&other), "Socket.IO packet skipped"),
            }
        }
    }

    async fn next_packet(&mut self) -> Result<Packet, SioError> {
        loop {
            if self.pong_due {
                self.send("3".to_string()).await?;
                self.pong_due = false;
            }
            let text = match tokio::time::timeout_at(self.dead_at(), next_text(&mut self.ws)).await
            {
                Err(_) => return Err(SioError::Silent(self.silence())),
                Ok(t) => t?,
            };
            match parse(&text)? {
                Frame::Packet(p) => return Ok(p),
                Frame::Ping => {
                    self.last_ping = Instant::now();
                    self.pong_due = true;
                }
                Frame::Close => return Err(SioError::Closed(" (Engine.IO close)".into())),
                Frame::Open(_) => return Err(malformed("a second open packet")),
                Frame::Other(kind) => {
                    tracing::debug!(kind = %kind, "Engine.IO packet skipped");
                }
            }
        }
    }

    /// Close politely (Engine.IO close, then the WebSocket's), without waiting long.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.ws.send(Message::text("1")).await;
            let _ = self.ws.close(None).await;
        })
        .await;
    }

    fn silence(&self) -> Duration {
        self.handshake.ping_interval + self.handshake.ping_timeout
    }

    fn dead_at(&self) -> Instant {
        self.last_ping + self.silence()
    }
}

fn kind_of(p: &Packet) -> &'static str {
    match p {
        Packet::Connect { .. } => "connect",
        Packet::Disconnect { .. } => "disconnect",
        Packet::Event { .. } => "event",
        Packet::ConnectError { .. } => "connect_error",
        Packet::Other { .. } => "other",
    }
}

/// The next text frame; WebSocket pings are answered by tungstenite, other frames skipped.
async fn next_text(ws: &mut Ws) -> Result<String, SioError> {
    loop {
        match ws.next().await {
            None => return Err(SioError::Lost("end of stream".into())),
            Some(Err(tungstenite::Error::Capacity(e))) => {
                return Err(SioError::Malformed(format!(
                    "frame over the limit of {MAX_FRAME} bytes ({e})"
                )));
            }
            Some(Err(e)) => return Err(SioError::Lost(e.to_string())),
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(c))) => {
                let why = c
                    .map(|c| format!(" ({} {})", u16::from(c.code), c.reason))
                    .unwrap_or_default();
                return Err(SioError::Closed(why));
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(malformed("a binary frame (not used by this client)"));
            }
            Some(Ok(_)) => {}
        }
    }
}

/// The `message` of a keyshade error body (`{"message","error","statusCode"}`), else the
/// start of the body. `message` may be a list (NestJS validation errors).
pub fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<Json>(&text) {
        match v.get("message") {
            Some(Json::String(s)) => return s.chars().take(300).collect(),
            Some(Json::Array(items)) => {
                let parts: Vec<&str> = items.iter().filter_map(Json::as_str).collect();
                return parts.join("; ").chars().take(300).collect();
            }
            _ => {}
        }
    }
    let t = text.trim();
    if t.is_empty() {
        "no message".into()
    } else {
        t.chars().take(200).collect()
    }
}

#[cfg(test)]
#[path = "sio_tests.rs"]
mod tests;
