//! How long the network source waits before its next connection attempt. Only a session
//! that stayed up [`STABLE`] past its `synced` starts the waits over: a connection that is
//! refused, that fails, that brings a frame the agent cannot take, or that syncs and is
//! dropped soon after keeps them growing, so a node or proxy that drops every session gets
//! a few attempts a minute, not twenty a second. A refused token waits longest, since only
//! an operator can fix it; a round counts as refused when some node refused the token and
//! no other node got further than "cannot connect" (one that takes the token, or answers
//! anything else, may be serving soon: the short waits stand).

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::SessionError;

/// How a session ended, as far as the next wait is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It got as far as a `synced` and stayed up [`STABLE`] after it.
    Stable,
    /// No answer from the node: could not connect, or the connection timed out.
    Unreachable,
    /// The node answered but the session failed (lost, a frame refused, synced and dropped
    /// too soon, an HTTP error other than a refused token...).
    Failed,
    /// The node refused the agent's token (HTTP 401 or 403 on the upgrade).
    Refused,
}

impl Outcome {
    /// The outcome of a session that ended at `now` with `error`, having got its `synced`
    /// at `synced_at` (if it did).
    pub(super) fn of(error: &SessionError, synced_at: Option<Instant>, now: Instant) -> Outcome {
        match error {
            _ if synced_at.is_some_and(|at| now.duration_since(at) >= STABLE) => Outcome::Stable,
            SessionError::Refused {
                status: 401 | 403, ..
            } => Outcome::Refused,
            SessionError::Connect(_) => Outcome::Unreachable,
            _ => Outcome::Failed,
        }
    }
}

/// How long a session must stay up past its `synced` to start the waits over.
pub(crate) const STABLE: Duration = Duration::from_secs(10);
/// Between nodes of one round, and after a stable session.
const QUICK: Duration = Duration::from_millis(50);
/// After a round of failures: 100 ms doubling to 10 s, full jitter.
const FAILED: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));
/// After a round that ended in a refused token: 5 s doubling to 5 minutes, at least half.
const REFUSED: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));

pub(crate) struct Backoff {
    failed: Jitter,
    refused: Jitter,
    /// What the round so far brought: a refused token, a node that answered otherwise.
    round_refused: bool,
    round_answered: bool,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            failed: Jitter::new(FAILED.0, FAILED.1, false),
            refused: Jitter::new(REFUSED.0, REFUSED.1, true),
            round_refused: false,
            round_answered: false,
        }
    }

    /// The wait after a session that ended with `outcome`. Within a round the next node is
    /// tried at once; at the end of a round (`round_done`: every node tried) the wait grows,
    /// the refused token's when the round counts as refused (see the module doc).
    pub(crate) fn after(&mut self, outcome: Outcome, round_done: bool) -> Duration {
        match outcome {
            Outcome::Stable => {
                self.failed.reset();
                self.refused.reset();
                self.round_refused = false;
                self.round_answered = false;
                return jitter(QUICK);
            }
            Outcome::Refused => self.round_refused = true,
            Outcome::Failed => self.round_answered = true,
            Outcome::Unreachable => {}
        }
        if !round_done {
            return jitter(QUICK);
        }
        let refused = self.round_refused && !self.round_answered;
        self.round_refused = false;
        self.round_answered = false;
        if refused {
            self.refused.next()
        } else {
            self.failed.next()
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
    /// waits over; only a stable session does.
    #[test]
    fn only_a_stable_session_starts_the_waits_over() {
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
        b.after(Outcome::Stable, true);
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
        b.after(Outcome::Stable, true);
        assert!(b.after(Outcome::Refused, true) < REFUSED.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_is_stable_once_up_long_enough_past_its_sync() {
        let lost = SessionError::Lost("end of stream".into());
        let synced = Instant::now();
        assert_eq!(Outcome::of(&lost, None, synced), Outcome::Failed);
        tokio::time::advance(STABLE - Duration::from_millis(1)).await;
        assert_eq!(
            Outcome::of(&lost, Some(synced), Instant::now()),
            Outcome::Failed
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            Outcome::of(&lost, Some(synced), Instant::now()),
            Outcome::Stable
        );
        let refused = |status| SessionError::Refused {
            status,
            reason: String::new(),
        };
        assert_eq!(Outcome::of(&refused(401), None, synced), Outcome::Refused);
        assert_eq!(Outcome::of(&refused(403), None, synced), Outcome::Refused);
        assert_eq!(Outcome::of(&refused(503), None, synced), Outcome::Failed);
        let down = SessionError::Connect("connection refused".into());
        assert_eq!(Outcome::of(&down, None, synced), Outcome::Unreachable);
    }

    /// A node (or proxy) that syncs every session and drops it a second later got the
    /// waits started over each time: about twenty attempts a second. Now the waits grow:
    /// thirty such sessions take well over a minute.
    #[tokio::test(start_paused = true)]
    async fn a_node_that_syncs_and_drops_gets_growing_waits() {
        let mut b = Backoff::new();
        let start = Instant::now();
        for _ in 0..30 {
            let synced = Instant::now();
            tokio::time::advance(Duration::from_secs(1)).await;
            let closed = SessionError::Closed("1000 bye".into());
            let outcome = Outcome::of(&closed, Some(synced), Instant::now());
            assert_eq!(outcome, Outcome::Failed);
            let wait = b.after(outcome, true);
            tokio::time::advance(wait).await;
        }
        let waited = start.elapsed() - Duration::from_secs(30);
        assert!(waited > Duration::from_secs(40), "waited {waited:?} in all");
        // A session that stays up starts them over.
        let synced = Instant::now();
        tokio::time::advance(STABLE).await;
        let closed = SessionError::Closed("1001 going away".into());
        let outcome = Outcome::of(&closed, Some(synced), Instant::now());
        assert!(b.after(outcome, true) < QUICK);
        assert!(b.after(Outcome::Failed, true) < FAILED.0);
    }

    /// A refused token counts for the round whichever node refused it, unless another
    /// node answered (it may serve soon): then the short waits stand.
    #[test]
    fn a_refusal_counts_for_the_whole_round() {
        use Outcome::*;
        let round = |b: &mut Backoff, outcomes: &[Outcome]| {
            let last = outcomes.len() - 1;
            let waits: Vec<Duration> = outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| b.after(*o, i == last))
                .collect();
            waits[last]
        };
        for outcomes in [
            [Refused, Unreachable, Unreachable],
            [Unreachable, Refused, Unreachable],
            [Unreachable, Unreachable, Refused],
            [Refused, Refused, Refused],
        ] {
            let wait = round(&mut Backoff::new(), &outcomes);
            assert!(wait >= REFUSED.0 / 2, "{outcomes:?}: {wait:?}");
        }
        for outcomes in [
            [Refused, Failed, Unreachable],
            [Unreachable, Failed, Refused],
            [Unreachable, Unreachable, Unreachable],
        ] {
            let wait = round(&mut Backoff::new(), &outcomes);
            assert!(wait < FAILED.0, "{outcomes:?}: {wait:?}");
        }
        // The round starts afresh: a refusal in the last round does not count in the next.
        let mut b = Backoff::new();
        round(&mut b, &[Refused, Unreachable]);
        assert!(round(&mut b, &[Unreachable, Unreachable]) < FAILED.0);
    }
}
