//! The slot gate (`docs/rollouts.md`, "Paced rollouts"): under the rollout policy the node
//! last sent, a change from the nodes whose action is paced (a restart; with the policy's
//! `signals`, a signal or an exec hook too) is not rendered, written or acted on until the
//! node grants this agent a slot. Meanwhile the old files, environment and child stay.
//!
//! - Whether a change would act is found by rendering without writing
//!   ([`crate::output::Output::would_write`]) and mapping the outputs that would change to
//!   their actions ([`Actions::of`], as the apply itself does).
//! - Only a change that comes with a position of the network source waits: a file-source
//!   edit alone applies at once (a node paces what it sends). One made while a network
//!   change waits is applied with it, once granted.
//! - A grant applies the newest state (whatever arrived meanwhile); newer versions that
//!   arrive while waiting are asked for again under the same request.
//! - `hold` keeps the agent waiting; a policy cleared (or no longer pacing the change)
//!   applies at once.
//! - With no node reachable (every node's connection failed in a row while waiting, or
//!   before asking) the agent acts on its own after [`ALONE_FLOOR`] plus a random splay in
//!   `[0, splay)`, unless a node comes back first; never while the last hold said `halted`.
//! - A request still waiting is sent again every [`RESEND`], so one a node dropped heals.

use std::time::Duration;

use tokio::time::Instant;

use crate::action::Actions;
use crate::config::Mode;
use crate::run::{Agent, Sink};
use crate::source::net::FleetEvent;
use tether_core::protocol::Position;
use tether_core::rollout::Policy;

/// How long a waiting agent lets its follower find a node again before it acts alone
/// (its splay is drawn on top): a blip or a failover is not "no node reachable".
pub(crate) const ALONE_FLOOR: Duration = Duration::from_secs(10);
/// How often a request still waiting is asked again on the same connection.
pub(crate) const RESEND: Duration = Duration::from_secs(30);

/// When to act alone, from `now`.
fn alone_from(now: Instant, splay: Duration) -> Instant {
    now + ALONE_FLOOR + crate::debounce::splay_offset(splay)
}

/// Where the agent stands with the node's slots (one per network source).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// The policy the node last sent.
    policy: Option<Policy>,
    /// A node's session is up, so a slot request reaches one.
    connected: bool,
    phase: Phase,
    /// The hold reason last logged: each distinct one is logged once per wait.
    hold: Option<String>,
    /// The last hold of this wait said the rollout is halted: never act alone then.
    halted: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Idle,
    /// A slot was asked for `asked` at `since`; `alone`: no node is reachable, act without
    /// a slot then.
    Waiting {
        asked: Position,
        since: Instant,
        alone: Option<Instant>,
        /// When to ask again (see [`RESEND`]).
        resend: Instant,
    },
    /// Acting under a slot, until it is given back.
    Holding,
}

/// What an apply does at the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Pass: act now.
    Act,
    /// The change no longer needs a slot (none paced, or no policy): withdraw the request,
    /// then act now.
    Withdraw,
    /// Ask for a slot for this position and wait (a first request, or a newer version).
    Ask(Position),
    /// Keep waiting for the slot already asked for.
    Wait,
}

/// Whether `actions` take a slot under `policy`: a restart always, a signal or an exec
/// hook only when the policy says `signals`.
pub(crate) fn paced(policy: &Policy, actions: &Actions) -> bool {
    actions.restart || (policy.signals && actions.any())
}

impl Gate {
    /// Decide an apply. `position`: the network source's position still to acknowledge
    /// (none: the change is not the nodes'); `needs`: whether the change's actions take a
    /// slot under the policy (asked only when it matters). `splay` bounds the wait before
    /// acting alone when no node is reachable.
    pub(crate) fn check(
        &mut self,
        position: Option<Position>,
        needs: impl FnOnce(&Policy) -> bool,
        now: Instant,
        splay: Duration,
    ) -> Check {
        if self.phase == Phase::Holding {
            // The slot held covers newer versions too (its health report gives it back).
            return Check::Act;
        }
        let needed = match (position, &self.policy) {
            (Some(p), Some(policy)) if needs(policy) => Some(p),
            _ => None,
        };
        match (needed, self.phase) {
            (None, Phase::Waiting { .. }) => {
                self.end_wait(now);
                Check::Withdraw
            }
            (None, _) => Check::Act,
            (Some(p), Phase::Waiting { asked, .. }) if asked == p => Check::Wait,
            (Some(p), Phase::Waiting { since, alone, .. }) => {
                self.phase = Phase::Waiting {
                    asked: p,
                    since,
                    alone,
                    resend: now + RESEND,
                };
                Check::Ask(p)
            }
            (Some(p), _) => {
                let alone = (!self.connected).then(|| alone_from(now, splay));
                self.phase = Phase::Waiting {
                    asked: p,
                    since: now,
                    alone,
                    resend: now + RESEND,
                };
                self.hold = None;
                self.halted = false;
                crate::health::slot_wait_started();
                Check::Ask(p)
            }
        }
    }

