//! What a change does to the program: restart it, signal it, run a hook, or nothing.

use std::fmt;

use tether_core::signal::Signal;

/// What a change does to the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Restart,
    Signal(Signal),
    /// A hook command, split shell-style, executed without a shell.
    Exec(Vec<String>),
    None,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Restart => f.write_str("restart"),
            Action::Signal(s) => write!(f, "signal:{s}"),
            Action::Exec(argv) => write!(
                f,
                "exec:{}",
                shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default()
            ),
            Action::None => f.write_str("none"),
        }
    }
}
