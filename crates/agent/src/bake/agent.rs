//! The agent's side of a bake: after an acknowledged version it starts one (or reports the
//! version healthy at once), reports the verdict to the node, and on a failure puts back
//! the values of the last healthy version, renders them and acts again.

use std::future::Future;
use std::pin::Pin;

use tether_core::protocol::Position;
use tether_core::rollout::HealthState;

use super::{Failure, HealthSpec, ProbeContext, bake_after_spawn};
use crate::run::{Agent, Sink};
use crate::state::Layers;

type Verdict = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;
/// The probe of a bake without a check (never called).
type NoProbe = fn() -> std::future::Ready<Result<(), String>>;

/// A version being baked.
pub struct Baking {
    /// The version from the nodes it is for.
    pub position: Position,
    /// The layers it was applied from: the values to go back to once it is healthy (none
    /// once a reload laid the sources out anew).
    layers: Option<Layers>,
    verdict: Verdict,
}

impl Baking {
    /// Resolves with the verdict (cancel-safe: poll it again until it does).
    pub async fn verdict(&mut self) -> Result<(), Failure> {
        self.verdict.as_mut().await
    }
}

impl Agent {
    /// After `apply` acknowledged `acked` (a version from the nodes): report its health.
    /// `result` is the ack's; `acted` says whether anything (a restart, a signal, a hook)
    /// fired for it. A version that failed to render is reported failed; one that fired
    /// nothing is healthy at once; otherwise the bake starts (ending any older one).
    pub(crate) fn after_ack(
        &mut self,
        sink: &Sink,
        acked: Option<Position>,
        result: &Result<(), String>,
        acted: bool,
    ) {
        self.begin(sink, acked, result, acted, false);
    }

    /// The first version, once the child was started for it (run) or it was rendered
    /// (watch): baked like any other, counting every exit of the child since it started.
    pub(crate) fn after_first(&mut self, sink: &Sink, first: Option<Position>) {
        self.begin(sink, first, &Ok(()), true, true);
    }

    fn begin(
        &mut self,
        sink: &Sink,
        acked: Option<Position>,
        result: &Result<(), String>,
        acted: bool,
        since_start: bool,
    ) {
        let Some(position) = acked else {
            return;
        };
        if let Some(old) = self.baking.take() {
            tracing::info!(abandoned = %old.position, %position, "a newer version was applied; the older one's bake ends unreported");
        }
        if let Err(e) = result {
            self.hold(sink, false);
            self.report(position, Err(format!("not applied: {e}")), false);
            return;
        }
        let spec = self.cfg.health.clone();
        if !spec.needs_bake(self.cfg.mode, acted) {
            self.hold(sink, false);
            self.healthy = Some(self.layers.clone());
            self.report(position, Ok(()), false);
            return;
        }
        // A restart asked for by this apply: the bake starts with the new child.
        let new_child = self.restarted.take().filter(|_| !since_start);
        let exits = match sink {
            Sink::Child(sup) => {
                let mut rx = sup.exits();
                if !since_start {
                    rx.borrow_and_update();
                }
                Some(rx)
            }
            Sink::External => None,
        };
        self.hold(sink, true);
        tracing::info!(%position, bake = ?spec.bake, check = spec.check.as_ref().map(|c| c.key()), "baking the change");
        let verdict = start(spec, self.probe_context(), exits, new_child);
        self.baking = Some(Baking {
            position,
            layers: Some(self.layers.clone()),
            verdict,
        });
    }

    /// Before acting on a version from the nodes that may be baked: the supervisor holds
    /// from now on, so a child that dies at once is waited for (`after_ack` settles it).
    pub(crate) fn before_act(&self, sink: &Sink) {
        if self.net_pending.is_some() && self.cfg.health.needs_bake(self.cfg.mode, true) {
            self.hold(sink, true);
        }
    }

    /// The bake of `self.baking` ended with `verdict`: report it, and roll back on failure.
    pub(crate) async fn bake_done(&mut self, sink: &Sink, verdict: Result<(), Failure>) {
        let Some(baking) = self.baking.take() else {
            return;
        };
        let position = baking.position;
        let failure = match verdict {
            Ok(()) => {
                self.hold(sink, false);
                tracing::info!(%position, "the change is healthy");
                if let Some(layers) = baking.layers {
                    self.healthy = Some(layers);
                }
                self.report(position, Ok(()), false);
                return;
            }
            Err(f) => f,
        };
        tracing::error!(%position, reason = %failure.reason, "the change failed its bake");
        if !self.cfg.health.rollback {
            tracing::warn!(%position, "rollback is off: keeping the new values");
            self.hold(sink, false);
            self.report(position, Err(failure.reason), false);
            return;
        }
        let Some(healthy) = self.healthy.clone() else {
            tracing::error!(%position, "no earlier version was healthy: nothing to roll back to; keeping the new values");
            self.hold(sink, false);
            self.report(position, Err(failure.reason), false);
            return;
        };
        self.rollback(sink, healthy, failure.child_exited).await;
        self.failed = Some(position);
        self.hold(sink, false);
        self.report(position, Err(failure.reason), true);
    }

