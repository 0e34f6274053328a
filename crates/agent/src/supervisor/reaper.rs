//! The one place that calls `waitpid`: a process-wide thread reaps every child on SIGCHLD
//! (our own children and, as PID 1 or a subreaper, every orphan) and hands each registered
//! child its exit status. Nothing else in tether may wait for a child.

use std::collections::HashMap;
use std::fmt;
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::Signals;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signaled(i32),
}

impl Exit {
    /// The exit code tether passes through: the code, or 128+N for death by signal N.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signaled(n) => 128 + n,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signaled(n) => match nix::sys::signal::Signal::try_from(*n) {
                Ok(s) => write!(f, "killed by {}", s.as_str()),
                Err(_) => write!(f, "killed by signal {n}"),
            },
        }
    }
}

type Waiters = Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>;

/// Cheap handle: spawn children whose exit status is delivered by the reaper task.
#[derive(Clone)]
pub struct Reaper {
    waiters: Waiters,
    /// The supervised child that was started for a terminal (see [`super::tty`]): when it
    /// stops, tether stops too.
    interactive: Arc<Mutex<Option<i32>>>,
}

static GLOBAL: Mutex<Option<Reaper>> = Mutex::new(None);

impl Reaper {
    /// The process's reaper, started on first use (SIGCHLD handler and reaping thread).
    pub fn start() -> std::io::Result<Reaper> {
        let mut global = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = global.as_ref() {
            return Ok(r.clone());
        }
        let mut signals = Signals::new([SIGCHLD])?;
        let r = Reaper {
            waiters: Arc::default(),
            interactive: Arc::default(),
        };
        let inner = r.clone();
        std::thread::Builder::new()
            .name("tether-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                inner.reap_all();
                for _ in signals.forever() {
                    inner.reap_all();
                }
            })?;
        *global = Some(r.clone());
        Ok(r)
    }

    /// Spawn `cmd` and register it before the reaper can see it exit. The lock is held for
    /// the whole spawn: when exec fails, std waits for the child itself, and panics if the
    /// reaper took it first.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Pid, oneshot::Receiver<Exit>)> {
        self.spawn_with(cmd, false)
    }

    /// [`Reaper::spawn`], for the supervised child: `interactive` when it was started for a
    /// terminal, so that its stops are passed on to tether's own job control.
    pub fn spawn_with(
        &self,
        cmd: &mut Command,
        interactive: bool,
    ) -> std::io::Result<(Pid, oneshot::Receiver<Exit>)> {
        let (tx, rx) = oneshot::channel();
        super::child::isolate(cmd);
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        waiters.insert(pid, tx);
        if interactive {
            *self
                .interactive
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(pid);
        }
        // The std handle is dropped without waiting: the reaper owns waitpid.
        drop(child);
        Ok((Pid::from_raw(pid), rx))
    }
}

impl Reaper {
    fn reap_all(&self) {
        loop {
            // Locked before waiting, so that no child is reaped while `spawn` runs.
            let mut registered = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED;
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(flags)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signaled(sig as i32)),
                Ok(WaitStatus::Stopped(pid, _)) => {
                    drop(registered);
                    if self.is_interactive(pid) {
                        super::tty::child_stopped(pid);
                    }
                    continue;
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            let waiter = registered.remove(&pid.as_raw());
            drop(registered);
            let mut interactive = self
                .interactive
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *interactive == Some(pid.as_raw()) {
                *interactive = None;
            }
            drop(interactive);
            match waiter {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid = pid.as_raw(), %exit, "reaped an orphan"),
            }
        }
    }

    fn is_interactive(&self, pid: Pid) -> bool {
        *self
            .interactive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            == Some(pid.as_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_exit_codes_and_signals() {
        let r = Reaper::start().unwrap();
        let (_, rx) = r.spawn(Command::new("sh").args(["-c", "exit 7"])).unwrap();
        assert_eq!(rx.await.unwrap(), Exit::Code(7));
        let (_, rx) = r
            .spawn(Command::new("sh").args(["-c", "kill -USR1 $$"]))
            .unwrap();
        let exit = rx.await.unwrap();
        assert_eq!(exit, Exit::Signaled(libc_sigusr1()));
        assert_eq!(exit.code(), 128 + libc_sigusr1());
    }

    fn libc_sigusr1() -> i32 {
        nix::sys::signal::Signal::SIGUSR1 as i32
    }
}
