//! The node's front door: what a client must do to keep a connection. A request (headers
//! and body) must arrive whole within the request timeout, or its connection is closed;
//! headers alone within 10 s (hyper's header timeout, never longer than the request's).
//!
//! A connection counts as unauthenticated until one of its requests passes the token
//! check. Such a connection lives at most one request timeout from its accept, whatever it
//! is answered meanwhile, and each answer to it closes it (`Connection: close`): probes and
//! scrapers open a connection per request. At most `max_unauthenticated` are open at once:
//! a new connection past that closes an old one, the oldest of the peer that holds the
//! most (an IPv6 peer counted by its /64), so a flood from a few addresses cannot keep a
//! new client out. Handlers check the token before they read a body, so a client without a
//! token holds at most a connection slot and its headers, for a bounded time.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest a client may take to send a request's headers (within the request timeout).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often closing connections for room is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the operator sets (`request_timeout`, `max_unauthenticated`,
/// `metrics_require_token` in the serve config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest a request (headers and body) may take to arrive, and longest an
    /// unauthenticated connection stays open.
    pub request_timeout: Duration,
    /// Most connections at once on which no request has passed the token check yet.
    pub max_unauthenticated: usize,
    /// `/metrics` asks for a token (any role) like the API.
    pub metrics_require_token: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            request_timeout: Duration::from_secs(30),
            max_unauthenticated: 1024,
            metrics_require_token: false,
        }
    }
}

/// The limits of one listener, shared by its connections. A reload may change them
/// ([`Door::set_limits`]): connections accepted from then on get the new request timeout
/// (open ones keep theirs), the next accept counts against the new maximum, and the next
/// scrape of `/metrics` asks for a token or not.
pub struct Door {
    request_timeout_ns: AtomicU64,
    max_unauthenticated: AtomicUsize,
    metrics_require_token: AtomicBool,
    waiting: Arc<Mutex<Waiting>>,
    /// Unauthenticated connections closed to make room for a new one.
    pub evicted: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

/// The connections open now that count as unauthenticated, oldest first, and how many of
/// them each peer holds.
#[derive(Default)]
struct Waiting {
    next: u64,
    open: BTreeMap<u64, (Peer, Weak<Conn>)>,
    per_peer: HashMap<Peer, usize>,
}

/// Who a connection is counted against: its IPv4 address, or its IPv6 address's /64
/// (one host commonly holds a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Peer(IpAddr);

impl Peer {
    fn of(ip: IpAddr) -> Peer {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Peer(IpAddr::V6(prefix.into()))
            }
            v4 => Peer(v4),
        }
    }
}

impl Waiting {
    fn remove(&mut self, id: u64) -> Option<Weak<Conn>> {
        let (peer, conn) = self.open.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
        Some(conn)
    }

    /// The connection to close so that one from `incoming` can come in: the oldest of the
    /// peer that would hold the most (`incoming`'s own count includes the newcomer).
    fn victim(&self, incoming: Peer) -> Option<u64> {
        let count =
            |p: &Peer| self.per_peer.get(p).copied().unwrap_or(0) + usize::from(*p == incoming);
        let most = self.per_peer.keys().map(count).max()?.max(count(&incoming));
        self.open
            .iter()
            .find(|(_, (p, _))| count(p) == most)
            .map(|(id, _)| *id)
    }
}

impl Door {
    pub fn new(limits: Limits) -> Door {
        let door = Door {
            request_timeout_ns: AtomicU64::new(0),
            max_unauthenticated: AtomicUsize::new(0),
            metrics_require_token: AtomicBool::new(false),
            waiting: Arc::default(),
            evicted: AtomicU64::new(0),
            last_warned: Mutex::new(None),
        };
        door.set_limits(limits);
        door
    }

    /// Use `limits` from now on (see the type's doc).
    pub fn set_limits(&self, limits: Limits) {
        let ns = u64::try_from(limits.request_timeout.as_nanos()).unwrap_or(u64::MAX);
        self.request_timeout_ns.store(ns, Ordering::Relaxed);
        self.max_unauthenticated
            .store(limits.max_unauthenticated, Ordering::Relaxed);
        self.metrics_require_token
            .store(limits.metrics_require_token, Ordering::Relaxed);
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_nanos(self.request_timeout_ns.load(Ordering::Relaxed))
    }

