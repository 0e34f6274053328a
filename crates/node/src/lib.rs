//! `tether serve`: a node of the change-notification cluster. One port serves the HTTP API
//! and the agents' WebSocket; the store is embedded SQLite. The node's `serve` takes its
//! listener and its shutdown trigger as arguments, so tests run it on port 0.
//!
//! Layout:
//! - `args`, `config`: `tether serve`'s flags and TOML file, validated into [`ServeConfig`];
//!   `check`: `tether check --mode serve`, the effective config with no secret.
//! - `http`: the JSON API, health, readiness, metrics and the agents' WebSocket upgrade.
//! - `ws`: one agent's connection (hello, catch-up, heartbeats, acks); `plain`: the plain
//!   TCP socket shared by that connection's task and the fan-out.
//! - `hub`, `outlet`: the fan-out of a committed change set to every following connection.
//! - `auth`: bearer tokens, roles and environment scopes.
//! - `live`, `reload`: what a reload (SIGHUP, an edit of the config file) may change while
//!   the node runs, and the reload itself; `sd`: what systemd hears (ready, status, watchdog).
//! - `metrics`, `histogram`: `/metrics`, with latency histograms kept in atomics.
//! - `store`: the store contract, embedded SQLite or Redis; `bus`: Redis Pub/Sub with repair.
//! - `rollout`: acknowledged positions per agent, aggregated into rollout status.
//! - `fleet`: paced rollouts: policies, slots, waves, halts (`docs/rollouts.md`).
//! - `panics`: a panic ends one request or connection, not the node; the panic hook.
//!
//! Every task the node spawns belongs to [`Node::tasks`] and watches [`Node::shutdown`]:
//! [`serve`] cancels them and waits for them (5 s at most) before it returns.

// The one `unsafe` is the prefetch below, allowed there alone.
#![deny(unsafe_code)]

mod api_error;
pub mod args;
pub mod auth;
mod bus;
pub mod check;
pub mod config;
mod fleet;
mod front;
mod histogram;
mod http;
pub mod hub;
mod live;
mod metrics;
mod outlet;
mod panics;
mod plain;
mod redis_url;
pub mod reload;
mod rollout;
mod sd;
pub mod store;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ServeConfig;
pub use panics::install_hook as install_panic_hook;
use store::{ChangeSet, Store};

/// Read buffer of an agent's WebSocket: small, since agents send little.
pub const WS_READ_BUFFER: usize = 512;

/// Most bytes a plain agent socket queues before the agent counts as not reading: two of the
/// largest frames an agent accepts (`protocol::MAX_AGENT_FRAME`), so that a reader may be in
/// the middle of one while the next waits. Not tied to `max_frame`, which bounds what agents
/// send: the store keeps change sets and snapshots, as sent, well under the agent's limit
/// (`store::size`), whatever the HTTP body that brought them. Change frames are
/// shared by every connection, so this counts more than each connection holds.
pub const BACKLOG_LIMIT: usize = 2 * tether_core::protocol::MAX_AGENT_FRAME;

