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

/// What acting on a change does: restart the child, send signals, run exec hooks.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Actions {
    pub(crate) restart: bool,
    pub(crate) signals: Vec<Signal>,
    pub(crate) hooks: Vec<Vec<String>>,
}

impl Actions {
    /// The actions of the outputs written (their `on_change`; each signal and hook once).
    /// A `restart` fires only when a value changed, not for a rewrite after a reload.
    pub(crate) fn of<'a>(
        written: impl IntoIterator<Item = &'a Action>,
        values_changed: bool,
    ) -> Actions {
        let mut a = Actions::default();
        for action in written {
            match action {
                Action::Restart => a.restart |= values_changed,
                Action::Signal(s) if !a.signals.contains(s) => a.signals.push(*s),
                Action::Exec(argv) if !a.hooks.contains(argv) => a.hooks.push(argv.clone()),
                Action::Signal(_) | Action::Exec(_) | Action::None => {}
            }
        }
        a
    }

    /// Whether anything fires.
    pub(crate) fn any(&self) -> bool {
        self.restart || !self.signals.is_empty() || !self.hooks.is_empty()
    }
}
