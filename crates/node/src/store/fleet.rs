//! What the rollouts (`crate::fleet`) need of either store: policies, and each
//! environment's rollout record read and replaced by compare-and-swap.

use super::{Store, StoreError, blocking};

impl Store {
    /// Every environment's policy, as JSON.
    pub async fn policies(&self) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.policies()).await
            }
            Store::Redis(r) => r.policies().await,
        }
    }

    /// Set (or with `None` clear) `env`'s policy (JSON); clearing forgets its rollout.
    pub async fn set_policy(&self, env: &str, policy: Option<String>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, env) = (s.clone(), env.to_string());
                blocking(move || s.set_policy(&env, policy.as_deref())).await
            }
            Store::Redis(r) => r.set_policy(env, policy.as_deref()).await,
        }
    }

    /// `env`'s rollout record (JSON) as stored.
    pub async fn rollout(&self, env: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, env) = (s.clone(), env.to_string());
                blocking(move || s.rollout(&env)).await
            }
            Store::Redis(r) => r.rollout(env).await,
        }
    }

    /// Replace `env`'s rollout record by `new` if it is still `old`; false if it changed.
    pub async fn swap_rollout(
        &self,
        env: &str,
        old: Option<String>,
        new: String,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, env) = (s.clone(), env.to_string());
                blocking(move || s.swap_rollout(&env, old.as_deref(), &new)).await
            }
            Store::Redis(r) => r.swap_rollout(env, old.as_deref(), &new).await,
        }
    }
}
