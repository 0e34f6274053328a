//! Debounce and splay: act once changes have been quiet for a window, but no later than a
//! maximum wait after the first change of a burst, plus a random delay drawn per burst.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Debouncer {
    quiet: Duration,
    max_wait: Duration,
    splay: Duration,
    burst: Option<Burst>,
}

#[derive(Debug)]
struct Burst {
    first: Instant,
    last: Instant,
    offset: Duration,
    deadline: Instant,
}

impl Debouncer {
    pub fn new(quiet: Duration, max_wait: Duration, splay: Duration) -> Self {
        Debouncer {
            quiet,
            max_wait: max_wait.max(quiet),
            splay,
            burst: None,
        }
    }

    /// A change arrived at `now`.
    pub fn kick(&mut self, now: Instant) {
        let splay = self.splay;
        let burst = self.burst.get_or_insert_with(|| Burst {
            first: now,
            last: now,
            offset: splay_offset(splay),
            deadline: now,
        });
        burst.last = now;
        let settle = (now + self.quiet).min(burst.first + self.max_wait);
        burst.deadline = settle + burst.offset;
    }

    /// New settings (a reload). A pending burst is kept and its deadline recomputed as of
    /// its last change under the new settings, its splay offset kept within the new bound.
    pub fn retune(&mut self, quiet: Duration, max_wait: Duration, splay: Duration) {
        self.quiet = quiet;
        self.max_wait = max_wait.max(quiet);
        self.splay = splay;
        if let Some(b) = self.burst.as_mut() {
            if b.offset >= splay {
                b.offset = splay_offset(splay);
            }
            let settle = (b.last + self.quiet).min(b.first + self.max_wait);
            b.deadline = settle + b.offset;
        }
    }

    /// When to act, if a burst is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.burst.as_ref().map(|b| b.deadline)
    }

    /// The action ran: the next change starts a new burst.
    pub fn reset(&mut self) {
        self.burst = None;
    }
}

/// A random delay in `[0, splay)` (zero when `splay` is): how far this agent's action is
/// spread from its peers'. Drawn per burst here, and per unpaced action by the slot gate.
pub fn splay_offset(splay: Duration) -> Duration {
    if splay.is_zero() {
        Duration::ZERO
    } else {
        rand::thread_rng().gen_range(Duration::ZERO..splay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{advance, pause};

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn quiet_window_extends_until_max_wait() {
        pause();
        let mut d = Debouncer::new(100 * MS, 250 * MS, Duration::ZERO);
        assert_eq!(d.deadline(), None);
        let t0 = Instant::now();
        d.kick(t0);
        assert_eq!(d.deadline(), Some(t0 + 100 * MS));
        advance(80 * MS).await;
        d.kick(Instant::now());
        assert_eq!(d.deadline(), Some(t0 + 180 * MS));
        advance(80 * MS).await;
        d.kick(Instant::now());
        // 160 + 100 would pass the max wait of 250 after the first change.
        assert_eq!(d.deadline(), Some(t0 + 250 * MS));
        d.reset();
        assert_eq!(d.deadline(), None);
    }

    #[tokio::test]
    async fn retuning_keeps_a_pending_burst() {
        pause();
        let mut d = Debouncer::new(100 * MS, 1000 * MS, Duration::ZERO);
        let t0 = Instant::now();
        d.kick(t0);
        advance(50 * MS).await;
        d.retune(300 * MS, 2000 * MS, Duration::ZERO);
        assert_eq!(
            d.deadline(),
            Some(t0 + 300 * MS),
            "longer window from the last change"
        );
        d.retune(10 * MS, 20 * MS, Duration::ZERO);
        assert_eq!(d.deadline(), Some(t0 + 10 * MS), "due now");
        let mut idle = Debouncer::new(100 * MS, 1000 * MS, Duration::ZERO);
        idle.retune(5 * MS, 10 * MS, Duration::ZERO);
        assert_eq!(idle.deadline(), None, "no burst, none made up");
        idle.kick(t0);
        assert_eq!(idle.deadline(), Some(t0 + 5 * MS));
    }

    #[tokio::test]
    async fn zero_debounce_acts_at_once() {
        pause();
        let mut d = Debouncer::new(Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let t0 = Instant::now();
        d.kick(t0);
        assert_eq!(d.deadline(), Some(t0));
    }

    #[tokio::test]
    async fn splay_is_drawn_once_per_burst_within_bounds() {
        pause();
        for _ in 0..50 {
            let mut d = Debouncer::new(10 * MS, 100 * MS, 1000 * MS);
            let t0 = Instant::now();
            d.kick(t0);
            let first = d.deadline().unwrap() - (t0 + 10 * MS);
            assert!(first < 1000 * MS);
            advance(5 * MS).await;
            d.kick(Instant::now());
            let second = d.deadline().unwrap() - (t0 + 15 * MS);
            assert_eq!(first, second, "offset is kept for the whole burst");
        }
    }
}
