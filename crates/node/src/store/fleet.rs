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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fleet::machine::{self, Outcome};
    use crate::store::size::tests::Redis;
    use tether_core::protocol::{Epoch, Position};
    use tether_core::rollout::{Amount, Policy};

    /// Both backends keep the same contract: a swap happens only over the record it
    /// expects; clearing a policy forgets the rollout.
    async fn contract(store: &Store) {
        assert_eq!(store.rollout("prod").await.unwrap(), None);
        assert!(
            !store
                .swap_rollout("prod", Some("x".into()), "a".into())
                .await
                .unwrap()
        );
        assert!(store.swap_rollout("prod", None, "a".into()).await.unwrap());
        assert!(!store.swap_rollout("prod", None, "b".into()).await.unwrap());
        assert!(
            store
                .swap_rollout("prod", Some("a".into()), "b".into())
                .await
                .unwrap()
        );
        assert_eq!(store.rollout("prod").await.unwrap().as_deref(), Some("b"));
        store.set_policy("prod", Some("{}".into())).await.unwrap();
        store
            .set_policy("dev", Some("{\"x\":1}".into()))
            .await
            .unwrap();
        assert_eq!(
            store.policies().await.unwrap(),
            [
                ("dev".to_string(), "{\"x\":1}".to_string()),
                ("prod".into(), "{}".into())
            ]
        );
        store.set_policy("prod", None).await.unwrap();
        assert_eq!(store.policies().await.unwrap().len(), 1);
        assert_eq!(store.rollout("prod").await.unwrap(), None);
    }

    /// Many requests at once, as from many nodes: the compare-and-swap loop never lets
    /// more than the policy's slots be granted.
    async fn concurrent(store: Store) {
        let policy = Policy::new(Amount::Count(3));
        let at = Position {
            epoch: Epoch(1),
            version: 1,
        };
        let mut tasks = Vec::new();
        for i in 0..24 {
            let (store, policy) = (store.clone(), policy.clone());
            tasks.push(tokio::spawn(async move {
                let agent = format!("agent-{i}");
                let (o, _) = crate::fleet::update(&store, "race", |rec| {
                    machine::acquire(rec, &policy, 24, &agent, at, 0, 30_000)
                })
                .await
                .unwrap();
                o == Outcome::Grant
            }));
        }
        let mut granted = 0;
        for t in tasks {
            granted += usize::from(t.await.unwrap());
        }
        assert_eq!(granted, 3);
        let raw = store.rollout("race").await.unwrap();
        let rec = crate::fleet::read_record("race", raw.as_deref());
        assert_eq!(rec.slots.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_keeps_the_rollout_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Sqlite(Arc::new(
            super::super::sqlite::SqliteStore::open(dir.path(), 10).unwrap(),
        ));
        contract(&store).await;
        concurrent(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_keeps_the_rollout_contract() {
        let redis = Redis::start();
        drop(redis.connection());
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{}", redis.1)).unwrap();
        let store = Store::Redis(Arc::new(super::super::redis::RedisStore::new(
            client, 10, false,
        )));
        contract(&store).await;
        concurrent(store).await;
    }
}
