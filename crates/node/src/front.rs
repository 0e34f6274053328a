//! The node's front door: what a client must do to keep a connection. A request (headers
//! and body) must arrive whole within the request timeout, or its connection is closed;
//! headers alone within 10 s (hyper's header timeout, never longer than the request's).
//! A connection counts as unauthenticated until one of its requests passes the token
//! check, and past `max_unauthenticated` such connections new ones are closed on accept.
//! Handlers check the token before they read a body, so a client without a token holds
//! at most a connection slot and its headers, for a bounded time.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

/// Longest a client may take to send a request's headers (within the request timeout).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a refused connection is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the operator sets (`request_timeout`, `max_unauthenticated`,
/// `metrics_require_token` in the serve config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest a request (headers and body) may take to arrive.
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

/// The limits of one listener, shared by its connections.
pub struct Door {
    request_timeout: Duration,
    max_unauthenticated: usize,
    unauthenticated: Arc<Semaphore>,
    /// Connections closed on accept because too many were unauthenticated.
    pub refused: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

impl Door {
    pub fn new(limits: Limits) -> Door {
        Door {
            request_timeout: limits.request_timeout,
            max_unauthenticated: limits.max_unauthenticated,
            unauthenticated: Arc::new(Semaphore::new(limits.max_unauthenticated)),
            refused: AtomicU64::new(0),
            last_warned: Mutex::new(None),
        }
    }

    /// The header timeout: hyper's 10 s, or the request timeout when that is shorter.
    pub fn header_timeout(&self) -> Duration {
        HEADER_TIMEOUT.min(self.request_timeout)
    }

    /// Connections open now that count as unauthenticated.
    pub fn unauthenticated(&self) -> usize {
        self.max_unauthenticated
            .saturating_sub(self.unauthenticated.available_permits())
    }

    /// A newly accepted connection, counted as unauthenticated; `None` when there are
    /// already `max_unauthenticated` of them (close it: refused, and logged now and then).
    pub fn admit(&self) -> Option<Arc<Conn>> {
        match self.unauthenticated.clone().try_acquire_owned() {
            Ok(permit) => {
                let (deadline, _) = watch::channel(Some(Instant::now() + self.request_timeout));
                Some(Arc::new(Conn {
                    deadline,
                    timeout: self.request_timeout,
                    permit: Mutex::new(Some(permit)),
                }))
            }
            Err(_) => {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let now = Instant::now();
                let mut last = self
                    .last_warned
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                    *last = Some(now);
                    tracing::warn!(
                        refused,
                        "too many unauthenticated connections: closing new ones (raise max_unauthenticated if these are real clients)"
                    );
                }
                None
            }
        }
    }
}

/// One connection's state, shared by its task and, as a request extension, its requests.
pub struct Conn {
    /// When the request being received must be complete; `None` while none is (a
    /// handler runs, or the connection was upgraded).
    deadline: watch::Sender<Option<Instant>>,
    timeout: Duration,
    /// Held while no request on this connection has passed the token check.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Conn {
    /// A request on this connection passed the token check: it no longer counts as
    /// unauthenticated.
    pub fn authenticated(&self) {
        let permit = self
            .permit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(permit);
    }

    /// Whether this connection still counts as unauthenticated.
    pub fn is_unauthenticated(&self) -> bool {
        self.permit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The request was received whole: no deadline while its handler runs.
    pub fn received(&self) {
        self.deadline.send_replace(None);
    }

    /// A response is on its way: it and the next request are due within the timeout.
    pub fn answered(&self) {
        self.deadline
            .send_replace(Some(Instant::now() + self.timeout));
    }

    /// Resolves once the request being received is past its deadline (follows every
    /// change of the deadline; never while there is none).
    pub async fn expired(&self) {
        let mut rx = self.deadline.subscribe();
        loop {
            let deadline = *rx.borrow_and_update();
            let late = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = late => return,
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

    #[tokio::test(start_paused = true)]
    async fn admits_up_to_the_cap_and_authentication_frees_a_slot() {
        let door = Door::new(limits(30, 2));
        let a = door.admit().expect("first");
        let _b = door.admit().expect("second");
        assert_eq!(door.unauthenticated(), 2);
        assert!(door.admit().is_none(), "third refused");
        assert_eq!(door.refused.load(Ordering::Relaxed), 1);
        a.authenticated();
        assert!(!a.is_unauthenticated());
        let c = door.admit().expect("a slot after authentication");
        drop(c);
        assert!(door.admit().is_some(), "a closed connection frees its slot");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_the_request() {
        let door = Door::new(limits(30, 8));
        assert_eq!(door.header_timeout(), HEADER_TIMEOUT);
        assert_eq!(
            Door::new(limits(1, 1)).header_timeout(),
            Duration::from_secs(1)
        );
        let conn = door.admit().unwrap();
        let start = Instant::now();
        conn.expired().await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));

        // Received: no deadline while the handler runs, however long.
        conn.received();
        let waited = tokio::time::timeout(Duration::from_secs(3600), conn.expired()).await;
        assert!(waited.is_err(), "no deadline while a handler runs");

        // Answered: the next request is due within the timeout again.
        let c2 = conn.clone();
        let watcher = tokio::spawn(async move { c2.expired().await });
        tokio::task::yield_now().await;
        let at = Instant::now();
        conn.answered();
        watcher.await.unwrap();
        assert_eq!(at.elapsed(), Duration::from_secs(30));
    }
}
