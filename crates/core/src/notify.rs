//! systemd's service notifications (`sd_notify(3)`), written by hand: one datagram of
//! `KEY=value` lines to the unix socket named by `NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace). Without that variable every call does nothing, so the agent and the
//! node call these freely wherever they run.
//!
//! [`init`] reads the environment once, at start, before any thread or child exists: the
//! variables are then left to tether alone, and spawned programs are started without them
//! ([`CHILD_ENV_REMOVE`]), so a child cannot report `READY=1` in tether's name.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

/// The variables systemd gives a `Type=notify` service, which tether's children must not see.
pub const CHILD_ENV_REMOVE: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Where notifications go, as read by [`init`].
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once. Later calls do nothing.
pub fn init() {
    let _ = NOTIFIER.get_or_init(|| {
        Notifier::from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    });
}

impl Notifier {
    /// A notifier for these variables' values (`pid` is this process's id: a watchdog set
    /// for another process is not ours to feed).
    pub fn from_vars(
        socket: Option<&std::ffi::OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let target = socket.and_then(|s| {
            let addr = address(s)?;
            let sock = UnixDatagram::unbound().ok()?;
            Some((sock, addr))
        });
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>() == Ok(pid));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && ours && target.is_some())
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// Send `state` (newline-separated `KEY=value` lines). Errors are ignored: systemd not
    /// listening must not stop tether.
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            let _ = sock.send_to_addr(state.as_bytes(), addr);
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WatchdogSec`, as systemd advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }
}

/// `NOTIFY_SOCKET` as an address: an absolute path, or `@name` for the abstract namespace.
fn address(s: &std::ffi::OsStr) -> Option<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = s.as_bytes();
    match bytes.first()? {
        b'/' => SocketAddr::from_pathname(std::path::Path::new(s)).ok(),
        b'@' => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..]).ok()
        }
        _ => None,
    }
}

fn with(f: impl FnOnce(&Notifier)) {
    if let Some(n) = NOTIFIER.get() {
        f(n);
    }
}

/// `READY=1`, with a status line: startup (or a reload) is complete.
pub fn ready(status: &str) {
    with(|n| n.send(&format!("READY=1\nSTATUS={}", one_line(status))));
}

/// `RELOADING=1` with the monotonic time systemd wants; follow with [`ready`].
pub fn reloading() {
    with(|n| {
        n.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading configuration",
            monotonic_usec()
        ))
    });
}

/// `STOPPING=1`: tether is shutting down.
pub fn stopping() {
    with(|n| n.send("STOPPING=1\nSTATUS=stopping"));
}

/// `STATUS=`: one line saying what tether is doing (shown by `systemctl status`).
pub fn status(text: &str) {
    with(|n| n.send(&format!("STATUS={}", one_line(text))));
}

/// `WATCHDOG=1`: tether's main loop is alive.
pub fn watchdog() {
    with(|n| n.send("WATCHDOG=1"));
}

/// How often to call [`watchdog`], when systemd asked for it (`WatchdogSec=`).
pub fn watchdog_interval() -> Option<Duration> {
    NOTIFIER.get().and_then(Notifier::watchdog_interval)
}

/// Whether notifications go anywhere (tether runs under a `Type=notify` unit).
pub fn enabled() -> bool {
    NOTIFIER.get().is_some_and(|n| n.target.is_some())
}

/// A status may not span lines: each line of a notification is a new variable.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

/// `CLOCK_MONOTONIC` in microseconds, the clock `MONOTONIC_USEC` is read against.
fn monotonic_usec() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1_000
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn listener() -> (tempfile::TempDir, UnixDatagram, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        (dir, sock, path)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let (_dir, sock, path) = listener();
        let n = Notifier::from_vars(Some(path.as_os_str()), None, None, 1);
        n.send("READY=1\nSTATUS=ok");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=ok");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tether-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = Notifier::from_vars(Some(OsStr::new(&format!("@{name}"))), None, None, 1);
        n.send("STOPPING=1");
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn nothing_without_a_socket_or_with_a_bad_one() {
        assert!(Notifier::from_vars(None, None, None, 1).target.is_none());
        let relative = Notifier::from_vars(Some(OsStr::new("notify.sock")), None, None, 1);
        assert!(relative.target.is_none());
        // Sending to nowhere is not an error anyone sees.
        relative.send("READY=1");
        Notifier::from_vars(Some(OsStr::new("/nonexistent/sock")), None, None, 1).send("X=1");
    }

    #[test]
    fn watchdog_is_half_the_interval_and_only_ours() {
        let sock = Some(OsStr::new("/run/notify"));
        let n = Notifier::from_vars(sock, Some("4000000"), None, 7);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        let n = Notifier::from_vars(sock, Some("4000000"), Some("7"), 7);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        let other = Notifier::from_vars(sock, Some("4000000"), Some("8"), 7);
        assert_eq!(other.watchdog_interval(), None);
        let no_socket = Notifier::from_vars(None, Some("4000000"), None, 7);
        assert_eq!(no_socket.watchdog_interval(), None);
        assert_eq!(
            Notifier::from_vars(sock, Some("0"), None, 7).watchdog_interval(),
            None
        );
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_usec();
        assert!(a > 0);
        assert!(monotonic_usec() >= a);
    }
}
