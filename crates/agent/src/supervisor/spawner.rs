//! The small interface through which the supervisor's task starts its child and reaches the
//! child's process group. [`super::child::OsSpawner`] is the real one (fork and exec, the
//! reaper, `killpg`, the terminal); the tests drive the same task through a scripted child
//! instead, with time paused.

use nix::errno::Errno;
use nix::unistd::Pid;
use tokio::sync::oneshot;

use super::{Exit, SpawnError};
use crate::output::EnvVars;
use tether_core::signal::Signal;

/// A child that was just started: its pid is also its process group id.
pub struct Spawned {
    pub pid: Pid,
    /// Yields how the child ended, once it has.
    pub exit: oneshot::Receiver<Exit>,
}

/// What the supervisor's task needs from the processes it owns.
pub trait Spawner: Send + Sync + 'static {
    /// Start the child, in its own process group, with these injected values.
    fn spawn(&self, env: &EnvVars) -> Result<Spawned, SpawnError>;

    /// Signal the whole process group (`None` checks only); a group that is gone is
    /// `ESRCH`, which callers may ignore.
    fn signal_group(&self, pgid: Pid, sig: Option<Signal>) -> Result<(), Errno>;

    /// Whether any process of the group (zombies included) is still there.
    fn group_alive(&self, pgid: Pid) -> bool;

    /// Whether the group is in the terminal's foreground: a Ctrl-C or Ctrl-\ typed there
    /// reached the child directly, so its death by them is the user stopping it.
    fn holds_terminal(&self, pgid: Pid) -> bool;

    /// Called before a SIGCONT is forwarded: a child continued in the foreground (`fg`)
    /// gets the terminal back before it runs again.
    fn before_continue(&self, pgid: Pid);

    /// The group is gone: a terminal it held returns to tether.
    fn group_gone(&self, pgid: Pid);
}
