//! The supervisor of `tether run`: a cheap cloneable handle that sends [`Control`] messages
//! to the one task that owns the child. It signals, restarts (stop signal, grace period,
//! SIGKILL to the group, wait until the group is gone, respawn) and applies the
//! restart-on-exit policy; two children never run at once. The task reaches its child only
//! through a [`Spawner`], so the tests run it against a scripted child with time paused.
//!
//! While the agent bakes a change ([`Supervisor::hold`]), a child that exits on its own
//! under a policy that would not start it again is not the end: the task waits for the
//! agent to roll back (a `Restart`) or to give up (`hold(false)`, then it ends as it would
//! have).
//! Every exit the child makes on its own is counted on [`Supervisor::exits`] (not those the
//! supervisor caused: a restart's stop, or a termination); every child it starts after the
//! first moves [`Supervisor::spawns`].

pub mod child;
pub mod reaper;
pub mod spawner;
#[cfg(test)]
mod testchild;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bake;
pub mod tty;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};

pub use child::{ChildSpec, OsSpawner};
pub use reaper::{Exit, Reaper};
pub use spawner::{Spawned, Spawner};

use crate::config::RestartPolicy;
use crate::output::EnvVars;
use crate::tasks::Tasks;
use tether_core::signal::Signal;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart_on_exit: RestartPolicy,
    pub reload_grace: Duration,
}

/// Messages to the task that owns the child.
pub enum Control {
    /// Send a signal to the child's process group now (forwarded from tether's own).
    Signal(Signal),
    /// A change asks the child to reload. A child younger than the reload grace may not
    /// have installed its handler yet (and the default action of HUP or USR1 kills): the
    /// signal is held until the child is that old.
    Reload(Signal),
    /// Stop the child and start it again with this environment.
    Restart(EnvVars),
    /// Forward a terminating signal; the child is not restarted after it exits, and is
    /// killed if it outlives the stop timeout.
    Terminate(Signal),
    /// New options (tether's configuration was reloaded); the running child is untouched.
    Configure(Options),
    /// [`Supervisor::hold`] changed: look at it again.
    HoldChanged,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Signal(s) => write!(f, "Signal({s})"),
            Control::Reload(s) => write!(f, "Reload({s})"),
            // The environment holds values: names only.
            Control::Restart(env) => write!(f, "Restart({} variables)", env.len()),
            Control::Terminate(s) => write!(f, "Terminate({s})"),
            Control::Configure(o) => write!(f, "Configure({o:?})"),
            Control::HoldChanged => write!(f, "HoldChanged"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start {program:?}: {source}")]
pub struct SpawnError {
    program: std::ffi::OsString,
    #[source]
    source: std::io::Error,
}

/// Handle to the supervisor task.
#[derive(Clone)]
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Control>,
    exits: watch::Receiver<ChildExits>,
    spawns: watch::Receiver<Spawns>,
    /// A change is baking: see [`Supervisor::hold`]. Set by the handle at once, so that a
    /// child exiting before the task reads its messages is held already.
    hold: Arc<AtomicBool>,
}

/// The exits the child made on its own (not those the supervisor caused by stopping it):
/// how many so far, and the last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildExits {
    pub count: u64,
    pub last: Option<Exit>,
}

/// The spawn generation: how many children were started after the first, and how many
/// exits of its own the child had made when the last of them started (so a bake can tell
/// an exit of the new child from the old one's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spawns {
    pub generation: u64,
    pub exits_before: u64,
}

impl Supervisor {
    /// Start the child now and the task that owns it (`hold`: its start is baked, see
    /// [`Supervisor::hold`]). The receiver yields the exit that tether should pass
    /// through, once the child is gone for good.
    pub fn start(
        spec: ChildSpec,
        env: EnvVars,
        opts: Options,
        reaper: Reaper,
        tasks: &Tasks,
        hold: bool,
    ) -> Result<(Supervisor, oneshot::Receiver<Exit>), SpawnError> {
        Supervisor::start_held(OsSpawner::new(spec, reaper), env, opts, tasks, hold)
    }