/// Ask the CPU to bring `len` bytes from `start` into its cache, without waiting for them
/// and without reading them as far as the language is concerned: the fan-out does this for
/// the next connections while the kernel spends microseconds on the current one's send.
/// A no-op where there is no stable prefetch instruction. The one `unsafe` here that no
/// syscall asks for: stable Rust has no safe prefetch yet (`std::hint::prefetch_read` is
/// unstable), and this took the node's own share of a fan-out from 12 % of its CPU to 5 %.
fn prefetch(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        const LINE: usize = 64;
        let first = start as usize & !(LINE - 1);
        for line in (first..start as usize + len).step_by(LINE) {
            // SAFETY: SSE is part of every x86_64 CPU, and a prefetch is a hint that takes
            // an address, any address: it never faults and nothing is read through it.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(line as *const i8)
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// [`prefetch`] all of `value`.
fn prefetch_value<T>(value: &T) {
    prefetch((value as *const T).cast(), std::mem::size_of::<T>());
}

/// Shared state of one node.
pub struct Node {
    pub id: String,
    pub store: Store,
    pub hub: hub::Hub,
    /// Tokens and the settings a reload may change (`live`, `reload`).
    pub live: live::Live,
    pub shutdown: CancellationToken,
    /// Every task of the node (connections, bus, registry), waited for on shutdown.
    pub tasks: TaskTracker,
    /// Cluster mode: the Redis bus this node's commits and notices go through.
    pub bus: std::sync::OnceLock<bus::Bus>,
    /// Rollouts: this node's connections' slot requests, held slots and policies.
    pub fleet: fleet::Fleet,
}

impl Node {
    pub fn new(cfg: &ServeConfig, store: Store, auth: auth::Auth) -> Node {
        let node = Node::with(
            cfg.node_id.clone(),
            store,
            auth,
            cfg.heartbeat,
            cfg.max_frame,
        );
        node.live.set_repair_interval(cfg.repair_interval);
        node.fleet.set_lease(cfg.slot_lease);
        node
    }

    /// A node named `id` with these settings (tests build one without a config).
    pub fn with(
        id: String,
        store: Store,
        auth: auth::Auth,
        heartbeat: Duration,
        max_frame: usize,
    ) -> Node {
        Node {
            id,
            store,
            // A receiver that falls this far behind catches up from the store instead.
            hub: hub::Hub::new(256),
            live: live::Live::new(auth, heartbeat, max_frame, Duration::from_secs(10)),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            bus: std::sync::OnceLock::new(),
            fleet: fleet::Fleet::default(),
        }
    }

    /// Deliver a committed change set to the agents of this node. In cluster mode it goes
    /// through the feeder, which also hears it on Pub/Sub and delivers it once.
    /// `committed`: when the store's commit was done, where the fan-out latency counts from.
    pub async fn publish(&self, set: ChangeSet, committed: std::time::Instant) {
        match self.bus.get() {
            Some(bus) => bus.send(bus::Feed::Local(set, committed)),
            None => self.hub.publish(set, Some(committed)),
        }
    }

    /// A new history was started: connections catch up (a snapshot). In cluster mode the
    /// reset script already told every node through Pub/Sub.
    pub async fn announce_reset(&self, env: &str, position: tether_core::protocol::Position) {
        if self.bus.get().is_none() {
            self.hub.moved(env, position);
        }
    }

    /// Ready to serve: the store answers and is not known to be damaged (and, in cluster
    /// mode, the subscriber is up).
    pub async fn ready(&self) -> Result<(), NotReady> {
        self.store
            .list()
            .await
            .map_err(|e| NotReady::Degraded(e.to_string()))?;
        if let Some(damage) = self.store.damage().await {
            return Err(NotReady::Damaged(damage));
        }
        match self.bus.get() {
            Some(bus) if !bus.subscribed.load(std::sync::atomic::Ordering::SeqCst) => Err(
                NotReady::Degraded("redis subscriber connection is down".into()),
            ),
            _ => Ok(()),
        }
    }
}

/// Why a node is not ready (`/readyz`): its store is damaged (an operator must act), or
/// something it needs does not answer (it may come back by itself).
#[derive(Debug)]
pub enum NotReady {
    Damaged(String),
    Degraded(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The store was there and is now empty or damaged: the operator chooses what to do.
    #[error(transparent)]
    StoreDamaged(#[from] store::files::Damaged),
    #[error("tls: {0}")]
    Tls(String),
    #[error("config: {0}")]
    Config(String),
}

/// Open the store and listen, per the config; then serve until `shutdown`. `log` changes the
/// log filter when a reload asks for another level. `reload` (none: the config is read
/// once) has the flags the node started with and its reload requests (SIGHUP); with it
/// the node also follows edits of its config file (`reload`). systemd hears of it all
/// (`sd`): ready once listening, reloading, status, watchdog, stopping.
pub async fn run(
    cfg: ServeConfig,
    log: tether_core::settings::LogControl,
    shutdown: impl Future<Output = ()>,
    reload: Option<reload::Reload>,
) -> Result<(), ServeError> {
    panics::install_hook();
    let redis_client = match &cfg.redis {
        Some(url) => Some(
            ::redis::Client::open(url.0.as_str())
                .map_err(|_| ServeError::Config(format!("bad redis URL {url}")))?,
        ),
        None => None,
    };
    let store = match &redis_client {
        Some(client) => Store::Redis(Arc::new(store::redis::RedisStore::new(
            client.clone(),
            cfg.history,
            cfg.reset_store,
        ))),
        None => Store::Sqlite(Arc::new(
            store::sqlite::SqliteStore::open_with(&cfg.data, cfg.history, cfg.reset_store)
                .map_err(|e| match e {
                    store::files::OpenError::Damaged(d) => ServeError::StoreDamaged(d),
                    store::files::OpenError::Store(e) => ServeError::Store(e),
                })?,
        )),
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(config::tls_acceptor(cert, key).map_err(ServeError::Tls)?),
        _ => None,
    };
    let auth = auth::Auth::new(&cfg.tokens).map_err(|e| ServeError::Config(format!("{e:?}")))?;
    let node = Arc::new(Node::new(&cfg, store, auth));
    if node.live.auth().dev_mode() {
        tracing::warn!(
            listen = %cfg.listen,
            "DEV MODE: no tokens configured, any client may read and write everything; loopback only"
        );
    }
    if let Some(client) = redis_client {
        let bus = bus::start(node.clone(), client, node.shutdown.clone());
        let _ = node.bus.set(bus);
        if let Store::Redis(r) = &node.store {
            rollout::start(node.clone(), r.clone(), node.shutdown.clone());
        }
    }
    fleet::start(node.clone());
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let store_desc = match &cfg.redis {
        Some(url) => format!("redis {url}"),
        None => format!("sqlite {}", cfg.data.display()),
    };
    let tls_on = tls.is_some();
    tracing::info!(%addr, node = %node.id, tls = tls_on, store = %store_desc, "node listening");
    let gate = Arc::new(live::Gate::new(tls, cfg.limits));
    if let Some(r) = reload {
        reload::start(r, cfg, log, node.clone(), gate.clone());
    }
    sd::ready(node.clone()).await;
    serve_gate(listener, node, gate, shutdown).await;
    Ok(())
}

/// Accept connections until `shutdown`, then close agent sockets and drain for up to 5s.
/// Past `limits.max_unauthenticated` unauthenticated connections, each new one closes an
/// older one (`front::Door::admit`).
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: front::Limits,
    shutdown: impl Future<Output = ()>,
) {
    serve_gate(
        listener,
        node,
        Arc::new(live::Gate::new(tls, limits)),
        shutdown,
    )
    .await
}

/// [`serve`], with the TLS acceptor and the door's limits in a `gate` a reload may change.
/// The accept loop also feeds systemd's watchdog: `WATCHDOG=1` goes out only while this
/// loop is polled, so a runtime that stopped running it gets the node restarted.
async fn serve_gate(
    listener: TcpListener,
    node: Arc<Node>,
    gate: Arc<live::Gate>,
    shutdown: impl Future<Output = ()>,
) {
    let app = http::router(node.clone(), gate.door.clone());
    let mut watchdog = sd::Watchdog::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watchdog.due() => tether_core::notify::watchdog(),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = gate.door.admit(peer.ip());
                    let app = app.clone();
                    let tls = gate.tls();
                    let cancel = node.shutdown.clone();
                    let header_timeout = gate.door.header_timeout();
                    node.tasks.spawn(async move {
                        let front = Front { conn, header_timeout, cancel };
                        if let Err(e) = connection(stream, app, tls, BACKLOG_LIMIT, front).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracing::info!("shutting down");
    tether_core::notify::stopping();
    node.shutdown.cancel();
    node.tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), node.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections or tasks still running after 5s; leaving");
    }
}

/// A plain-TCP connection's shared socket, for the WebSocket upgrade (request extension).
#[derive(Clone)]
pub struct PlainConn(pub Arc<plain::PlainSocket>);

/// What one connection's task keeps of the front door.
struct Front {
    conn: Arc<front::Conn>,
    header_timeout: Duration,
    cancel: CancellationToken,
}

/// Most bytes hyper buffers of a request head it has not parsed yet (it may overshoot by
/// one read): bounds request headers (a larger head gets 431) and so what an
/// unauthenticated connection can pin.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Serve one accepted connection; `limit` bounds what a plain socket queues for a slow agent.
async fn connection(
    stream: TcpStream,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limit: usize,
    front: Front,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            let (io, socket) = plain::PlainSocket::new(stream, limit);
            let svc = tracked(app, front.conn.clone(), Some(PlainConn(socket)));
            serve_http(TokioIo::new(io), svc, front).await
        }
        Some(acceptor) => {
            let svc = tracked(app, front.conn.clone(), None);
            let handshake = tokio::time::timeout(front.header_timeout, acceptor.accept(stream));
            let s = tokio::select! {
                s = handshake => s??,
                why = front.conn.expired() => {
                    tracing::debug!(reason = %why, "connection closed during the TLS handshake");
                    return Ok(());
                }
            };
            serve_http(TokioIo::new(s), svc, front).await
        }
    }
}

/// `app` for one connection: each request carries the connection (and its plain socket)
/// as extensions, and its body and response move the connection's request deadline (a
/// response on a connection still unauthenticated closes it).
fn tracked(
    app: axum::Router,
    conn: Arc<front::Conn>,
    plain: Option<PlainConn>,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
> {
    use tower::ServiceExt;
    let answered = conn.clone();
    let app = app
        .map_request(move |req: hyper::Request<hyper::body::Incoming>| {
            let (mut parts, body) = req.into_parts();
            if let Some(p) = &plain {
                parts.extensions.insert(p.clone());
            }
            parts.extensions.insert(conn.clone());
            hyper::Request::from_parts(parts, conn.body(body))
        })
        .map_response(move |mut resp: axum::response::Response| {
            answered.answered(&mut resp);
            resp
        });
    hyper_util::service::TowerToHyperService::new(app)
}

/// Serve HTTP on `io` until the client goes, the shutdown, or the front door closes the
/// connection (a request late, an unauthenticated connection too old or making room).
async fn serve_http<I, S>(
    io: I,
    svc: S,
    front: Front,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(front.header_timeout)
        .max_buf_size(MAX_READ_BUFFER)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r.map_err(Into::into),
        why = front.conn.expired() => {
            tracing::debug!(reason = %why, "connection closed");
            Ok(())
        }
        _ = front.cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            Ok(())
        }
    }
}