    /// Whether a version from the nodes is to be skipped: it failed and was rolled back
    /// (sent again after a reconnect or a new follower), or it is the one baking.
    pub(crate) fn skip_position(&self, position: Position) -> bool {
        if self.failed == Some(position) {
            tracing::info!(%position, "this version failed and was rolled back; not applied again");
            return true;
        }
        self.baking.as_ref().is_some_and(|b| b.position == position)
    }

    /// Put back the layers of the last healthy version, render them and act (a restart
    /// when the child exited, whatever the outputs' actions). A newer version that arrived
    /// meanwhile stays pending, applied after the rollback as usual.
    async fn rollback(&mut self, sink: &Sink, healthy: Layers, child_exited: bool) {
        let net_layer = self.cfg.sources.len();
        let newer = match (&self.net, self.net_pending) {
            (Some(_), Some(_)) => self.layers.get(net_layer).cloned(),
            _ => None,
        };
        self.layers = healthy;
        tracing::warn!("rolling back to the values of the last healthy version");
        let (result, _) = self.render_and_act(sink, child_exited).await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the rollback could not write every output; retrying");
        }
        crate::health::rolled_back();
        if let Some(entries) = newer {
            self.layers.set(net_layer, entries);
            if self.layers.merged() != self.applied {
                self.kick(sink).await;
            }
        }
    }

    /// A reload laid the sources out anew: there are no healthy values to go back to
    /// until the next healthy version. A running bake goes on and is reported as usual
    /// (a failure then without a rollback), unless the network source it reports to is
    /// replaced (`net_replaced`): then it ends unreported, its slot given back.
    pub(crate) fn layout_changed(&mut self, sink: &Sink, net_replaced: bool) {
        if net_replaced {
            if let Some(b) = self.baking.take() {
                tracing::warn!(position = %b.position, "the network source changed in a reload; this version's bake ends unreported");
                self.hold(sink, false);
                self.health_reported();
            }
        } else if let Some(b) = self.baking.as_mut() {
            tracing::info!(position = %b.position, "the sources changed in a reload; this version's bake goes on, without a rollback if it fails");
            b.layers = None;
        }
        if self.healthy.take().is_some() {
            tracing::info!(
                "the sources changed in a reload; no rollback until a version is healthy again"
            );
        }
    }

    /// Tell the supervisor whether a change is baking (run mode).
    fn hold(&self, sink: &Sink, on: bool) {
        if let Sink::Child(sup) = sink {
            sup.hold(on);
        }
    }

    fn probe_context(&self) -> Option<ProbeContext> {
        let check = self.cfg.health.check.as_ref()?;
        let tls = match check {
            super::Check::Http(t) if t.tls => {
                let ca = self.cfg.net.as_ref().and_then(|n| n.ca_file.as_deref());
                match tether_core::endpoint::tls_config(ca) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::error!(error = %e, "no TLS settings for the health check");
                        None
                    }
                }
            }
            _ => None,
        };
        Some(ProbeContext {
            reaper: self.reaper.clone(),
            tls,
        })
    }

    /// Report a version's health to the node, and count it.
    fn report(&mut self, position: Position, verdict: Result<(), String>, rolled_back: bool) {
        let (state, error) = match verdict {
            Ok(()) => (HealthState::Healthy, None),
            Err(e) => (HealthState::Failed, Some(e)),
        };
        crate::health::health_reported(state);
        if let Some(net) = &self.net {
            net.health(position, state, error, rolled_back);
        }
        self.health_reported();
    }
}

/// The bake as a boxed future owning what it needs.
fn start(
    spec: HealthSpec,
    ctx: Option<ProbeContext>,
    exits: Option<tokio::sync::watch::Receiver<crate::supervisor::ChildExits>>,
    new_child: Option<(tokio::sync::watch::Receiver<crate::supervisor::Spawns>, u64)>,
) -> Verdict {
    Box::pin(async move {
        match (spec.check.clone(), ctx) {
            (Some(check), Some(ctx)) => {
                let probe = || {
                    let (check, ctx) = (check.clone(), ctx.clone());
                    async move { check.probe(&ctx).await }
                };
                bake_after_spawn(&spec, Some(probe), exits, new_child).await
            }
            _ => bake_after_spawn(&spec, None::<NoProbe>, exits, new_child).await,
        }
    })
}
