//! Rollout policies and rollout records in the embedded store: a policy per environment,
//! and each environment's rollout record (JSON) changed only by compare-and-swap, so the
//! state machine in `fleet` stays the one place the rules live.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{SqliteStore, db_err};
use crate::store::StoreError;

impl SqliteStore {
    /// Every environment's policy, as JSON.
    pub fn policies(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT env, policy FROM policies ORDER BY env")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err);
        self.watch(rows)
    }

    /// Set (or with `None` clear) `env`'s policy; clearing it forgets its rollout too.
    pub fn set_policy(&self, env: &str, policy: Option<&str>) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let r = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            match policy {
                Some(p) => tx.execute(
                    "INSERT INTO policies (env, policy) VALUES (?1, ?2)
                     ON CONFLICT (env) DO UPDATE SET policy = excluded.policy",
                    params![env, p],
                ),
                None => {
                    tx.execute("DELETE FROM rollouts WHERE env = ?1", params![env])
                        .map_err(db_err)?;
                    tx.execute("DELETE FROM policies WHERE env = ?1", params![env])
                }
            }
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })();
        self.watch(r)
    }

    /// `env`'s rollout record as stored.
    pub fn rollout(&self, env: &str) -> Result<Option<String>, StoreError> {
        let conn = self.lock();
        let r = conn
            .query_row(
                "SELECT record FROM rollouts WHERE env = ?1",
                params![env],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err);
        self.watch(r)
    }

    /// Replace `env`'s rollout record by `new` if it is still `old` (`None`: there is none);
    /// false when it changed meanwhile.
    pub fn swap_rollout(
        &self,
        env: &str,
        old: Option<&str>,
        new: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let r = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let current: Option<String> = tx
                .query_row(
                    "SELECT record FROM rollouts WHERE env = ?1",
                    params![env],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if current.as_deref() != old {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO rollouts (env, record) VALUES (?1, ?2)
                 ON CONFLICT (env) DO UPDATE SET record = excluded.record",
                params![env, new],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(true)
        })();
        self.watch(r)
    }
}
