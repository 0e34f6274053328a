//! One signal type for the whole crate: parses `hup`, `HUP`, `SIGHUP` and `1`, prints `SIGHUP`.

use std::fmt;
use std::str::FromStr;

use nix::sys::signal::Signal as NixSignal;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(pub NixSignal);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signal {0:?} (use a name like HUP, SIGTERM or a number)")]
pub struct ParseSignalError(String);

impl Signal {
    pub const HUP: Signal = Signal(NixSignal::SIGHUP);
    pub const INT: Signal = Signal(NixSignal::SIGINT);
    pub const TERM: Signal = Signal(NixSignal::SIGTERM);
    pub const KILL: Signal = Signal(NixSignal::SIGKILL);
    pub const QUIT: Signal = Signal(NixSignal::SIGQUIT);
    pub const CONT: Signal = Signal(NixSignal::SIGCONT);

    pub fn number(self) -> i32 {
        self.0 as i32
    }

    /// The signals `tether run` forwards to its child by default.
    pub fn default_forwarded() -> Vec<Signal> {
        use NixSignal::*;
        [
            SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT,
        ]
        .into_iter()
        .map(Signal)
        .collect()
    }
}

impl FromStr for Signal {
    type Err = ParseSignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<i32>() {
            return NixSignal::try_from(n)
                .map(Signal)
                .map_err(|_| ParseSignalError(s.to_string()));
        }
        let upper = t.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        NixSignal::from_str(&name)
            .map(Signal)
            .map_err(|_| ParseSignalError(s.to_string()))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl serde::Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        for s in ["hup", "HUP", "SIGHUP", "sighup", "1", " Hup "] {
            assert_eq!(s.parse::<Signal>(), Ok(Signal::HUP), "{s}");
        }
        assert_eq!(
            "usr1".parse::<Signal>().map(|s| s.to_string()).as_deref(),
            Ok("SIGUSR1")
        );
        assert_eq!("15".parse::<Signal>(), Ok(Signal::TERM));
    }

    #[test]
    fn rejects_nonsense() {
        for s in ["", "SIGFOO", "0", "99", "-1", "HUP1"] {
            assert!(s.parse::<Signal>().is_err(), "{s}");
        }
    }
}