    /// [`Supervisor::start`] with any [`Spawner`] (the tests' scripted child).
    #[cfg(test)]
    pub fn start_with(
        spawner: impl Spawner,
        env: EnvVars,
        opts: Options,
        tasks: &Tasks,
    ) -> Result<(Supervisor, oneshot::Receiver<Exit>), SpawnError> {
        Supervisor::start_held(spawner, env, opts, tasks, false)
    }

    fn start_held(
        spawner: impl Spawner,
        env: EnvVars,
        opts: Options,
        tasks: &Tasks,
        hold: bool,
    ) -> Result<(Supervisor, oneshot::Receiver<Exit>), SpawnError> {
        let hold = Arc::new(AtomicBool::new(hold));
        let running = spawn(&spawner, &env)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = oneshot::channel();
        let (exits_tx, exits) = watch::channel(ChildExits::default());
        let (spawns_tx, spawns) = watch::channel(Spawns::default());
        let actor = Actor {
            spawner,
            env,
            opts,
            rx,
            exits: exits_tx,
            spawns: spawns_tx,
            hold: hold.clone(),
        };
        // Not cancelled by the shutdown: it ends when the child is gone for good, which is
        // what ends the agent in `run` mode.
        let span = tracing::info_span!("child", pid = running.pid.as_raw());
        tasks.spawn_to_end(span, async move {
            let exit = actor.run(running).await;
            let _ = done_tx.send(exit);
        });
        Ok((
            Supervisor {
                tx,
                exits,
                spawns,
                hold,
            },
            done_rx,
        ))
    }

    pub fn send(&self, c: Control) {
        // The task only ends after the child is gone; then there is nothing to control.
        let _ = self.tx.send(c);
    }

    /// A change is baking (`true`): a child exit that would end the supervisor waits for a
    /// `Restart` (the agent's rollback) or for `hold(false)` instead. `false` ends the bake.
    pub fn hold(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
        self.send(Control::HoldChanged);
    }

    /// The child's own exits (see [`ChildExits`]); `changed()` wakes at each new one.
    pub fn exits(&self) -> watch::Receiver<ChildExits> {
        self.exits.clone()
    }

    /// The spawn generation: how many children were started after the first. A bake of a
    /// restart waits for it to move past its value when the restart was asked for, so it
    /// never probes the old child.
    pub fn spawns(&self) -> watch::Receiver<Spawns> {
        self.spawns.clone()
    }
}

struct Running {
    pid: Pid,
    exit: oneshot::Receiver<Exit>,
    started: Instant,
}

fn spawn(spawner: &impl Spawner, env: &EnvVars) -> Result<Running, SpawnError> {
    let Spawned { pid, exit } = spawner.spawn(env)?;
    tracing::info!(pid = pid.as_raw(), "child started");
    Ok(Running {
        pid,
        exit,
        started: Instant::now(),
    })
}

/// Delay before restarting a child that exited: doubles from 100ms up to 30s, and starts
/// over once a child has run for 10s.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn next(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= Duration::from_secs(10) {
            self.failures = 0;
        }
        let d = Duration::from_millis(100).saturating_mul(1 << self.failures.min(9));
        self.failures += 1;
        d.min(Duration::from_secs(30))
    }
}

/// Death by SIGINT or SIGQUIT, or the exit code a program that handles them gives (128+N).
fn is_interrupt(exit: Exit) -> bool {
    let (int, quit) = (Signal::INT.number(), Signal::QUIT.number());
    match exit {
        Exit::Signaled(n) => n == int || n == quit,
        Exit::Code(c) => c == 128 + int || c == 128 + quit,
    }
}

struct Actor<S> {
    spawner: S,
    env: EnvVars,
    opts: Options,
    rx: mpsc::UnboundedReceiver<Control>,
    exits: watch::Sender<ChildExits>,
    /// The spawn generation (see [`Supervisor::spawns`]).
    spawns: watch::Sender<Spawns>,
    /// A change is baking: see [`Supervisor::hold`].
    hold: Arc<AtomicBool>,
}

