//! The store contract every backend keeps: environments of entries, one version per
//! committed change set, an epoch per history, and the last N change sets for catch-up.
//! The embedded default is SQLite; cluster mode puts the same contract in Redis.

pub mod files;
mod fleet;
pub mod redis;
pub mod size;
pub mod sqlite;

pub use size::{MAX_CHANGE_SET, MAX_ENV, MAX_VALUE};

use std::sync::Arc;

use tether_core::protocol::{Position, WireChange, WireEntry};

/// One committed change set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    pub env: String,
    pub position: Position,
    pub changes: Vec<WireChange>,
}

/// A whole environment at a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub env: String,
    pub position: Position,
    pub entries: Vec<WireEntry>,
}

/// What an agent at some position needs to be current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatchUp {
    UpToDate,
    Changes(Vec<ChangeSet>),
    Snapshot(Snapshot),
}

/// What a catch-up needs from a backend, decided from positions alone; both backends follow
/// it, so they answer the same agent the same way.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing was ever written: an empty environment at position zero.
    Empty,
    UpToDate,
    Snapshot,
    /// The change sets after this version, or a snapshot if history does not have them all.
    Since(u64),
}

pub fn plan(env: &str, current: Option<Position>, from: Option<Position>) -> Plan {
    let Some(current) = current else {
        return match from {
            Some(p) if p == Position::default() => Plan::UpToDate,
            _ => Plan::Empty,
        };
    };
    let Some(from) = from else {
        return Plan::Snapshot;
    };
    let impossible = from.epoch > current.epoch
        || (from.epoch == current.epoch && from.version > current.version);
    if impossible {
        tracing::warn!(env, agent = %from, store = %current, "an agent is ahead of the store (restored? run a reset)");
        return Plan::Snapshot;
    }
    if from.epoch != current.epoch {
        Plan::Snapshot
    } else if from.version == current.version {
        Plan::UpToDate
    } else {
        Plan::Since(from.version)
    }
}

impl ChangeSet {
    /// A change set as kept in history (its changes as JSON), at `position`. The error
    /// names where the JSON broke, never what it holds (serde_json's text quotes the input,
    /// which may be a secret value).
    pub fn from_history(
        env: &str,
        position: Position,
        json: &str,
    ) -> Result<ChangeSet, StoreError> {
        let changes = serde_json::from_str(json).map_err(|e| {
            StoreError::Unavailable(format!(
                "corrupt history: version {} does not parse ({}, line {} column {})",
                position.version,
                json_category(&e),
                e.line(),
                e.column()
            ))
        })?;
        Ok(ChangeSet {
            env: env.to_string(),
            position,
            changes,
        })
    }
}

/// What kind of JSON error `e` is, in words that quote nothing of the input.
fn json_category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "an I/O error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "JSON cut short",
    }
}

impl Snapshot {
    /// The empty environment at position zero.
    pub fn empty(env: &str) -> Snapshot {
        Snapshot {
            env: env.to_string(),
            position: Position::default(),
            entries: Vec::new(),
        }
    }
}

/// What `/readyz` (answered without a token) says of damage: fixed sentences that name no
/// environment and quote nothing stored. The node's log has the details.
pub mod damage {
    pub const HISTORY: &str = "the store is damaged: the history of an environment cannot be \
        read (its agents get snapshots); see the node's log";
    pub const FILE: &str = "the store is damaged: the database file is corrupt; see the node's log";
    pub const LOST: &str = "the store is damaged: redis no longer holds an environment that \
        this node or its agents saw (flushed, or another server?), and writes to it are \
        refused; see the node's log";
}

/// Damage found while running, kept for `/readyz`: per environment (cleared when an admin
/// resets it, which drops its history), or of the whole store (`None`, until a restart).
#[derive(Default)]
pub struct Damage(std::sync::Mutex<std::collections::BTreeMap<Option<String>, &'static str>>);

impl Damage {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<Option<String>, &'static str>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remember damage of `env` (or of the store) for `/readyz`; `detail` goes to the log
    /// (at error level the first time, then at debug), never to `/readyz`.
    pub fn note(&self, env: Option<&str>, public: &'static str, detail: &str, advice: &str) {
        let first = self
            .lock()
            .insert(env.map(str::to_string), public)
            .is_none();
        if first {
            tracing::error!(env, damage = %detail, "the store is damaged: {advice}");
        } else {
            tracing::debug!(env, damage = %detail, "the store is damaged");
        }
    }

    /// An admin reset `env`: its history, where the damage was, is gone.
    pub fn clear(&self, env: &str) {
        self.lock().remove(&Some(env.to_string()));
    }

    /// The first sentence for `/readyz`, if anything is damaged.
    pub fn get(&self) -> Option<&'static str> {
        let d = self.lock();
        d.get(&None).or_else(|| d.values().next()).copied()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EnvInfo {
    pub env: String,
    pub position: Position,
    pub entries: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid change: {0}")]
    Invalid(String),
    #[error("version conflict: environment is at {actual}, change expected {expected}")]
    Conflict { expected: u64, actual: u64 },
    #[error("environment {env:?} has no entry {name:?}")]
    Missing { env: String, name: String },
    /// Over a limit on what agents receive; `what` names the environment.
    #[error(
        "{what} would be {size} bytes as sent to agents, over the {limit}-byte limit \
         (values count JSON-escaped, non-UTF-8 bytes as base64, plus {overhead} bytes per entry)",
        overhead = size::ENTRY_OVERHEAD
    )]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
}

