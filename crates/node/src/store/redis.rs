//! The cluster store: Redis holds the entries, the version and epoch of each environment,
//! and its history as a capped stream. One Lua script per change set checks and bumps the
//! version, writes the entries, appends the change set to the stream and publishes it, so
//! the store and the bus never disagree about what was committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{CatchUp, ChangeSet, Damage, EnvInfo, Plan, Snapshot, StoreError, damage};
use tether_core::protocol::{Epoch, Position, WireChange, WireEntry};
use tether_core::secret::Value;

/// The Pub/Sub channel every node subscribes to.
pub const CHANNEL: &str = "tether:changes";
const ENVS: &str = "tether:envs";

fn meta_key(env: &str) -> String {
    format!("tether:env:{{{env}}}:meta")
}
fn values_key(env: &str) -> String {
    format!("tether:env:{{{env}}}:values")
}
fn secret_key(env: &str) -> String {
    format!("tether:env:{{{env}}}:secret")
}
fn history_key(env: &str) -> String {
    format!("tether:env:{{{env}}}:history")
}

fn wire_key(env: &str) -> String {
    format!("tether:env:{{{env}}}:wire")
}

mod agents;
mod errors;
mod fleet;
mod scripts;
#[cfg(test)]
mod tests;

use scripts::{COMMIT, RESET};

/// A change set as published on the channel.
#[derive(serde::Deserialize)]
pub struct Notice {
    pub env: String,
    pub position: Position,
    pub changes: Vec<WireChange>,
}

pub struct RedisStore {
    client: redis::Client,
    /// Connected on first use; the manager then reconnects by itself.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    /// Change sets kept per environment; a reload may change it (applied at each commit).
    history: AtomicU64,
    /// Environments this node has seen in Redis, or that an agent holds at a position
    /// Redis does not have (this node restarted after Redis lost them). One that is not
    /// there was lost (Redis flushed or replaced under the cluster): it is an error, never
    /// a new, empty environment.
    known: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The lost environments already named in the log (once each, not per read).
    told: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Damage found while running other than lost environments (a history entry that does
    /// not parse).
    damage: Damage,
    /// `--reset-store`: Redis may lose its data (no persistence); an environment it lost
    /// starts again with the next write (a new history), as on a first start.
    reset_lost: bool,
    commit: Script,
    reset: Script,
    /// Redis errors by operation, for `/metrics`.
    pub errors: Errors,
}

type SnapshotReply = (
    HashMap<String, String>,
    HashMap<String, Vec<u8>>,
    HashMap<String, String>,
);

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

pub use errors::{Errors, Op};

impl RedisStore {
    /// A store over `client`. Nothing is connected yet: a node starts while Redis is down,
    /// and every call fails with `Unavailable` until Redis answers. `reset_lost`: see the
    /// field.
    pub fn new(client: redis::Client, history: u64, reset_lost: bool) -> RedisStore {
        RedisStore::with_limit(client, history, reset_lost, super::MAX_ENV)
    }

    /// A store whose environments may grow to `max_env` bytes on the wire (tests use a
    /// small one: the Lua count of entries without a size is slow on large values).
    fn with_limit(
        client: redis::Client,
        history: u64,
        reset_lost: bool,
        max_env: usize,
    ) -> RedisStore {
        RedisStore {
            client,
            conn: tokio::sync::OnceCell::new(),
            history: AtomicU64::new(history.max(1)),
            known: Default::default(),
            told: Default::default(),
            damage: Damage::default(),
            reset_lost,
            commit: Script::new(&format!(
                "{}{}",
                super::size::lua(),
                COMMIT.replace("MAX_ENV_BYTES", &max_env.to_string())
            )),
            reset: Script::new(RESET),
            errors: Errors::default(),
        }
    }

    /// Change sets kept per environment from the next commit on (at least one).
    pub fn set_history(&self, history: u64) {
        self.history.store(history.max(1), Ordering::Relaxed);
    }

    /// Map a Redis error met while doing `op`, counting it.
    fn failed(&self, op: Op) -> impl Fn(redis::RedisError) -> StoreError + '_ {
        move |e| {
            self.errors.count(op);
            unavailable(e)
        }
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        self.conn
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await
            .cloned()
            .map_err(self.failed(Op::Connect))
    }

