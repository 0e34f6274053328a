//! The cluster store: Redis holds the entries, the version and epoch of each environment,
//! and its history as a capped stream. One Lua script per change set checks and bumps the
//! version, writes the entries, appends the change set to the stream and publishes it, so
//! the store and the bus never disagree about what was committed.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{CatchUp, ChangeSet, Damage, EnvInfo, Plan, Snapshot, StoreError, damage};
use tether_core::protocol::{Epoch, Position, WireChange, WireEntry};
use tether_core::secret::Value;

/// The Pub/Sub channel every node subscribes to.
pub const CHANNEL: &str = "tether:changes";
const ENVS: &str = "tether:envs";
/// The nodes that keep their agent registry in Redis (for cluster-wide rollout status).
const AGENT_NODES: &str = "tether:agent-nodes";

fn agents_key(node: &str) -> String {
    format!("tether:agents:{node}")
}

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

/// KEYS: meta, values, secret, history, envs, wire sizes.
/// ARGV: env, expected version or "", epoch for a new environment ("" if it must exist: the
///       node saw it, so its absence means Redis lost it), history length,
///       change-set JSON, channel, then (op, name, value, secret, wire size) per change.
/// The node computes each new entry's wire size (`store::size`); the script keeps them per
/// entry (`size:length`) and in total. An entry it has no size for (written by an older
/// version) is counted with the Lua `entry_size`, which is slow but gives the same answer.
const COMMIT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if not epoch then
  if ARGV[3] == '' then
    return {'lost'}
  end
  epoch = ARGV[3]
  version = 0
  -- A new history: whatever stream is left belongs to an old one.
  redis.call('DEL', KEYS[4])
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= version then
  return {'conflict', tostring(version)}
end
local function cost(name)
  local n = redis.call('HSTRLEN', KEYS[2], name)
  local c = redis.call('HGET', KEYS[6], name)
  if c then
    local w, len = string.match(c, '^(%d+):(%d+)$')
    if w and tonumber(len) == n then
      return tonumber(w)
    end
  end
  return entry_size(name, redis.call('HGET', KEYS[2], name))
end
-- Raw size, kept for nodes of older versions; wire size (store::size), the limit.
local size = tonumber(redis.call('HGET', KEYS[1], 'size') or '0')
local wire = tonumber(redis.call('HGET', KEYS[1], 'wire') or '')
if not wire or redis.call('HGET', KEYS[1], 'wire_at') ~= tostring(version) then
  -- First write since an upgrade, or after an older node's write: count it all.
  wire = 0
  for _, name in ipairs(redis.call('HKEYS', KEYS[2])) do
    wire = wire + cost(name)
  end
end
local before = wire
local j = 7
while j <= #ARGV do
  local existed = redis.call('HEXISTS', KEYS[2], ARGV[j + 1]) == 1
  if ARGV[j] == 'del' and not existed then
    return {'missing', ARGV[j + 1]}
  end
  if existed then
    size = size - redis.call('HSTRLEN', KEYS[2], ARGV[j + 1]) - #ARGV[j + 1]
    wire = wire - cost(ARGV[j + 1])
  end
  if ARGV[j] == 'set' then
    size = size + #ARGV[j + 2] + #ARGV[j + 1]
    wire = wire + tonumber(ARGV[j + 4])
  end
  j = j + 5
end
-- A write that does not grow the environment is taken even over the limit (to trim one).
if wire > MAX_ENV_BYTES and wire > before then
  return {'too_big', tostring(wire)}
end
version = version + 1
-- The only call that can fail on valid input goes first: a failed script writes nothing.
redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[4], tostring(version) .. '-0', 'changes', ARGV[5])
redis.call('HSET', KEYS[1], 'epoch', epoch, 'version', version, 'size', size, 'wire', wire,
  'wire_at', version)
redis.call('SADD', KEYS[5], ARGV[1])
local i = 7
while i <= #ARGV do
  if ARGV[i] == 'set' then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 3])
    redis.call('HSET', KEYS[6], ARGV[i + 1], ARGV[i + 4] .. ':' .. #ARGV[i + 2])
  else
    redis.call('HDEL', KEYS[2], ARGV[i + 1])
    redis.call('HDEL', KEYS[3], ARGV[i + 1])
    redis.call('HDEL', KEYS[6], ARGV[i + 1])
  end
  i = i + 5
end
redis.call('PUBLISH', ARGV[6], '{"env":' .. cjson.encode(ARGV[1]) .. ',"position":{"epoch":"' .. epoch
  .. '","version":' .. version .. '},"changes":' .. ARGV[5] .. '}')
return {'ok', epoch, tostring(version)}
"#;

/// KEYS: meta, history, envs. ARGV: the epoch the caller saw ("" for an environment Redis
/// lost), the new epoch, env, channel.
/// Starts a new history unless someone already did, and tells every node (a notice
/// without changes: nodes catch up, which means a snapshot). A lost environment starts
/// over at version 0 with whatever entries Redis still holds of it.
const RESET: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
if epoch == ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
  redis.call('DEL', KEYS[2])
  if epoch == '' then
    redis.call('HSETNX', KEYS[1], 'version', '0')
    redis.call('SADD', KEYS[3], ARGV[3])
  end
  local version = redis.call('HGET', KEYS[1], 'version') or '0'
  redis.call('PUBLISH', ARGV[4], '{"env":' .. cjson.encode(ARGV[3]) .. ',"position":{"epoch":"' .. ARGV[2]
    .. '","version":' .. version .. '},"changes":[]}')
  return ARGV[2]
end
return epoch
"#;

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
    history: u64,
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
}

