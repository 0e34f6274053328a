//! What a reload may change while the node runs (`reload`): the token table, the settings
//! new agent connections start with, the repair interval, and the listener's [`Gate`]
//! (the TLS acceptor and the front door's limits). Reads are cheap: atomics, and a read
//! lock held for the clone of an `Arc`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::auth::Auth;
use super::front::{Door, Limits};

/// The node's reloadable settings.
pub struct Live {
    auth: RwLock<Arc<Auth>>,
    heartbeat_ns: AtomicU64,
    max_frame: AtomicUsize,
    repair_interval_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Live {
    pub fn new(auth: Auth, heartbeat: Duration, max_frame: usize, repair: Duration) -> Live {
        Live {
            auth: RwLock::new(Arc::new(auth)),
            heartbeat_ns: AtomicU64::new(nanos(heartbeat)),
            max_frame: AtomicUsize::new(max_frame),
            repair_interval_ns: AtomicU64::new(nanos(repair)),
        }
    }

    /// The token table now. A request checks its token against the table of the moment.
    pub fn auth(&self) -> Arc<Auth> {
        self.auth
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replace the token table: every check from now on uses `auth`.
    pub fn set_auth(&self, auth: Auth) {
        *self.auth.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(auth);
    }

    /// The heartbeat a new agent connection is given (one keeps its own for its life).
    pub fn heartbeat(&self) -> Duration {
        Duration::from_nanos(self.heartbeat_ns.load(Ordering::Relaxed))
    }

    pub fn set_heartbeat(&self, d: Duration) {
        self.heartbeat_ns.store(nanos(d), Ordering::Relaxed);
    }

    /// The largest frame a new agent connection may send.
    pub fn max_frame(&self) -> usize {
        self.max_frame.load(Ordering::Relaxed)
    }

    pub fn set_max_frame(&self, n: usize) {
        self.max_frame.store(n, Ordering::Relaxed);
    }

    /// How often a cluster node compares its positions with Redis.
    pub fn repair_interval(&self) -> Duration {
        Duration::from_nanos(self.repair_interval_ns.load(Ordering::Relaxed))
    }

    pub fn set_repair_interval(&self, d: Duration) {
        self.repair_interval_ns.store(nanos(d), Ordering::Relaxed);
    }
}

/// What the accept loop hands each new connection: the TLS acceptor (none: plain TCP) and
/// the front door. A reload replaces the acceptor (a renewed certificate is served to new
/// connections; those open keep theirs) and the door's limits.
pub struct Gate {
    pub door: Arc<Door>,
    tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
}

impl Gate {
    pub fn new(tls: Option<tokio_rustls::TlsAcceptor>, limits: Limits) -> Gate {
        Gate {
            door: Arc::new(Door::new(limits)),
            tls: RwLock::new(tls),
        }
    }

    /// The acceptor for a connection accepted now.
    pub fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Serve new connections with `tls` (the node keeps the scheme it started with: this
    /// replaces an acceptor, it never adds or removes TLS).
    pub fn set_tls(&self, tls: tokio_rustls::TlsAcceptor) {
        let mut slot = self.tls.write().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            *slot = Some(tls);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip() {
        let live = Live::new(
            Auth::new(&[]).unwrap(),
            Duration::from_secs(15),
            4096,
            Duration::from_millis(10),
        );
        assert_eq!(live.heartbeat(), Duration::from_secs(15));
        live.set_heartbeat(Duration::from_millis(1500));
        assert_eq!(live.heartbeat(), Duration::from_millis(1500));
        live.set_max_frame(8192);
        assert_eq!(live.max_frame(), 8192);
        live.set_repair_interval(Duration::from_secs(3));
        assert_eq!(live.repair_interval(), Duration::from_secs(3));
        assert!(live.auth().dev_mode());
        live.set_auth(
            Auth::new(&[crate::auth::TokenConfig {
                name: "t".into(),
                hash: crate::auth::hash_token("x"),
                role: crate::auth::Role::Read,
                envs: None,
                secrets: true,
            }])
            .unwrap(),
        );
        assert!(!live.auth().dev_mode());
    }

    #[test]
    fn a_plain_gate_stays_plain() {
        let gate = Gate::new(None, Limits::default());
        let (cert, key) = crate::config::tests::self_signed();
        let acceptor = crate::config::tls_acceptor(cert.path(), key.path()).unwrap();
        gate.set_tls(acceptor);
        assert!(gate.tls().is_none());
    }
}
