//! How long the network source waits before its next connection attempt. Only a healthy
//! sync (the node's `synced`) starts the waits over: a connection that is refused, that
//! fails, or that brings a frame the agent cannot take keeps them growing. A refused token
//! waits longest, since only an operator can fix it.

use std::time::Duration;

use rand::Rng;

/// How a session ended, as far as the next wait is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It got as far as a `synced`: the node and the agent work together.
    Synced,
    /// It failed before a healthy sync (could not connect, lost, a frame refused...).
    Failed,
    /// The node refused the agent's token (HTTP 401 or 403 on the upgrade).
    Refused,
}

/// Between nodes of one round, and after a session that had synced.
const QUICK: Duration = Duration::from_millis(50);
/// After a round of failures: 100 ms doubling to 10 s, full jitter.
const FAILED: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));
/// After a round that ended in a refused token: 5 s doubling to 5 minutes, at least half.
const REFUSED: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));

pub(super) struct Backoff {
    failed: Jitter,
    refused: Jitter,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff {
            failed: Jitter::new(FAILED.0, FAILED.1, false),
            refused: Jitter::new(REFUSED.0, REFUSED.1, true),
        }
    }

    /// The wait after a session that ended with `outcome`. Within a round the next node is
    /// tried at once; at the end of a round (`round_done`: every node tried) the wait grows.
    pub(super) fn after(&mut self, outcome: Outcome, round_done: bool) -> Duration {
        match outcome {
            Outcome::Synced => {
                self.failed.reset();
                self.refused.reset();
                jitter(QUICK)
            }
            _ if !round_done => jitter(QUICK),
            Outcome::Failed => self.failed.next(),
            Outcome::Refused => self.refused.next(),
        }
    }
}

/// Capped exponential backoff with jitter: full (anywhere below the ceiling), or equal (at
/// least half of it).
struct Jitter {
    base: Duration,
    cap: Duration,
    equal: bool,
    attempt: u32,
}

impl Jitter {
    fn new(base: Duration, cap: Duration, equal: bool) -> Self {
        Jitter {
            base,
            cap,
            equal,
            attempt: 0,
        }
    }

    fn next(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt += 1;
        if self.equal {
            ceiling / 2 + jitter(ceiling / 2)
        } else {
            jitter(ceiling)
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return max;
    }
    rand::thread_rng().gen_range(Duration::ZERO..max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut j = Jitter::new(Duration::from_millis(100), Duration::from_secs(10), false);
        for _ in 0..40 {
            assert!(j.next() < Duration::from_secs(10));
        }
        j.reset();
        assert!(j.next() < Duration::from_millis(100));
    }

    /// A session that fails after the welcome (a frame too large, say) does not start the
    /// waits over; only a sync does.
    #[test]
    fn only_a_sync_starts_the_waits_over() {
        let mut b = Backoff::new();
        for _ in 0..12 {
            b.after(Outcome::Failed, true);
        }
        let waits: Vec<Duration> = (0..20).map(|_| b.after(Outcome::Failed, true)).collect();
        let total: Duration = waits.iter().sum();
        assert!(
            total > Duration::from_secs(40),
            "waits stay long: {waits:?}"
        );
        assert!(waits.iter().all(|w| *w < FAILED.1));
        b.after(Outcome::Synced, true);
        assert!(b.after(Outcome::Failed, true) < FAILED.0);
    }

    #[test]
    fn the_next_node_of_a_round_is_tried_at_once() {
        let mut b = Backoff::new();
        for _ in 0..10 {
            assert!(b.after(Outcome::Failed, false) < QUICK);
            assert!(b.after(Outcome::Refused, false) < QUICK);
        }
    }

    /// A refused token backs off to minutes: from 2.5 s, doubling, to between 2.5 and 5
    /// minutes, and never below half of its ceiling.
    #[test]
    fn a_refused_token_backs_off_to_minutes() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..12).map(|_| b.after(Outcome::Refused, true)).collect();
        assert!(waits[0] >= Duration::from_millis(2500) && waits[0] < REFUSED.0);
        for w in &waits[7..] {
            assert!(
                *w >= Duration::from_secs(150) && *w < REFUSED.1,
                "{waits:?}"
            );
        }
        b.after(Outcome::Synced, true);
        assert!(b.after(Outcome::Refused, true) < REFUSED.0);
    }
}
