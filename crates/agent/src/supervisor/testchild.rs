//! A scripted child for the supervisor's tests: no process is started. Each spawn takes the
//! next [`Behaviour`] of a script, every call the supervisor makes is recorded with the
//! (paused) clock's time since the spawner was made, and the child exits when its behaviour
//! says: by itself after a while, or from a signal it does not survive.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep, timeout};

use super::spawner::{Spawned, Spawner};
use super::{Exit, SpawnError};
use crate::output::EnvVars;
use tether_core::signal::Signal;

/// How one scripted child behaves.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    exits_after: Option<(Duration, Exit)>,
    survives: Vec<Signal>,
    dies_after: Duration,
    stragglers: bool,
}

impl Behaviour {
    /// Runs until a signal it does not survive, and dies of it at once.
    pub fn runs() -> Self {
        Behaviour::default()
    }

    /// Ends by itself this long after it started, with this exit.
    pub fn exits_after(mut self, after: Duration, exit: Exit) -> Self {
        self.exits_after = Some((after, exit));
        self
    }

    /// Handles (or ignores) this signal and lives on. SIGKILL is never survived.
    pub fn survives(mut self, sig: Signal) -> Self {
        self.survives.push(sig);
        self
    }

    /// Takes this long to die of a signal it does not survive (SIGKILL: at once).
    pub fn dies_after(mut self, after: Duration) -> Self {
        self.dies_after = after;
        self
    }

    /// Leaves processes in its group when it ends, until the group gets SIGKILL.
    pub fn leaves_stragglers(mut self) -> Self {
        self.stragglers = true;
        self
    }
}

/// One call the supervisor made, or one thing a child did, at `at` since the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: Duration,
    /// The child (and its group); 0 for a spawn that failed.
    pub pid: i32,
    pub what: What,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Spawned,
    SpawnFailed,
    Signal(Signal),
    Exited(Exit),
    GroupGone,
}

/// The [`Spawner`] the tests hand the supervisor; clones share the script and the record.
#[derive(Clone)]
pub struct TestSpawner {
    shared: Arc<Shared>,
}

struct Shared {
    t0: Instant,
    state: Mutex<State>,
    /// Bumped on every event, so that tests wait on the record rather than on time.
    changed: watch::Sender<usize>,
}

struct State {
    script: VecDeque<Behaviour>,
    then: Behaviour,
    fail_spawns: u32,
    holds_terminal: bool,
    next_pid: i32,
    children: HashMap<i32, Child>,
    events: Vec<Event>,
}

struct Child {
    behaviour: Behaviour,
    /// Present while the child runs.
    exit: Option<oneshot::Sender<Exit>>,
    stragglers: bool,
}

impl TestSpawner {
    /// Every child behaves like `b`.
    pub fn new(b: Behaviour) -> Self {
        Self::scripted([], b)
    }

    /// The first children follow `script` in order; every later one behaves like `then`.
    pub fn scripted(script: impl IntoIterator<Item = Behaviour>, then: Behaviour) -> Self {
        let state = State {
            script: script.into_iter().collect(),
            then,
            fail_spawns: 0,
            holds_terminal: false,
            next_pid: 1000,
            children: HashMap::new(),
            events: Vec::new(),
        };
        TestSpawner {
            shared: Arc::new(Shared {
                t0: Instant::now(),
                state: Mutex::new(state),
                changed: watch::Sender::new(0),
            }),
        }
    }

    /// The next `n` spawns fail.
    pub fn fail_next_spawns(&self, n: u32) {
        self.state().fail_spawns = n;
    }

    /// Whether children are in the terminal's foreground.
    pub fn set_holds_terminal(&self, yes: bool) {
        self.state().holds_terminal = yes;
    }

    /// The instant `since` after the spawner was made.
    pub fn at(&self, since: Duration) -> Instant {
        self.shared.t0 + since
    }

    pub fn events(&self) -> Vec<Event> {
        self.state().events.clone()
    }

