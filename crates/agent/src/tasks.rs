//! The agent's spawned tasks: all of them belong to one [`Tasks`], each with its tracing
//! span, and [`Tasks::shutdown`] stops them and waits for them, within a deadline, before
//! the agent returns.
//!
//! Not a task: the reaper's thread (`supervisor::reaper`), which blocks on SIGCHLD and must
//! reap until the process ends (as PID 1, for every orphan); it holds nothing to close.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A task tracker and the token that tells its tasks to stop.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Run `work` in `span` until it ends or the shutdown: then it is dropped where it
    /// waits. For tasks that hold nothing that must be finished.
    pub fn spawn(&self, span: tracing::Span, work: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = work => {}
                }
            }
            .instrument(span),
        );
    }

    /// Run `work` in `span` to its end, which the shutdown waits for (within its deadline):
    /// for a task that must finish what it does, like the one that owns the child.
    pub fn spawn_to_end<T: Send + 'static>(
        &self,
        span: tracing::Span,
        work: impl Future<Output = T> + Send + 'static,
    ) {
        self.tracker.spawn(work.instrument(span));
    }

    /// Stop every task and wait for them, at most `deadline`. Returns whether they all
    /// ended in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !ended {
            tracing::warn!(
                tasks = self.tracker.len(),
                "tasks still running after {deadline:?}; leaving them"
            );
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tasks that wait forever stop at the shutdown; one that must finish is waited for,
    /// and the wait gives up at the deadline.
    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_cancellable_tasks_and_waits_for_the_rest_within_the_deadline() {
        let tasks = Tasks::new();
        tasks.spawn(tracing::Span::none(), std::future::pending());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.spawn_to_end(tracing::Span::none(), async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = tx.send(());
        });
        assert!(tasks.shutdown(Duration::from_secs(5)).await);
        assert!(rx.await.is_ok(), "the task that must finish did");

        let stuck = Tasks::new();
        stuck.spawn_to_end(tracing::Span::none(), std::future::pending::<()>());
        let start = tokio::time::Instant::now();
        assert!(!stuck.shutdown(Duration::from_secs(2)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