impl<S: Spawner> Actor<S> {
    async fn run(mut self, mut child: Running) -> Exit {
        let mut terminating = false;
        let mut kill_at: Option<Instant> = None;
        let mut backoff = Backoff::default();
        // Reload signals held until the child is past its grace period.
        let mut held: Vec<Signal> = Vec::new();
        loop {
            let release_at = child.started + self.opts.reload_grace;
            tokio::select! {
                exit = &mut child.exit => {
                    let exit = exit.unwrap_or(Exit::Code(1));
                    tracing::info!(pid = child.pid.as_raw(), %exit, "child exited");
                    crate::health::child_exited(exit);
                    if !terminating {
                        // An exit the termination caused is not the child's own.
                        self.exits.send_modify(|e| {
                            e.count += 1;
                            e.last = Some(exit);
                        });
                    }
                    // Ctrl-C or Ctrl-\ at the terminal reach the child's group, not tether:
                    // a child they ended is the user stopping the program, not a crash.
                    let interrupted = self.spawner.holds_terminal(child.pid)
                        && is_interrupt(exit);
                    self.clear_group(child.pid).await;
                    let again = match self.opts.restart_on_exit {
                        RestartPolicy::Never => false,
                        RestartPolicy::OnFailure => !exit.success(),
                        RestartPolicy::Always => true,
                    } && !interrupted;
                    if terminating {
                        return exit;
                    }
                    if !again {
                        held.clear();
                        match self.wait_held(exit, &mut backoff).await {
                            Some(next) => {
                                child = next;
                                continue;
                            }
                            None => return exit,
                        }
                    }
                    let delay = backoff.next(child.started.elapsed());
                    tracing::warn!(%exit, delay = ?delay, "restarting child after it exited");
                    crate::health::child_restarted(crate::health::Restart::Exit);
                    held.clear();
                    match self.respawn_after(delay).await {
                        Some(next) => child = next,
                        None => return exit,
                    }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(Control::Signal(sig)) => {
                        tracing::debug!(signal = %sig, "signalling child");
                        if sig == Signal::CONT {
                            self.spawner.before_continue(child.pid);
                        }
                        let _ = self.spawner.signal_group(child.pid, Some(sig));
                    }
                    Some(Control::Reload(sig)) if Instant::now() < release_at => {
                        tracing::debug!(signal = %sig, "child just started; reload signal held until its grace period ends");
                        if !held.contains(&sig) {
                            held.push(sig);
                        }
                    }
                    Some(Control::Reload(sig)) => {
                        tracing::debug!(signal = %sig, "signalling child");
                        let _ = self.spawner.signal_group(child.pid, Some(sig));
                    }
                    Some(Control::Terminate(sig)) => {
                        terminating = true;
                        let _ = self.spawner.signal_group(child.pid, Some(sig));
                        kill_at.get_or_insert(Instant::now() + self.opts.stop_timeout);
                    }
                    Some(Control::Restart(env)) if !terminating => {
                        // The new child reads the current configuration as it starts.
                        held.clear();
                        self.env = env;
                        let exit = self.stop(&mut child).await;
                        if self.drain_for_restart() {
                            return exit;
                        }
                        crate::health::child_restarted(crate::health::Restart::Change);
                        match self.respawn() {
                            Ok(next) => child = next,
                            Err(e) => {
                                tracing::error!(error = %e, "restart failed");
                                match self.respawn_after(backoff.next(Duration::ZERO)).await {
                                    Some(next) => child = next,
                                    None => return exit,
                                }
                            }
                        }
                    }
                    Some(Control::Restart(_)) => {}
                    Some(Control::Configure(opts)) => self.opts = opts,
                    Some(Control::HoldChanged) => {}
                    None => {
                        let exit = self.stop(&mut child).await;
                        return exit;
                    }
                },
                _ = sleep_until(release_at), if !held.is_empty() => {
                    for sig in held.drain(..) {
                        tracing::debug!(signal = %sig, "signalling child (held during its start)");
                        let _ = self.spawner.signal_group(child.pid, Some(sig));
                    }
                }
                _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                    tracing::warn!(pid = child.pid.as_raw(), "child outlived the stop timeout; killing its process group");
                    let _ = self.spawner.signal_group(child.pid, Some(Signal::KILL));
                    kill_at = None;
                }
            }
        }
    }

    /// Start a new child with the current environment; the spawn generation moves.
    fn respawn(&self) -> Result<Running, SpawnError> {
        let next = spawn(&self.spawner, &self.env)?;
        let exits_before = self.exits.borrow().count;
        self.spawns.send_modify(|s| {
            s.generation += 1;
            s.exits_before = exits_before;
        });
        Ok(next)
    }

    /// Take queued commands after a stop: the newest environment wins; a termination
    /// means no respawn (returns true).
    fn drain_for_restart(&mut self) -> bool {
        let mut terminate = false;
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Control::Restart(env) => self.env = env,
                Control::Terminate(_) => terminate = true,
                Control::Configure(opts) => self.opts = opts,
                Control::HoldChanged => {}
                Control::Signal(sig) | Control::Reload(sig) => {
                    tracing::debug!(signal = %sig, "signal dropped: child was being replaced")
                }
            }
        }
        terminate
    }

    /// The child exited and no policy starts it again. Outside a bake that is the end
    /// (`None`). During one, wait for the agent: a `Restart` (its rollback) starts the
    /// child again; `hold(false)`, a termination or the handle gone end it.
    async fn wait_held(&mut self, exit: Exit, backoff: &mut Backoff) -> Option<Running> {
        if !self.hold.load(Ordering::SeqCst) {
            return None;
        }
        tracing::info!(%exit, "the child exited while a change bakes; waiting for the agent to roll back");
        loop {
            let cmd = self.rx.recv().await;
            match cmd {
                Some(Control::Restart(env)) => {
                    self.env = env;
                    crate::health::child_restarted(crate::health::Restart::Change);
                    return match self.respawn() {
                        Ok(next) => Some(next),
                        Err(e) => {
                            tracing::error!(error = %e, "restart failed");
                            self.respawn_after(backoff.next(Duration::ZERO)).await
                        }
                    };
                }
                Some(Control::HoldChanged) if self.hold.load(Ordering::SeqCst) => {}
                Some(Control::Configure(opts)) => self.opts = opts,
                Some(Control::Signal(_) | Control::Reload(_)) => {}
                Some(Control::HoldChanged | Control::Terminate(_)) | None => return None,
            }
        }
    }

    /// Wait `delay` then start the child again, unless told to terminate meanwhile.
    async fn respawn_after(&mut self, mut delay: Duration) -> Option<Running> {
        loop {
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = sleep_until(wake) => break,
                    cmd = self.rx.recv() => match cmd {
                        Some(Control::Restart(env)) => self.env = env,
                        Some(Control::Configure(opts)) => self.opts = opts,
                        Some(Control::HoldChanged | Control::Signal(_) | Control::Reload(_)) => {}
                        Some(Control::Terminate(_)) | None => return None,
                    }
                }
            }
            match self.respawn() {
                Ok(r) => return Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start child; retrying");
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Stop signal, grace period, SIGKILL, then wait until the whole group is gone.
    async fn stop(&self, child: &mut Running) -> Exit {
        let pid = child.pid;
        tracing::info!(pid = pid.as_raw(), signal = %self.opts.stop_signal, "stopping child");
        let _ = self.spawner.signal_group(pid, Some(self.opts.stop_signal));
        let exit = match timeout(self.opts.stop_timeout, &mut child.exit).await {
            Ok(exit) => exit.unwrap_or(Exit::Code(1)),
            Err(_) => {
                tracing::warn!(pid = pid.as_raw(), timeout = ?self.opts.stop_timeout, "child ignored the stop signal; killing its process group");
                let _ = self.spawner.signal_group(pid, Some(Signal::KILL));
                (&mut child.exit).await.unwrap_or(Exit::Code(1))
            }
        };
        crate::health::child_exited(exit);
        self.clear_group(pid).await;
        exit
    }

    /// The leader is gone: kill what is left of its group and wait until nothing is.
    async fn clear_group(&self, pgid: Pid) {
        self.kill_group(pgid).await;
        self.spawner.group_gone(pgid);
    }

    async fn kill_group(&self, pgid: Pid) {
        if !self.spawner.group_alive(pgid) {
            return;
        }
        let _ = self.spawner.signal_group(pgid, Some(Signal::KILL));
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.spawner.group_alive(pgid) {
            if Instant::now() >= deadline {
                tracing::warn!(
                    pgid = pgid.as_raw(),
                    "processes of the old child's group are still there"
                );
                return;
            }
            sleep(Duration::from_millis(2)).await;
        }
    }
}