    /// Whether `/metrics` asks for a token.
    pub fn metrics_require_token(&self) -> bool {
        self.metrics_require_token.load(Ordering::Relaxed)
    }

    /// The header timeout: hyper's 10 s, or the request timeout when that is shorter.
    pub fn header_timeout(&self) -> Duration {
        HEADER_TIMEOUT.min(self.request_timeout())
    }

    /// Connections open now that count as unauthenticated.
    pub fn unauthenticated(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .len()
    }

    /// A newly accepted connection from `peer`, counted as unauthenticated. When there are
    /// already `max_unauthenticated` of them, one is closed to make room (see the module
    /// doc; counted, and logged now and then).
    pub fn admit(&self, peer: IpAddr) -> Arc<Conn> {
        let peer = Peer::of(peer);
        let now = Instant::now();
        let (timeout, max) = (
            self.request_timeout(),
            self.max_unauthenticated.load(Ordering::Relaxed),
        );
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        // Dropped once the lock is released: the last reference runs `Conn::drop`, which
        // takes the lock.
        let mut evicted = Vec::new();
        while waiting.open.len() >= max.max(1) {
            let Some(id) = waiting.victim(peer) else {
                break;
            };
            // A connection whose last reference is being dropped is gone already.
            if let Some(conn) = waiting.remove(id).and_then(|w| w.upgrade()) {
                conn.evict();
                evicted.push(conn);
            }
        }
        let id = waiting.next;
        waiting.next += 1;
        let (deadlines, _) = watch::channel(Deadlines {
            request: Some(now + timeout),
            lifetime: Some(now + timeout),
            evicted: false,
        });
        let conn = Arc::new(Conn {
            id,
            deadlines,
            timeout,
            waiting: self.waiting.clone(),
        });
        waiting.open.insert(id, (peer, Arc::downgrade(&conn)));
        *waiting.per_peer.entry(peer).or_default() += 1;
        drop(waiting);
        if !evicted.is_empty() {
            self.warn(evicted.len() as u64, now);
        }
        conn
    }

    fn warn(&self, evicted: u64, now: Instant) {
        let evicted = self.evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
        let mut last = self
            .last_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(
                evicted,
                "too many unauthenticated connections: closing the oldest (raise max_unauthenticated if these are real clients)"
            );
        }
    }
}

/// When a connection must be closed. The earliest of the two deadlines wins.
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    /// When the request being received must be complete; `None` while none is (a
    /// handler runs, or the connection was upgraded).
    request: Option<Instant>,
    /// While unauthenticated: one request timeout from the accept, never moved.
    lifetime: Option<Instant>,
    /// Closed to make room for a newer connection.
    evicted: bool,
}

/// Why a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// A request did not arrive whole within the request timeout.
    Request,
    /// Unauthenticated for a whole request timeout.
    Lifetime,
    /// Unauthenticated, and closed to make room for a newer connection.
    Evicted,
}

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Expired::Request => "request not received whole within the request timeout",
            Expired::Lifetime => "unauthenticated for the whole request timeout",
            Expired::Evicted => "unauthenticated, closed to make room (max_unauthenticated)",
        })
    }
}

/// One connection's state, shared by its task and, as a request extension, its requests.
pub struct Conn {
    id: u64,
    deadlines: watch::Sender<Deadlines>,
    timeout: Duration,
    waiting: Arc<Mutex<Waiting>>,
}

