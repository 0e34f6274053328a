//! A connection's rollout frames (`docs/protocol.md`, "Health and rollouts"): the policy
//! after `synced`, health reports (recorded like acks: only of positions sent on this
//! connection), slot requests and releases, handed to the node's `fleet`.

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use tether_core::protocol::{Position, ServerMsg};
use tether_core::rollout::HealthState;

use super::{Conn, End};
use crate::outlet::Outlet;
use crate::rollout::{self, AckVerdict};

impl<S, E> Conn<S>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    E: std::fmt::Display,
{
    /// After the first catch-up: each environment's policy (`null`: none). Nothing when
    /// the policies cannot be read now; the node's policy polling tells the agent later.
    pub(super) async fn send_policies(&mut self, outlet: &Outlet) -> Result<(), End> {
        for env in outlet.envs() {
            match self.node.fleet.policy(&self.node.store, &env).await {
                Ok(policy) => self.send_msg(&ServerMsg::Policy { env, policy }).await?,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the rollout policies");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Whether a rollout frame of `what` for `env` at `position` may be taken: of an
    /// environment this connection follows, at a position it was sent. Answers the
    /// agent when not (an older history is dropped without a word).
    async fn judge(&mut self, what: &str, env: &str, position: Position) -> Result<bool, End> {
        let outlet = self.outlet()?;
        if !outlet.follows(env) {
            self.send_msg(&ServerMsg::Error {
                code: "not_subscribed".into(),
                message: format!("{what} of {env:?}, which this connection does not follow"),
            })
            .await?;
            return Ok(false);
        }
        let latest = self.node.hub.position(env);
        match rollout::judge_ack(outlet.sent(env), latest, position) {
            AckVerdict::Record => Ok(true),
            AckVerdict::Stale => Ok(false),
            AckVerdict::Unknown => {
                tracing::warn!(agent = self.id, env, %position, "{what} of a position this node never sent; refused");
                self.send_msg(&ServerMsg::Error {
                    code: "unknown_position".into(),
                    message: format!(
                        "{what} of {env:?} at {position}, a position this node never sent"
                    ),
                })
                .await?;
                Ok(false)
            }
        }
    }

    pub(super) async fn health(
        &mut self,
        env: String,
        position: Position,
        state: HealthState,
        error: Option<String>,
        rolled_back: bool,
    ) -> Result<(), End> {
        if !self.judge("health", &env, position).await? {
            return Ok(());
        }
        let error: Option<String> = error.map(|e| e.chars().take(500).collect());
        if state == HealthState::Failed {
            tracing::warn!(agent = self.id, env = %env, %position, rolled_back, error = error.as_deref().unwrap_or(""), "agent reports a version failed");
        }
        self.node
            .hub
            .health(self.id, &env, position, state, error, rolled_back);
        let healthy = state == HealthState::Healthy;
        let node = self.node.clone();
        node.fleet
            .report(&node, self.id, &env, position, healthy)
            .await;
        Ok(())
    }

    pub(super) async fn slot(&mut self, env: String, position: Position) -> Result<(), End> {
        if !self.outlet()?.follows(&env) {
            return self.judge("slot", &env, position).await.map(drop);
        }
        if !self.judge("slot", &env, position).await? {
            // The agent waits for an answer: it is told to keep waiting, and asks again
            // for the position it is sent next (or on its next connection).
            let reason = format!(
                "slot request for {position}, a position this connection was not sent; ask again"
            );
            return self
                .send_msg(&ServerMsg::Hold {
                    env,
                    reason,
                    halted: false,
                })
                .await;
        }
        let node = self.node.clone();
        let answer = node.fleet.request(&node, self.id, &env, position).await;
        self.send_msg(&answer).await
    }

    pub(super) async fn release(&mut self, env: String) -> Result<(), End> {
        if !self.outlet()?.follows(&env) {
            return self
                .send_msg(&ServerMsg::Error {
                    code: "not_subscribed".into(),
                    message: format!("release of {env:?}, which this connection does not follow"),
                })
                .await;
        }
        let node = self.node.clone();
        node.fleet.release(&node, self.id, &env).await;
        Ok(())
    }
}