    /// A wait ended (granted, withdrawn, or acting alone): how long it took is recorded.
    fn end_wait(&mut self, now: Instant) {
        if let Phase::Waiting { since, .. } = self.phase {
            crate::health::slot_wait_ended(now.saturating_duration_since(since));
        }
        self.phase = Phase::Idle;
        self.hold = None;
        self.halted = false;
    }

    /// A slot was granted: whether it is wanted (a wait ends; the agent acts under it).
    pub(crate) fn granted(&mut self, now: Instant) -> bool {
        if matches!(self.phase, Phase::Waiting { .. }) {
            self.end_wait(now);
            self.phase = Phase::Holding;
            true
        } else {
            false
        }
    }

    pub(crate) fn holding(&self) -> bool {
        self.phase == Phase::Holding
    }

    pub(crate) fn waiting(&self) -> bool {
        matches!(self.phase, Phase::Waiting { .. })
    }

    /// Whether a slot is asked for or held (what a shutdown gives back).
    pub(crate) fn engaged(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// When to act alone, if no node is reachable while waiting.
    pub(crate) fn alone_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { alone, .. } => alone,
            _ => None,
        }
    }

    /// The slot is given back (released, or reported on): nothing is held.
    pub(crate) fn returned(&mut self, now: Instant) {
        self.end_wait(now);
    }

    /// No node is reachable (every one failed in a row). While waiting, and unless the
    /// rollout was last said to be halted, how long until the agent acts alone.
    pub(crate) fn lost(&mut self, now: Instant, splay: Duration) -> Option<Duration> {
        self.connected = false;
        let halted = self.halted;
        match &mut self.phase {
            Phase::Waiting {
                alone: alone @ None,
                ..
            } if !halted => {
                let at = alone_from(now, splay);
                *alone = Some(at);
                Some(at - now)
            }
            _ => None,
        }
    }

    /// When to ask again for the slot waited for.
    pub(crate) fn resend_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { resend, .. } => Some(resend),
            _ => None,
        }
    }

    /// The request is asked again now: the position to ask for (the next time is set).
    pub(crate) fn resent(&mut self, now: Instant) -> Option<Position> {
        match &mut self.phase {
            Phase::Waiting { asked, resend, .. } => {
                *resend = now + RESEND;
                Some(*asked)
            }
            _ => None,
        }
    }

    /// A node's session is up. Whether a wait to act alone was called off (the request is
    /// asked again on the new connection by the follower).
    pub(crate) fn connected(&mut self) -> bool {
        self.connected = true;
        match &mut self.phase {
            Phase::Waiting {
                alone: alone @ Some(_),
                ..
            } => {
                *alone = None;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn set_policy(&mut self, policy: Option<Policy>) {
        self.policy = policy;
    }

    pub(crate) fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// A hold: whether its reason is new for this wait (to be logged). `halted`: the
    /// rollout is halted, so this wait never turns into acting alone.
    pub(crate) fn held(&mut self, reason: &str, halted: bool) -> bool {
        self.halted = halted;
        if self.hold.as_deref() == Some(reason) {
            return false;
        }
        self.hold = Some(reason.to_string());
        true
    }
}

impl Agent {
    /// The gate, before an apply renders anything: whether the change waits for a slot.
    pub(crate) fn gate_holds_back(&mut self) -> bool {
        let Some(net) = &self.net else {
            return false;
        };
        let was_waiting = self.gate.waiting();
        let check = {
            let (outputs, applied, env, cfg) = (&self.outputs, &self.applied, &self.env, &self.cfg);
            let layers = &self.layers;
            let needs = |policy: &Policy| {
                let merged = layers.merged();
                let values_changed = *applied != merged;
                let written = outputs.iter().filter(|o| o.would_write(&merged));
                let mut a = Actions::of(written.map(|o| &o.spec.on_change), values_changed);
                // The child sees a new environment only by starting again (run mode).
                if cfg.mode == Mode::Run {
                    if let Some(spec) = &cfg.env {
                        a.restart |= spec.render(&merged).0 != *env;
                    }
                }
                paced(policy, &a)
            };
            self.gate
                .check(self.net_pending, needs, Instant::now(), self.cfg.splay)
        };
        match check {
            Check::Act => false,
            Check::Withdraw => {
                tracing::info!("the change no longer needs a rollout slot; acting now");
                net.release();
                crate::health::slot_status(None);
                false
            }
            Check::Ask(position) if was_waiting => {
                tracing::info!(%position, "a newer version arrived while waiting for a rollout slot; the slot asked for covers it");
                net.slot(position);
                true
            }
            Check::Ask(position) => {
                tracing::info!(%position, "waiting for a rollout slot before acting on this change (the old values stay meanwhile)");
                net.slot(position);
                crate::health::slot_status(Some("waiting for a rollout slot"));
                if let Some(at) = self.gate.alone_at() {
                    self.warn_alone(at.saturating_duration_since(Instant::now()));
                }
                true
            }
            Check::Wait => true,
        }
    }

    /// After an apply acted (`acted`) or found nothing to act on. Under a slot: nothing
    /// acted gives it back at once; an action gives it back through [`Agent::slot_acted`].
    pub(crate) fn gate_acted(&mut self, acted: bool) {
        if self.gate.engaged() && !self.gate.waiting() {
            if acted {
                self.slot_acted();
            } else {
                tracing::debug!("nothing to act on under the slot; giving it back");
                self.give_back();
            }
        }
    }

    /// An action taken under a slot keeps it (the gate stays `Holding`) until the
    /// version's health report after its bake ([`Agent::health_reported`]).
    pub(crate) fn slot_acted(&mut self) {
        tracing::debug!("acted under the rollout slot; it is given back with the health report");
    }

    /// A version's health was reported (which frees a held slot on the node), or its bake
    /// ended unreported: a slot held is given back. A request still waiting (for a newer
    /// version) stays.
    pub(crate) fn health_reported(&mut self) {
        if self.gate.holding() {
            self.give_back();
        }
    }

    /// Release the slot (or the request for one) and forget it.
    fn give_back(&mut self) {
        if let Some(net) = &self.net {
            net.release();
        }
        self.gate.returned(Instant::now());
        crate::health::slot_status(None);
    }

    fn warn_alone(&self, splay: Duration) {
        tracing::warn!(
            splay = ?splay,
            "no node reachable to pace this change; acting on my own after a splay of {splay:?} unless one comes back"
        );
    }

    /// What a node said of the rollout, or of its connection.
    pub(crate) async fn on_fleet(&mut self, event: FleetEvent, sink: &Sink) {
        let now = Instant::now();
        match event {
            FleetEvent::Connected => {
                if self.gate.connected() {
                    tracing::info!("a node is reachable again; waiting for the rollout slot");
                }
            }
            FleetEvent::Lost => {
                if let Some(splay) = self.gate.lost(now, self.cfg.splay) {
                    self.warn_alone(splay);
                } else if self.gate.waiting() && self.gate.alone_at().is_none() {
                    tracing::warn!(
                        "no node reachable, and the rollout was halted: keeping the old values until a node says otherwise"
                    );
                }
            }
            FleetEvent::Policy(policy) => {
                if policy != self.gate.policy().cloned() {
                    match &policy {
                        Some(p) => {
                            tracing::info!(max_unavailable = %p.max_unavailable, signals = p.signals, "the environment has a rollout policy: paced changes wait for a slot")
                        }
                        None => tracing::info!(
                            "the environment has no rollout policy: changes apply at once"
                        ),
                    }
                }
                self.gate.set_policy(policy);
                if self.gate.waiting() {
                    // Judged again under the new policy: it may act now.
                    self.apply(sink).await;
                }
            }
            FleetEvent::Grant(position) => {
                if self.gate.granted(now) {
                    tracing::info!(%position, "rollout slot granted; acting on the newest state");
                    crate::health::slot_status(None);
                    // The newest state acts now; a debounce still pending would find it done.
                    self.debouncer.reset();
                    self.apply_now(sink).await;
                } else if !self.gate.engaged() {
                    tracing::debug!(%position, "a slot not waited for; giving it back");
                    self.give_back();
                }
            }
            FleetEvent::Hold { reason, halted } => {
                if self.gate.waiting() && self.gate.held(&reason, halted) {
                    if halted {
                        tracing::warn!(%reason, "the rollout is halted; this agent keeps its old values until a fix or a resume");
                    } else {
                        tracing::info!(%reason, "waiting for a rollout slot");
                    }
                    crate::health::slot_status(Some(&format!(
                        "waiting for a rollout slot ({reason})"
                    )));
                }
            }
        }
    }

    /// The slot waited for is asked again (a request a node dropped heals).
    pub(crate) fn resend_slot(&mut self) {
        if let (Some(position), Some(net)) = (self.gate.resent(Instant::now()), &self.net) {
            tracing::debug!(%position, "still waiting for a rollout slot; asking again");
            net.slot(position);
        }
    }

    /// No node was reachable for the splay: act without a slot.
    pub(crate) async fn act_alone(&mut self, sink: &Sink) {
        tracing::warn!("no node reachable to pace this change; acting on my own now");
        // The request is withdrawn so it is not asked again on the next connection.
        self.give_back();
        self.debouncer.reset();
        if self.apply_now(sink).await {
            crate::health::unpaced_action();
        }
    }

    /// A network source update whose values this agent already applied: a wait for it
    /// has nothing left to act on.
    pub(crate) fn gate_nothing_to_do(&mut self) {
        if self.gate.waiting() {
            tracing::info!("the change waiting for a rollout slot was undone; request withdrawn");
            self.give_back();
        }
    }

    /// The network source is replaced (a reload) or the agent stops: what it asked for or
    /// holds is given back (best effort), and its policy forgotten. Whether a release was
    /// sent.
    pub(crate) fn gate_reset(&mut self) -> bool {
        let engaged = self.gate.engaged();
        if engaged {
            self.give_back();
        }
        self.gate = Gate::default();
        engaged
    }
}

#[cfg(test)]
mod tests;
