//! A raw protocol client for tests that speak to a node's `/v1/ws` themselves: connect
//! (with a bearer token if any), say hello, read frames, see how the node closed.

use futures_util::{SinkExt, StreamExt};
use tether_core::protocol::{ClientMsg, Position, ServerMsg, Subscription};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::DEADLINE;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the protocol helpers need of a client WebSocket, whatever its socket.
pub trait Client:
    futures_util::Stream<Item = Result<Message, tungstenite::Error>>
    + futures_util::Sink<Message, Error = tungstenite::Error>
    + Unpin
{
}

impl<T> Client for T where
    T: futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + futures_util::Sink<Message, Error = tungstenite::Error>
        + Unpin
{
}

/// Connect to `url` with `token` as bearer, if any (small buffers, so a thousand clients
/// stay light). A refused upgrade is the error; a connect that hangs past the deadline
/// panics.
pub async fn ws_connect(url: &str, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut req = url.into_client_request()?;
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let connect = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true);
    match tokio::time::timeout(DEADLINE, connect).await {
        Ok(r) => r.map(|(ws, _)| ws),
        Err(_) => panic!("WebSocket connect to {url} hung for {DEADLINE:?}"),
    }
}

/// Send one protocol message as a text frame.
pub async fn send_msg(ws: &mut impl Client, msg: &ClientMsg) {
    ws.send(Message::text(serde_json::to_string(msg).unwrap()))
        .await
        .expect("send a frame");
}

/// A hello from agent `it` for `env`, from `position` (`None`: from scratch).
pub fn hello(env: &str, position: Option<Position>) -> ClientMsg {
    ClientMsg::Hello {
        agent: "it".into(),
        subscribe: vec![Subscription {
            env: env.into(),
            position,
        }],
    }
}

/// The next frame a node sends (pings and pongs skipped); panics on close, error or the
/// deadline.
pub async fn next_server_msg(ws: &mut impl Client) -> ServerMsg {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame from the node within the deadline");
        match frame {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("not a server frame ({e}): {t}"));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Say hello for `env` and read up to `synced` and the `policy` frame after it; returns
/// where the node says we are.
pub async fn hello_and_sync(ws: &mut impl Client, env: &str) -> Position {
    send_msg(ws, &hello(env, None)).await;
    let mut synced = None;
    loop {
        match next_server_msg(ws).await {
            ServerMsg::Synced { env: e, position } if e == env => synced = Some(position),
            ServerMsg::Policy { env: e, .. } if e == env => {
                if let Some(position) = synced {
                    return position;
                }
            }
            ServerMsg::Error { code, message } => panic!("node error {code}: {message}"),
            _ => {}
        }
    }
}

/// How a connection ended: a close frame (code, reason), or an error/end of stream.
pub async fn wait_closed(ws: &mut Ws) -> Option<(u16, String)> {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("the node closes the connection within the deadline");
        match frame {
            Some(Ok(Message::Close(c))) => {
                return c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned()));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}