impl Conn {
    /// A request on this connection passed the token check: it no longer counts as
    /// unauthenticated, nor lives only one request timeout.
    pub fn authenticated(&self) {
        if !self.is_unauthenticated() {
            return;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.remove(self.id).is_some() {
            self.deadlines.send_modify(|d| d.lifetime = None);
        }
    }

    /// Whether this connection still counts as unauthenticated.
    pub fn is_unauthenticated(&self) -> bool {
        self.deadlines.borrow().lifetime.is_some()
    }

    fn evict(&self) {
        self.deadlines.send_modify(|d| d.evicted = true);
    }

    /// The request was received whole: no request deadline while its handler runs.
    pub fn received(&self) {
        self.deadlines.send_modify(|d| d.request = None);
    }

    /// A response is on its way: it and the next request are due within the timeout. On
    /// a connection still unauthenticated the response closes the connection
    /// (`Connection: close`).
    pub fn answered<B>(&self, response: &mut hyper::Response<B>) {
        let at = Instant::now() + self.timeout;
        self.deadlines.send_modify(|d| d.request = Some(at));
        if self.is_unauthenticated() {
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
    }

    /// Resolves once the connection must be closed, saying why (follows every change of
    /// the deadlines; never while there is none).
    pub async fn expired(&self) -> Expired {
        let mut rx = self.deadlines.subscribe();
        loop {
            let d = *rx.borrow_and_update();
            if d.evicted {
                return Expired::Evicted;
            }
            let due = match (d.request, d.lifetime) {
                (Some(r), Some(l)) if l <= r => Some((l, Expired::Lifetime)),
                (Some(r), _) => Some((r, Expired::Request)),
                (None, l) => l.map(|l| (l, Expired::Lifetime)),
            };
            let late = async {
                match due {
                    Some((at, why)) => {
                        tokio::time::sleep_until(at).await;
                        why
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                why = late => return why,
                // The sender lives in `self`, so this never errs while `self` is borrowed.
                _ = rx.changed() => {}
            }
        }
    }

    /// Wrap a request's body so that reading it to the end marks the request received.
    pub fn body(self: &Arc<Self>, inner: Incoming) -> TrackedBody {
        if inner.is_end_stream() {
            self.received();
        }
        TrackedBody {
            inner,
            conn: self.clone(),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.id);
    }
}

/// A request body that tells its connection when it has been read to the end.
pub struct TrackedBody {
    inner: Incoming,
    conn: Arc<Conn>,
}

impl Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.conn.received();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(timeout_s: u64, max_unauthenticated: usize) -> Limits {
        Limits {
            request_timeout: Duration::from_secs(timeout_s),
            max_unauthenticated,
            metrics_require_token: false,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Whether `conn` was closed to make room (without waiting for any deadline).
    async fn was_evicted(conn: &Conn) -> bool {
        let now = tokio::time::timeout(Duration::ZERO, conn.expired()).await;
        now == Ok(Expired::Evicted)
    }

    fn response() -> hyper::Response<()> {
        hyper::Response::new(())
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_oldest_is_closed_and_authentication_frees_a_slot() {
        let door = Door::new(limits(30, 2));
        let a = door.admit(ip("10.0.0.1"));
        let b = door.admit(ip("10.0.0.1"));
        assert_eq!(door.unauthenticated(), 2);
        let c = door.admit(ip("10.0.0.1"));
        assert!(was_evicted(&a).await, "the oldest makes room");
        assert!(!was_evicted(&b).await && !was_evicted(&c).await);
        assert_eq!(door.unauthenticated(), 2);
        assert_eq!(door.evicted.load(Ordering::Relaxed), 1);

        b.authenticated();
        assert!(!b.is_unauthenticated());
        assert_eq!(door.unauthenticated(), 1);
        let d = door.admit(ip("10.0.0.1"));
        assert!(!was_evicted(&c).await, "a slot after authentication");
        drop(d);
        assert_eq!(
            door.unauthenticated(),
            1,
            "a closed connection frees its slot"
        );
        assert_eq!(door.evicted.load(Ordering::Relaxed), 1);
    }

    /// New limits (a reload) count from the next accept; open connections keep their
    /// request timeout.
    #[tokio::test(start_paused = true)]
    async fn new_limits_apply_from_the_next_accept() {
        let door = Door::new(limits(30, 3));
        let a = door.admit(ip("10.0.0.1"));
        let _b = door.admit(ip("10.0.0.1"));
        assert!(!door.metrics_require_token());
        door.set_limits(Limits {
            metrics_require_token: true,
            ..limits(1, 2)
        });
        assert!(door.metrics_require_token());
        assert_eq!(door.header_timeout(), Duration::from_secs(1));
        let c = door.admit(ip("10.0.0.1"));
        assert!(was_evicted(&a).await, "two at most now");
        // The new connection goes after 1 s; the ones before keep their 30 s.
        tokio::time::advance(Duration::from_millis(1500)).await;
        let now = tokio::time::timeout(Duration::ZERO, c.expired()).await;
        assert_eq!(now, Ok(Expired::Lifetime));
        assert!(
            tokio::time::timeout(Duration::ZERO, _b.expired())
                .await
                .is_err()
        );
    }

    /// A flood from one address (or one IPv6 /64) closes its own connections, never
    /// those of the other peers.
    #[tokio::test(start_paused = true)]
    async fn a_flooding_peer_makes_room_from_its_own_connections() {
        let door = Door::new(limits(30, 4));
        let client = door.admit(ip("192.0.2.7"));
        let probe = door.admit(ip("::ffff:198.51.100.1"));
        let mut flood: Vec<_> = (0..20)
            .map(|i| door.admit(ip(&format!("2001:db8::{i:x}"))))
            .collect();
        assert!(!was_evicted(&client).await && !was_evicted(&probe).await);
        for old in &flood[..18] {
            assert!(was_evicted(old).await);
        }
        assert_eq!(door.unauthenticated(), 4);
        // A newcomer from elsewhere: the flood's /64 holds the most.
        let other = door.admit(ip("203.0.113.9"));
        assert!(was_evicted(&flood[18]).await);
        assert!(!was_evicted(&client).await && !was_evicted(&probe).await);
        // Even shares: the oldest goes.
        let last = flood.pop().unwrap();
        drop(flood);
        let _new = door.admit(ip("203.0.113.10"));
        assert!(was_evicted(&client).await);
        assert!(!was_evicted(&probe).await && !was_evicted(&other).await);
        assert!(!was_evicted(&last).await);
    }

    /// Answers do not keep an unauthenticated connection open: it lives one request
    /// timeout from its accept, and each answer asks the client to close it.
    #[tokio::test(start_paused = true)]
    async fn an_unauthenticated_connection_lives_one_timeout() {
        let door = Door::new(limits(30, 8));
        let conn = door.admit(ip("127.0.0.1"));
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(20)).await;
        conn.received();
        let mut resp = response();
        conn.answered(&mut resp);
        assert_eq!(resp.headers()[hyper::header::CONNECTION], "close");
        assert_eq!(conn.expired().await, Expired::Lifetime);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // Even while a handler runs.
        let conn = door.admit(ip("127.0.0.1"));
        conn.received();
        assert_eq!(conn.expired().await, Expired::Lifetime);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_the_request() {
        let door = Door::new(limits(30, 8));
        assert_eq!(door.header_timeout(), HEADER_TIMEOUT);
        assert_eq!(
            Door::new(limits(1, 1)).header_timeout(),
            Duration::from_secs(1)
        );
        let conn = door.admit(ip("127.0.0.1"));
        let start = Instant::now();
        assert_eq!(conn.expired().await, Expired::Lifetime);
        assert_eq!(start.elapsed(), Duration::from_secs(30));

        let conn = door.admit(ip("127.0.0.1"));
        conn.authenticated();
        // Received: no deadline while the handler runs, however long.
        conn.received();
        let waited = tokio::time::timeout(Duration::from_secs(3600), conn.expired()).await;
        assert!(waited.is_err(), "no deadline while a handler runs");

        // Answered: the next request is due within the timeout again; the connection
        // stays open for it.
        let c2 = conn.clone();
        let watcher = tokio::spawn(async move { c2.expired().await });
        tokio::task::yield_now().await;
        let at = Instant::now();
        let mut resp = response();
        conn.answered(&mut resp);
        assert!(resp.headers().get(hyper::header::CONNECTION).is_none());
        assert_eq!(watcher.await.unwrap(), Expired::Request);
        assert_eq!(at.elapsed(), Duration::from_secs(30));
    }
}