impl StoreError {
    /// The environment `env` would grow to `size` bytes on the wire.
    pub fn env_too_large(env: &str, size: usize) -> StoreError {
        StoreError::TooLarge {
            what: format!("environment {env:?}"),
            size,
            limit: MAX_ENV,
        }
    }
}

/// The store behind a node.
#[derive(Clone)]
pub enum Store {
    Sqlite(Arc<sqlite::SqliteStore>),
    Redis(Arc<self::redis::RedisStore>),
}

impl Store {
    /// Commit one change set atomically; `expect` makes it conditional on the current version.
    pub async fn commit(
        &self,
        env: &str,
        changes: Vec<WireChange>,
        expect: Option<u64>,
    ) -> Result<ChangeSet, StoreError> {
        validate_changes(env, &changes)?;
        match self {
            Store::Sqlite(s) => {
                let (s, env) = (s.clone(), env.to_string());
                blocking(move || s.commit(&env, &changes, expect)).await
            }
            Store::Redis(r) => r.commit(env, &changes, expect).await,
        }
    }

    pub async fn snapshot(&self, env: &str) -> Result<Snapshot, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, env) = (s.clone(), env.to_string());
                blocking(move || s.snapshot(&env)).await
            }
            Store::Redis(r) => r.snapshot(env).await,
        }
    }

    pub async fn catch_up(&self, env: &str, from: Option<Position>) -> Result<CatchUp, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, env) = (s.clone(), env.to_string());
                blocking(move || s.catch_up(&env, from)).await
            }
            Store::Redis(r) => r.catch_up(env, from).await,
        }
    }

    pub async fn list(&self) -> Result<Vec<EnvInfo>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.list()).await
            }
            Store::Redis(r) => r.list().await,
        }
    }

    /// Start a new history of `env` (a new, greater epoch; history dropped; entries kept),
    /// with an epoch greater than `floor`'s too.
    pub async fn reset(&self, env: &str, floor: Option<Position>) -> Result<Position, StoreError> {
        validate_name("environment", env)?;
        match self {
            Store::Sqlite(s) => {
                let (s, env) = (s.clone(), env.to_string());
                blocking(move || s.reset(&env)).await
            }
            Store::Redis(r) => r.reset(env, floor).await,
        }
    }

    /// Keep `history` change sets per environment from the next commit of each on.
    pub fn set_history(&self, history: u64) {
        match self {
            Store::Sqlite(s) => s.set_history(history),
            Store::Redis(r) => r.set_history(history),
        }
    }

    /// The store's kind, as logs and `STATUS=` name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Redis(_) => "redis",
        }
    }

    /// Damage found in the store while running, if any: a fixed sentence for `/readyz`
    /// (answered without a token), naming no environment and quoting nothing stored; the
    /// details are in the node's log.
    pub async fn damage(&self) -> Option<String> {
        match self {
            Store::Sqlite(s) => s.damage().map(str::to_string),
            Store::Redis(r) => r.damage().await,
        }
    }

    pub async fn position(&self, env: &str) -> Result<Position, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (s, env) = (s.clone(), env.to_string());
                blocking(move || s.position(&env)).await
            }
            Store::Redis(r) => r.position(env).await,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

/// [`tether_core::limits::validate_name`], as a store error.
pub fn validate_name(kind: &str, name: &str) -> Result<(), StoreError> {
    tether_core::limits::validate_name(kind, name).map_err(StoreError::Invalid)
}

fn validate_changes(env: &str, changes: &[WireChange]) -> Result<(), StoreError> {
    validate_name("environment", env)?;
    if changes.is_empty() {
        return Err(StoreError::Invalid(
            "a change set needs at least one change".into(),
        ));
    }
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    for c in changes {
        validate_name("entry", &c.name)?;
        if !seen.insert(c.name.as_str()) {
            return Err(StoreError::Invalid(format!(
                "entry {:?} appears twice in one change set",
                c.name
            )));
        }
        match (&c.value, c.delete) {
            (Some(_), true) => {
                return Err(StoreError::Invalid(format!(
                    "entry {:?} has both a value and delete",
                    c.name
                )));
            }
            (None, false) => {
                return Err(StoreError::Invalid(format!(
                    "entry {:?} has no value",
                    c.name
                )));
            }
            (Some(v), false) if v.len() > MAX_VALUE => {
                return Err(StoreError::Invalid(format!(
                    "value of {:?} is {} bytes, over the {MAX_VALUE}-byte limit",
                    c.name,
                    v.len()
                )));
            }
            _ => {}
        }
        total += match &c.value {
            Some(v) if !c.delete => size::entry_size(&c.name, v.expose()),
            _ => size::delete_size(&c.name),
        };
    }
    if total > MAX_CHANGE_SET {
        return Err(StoreError::TooLarge {
            what: format!("a change set for environment {env:?}"),
            size: total,
            limit: MAX_CHANGE_SET,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's messages quote the input (`invalid type: string "..."`): a damaged
    /// history row must not carry a value into an error, a log line or `/readyz`.
    #[test]
    fn a_history_error_quotes_nothing_of_the_row() {
        let p = Position {
            epoch: tether_core::protocol::Epoch(7),
            version: 3,
        };
        for row in [
            r#"[{"name": "A", "value": "x", "secret": "hunter2-marker"}]"#,
            r#"[{"name": "A", "value": {"hunter2-marker": 1}}]"#,
            r#"[{"name": "hunter2-marker", "value": "x", "bogus"#,
            r#"hunter2-marker"#,
            r#"[{"name": "A", "value": "x", "hunter2-marker": 1}"#,
        ] {
            let e = ChangeSet::from_history("prod", p, row)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("version 3") && e.contains("line 1"), "{e}");
        }
    }
}