    /// Wait until the record satisfies `done`. The deadline is on the paused clock, so a
    /// supervisor that never gets there fails the test rather than hanging it.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Event]) -> bool) {
        let mut rx = self.shared.changed.subscribe();
        let reached = timeout(Duration::from_secs(24 * 3600), async {
            loop {
                if done(&self.state().events) {
                    return;
                }
                // The sender lives in `self`: this never fails.
                let _ = rx.changed().await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "never {what}; events: {:#?}",
            self.events()
        );
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, state: &mut State, pid: i32, what: What) {
        let at = Instant::now() - self.shared.t0;
        state.events.push(Event { at, pid, what });
        self.shared.changed.send_replace(state.events.len());
    }

    /// The child ends (once): its exit goes to whoever waits for it.
    fn die(&self, state: &mut State, pid: i32, exit: Exit) {
        let Some(child) = state.children.get_mut(&pid) else {
            return;
        };
        let Some(tx) = child.exit.take() else {
            return;
        };
        child.stragglers = child.behaviour.stragglers;
        self.record(state, pid, What::Exited(exit));
        let _ = tx.send(exit);
    }

    /// Let the child die `after` from now (at once when zero).
    fn die_after(&self, state: &mut State, pid: i32, after: Duration, exit: Exit) {
        if after.is_zero() {
            return self.die(state, pid, exit);
        }
        let me = self.clone();
        tokio::spawn(async move {
            sleep(after).await;
            let mut state = me.state();
            me.die(&mut state, pid, exit);
        });
    }
}

impl Spawner for TestSpawner {
    fn spawn(&self, _env: &EnvVars) -> Result<Spawned, SpawnError> {
        let mut state = self.state();
        if state.fail_spawns > 0 {
            state.fail_spawns -= 1;
            self.record(&mut state, 0, What::SpawnFailed);
            return Err(SpawnError {
                program: "scripted-child".into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "scripted failure"),
            });
        }
        let behaviour = match state.script.pop_front() {
            Some(b) => b,
            None => state.then.clone(),
        };
        let pid = state.next_pid;
        state.next_pid += 1;
        let (tx, rx) = oneshot::channel();
        let ends = behaviour.exits_after;
        state.children.insert(
            pid,
            Child {
                behaviour,
                exit: Some(tx),
                stragglers: false,
            },
        );
        self.record(&mut state, pid, What::Spawned);
        if let Some((after, exit)) = ends {
            self.die_after(&mut state, pid, after, exit);
        }
        Ok(Spawned {
            pid: Pid::from_raw(pid),
            exit: rx,
        })
    }

    fn signal_group(&self, pgid: Pid, sig: Option<Signal>) -> Result<(), Errno> {
        let pid = pgid.as_raw();
        let mut state = self.state();
        if !self.alive(&state, pid) {
            return Err(Errno::ESRCH);
        }
        let Some(sig) = sig else {
            return Ok(());
        };
        self.record(&mut state, pid, What::Signal(sig));
        let exit = Exit::Signaled(sig.number());
        if sig == Signal::KILL {
            // The whole group dies at once, stragglers too.
            self.die(&mut state, pid, exit);
            if let Some(child) = state.children.get_mut(&pid) {
                child.stragglers = false;
            }
            return Ok(());
        }
        let fatal = state
            .children
            .get(&pid)
            .filter(|c| c.exit.is_some() && !c.behaviour.survives.contains(&sig))
            .map(|c| c.behaviour.dies_after);
        if let Some(after) = fatal {
            self.die_after(&mut state, pid, after, exit);
        }
        Ok(())
    }

    fn group_alive(&self, pgid: Pid) -> bool {
        self.alive(&self.state(), pgid.as_raw())
    }

    fn holds_terminal(&self, _pgid: Pid) -> bool {
        self.state().holds_terminal
    }

    fn before_continue(&self, _pgid: Pid) {}

    fn group_gone(&self, pgid: Pid) {
        let mut state = self.state();
        self.record(&mut state, pgid.as_raw(), What::GroupGone);
    }
}

impl TestSpawner {
    fn alive(&self, state: &State, pid: i32) -> bool {
        state
            .children
            .get(&pid)
            .is_some_and(|c| c.exit.is_some() || c.stragglers)
    }
}