    pub async fn commit(
        &self,
        env: &str,
        changes: &[WireChange],
        expect: Option<u64>,
    ) -> Result<ChangeSet, StoreError> {
        let json =
            serde_json::to_string(changes).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut inv = self.commit.prepare_invoke();
        inv.key(meta_key(env))
            .key(values_key(env))
            .key(secret_key(env))
            .key(history_key(env))
            .key(ENVS)
            .key(wire_key(env))
            .arg(env)
            .arg(expect.map(|v| v.to_string()).unwrap_or_default())
            .arg(if self.is_known(env) {
                String::new()
            } else {
                Epoch::generate().to_string()
            })
            .arg(self.history.load(Ordering::Relaxed))
            .arg(&json)
            .arg(CHANNEL);
        for c in changes {
            match &c.value {
                Some(v) if !c.delete => inv
                    .arg("set")
                    .arg(&c.name)
                    .arg(v.expose())
                    .arg(if c.secret { "1" } else { "0" })
                    .arg(super::size::entry_size(&c.name, v.expose())),
                _ => inv.arg("del").arg(&c.name).arg("").arg("").arg(""),
            };
        }
        let mut conn = self.conn().await?;
        let reply: Vec<String> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(self.failed(Op::Commit))?;
        match reply.as_slice() {
            [l] if l == "lost" => Err(lost(env)),
            [ok, epoch, version] if ok == "ok" => Ok(self.saw(
                env,
                ChangeSet {
                    env: env.to_string(),
                    position: Position {
                        epoch: epoch.parse().map_err(StoreError::Unavailable)?,
                        version: version.parse().map_err(|_| {
                            StoreError::Unavailable("bad version from redis".into())
                        })?,
                    },
                    changes: changes.to_vec(),
                },
            )),
            [t, size] if t == "too_big" => Err(StoreError::env_too_large(
                env,
                size.parse().unwrap_or(super::MAX_ENV + 1),
            )),
            [m, name] if m == "missing" => Err(StoreError::Missing {
                env: env.to_string(),
                name: name.clone(),
            }),
            [c, actual] if c == "conflict" => Err(StoreError::Conflict {
                expected: expect.unwrap_or(0),
                actual: actual.parse().unwrap_or(0),
            }),
            _ => Err(StoreError::Unavailable(
                "unexpected reply from the commit script".into(),
            )),
        }
    }

