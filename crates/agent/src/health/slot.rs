//! The slot gate's figures (`crate::gate`): waits for a rollout slot, how long the last one
//! took, actions taken without a slot because no node was reachable, and what the agent
//! waits for now (said on `/readyz` and in systemd's status).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tether_core::prom::{Kind, head, sample};

use super::{STATS, lock, refresh_status};

/// The gate's counters.
pub struct SlotStats {
    waits: AtomicU64,
    unpaced: AtomicU64,
    /// The last wait's length, in milliseconds, once one ended.
    last_wait_ms: AtomicU64,
    ended: AtomicBool,
    /// What the agent waits for now (`waiting for a rollout slot (why)`), if it does.
    pub(super) waiting: Mutex<Option<String>>,
}

impl SlotStats {
    pub const fn new() -> SlotStats {
        SlotStats {
            waits: AtomicU64::new(0),
            unpaced: AtomicU64::new(0),
            last_wait_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            waiting: Mutex::new(None),
        }
    }

    /// The part of the status line, while waiting.
    pub(super) fn status(&self) -> Option<String> {
        lock(&self.waiting).clone()
    }

    pub(super) fn render(&self, out: &mut String) {
        head(
            out,
            "tether_agent_slot_waits_total",
            Kind::Counter,
            "Changes that waited for a rollout slot before acting (under the environment's policy).",
        );
        sample(
            out,
            "tether_agent_slot_waits_total",
            &[],
            self.waits.load(Relaxed),
        );
        head(
            out,
            "tether_agent_slot_waiting",
            Kind::Gauge,
            "1 while a change waits for a rollout slot (the old values stay meanwhile).",
        );
        let waiting = u8::from(lock(&self.waiting).is_some());
        sample(out, "tether_agent_slot_waiting", &[], waiting);
        if self.ended.load(Relaxed) {
            head(
                out,
                "tether_agent_slot_wait_seconds",
                Kind::Gauge,
                "How long the last wait for a rollout slot took (until granted, withdrawn, or acting alone).",
            );
            let secs = Duration::from_millis(self.last_wait_ms.load(Relaxed)).as_secs_f64();
            let mut v = String::new();
            let _ = write!(v, "{secs:.3}");
            sample(out, "tether_agent_slot_wait_seconds", &[], v);
        }
        head(
            out,
            "tether_agent_unpaced_actions_total",
            Kind::Counter,
            "Changes acted on without a rollout slot because no node was reachable to pace them (after a splay).",
        );
        sample(
            out,
            "tether_agent_unpaced_actions_total",
            &[],
            self.unpaced.load(Relaxed),
        );
    }
}

impl Default for SlotStats {
    fn default() -> Self {
        SlotStats::new()
    }
}

/// A change starts waiting for a slot.
pub fn slot_wait_started() {
    STATS.slot.waits.fetch_add(1, Relaxed);
}

/// A wait for a slot ended after `took`.
pub fn slot_wait_ended(took: Duration) {
    let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    STATS.slot.last_wait_ms.store(ms, Relaxed);
    STATS.slot.ended.store(true, Relaxed);
}

/// What the agent waits for now (`None`: no slot).
pub fn slot_status(waiting: Option<&str>) {
    let changed = {
        let mut w = lock(&STATS.slot.waiting);
        let new = waiting.map(str::to_owned);
        let changed = *w != new;
        *w = new;
        changed
    };
    if changed {
        refresh_status();
    }
}

/// A change was acted on without a slot: no node was reachable to pace it.
pub fn unpaced_action() {
    STATS.slot.unpaced.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_render_and_the_wait_is_told() {
        let s = SlotStats::new();
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("tether_agent_slot_waits_total 0\n"), "{out}");
        assert!(out.contains("tether_agent_slot_waiting 0\n"), "{out}");
        assert!(
            out.contains("tether_agent_unpaced_actions_total 0\n"),
            "{out}"
        );
        assert!(
            !out.contains("tether_agent_slot_wait_seconds"),
            "no wait ended yet"
        );
        assert_eq!(s.status(), None);

        s.waits.store(2, Relaxed);
        s.unpaced.store(1, Relaxed);
        s.last_wait_ms.store(1500, Relaxed);
        s.ended.store(true, Relaxed);
        *lock(&s.waiting) = Some("waiting for a rollout slot (5 of 5 slots in use)".into());
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("tether_agent_slot_waits_total 2\n"), "{out}");
        assert!(out.contains("tether_agent_slot_waiting 1\n"), "{out}");
        assert!(
            out.contains("tether_agent_slot_wait_seconds 1.500\n"),
            "{out}"
        );
        assert!(
            out.contains("tether_agent_unpaced_actions_total 1\n"),
            "{out}"
        );
        assert_eq!(
            s.status().as_deref(),
            Some("waiting for a rollout slot (5 of 5 slots in use)")
        );
    }
}
