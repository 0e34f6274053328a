//! Health after a change (`docs/rollouts.md`): once the agent acted on a version from its
//! nodes, it *bakes* it: the health check must pass once within `health_timeout`, then keep
//! passing for `bake` while (in `run` mode) the child does not exit. The verdict is reported
//! to the node (`health`); a failure rolls the values back to the last healthy ones.
//!
//! - [`HealthSpec`]: the settings (`health_cmd`/`health_http`/`health_tcp`, `bake`,
//!   `health_interval`, `health_timeout`, `rollback`).
//! - [`bake`]: the state machine, a future over a probe and the child's exits, tested here
//!   with time paused.
//! - `check`: the checks themselves; `agent`: the agent's side (start, abandon, report,
//!   roll back), as `impl Agent`.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use crate::supervisor::{ChildExits, Exit, Spawns};

mod agent;
pub mod check;
#[cfg(test)]
mod tests;

pub use agent::Baking;
pub use check::{Check, ProbeContext};

/// One attempt of the check takes at most this long (or `health_timeout`, if shorter).
pub const ATTEMPT: Duration = Duration::from_secs(5);

/// How the agent judges a change's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSpec {
    pub check: Option<Check>,
    /// How long the app must stay healthy (default 10s in run mode, 0 in watch mode).
    pub bake: Duration,
    /// How often the check runs (default 1s).
    pub interval: Duration,
    /// How long the check may take to pass for the first time (default 60s).
    pub timeout: Duration,
    /// Go back to the last healthy values on a failure (default true).
    pub rollback: bool,
}

impl HealthSpec {
    pub fn defaults(mode: crate::config::Mode) -> HealthSpec {
        HealthSpec {
            check: None,
            bake: match mode {
                crate::config::Mode::Run => Duration::from_secs(10),
                crate::config::Mode::Watch => Duration::ZERO,
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            rollback: true,
        }
    }

    /// Whether a version needs a bake: something fired for it, and there is something to
    /// watch (a check; or, in run mode, the child for a bake time). Otherwise it is
    /// healthy at once.
    pub fn needs_bake(&self, mode: crate::config::Mode, acted: bool) -> bool {
        acted
            && match (&self.check, mode) {
                (Some(_), _) => true,
                (None, crate::config::Mode::Watch) => false,
                (None, crate::config::Mode::Run) => !self.bake.is_zero(),
            }
    }

    /// How long one attempt may take.
    pub fn attempt_limit(&self) -> Duration {
        ATTEMPT.min(self.timeout)
    }
}

/// Why a bake failed. `reason` names what failed, never a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    /// The child exited (so a rollback must start it again, whatever the outputs' actions).
    pub child_exited: bool,
}

fn exited(exit: Exit) -> Failure {
    let what = match exit {
        Exit::Code(c) => format!("exited with status {c}"),
        // "killed by SIGKILL"
        Exit::Signaled(_) => format!("was {exit}"),
    };
    Failure {
        reason: format!("the child {what} within the bake time"),
        child_exited: true,
    }
}

/// The next exit the child makes on its own (never, without a child).
async fn child_exit(exits: &mut Option<watch::Receiver<ChildExits>>) -> Exit {
    if let Some(rx) = exits {
        while rx.changed().await.is_ok() {
            if let Some(e) = rx.borrow_and_update().last {
                return e;
            }
        }
    }
    std::future::pending().await
}

/// A bake of a restart: first wait until the supervisor started the new child (its spawn
/// generation moves past `generation`, its value when the restart was asked for), so the
/// old child is never probed and "still running" is timed from the new child's start; its
/// exits up to then (the old child's) are not counted. Then [`bake`].
pub async fn bake_after_spawn<P, F>(
    spec: &HealthSpec,
    probe: Option<P>,
    mut exits: Option<watch::Receiver<ChildExits>>,
    new_child: Option<(watch::Receiver<Spawns>, u64)>,
) -> Result<(), Failure>
where
    P: FnMut() -> F,
    F: Future<Output = Result<(), String>>,
{
    if let Some((mut spawns, generation)) = new_child {
        let spawned = spawns
            .wait_for(|s| s.generation > generation)
            .await
            .map(|s| *s);
        let Ok(spawned) = spawned else {
            // The supervisor is gone: the agent ends with it.
            return std::future::pending().await;
        };
        if let Some(rx) = exits.as_mut() {
            // The old child's exits are not this bake's; the new child's (already) are.
            let seen = *rx.borrow_and_update();
            if seen.count > spawned.exits_before {
                if let Some(e) = seen.last {
                    return Err(exited(e));
                }
            }
        }
    }
    bake(spec, probe, exits).await
}

/// `d` from now; a duration too large for the clock is as good as never.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// Bake one version. `probe` runs one attempt of the check (`None`: no check); `exits` are
/// the child's (run mode), already marked seen up to the moment the agent acted. Resolves
/// when the verdict is known; dropping it abandons the bake.
pub async fn bake<P, F>(
    spec: &HealthSpec,
    mut probe: Option<P>,
    mut exits: Option<watch::Receiver<ChildExits>>,
) -> Result<(), Failure>
where
    P: FnMut() -> F,
    F: Future<Output = Result<(), String>>,
{
    let limit = spec.attempt_limit();
    let interval = spec.interval.max(Duration::from_millis(10));
    let attempt = |probe: &mut P| {
        let f = probe();
        async move {
            match timeout(limit, f).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within {}",
                    humantime::format_duration(limit)
                )),
            }
        }
    };

    // 1. The check passes once, within health_timeout (the app starting).
    if let Some(p) = probe.as_mut() {
        let first_by = after(spec.timeout);
        loop {
            let r = tokio::select! {
                r = attempt(p) => r,
                e = child_exit(&mut exits) => return Err(exited(e)),
            };
            let last = match r {
                Ok(()) => break,
                Err(e) => e,
            };
            let now = Instant::now();
            if now >= first_by {
                return Err(Failure {
                    reason: format!(
                        "health check did not pass within {}: {last}",
                        humantime::format_duration(spec.timeout)
                    ),
                    child_exited: false,
                });
            }
            tracing::debug!(reason = %last, "health check not passing yet");
            tokio::select! {
                _ = sleep_until((now + interval).min(first_by)) => {}
                e = child_exit(&mut exits) => return Err(exited(e)),
            }
        }
    }

    // 2. It keeps passing, and the child keeps running, for the bake time.
    let end = after(spec.bake);
    loop {
        if Instant::now() >= end {
            return Ok(());
        }
        let wake = match probe {
            Some(_) => (Instant::now() + interval).min(end),
            None => end,
        };
        tokio::select! {
            _ = sleep_until(wake) => {}
            e = child_exit(&mut exits) => return Err(exited(e)),
        }
        if let Some(p) = probe.as_mut() {
            let r = tokio::select! {
                r = attempt(p) => r,
                e = child_exit(&mut exits) => return Err(exited(e)),
            };
            if let Err(e) = r {
                return Err(Failure {
                    reason: format!("health check failed: {e}"),
                    child_exited: false,
                });
            }
        }
    }
}
