//! Spawning the child: executed directly (no shell) in its own process group, with tether's
//! environment plus the injected values, killed by the kernel if tether dies. [`OsSpawner`]
//! is the supervisor's real [`Spawner`].

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{Signal as NixSignal, killpg};
use nix::unistd::Pid;

use super::spawner::{Spawned, Spawner};
use super::{Reaper, SpawnError, tty};
use crate::output::EnvVars;
use tether_core::signal::Signal;

/// What to run and the environment it starts from.
#[derive(Clone)]
pub struct ChildSpec {
    pub argv: Vec<OsString>,
    /// tether's own environment, less what the child must not inherit.
    pub base_env: Vec<(OsString, OsString)>,
    /// Standard input is a terminal: the child's group takes it when tether has it.
    pub terminal: bool,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("argv", &self.argv)
            .field(
                "base_env",
                &format_args!("{} variables", self.base_env.len()),
            )
            .finish()
    }
}

/// Variables tether reads that no program it starts may see: credentials (the node token,
/// keyshade's token and the project's private key, which decrypts every secret).
const PRIVATE_VARS: &[&str] = &[
    "TETHER_TOKEN",
    crate::source::keyshade::config::TOKEN_VAR,
    crate::source::keyshade::config::PRIVATE_KEY_VAR,
];

impl ChildSpec {
    pub fn new(argv: Vec<OsString>) -> Self {
        let base_env = std::env::vars_os()
            .filter(|(k, _)| !PRIVATE_VARS.iter().any(|p| k == p))
            .collect();
        ChildSpec {
            argv,
            base_env,
            terminal: super::tty::is_terminal(),
        }
    }

    /// The command for one start. Injected values override tether's environment.
    pub fn command(&self, injected: &EnvVars) -> Command {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .envs(injected.iter().map(|(k, v)| (k, v)))
            .process_group(0);
        let parent = nix::unistd::getpid();
        let parent_group = nix::unistd::getpgrp();
        let terminal = self.terminal;
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // syscalls (prctl, getppid, kill, setpgid, sigprocmask, tcgetpgrp/tcsetpgrp); it
        // allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(NixSignal::SIGKILL)?;
                // tether died between fork and prctl: the death signal will never come.
                if nix::unistd::getppid() != parent {
                    let _ = nix::sys::signal::kill(nix::unistd::getpid(), NixSignal::SIGKILL);
                }
                if terminal {
                    // Its own group first (std may order this after us), then the terminal.
                    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
                    super::tty::take_in_child(parent_group);
                }
                Ok(())
            });
        }
        cmd
    }
}

/// What every program tether starts (the child, hooks, checks) is kept from: tether's
/// credentials, systemd's notification variables (only tether speaks for its unit), and the
/// open-file limit tether raised for itself (it gets the soft limit tether was started with
/// back).
pub fn isolate(cmd: &mut Command) {
    for var in PRIVATE_VARS
        .iter()
        .chain(&tether_core::notify::CHILD_ENV_REMOVE)
    {
        cmd.env_remove(var);
    }
    let Some(soft) = tether_core::fdlimit::original_soft() else {
        return;
    };
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((now, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= now {
        return;
    }
    // SAFETY: the closure runs between fork and exec and makes one async-signal-safe
    // syscall (setrlimit) on values read before the fork; it allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
            Ok(())
        });
    }
}

/// Signal a whole process group; a group that is already gone is not an error.
pub fn signal_group(pgid: Pid, sig: Option<Signal>) -> Result<(), Errno> {
    killpg(pgid, sig.map(|s| s.0))
}

/// Whether any process (zombies included) is still in the group.
pub fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// The real child: started through the [`Reaper`] (which alone waits for it), signalled
/// with `killpg`, given the terminal when tether has one.
pub struct OsSpawner {
    spec: ChildSpec,
    reaper: Reaper,
}

impl OsSpawner {
    pub fn new(spec: ChildSpec, reaper: Reaper) -> Self {
        OsSpawner { spec, reaper }
    }
}

impl Spawner for OsSpawner {
    fn spawn(&self, env: &EnvVars) -> Result<Spawned, SpawnError> {
        let (pid, exit) = self
            .reaper
            .spawn_with(&mut self.spec.command(env), self.spec.terminal)
            .map_err(|source| SpawnError {
                program: self.spec.argv[0].clone(),
                source,
            })?;
        Ok(Spawned { pid, exit })
    }

    fn signal_group(&self, pgid: Pid, sig: Option<Signal>) -> Result<(), Errno> {
        let r = signal_group(pgid, sig);
        if let (Ok(()), Some(s)) = (&r, sig) {
            crate::health::signal_sent(s);
        }
        r
    }

    fn group_alive(&self, pgid: Pid) -> bool {
        group_alive(pgid)
    }

    fn holds_terminal(&self, pgid: Pid) -> bool {
        tty::foreground() == Some(pgid)
    }

    fn before_continue(&self, pgid: Pid) {
        if self.spec.terminal && tty::tether_in_foreground() {
            let _ = tty::give(pgid);
        }
    }

    fn group_gone(&self, pgid: Pid) {
        if self.spec.terminal {
            tty::child_gone(pgid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_program_tether_starts_inherits_its_credentials_or_systemd_variables() {
        let mut cmd = Command::new("true");
        isolate(&mut cmd);
        let removed: Vec<String> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for var in [
            "TETHER_TOKEN",
            "TETHER_KEYSHADE_TOKEN",
            "TETHER_KEYSHADE_PRIVATE_KEY",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ] {
            assert!(removed.iter().any(|r| r == var), "{var} kept: {removed:?}");
        }
    }
}