type SnapshotReply = (
    HashMap<String, String>,
    HashMap<String, Vec<u8>>,
    HashMap<String, String>,
);

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

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
            history: history.max(1),
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
            .map_err(unavailable)
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
            .arg(self.history)
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
        let reply: Vec<String> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
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
        let m: HashMap<String, String> = conn.hgetall(meta_key(env)).await.map_err(unavailable)?;
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
            .map_err(unavailable)?;
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
        let mut envs: Vec<String> = conn.smembers(ENVS).await.map_err(unavailable)?;
        envs.sort();
        let mut out = Vec::with_capacity(envs.len());
        for env in envs {
            let (meta, count): (HashMap<String, String>, usize) = redis::pipe()
                .atomic()
                .hgetall(meta_key(&env))
                .hlen(values_key(&env))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
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

    /// Keep this node's agent registry (JSON) in Redis for `ttl`: a node that stops
    /// refreshing it drops out of the cluster's rollout status by itself.
    pub async fn put_agents(
        &self,
        node: &str,
        json: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .cmd("SET")
            .arg(agents_key(node))
            .arg(json)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore()
            .sadd(AGENT_NODES, node)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Remove this node's agent registry (a clean shutdown).
    pub async fn drop_agents(&self, node: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .del(agents_key(node))
            .ignore()
            .srem(AGENT_NODES, node)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Every live node's agent registry, as node id and JSON. Nodes whose registry expired
    /// are forgotten.
    pub async fn all_agents(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.conn().await?;
        let mut nodes: Vec<String> = conn.smembers(AGENT_NODES).await.map_err(unavailable)?;
        nodes.sort();
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| agents_key(n)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for (node, value) in nodes.into_iter().zip(values) {
            match value {
                Some(json) => out.push((node, json)),
                None => {
                    let _: Result<(), _> = conn.srem(AGENT_NODES, &node).await;
                }
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
        let m: HashMap<String, String> = conn.hgetall(meta_key(env)).await.map_err(unavailable)?;
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
            .map_err(unavailable)?;
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
            .map_err(unavailable)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::size::tests::Redis;

    fn set(name: &str, value: Vec<u8>) -> WireChange {
        WireChange {
            name: name.into(),
            value: Some(Value::new(value)),
            secret: false,
            delete: false,
        }
    }

    /// The commit script counts bytes as sent, like the SQLite store: of seven values of
    /// control characters two fit (with a 1 MiB limit here, and 64 KiB values: 384 KiB as
    /// sent); an environment found over the limit (written by an older version, which kept
    /// no wire sizes) can be trimmed but not grown.
    #[tokio::test]
    async fn the_limit_counts_bytes_as_sent() {
        let redis = Redis::start();
        let mut raw = redis.connection();
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.1)).unwrap();
        let store = RedisStore::with_limit(client, 10, false, 1 << 20);
        let ctl = vec![1u8; 64 * 1024];
        let mut refused = 0;
        for i in 0..7 {
            match store
                .commit("prod", &[set(&format!("V{i}"), ctl.clone())], None)
                .await
            {
                Ok(_) => {}
                Err(StoreError::TooLarge { size, what, .. }) => {
                    assert!(size > 1 << 20 && what.contains("\"prod\""), "{what}");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 5, "two fit in 1 MiB as sent, not three");

        // As an older version would have left it: over the limit, no wire sizes.
        for i in 2..4 {
            let _: () = redis::cmd("HSET")
                .arg(values_key("prod"))
                .arg(format!("V{i}"))
                .arg(ctl.as_slice())
                .query(&mut raw)
                .unwrap();
        }
        let _: () = redis::cmd("HDEL")
            .arg(meta_key("prod"))
            .arg("wire")
            .query(&mut raw)
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(wire_key("prod"))
            .query(&mut raw)
            .unwrap();
        let r = store.commit("prod", &[set("B", b"2".to_vec())], None).await;
        assert!(matches!(r, Err(StoreError::TooLarge { .. })), "{r:?}");
        let del = WireChange {
            name: "V3".into(),
            value: None,
            secret: false,
            delete: true,
        };
        store
            .commit("prod", &[del], None)
            .await
            .expect("a delete is taken over the limit");
        store
            .commit("prod", &[set("V2", b"small".to_vec())], None)
            .await
            .expect("a smaller value is taken over the limit");
        let r = store.commit("prod", &[set("B", ctl.clone())], None).await;
        assert!(matches!(r, Err(StoreError::TooLarge { .. })), "{r:?}");
    }
}
