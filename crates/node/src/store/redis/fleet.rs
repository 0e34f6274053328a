//! Rollout policies (one hash for the cluster) and each environment's rollout record
//! (JSON) in Redis, the record changed only by a compare-and-swap script, so the state
//! machine in `fleet` stays the one place the rules live.

use redis::{AsyncCommands, Script};

use super::{Op, RedisStore};
use crate::store::StoreError;

/// Every environment's policy: env → JSON.
const POLICIES: &str = "tether:policies";

fn rollout_key(env: &str) -> String {
    format!("tether:env:{{{env}}}:rollout")
}

static SWAP_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(SWAP));

/// KEYS: the record. ARGV: the record expected ("" for none), the new record. 1 if swapped.
const SWAP: &str = r#"
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

impl RedisStore {
    /// Every environment's policy, as JSON.
    pub async fn policies(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.conn().await?;
        let mut all: Vec<(String, String)> = conn
            .hgetall::<_, std::collections::HashMap<String, String>>(POLICIES)
            .await
            .map_err(self.failed(Op::Rollout))?
            .into_iter()
            .collect();
        all.sort();
        Ok(all)
    }

    /// Set (or with `None` clear) `env`'s policy; clearing it forgets its rollout too.
    pub async fn set_policy(&self, env: &str, policy: Option<&str>) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        match policy {
            Some(p) => pipe.hset(POLICIES, env, p).ignore(),
            None => pipe
                .hdel(POLICIES, env)
                .ignore()
                .del(rollout_key(env))
                .ignore(),
        };
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(self.failed(Op::Rollout))
    }

    /// `env`'s rollout record as stored.
    pub async fn rollout(&self, env: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn().await?;
        conn.get(rollout_key(env))
            .await
            .map_err(self.failed(Op::Rollout))
    }

    /// Replace `env`'s rollout record by `new` if it is still `old` (`None`: there is none);
    /// false when another node changed it meanwhile.
    pub async fn swap_rollout(
        &self,
        env: &str,
        old: Option<&str>,
        new: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let swapped: i64 = SWAP_SCRIPT
            .key(rollout_key(env))
            .arg(old.unwrap_or(""))
            .arg(new)
            .invoke_async(&mut conn)
            .await
            .map_err(self.failed(Op::Rollout))?;
        Ok(swapped == 1)
    }
}