    async fn meta(&self, env: &str) -> Result<Option<Position>, StoreError> {
        let mut conn = self.conn().await?;
        let m: HashMap<String, String> = conn
            .hgetall(meta_key(env))
            .await
            .map_err(self.failed(Op::Read))?;
        self.check(env, parse_meta(&m)?)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_known(&self, env: &str) -> bool {
        self.known().contains(env)
    }

    fn saw<T>(&self, env: &str, t: T) -> T {
        if !self.reset_lost && !self.is_known(env) {
            self.known().insert(env.to_string());
        }
        t
    }

    /// `meta` of `env` as read: remembered when there, an error when it vanished.
    fn check(&self, env: &str, meta: Option<Position>) -> Result<Option<Position>, StoreError> {
        match meta {
            Some(p) => Ok(Some(self.saw(env, p))),
            None if self.is_known(env) => {
                self.tell_lost(env, "this node saw it");
                Err(lost(env))
            }
            None => Ok(None),
        }
    }

    fn told(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Say in the log (once) that Redis lost `env`, and how this node knows.
    fn tell_lost(&self, env: &str, evidence: &str) {
        if self.told().insert(env.to_string()) {
            tracing::error!(
                env,
                evidence,
                "redis no longer holds this environment (flushed, or another server?); writes \
                 to it are refused so that agents keep what they have: restore Redis from a \
                 backup, or start it over (POST /v1/envs/ENV/reset, or restart the nodes with \
                 --reset-store)"
            );
        }
    }

    /// Damage for `/readyz`, if any: environments this node (or an agent) saw that Redis no
    /// longer holds, or history that does not parse. A fixed sentence; the log names them.
    pub async fn damage(&self) -> Option<String> {
        self.lost_envs()
            .await
            .then_some(damage::LOST)
            .or_else(|| self.damage.get())
            .map(str::to_string)
    }

    /// Whether Redis no longer holds some environment this node knows.
    async fn lost_envs(&self) -> bool {
        let mut known: Vec<String> = self.known().iter().cloned().collect();
        if known.is_empty() {
            return false;
        }
        known.sort();
        let mut pipe = redis::pipe();
        for env in &known {
            pipe.exists(meta_key(env));
        }
        let Ok(mut conn) = self.conn().await else {
            return false;
        };
        let Ok(there) = pipe.query_async::<Vec<bool>>(&mut conn).await else {
            return false;
        };
        let mut any = false;
        for (env, there) in known.iter().zip(there) {
            if there {
                // Back (Redis restored): a later loss is told again.
                self.told().remove(env);
            } else {
                self.tell_lost(env, "this node saw it");
                any = true;
            }
        }
        any
    }

    pub async fn position(&self, env: &str) -> Result<Position, StoreError> {
        Ok(self.meta(env).await?.unwrap_or_default())
    }

    pub async fn snapshot(&self, env: &str) -> Result<Snapshot, StoreError> {
        let mut conn = self.conn().await?;
        // One MULTI/EXEC: the position and the entries are read at the same instant.
        let (meta, values, secret): SnapshotReply = redis::pipe()
            .atomic()
            .hgetall(meta_key(env))
            .hgetall(values_key(env))
            .hgetall(secret_key(env))
            .query_async(&mut conn)
            .await
            .map_err(self.failed(Op::Read))?;
        let position = self.check(env, parse_meta(&meta)?)?.unwrap_or_default();
        let mut entries: Vec<WireEntry> = values
            .into_iter()
            .map(|(name, v)| WireEntry {
                secret: secret.get(&name).is_some_and(|s| s == "1"),
                name,
                value: Some(Value::new(v)),
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Snapshot {
            env: env.to_string(),
            position,
            entries,
        })
    }

    pub async fn list(&self) -> Result<Vec<EnvInfo>, StoreError> {
        let mut conn = self.conn().await?;
        let mut envs: Vec<String> = conn.smembers(ENVS).await.map_err(self.failed(Op::Read))?;
        envs.sort();
        let mut out = Vec::with_capacity(envs.len());
        for env in envs {
            let (meta, count): (HashMap<String, String>, usize) = redis::pipe()
                .atomic()
                .hgetall(meta_key(&env))
                .hlen(values_key(&env))
                .query_async(&mut conn)
                .await
                .map_err(self.failed(Op::Read))?;
            if let Some(position) = self.check(&env, parse_meta(&meta)?)? {
                out.push(EnvInfo {
                    env,
                    position,
                    entries: count,
                });
            }
        }
        Ok(out)
    }

    /// Start a new history of `env`: a new epoch greater than `floor` and the current one,
    /// history dropped, entries kept. Conditional on the epoch still being `seen`, so nodes
    /// that notice the same thing at once start one history, not several. An environment
    /// Redis lost starts over (an admin's explicit choice): agents take what it holds.
    pub async fn reset(&self, env: &str, floor: Option<Position>) -> Result<Position, StoreError> {
        let mut conn = self.conn().await?;
        let m: HashMap<String, String> = conn
            .hgetall(meta_key(env))
            .await
            .map_err(self.failed(Op::Reset))?;
        let current = match parse_meta(&m)? {
            Some(p) => Some(self.saw(env, p)),
            None if self.is_known(env) => {
                tracing::warn!(env, "an environment redis lost starts over");
                None
            }
            None => {
                return Err(StoreError::Invalid(format!(
                    "environment {env:?} does not exist"
                )));
            }
        };
        let base = match (floor, current) {
            (Some(f), Some(c)) => f.epoch.0.max(c.epoch.0),
            (Some(p), None) | (None, Some(p)) => p.epoch.0,
            (None, None) => 0,
        };
        let fresh = Epoch(Epoch::generate().0.max(base + 1));
        let _: String = self
            .reset
            .key(meta_key(env))
            .key(history_key(env))
            .key(ENVS)
            .arg(current.map(|c| c.epoch.to_string()).unwrap_or_default())
            .arg(fresh.to_string())
            .arg(env)
            .arg(CHANNEL)
            .invoke_async(&mut conn)
            .await
            .map_err(self.failed(Op::Reset))?;
        self.damage.clear(env);
        Ok(self.meta(env).await?.unwrap_or_default())
    }

    /// Change sets after `from.version` up to `current` (read just before), if history still
    /// has them all. The range stops at `current`: change sets committed since are not part
    /// of this answer (they reach the caller live), and must not make it fall back to a
    /// snapshot.
    async fn since(
        &self,
        env: &str,
        from: u64,
        current: Position,
    ) -> Result<Option<Vec<ChangeSet>>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: redis::streams::StreamRangeReply = conn
            .xrange(
                history_key(env),
                format!("{}-0", from + 1),
                format!("{}-0", current.version),
            )
            .await
            .map_err(self.failed(Op::Read))?;
        let mut sets = Vec::with_capacity(reply.ids.len());
        for (i, entry) in reply.ids.iter().enumerate() {
            let version: u64 = entry
                .id
                .split('-')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if version != from + 1 + i as u64 || version > current.version {
                return Ok(None);
            }
            let json: String = entry.get("changes").unwrap_or_default();
            let position = Position {
                epoch: current.epoch,
                version,
            };
            match ChangeSet::from_history(env, position, &json) {
                Ok(set) => sets.push(set),
                Err(e) => {
                    // A damaged history costs the agent a snapshot, never its catch-up.
                    self.damage.note(
                        Some(env),
                        damage::HISTORY,
                        &format!("history unreadable, answering with a snapshot: {e}"),
                        "reset the environment (POST /v1/envs/ENV/reset) to drop its history",
                    );
                    return Ok(None);
                }
            }
        }
        if sets.last().map(|s| s.position.version) != Some(current.version) {
            return Ok(None);
        }
        Ok(Some(sets))
    }

    /// Same contract as the SQLite store's `catch_up`.
    /// An agent that holds `env` at a position Redis does not have is evidence that Redis
    /// lost it (this node may have restarted since): the environment is then known, and
    /// refused like one this node saw vanish, unless `--reset-store`.
    pub async fn catch_up(&self, env: &str, from: Option<Position>) -> Result<CatchUp, StoreError> {
        let current = self.meta(env).await?;
        if let (None, Some(p)) = (current, from) {
            if p.version > 0 && !self.reset_lost {
                self.known().insert(env.to_string());
                self.tell_lost(env, &format!("an agent holds it at {p}"));
                return Err(lost(env));
            }
        }
        let after = match super::plan(env, current, from) {
            Plan::Empty => return Ok(CatchUp::Snapshot(Snapshot::empty(env))),
            Plan::UpToDate => return Ok(CatchUp::UpToDate),
            Plan::Snapshot => return Ok(CatchUp::Snapshot(self.snapshot(env).await?)),
            Plan::Since(v) => v,
        };
        let current = current.unwrap_or_default();
        match self.since(env, after, current).await? {
            Some(sets) => Ok(CatchUp::Changes(sets)),
            None => Ok(CatchUp::Snapshot(self.snapshot(env).await?)),
        }
    }
}

fn lost(env: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "redis no longer holds environment {env:?}, which this node or its agents saw (flushed, \
         or another server?): restore Redis from a backup, or start it over (POST \
         /v1/envs/ENV/reset, or restart the nodes with --reset-store); writes to it are refused \
         so that agents keep what they have"
    ))
}

fn parse_meta(m: &HashMap<String, String>) -> Result<Option<Position>, StoreError> {
    let (Some(epoch), Some(version)) = (m.get("epoch"), m.get("version")) else {
        return Ok(None);
    };
    Ok(Some(Position {
        epoch: epoch.parse().map_err(StoreError::Unavailable)?,
        version: version
            .parse()
            .map_err(|_| StoreError::Unavailable(format!("bad version {version:?} in redis")))?,
    }))
}
