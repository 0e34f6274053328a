//! The embedded store: SQLite in WAL mode under `--data`. One transaction per change set
//! bumps the version, writes the entries and appends the change set to the history, which
//! keeps the last N change sets. `synchronous = NORMAL`: a commit survives a crash or
//! restart of the node (not a power loss of the machine). The files, and a store found
//! empty or damaged at start, are `files`' business; damage found while running is kept
//! here for `/readyz`.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod fleet;

use super::files::{self, OpenError};
use super::{CatchUp, ChangeSet, Damage, EnvInfo, Plan, Snapshot, StoreError, damage};
use tether_core::protocol::{Epoch, Position, WireChange, WireEntry};
use tether_core::secret::Value;

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Change sets kept per environment; a reload may change it (applied at each commit).
    history: AtomicU64,
    /// What was found damaged while running (reported by `/readyz`).
    damage: Damage,
}

/// How an error from a damaged file starts, so the store can tell it from others.
const DAMAGED: &str = "store damaged: ";

fn db_err(e: rusqlite::Error) -> StoreError {
    if files::is_corrupt(&e) {
        StoreError::Unavailable(format!("{DAMAGED}sqlite: {e}"))
    } else {
        StoreError::Unavailable(format!("sqlite: {e}"))
    }
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS envs (
    name    TEXT PRIMARY KEY,
    epoch   INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    env    TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  BLOB NOT NULL,
    secret INTEGER NOT NULL,
    PRIMARY KEY (env, name)
);
CREATE TABLE IF NOT EXISTS history (
    env     TEXT NOT NULL,
    version INTEGER NOT NULL,
    changes TEXT NOT NULL,
    PRIMARY KEY (env, version)
);
CREATE TABLE IF NOT EXISTS policies (
    env    TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    env    TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
";

impl SqliteStore {
    /// Open (or create) `dir/tether.db`. `history` is how many change sets to keep. A store
    /// that is there but empty or damaged is refused.
    pub fn open(dir: &Path, history: u64) -> Result<SqliteStore, OpenError> {
        SqliteStore::open_with(dir, history, false)
    }

    /// [`open`](Self::open); with `reset`, a damaged store is moved aside and replaced by
    /// what can still be read from it (`--reset-store`).
    pub fn open_with(dir: &Path, history: u64, reset: bool) -> Result<SqliteStore, OpenError> {
        let db = files::prepare(dir, reset)?;
        let conn = Connection::open(db).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            history: AtomicU64::new(history.max(1)),
            damage: Damage::default(),
        })
    }

    /// Change sets kept per environment from the next commit on (at least one).
    pub fn set_history(&self, history: u64) {
        self.history.store(history.max(1), Ordering::Relaxed);
    }

    /// What was found damaged while running, if anything (a sentence for `/readyz`).
    pub fn damage(&self) -> Option<&'static str> {
        self.damage.get()
    }

    /// Pass `r` on, noting damage if it is an error from a damaged file.
    fn watch<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Unavailable(m)) = &r {
            if let Some(what) = m.strip_prefix(DAMAGED) {
                self.damage.note(
                    None,
                    damage::FILE,
                    what,
                    "restore a backup, or restart with --reset-store",
                );
            }
        }
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn commit(
        &self,
        env: &str,
        changes: &[WireChange],
        expect: Option<u64>,
    ) -> Result<ChangeSet, StoreError> {
        self.watch(self.commit_locked(env, changes, expect))
    }

    fn commit_locked(
        &self,
        env: &str,
        changes: &[WireChange],
        expect: Option<u64>,
    ) -> Result<ChangeSet, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let current = position(&tx, env)?;
        let (epoch, version) = match current {
            Some(p) => (p.epoch, p.version),
            None => (Epoch::generate(), 0),
        };
        if let Some(expected) = expect {
            if expected != version {
                return Err(StoreError::Conflict {
                    expected,
                    actual: version,
                });
            }
        }
        let next = version + 1;
        tx.execute(
            "INSERT INTO envs (name, epoch, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            params![env, epoch.0 as i64, next as i64],
        )
        .map_err(db_err)?;
        // Deleting what is not there is a mistake (a typo), not an empty new version.
        for c in changes.iter().filter(|c| c.delete) {
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM entries WHERE env = ?1 AND name = ?2)",
                    params![env, c.name],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if !exists {
                return Err(StoreError::Missing {
                    env: env.to_string(),
                    name: c.name.clone(),
                });
            }
        }
        // Wire size (store::size) of the entries this change set replaces or deletes.
        let mut replaced = 0;
        for c in changes {
            let old: Option<usize> = tx
                .query_row(
                    "SELECT value FROM entries WHERE env = ?1 AND name = ?2",
                    params![env, c.name],
                    |r| Ok(super::size::entry_size(&c.name, r.get_ref(0)?.as_bytes()?)),
                )
                .optional()
                .map_err(db_err)?;
            replaced += old.unwrap_or(0);
        }
        for c in changes {
            match &c.value {
                Some(v) if !c.delete => tx
                    .execute(
                        "INSERT INTO entries (env, name, value, secret) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (env, name) DO UPDATE SET value = excluded.value, secret = excluded.secret",
                        params![env, c.name, v.expose(), c.secret],
                    )
                    .map_err(db_err)?,
                _ => tx
                    .execute("DELETE FROM entries WHERE env = ?1 AND name = ?2", params![env, c.name])
                    .map_err(db_err)?,
            };
        }
        let size = wire_size(&tx, env)?;
        let added: usize = changes
            .iter()
            .filter(|c| !c.delete)
            .filter_map(|c| Some(super::size::entry_size(&c.name, c.value.as_ref()?.expose())))
            .sum();
        // A write that does not grow the environment is taken even over the limit, so that
        // one left over it (by an older version) can be trimmed.
        if size > super::MAX_ENV && added > replaced {
            // Dropping the transaction rolls the change back.
            return Err(StoreError::env_too_large(env, size));
        }
        let json =
            serde_json::to_string(changes).map_err(|e| StoreError::Invalid(e.to_string()))?;
        tx.execute(
            "INSERT INTO history (env, version, changes) VALUES (?1, ?2, ?3)",
            params![env, next as i64, json],
        )
        .map_err(db_err)?;
        let history = self.history.load(Ordering::Relaxed);
        if next > history {
            tx.execute(
                "DELETE FROM history WHERE env = ?1 AND version <= ?2",
                params![env, (next - history) as i64],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(ChangeSet {
            env: env.to_string(),
            position: Position {
                epoch,
                version: next,
            },
            changes: changes.to_vec(),
        })
    }

    /// Start a new history of `env` (after a restore): a new, greater epoch, history
    /// dropped, entries kept. Every agent takes a snapshot.
    pub fn reset(&self, env: &str) -> Result<Position, StoreError> {
        let mut conn = self.lock();
        let Some(current) = self.watch(position(&conn, env))? else {
            return Err(StoreError::Invalid(format!(
                "environment {env:?} does not exist"
            )));
        };
        let epoch = self.watch(reset_epoch(&mut conn, env, current.epoch))?;
        self.damage.clear(env);
        Ok(Position {
            epoch,
            version: current.version,
        })
    }

    pub fn position(&self, env: &str) -> Result<Position, StoreError> {
        Ok(self.watch(position(&self.lock(), env))?.unwrap_or_default())
    }

    pub fn snapshot(&self, env: &str) -> Result<Snapshot, StoreError> {
        let conn = self.lock();
        self.watch(snapshot(&conn, env))
    }

    pub fn list(&self) -> Result<Vec<EnvInfo>, StoreError> {
        self.watch(list(&self.lock()))
    }

    /// What an agent at `from` needs. A position this store cannot have produced (a newer
    /// epoch, or a version above ours: the store was restored, or the claim is forged) gets
    /// a snapshot, which the agent ignores as older; only an admin's `reset` starts a new
    /// history, so no reader can push every agent into a snapshot.
    pub fn catch_up(&self, env: &str, from: Option<Position>) -> Result<CatchUp, StoreError> {
        let conn = self.lock();
        let current = self.watch(position(&conn, env))?;
        let after = match super::plan(env, current, from) {
            Plan::Empty => return Ok(CatchUp::Snapshot(Snapshot::empty(env))),
            Plan::UpToDate => return Ok(CatchUp::UpToDate),
            Plan::Snapshot => return self.watch(snapshot(&conn, env)).map(CatchUp::Snapshot),
            Plan::Since(v) => v,
        };
        match since(&conn, env, after, current.unwrap_or_default()) {
            Ok(Some(sets)) => return Ok(CatchUp::Changes(sets)),
            Ok(None) => {}
            Err(e) => {
                // A damaged history costs the agent a snapshot, never its catch-up.
                self.damage.note(
                    Some(env),
                    damage::HISTORY,
                    &format!("history unreadable, answering with a snapshot: {e}"),
                    "reset the environment (POST /v1/envs/ENV/reset) to drop its history, \
                     or restore a backup",
                );
            }
        }
        self.watch(snapshot(&conn, env)).map(CatchUp::Snapshot)
    }
}

/// The change sets after version `after` up to `current`, if history has them all.
fn since(
    conn: &Connection,
    env: &str,
    after: u64,
    current: Position,
) -> Result<Option<Vec<ChangeSet>>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT version, changes FROM history WHERE env = ?1 AND version > ?2 ORDER BY version",
        )
        .map_err(db_err)?;
    let rows: Vec<(u64, String)> = stmt
        .query_map(params![env, after as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    let complete = rows.first().is_some_and(|(v, _)| *v == after + 1)
        && rows.len() as u64 == current.version - after;
    if !complete {
        return Ok(None);
    }
    let mut sets = Vec::with_capacity(rows.len());
    for (version, json) in rows {
        let position = Position {
            epoch: current.epoch,
            version,
        };
        sets.push(ChangeSet::from_history(env, position, &json)?);
    }
    Ok(Some(sets))
}

fn list(conn: &Connection) -> Result<Vec<EnvInfo>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT e.name, e.epoch, e.version, (SELECT count(*) FROM entries WHERE env = e.name)
             FROM envs e ORDER BY e.name",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(EnvInfo {
                env: r.get(0)?,
                position: Position {
                    epoch: Epoch(r.get::<_, i64>(1)? as u64),
                    version: r.get::<_, i64>(2)? as u64,
                },
                entries: r.get::<_, i64>(3)? as usize,
            })
        })
        .map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}

/// The environment's size as sent in a snapshot frame (`store::size`).
fn wire_size(conn: &Connection, env: &str) -> Result<usize, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT name, value FROM entries WHERE env = ?1")
        .map_err(db_err)?;
    let mut rows = stmt.query(params![env]).map_err(db_err)?;
    let mut total = 0;
    while let Some(r) = rows.next().map_err(db_err)? {
        let name = r.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(db_err)?;
        let value = r
            .get_ref(1)
            .and_then(|v| Ok(v.as_bytes()?))
            .map_err(db_err)?;
        total += super::size::entry_size(name, value);
    }
    Ok(total)
}

fn position(conn: &Connection, env: &str) -> Result<Option<Position>, StoreError> {
    conn.query_row(
        "SELECT epoch, version FROM envs WHERE name = ?1",
        params![env],
        |r| {
            Ok(Position {
                epoch: Epoch(r.get::<_, i64>(0)? as u64),
                version: r.get::<_, i64>(1)? as u64,
            })
        },
    )
    .optional()
    .map_err(db_err)
}

fn snapshot(conn: &Connection, env: &str) -> Result<Snapshot, StoreError> {
    let position = position(conn, env)?.unwrap_or_default();
    let mut stmt = conn
        .prepare("SELECT name, value, secret FROM entries WHERE env = ?1 ORDER BY name")
        .map_err(db_err)?;
    let entries = stmt
        .query_map(params![env], |r| {
            Ok(WireEntry {
                name: r.get(0)?,
                value: Some(Value::new(r.get::<_, Vec<u8>>(1)?)),
                secret: r.get(2)?,
            })
        })
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    Ok(Snapshot {
        env: env.to_string(),
        position,
        entries,
    })
}

fn reset_epoch(conn: &mut Connection, env: &str, old: Epoch) -> Result<Epoch, StoreError> {
    let epoch = Epoch(Epoch::generate().0.max(old.0 + 1));
    let tx = conn.transaction().map_err(db_err)?;
    tx.execute(
        "UPDATE envs SET epoch = ?2 WHERE name = ?1",
        params![env, epoch.0 as i64],
    )
    .map_err(db_err)?;
    tx.execute("DELETE FROM history WHERE env = ?1", params![env])
        .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, v: &str) -> WireChange {
        WireChange {
            name: name.into(),
            value: Some(Value::from(v)),
            secret: true,
            delete: false,
        }
    }

    fn del(name: &str) -> WireChange {
        WireChange {
            name: name.into(),
            value: None,
            secret: false,
            delete: true,
        }
    }

    #[test]
    fn versions_history_and_catch_up() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path(), 3).unwrap();
        assert_eq!(
            s.catch_up("prod", None).unwrap(),
            CatchUp::Snapshot(Snapshot {
                env: "prod".into(),
                position: Position::default(),
                entries: vec![]
            })
        );
        let c1 = s
            .commit("prod", &[set("A", "1"), set("B", "1")], None)
            .unwrap();
        assert_eq!(c1.position.version, 1);
        let c2 = s
            .commit("prod", &[set("A", "2"), del("B")], Some(1))
            .unwrap();
        assert_eq!(
            c2.position,
            Position {
                epoch: c1.position.epoch,
                version: 2
            }
        );
        assert!(matches!(
            s.commit("prod", &[set("A", "3")], Some(1)),
            Err(StoreError::Conflict {
                expected: 1,
                actual: 2
            })
        ));
        let snap = s.snapshot("prod").unwrap();
        assert_eq!(snap.position.version, 2);
        assert_eq!(snap.entries.len(), 1);
        assert_eq!(snap.entries[0].value.as_ref().unwrap().expose(), b"2");

        match s.catch_up("prod", Some(c1.position)).unwrap() {
            CatchUp::Changes(sets) => assert_eq!(sets, vec![c2.clone()]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.catch_up("prod", Some(c2.position)).unwrap(),
            CatchUp::UpToDate
        );

        // History keeps 3 change sets: from version 1 the gap is too old after 5 commits.
        for i in 0..3 {
            s.commit("prod", &[set("A", &format!("x{i}"))], None)
                .unwrap();
        }
        assert!(matches!(
            s.catch_up("prod", Some(c1.position)).unwrap(),
            CatchUp::Snapshot(_)
        ));
        assert!(
            matches!(s.catch_up("prod", Some(c2.position)).unwrap(), CatchUp::Changes(v) if v.len() == 3)
        );
    }

    #[test]
    fn survives_reopen_and_only_an_explicit_reset_starts_a_new_epoch() {
        let d = tempfile::tempdir().unwrap();
        let c1 = {
            let s = SqliteStore::open(d.path(), 10).unwrap();
            s.commit("prod", &[set("A", "1")], None).unwrap()
        };
        let s = SqliteStore::open(d.path(), 10).unwrap();
        assert_eq!(s.position("prod").unwrap(), c1.position);
        let ahead = Position {
            epoch: c1.position.epoch,
            version: 9,
        };
        // A claim to be ahead gets what the store has, and changes nothing.
        match s.catch_up("prod", Some(ahead)).unwrap() {
            CatchUp::Snapshot(snap) => assert_eq!(snap.position, c1.position),
            other => panic!("{other:?}"),
        }
        let reset = s.reset("prod").unwrap();
        assert!(reset.epoch > c1.position.epoch);
        assert_eq!(reset.version, 1);
        assert!(
            matches!(s.catch_up("prod", Some(c1.position)).unwrap(), CatchUp::Snapshot(snap) if snap.position == reset)
        );
    }

    #[test]
    fn list_counts_entries() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path(), 10).unwrap();
        s.commit("a", &[set("X", "1"), set("Y", "1")], None)
            .unwrap();
        s.commit("b", &[set("X", "1")], None).unwrap();
        let l = s.list().unwrap();
        assert_eq!(
            l.iter()
                .map(|i| (i.env.as_str(), i.entries))
                .collect::<Vec<_>>(),
            [("a", 2), ("b", 1)]
        );
    }

    #[test]
    fn deleting_a_missing_entry_is_refused_and_commits_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path(), 10).unwrap();
        let c1 = s.commit("prod", &[set("A", "1")], None).unwrap();
        assert!(matches!(
            s.commit("prod", &[set("B", "1"), del("TYPO")], None),
            Err(StoreError::Missing { name, .. }) if name == "TYPO"
        ));
        assert_eq!(
            s.position("prod").unwrap(),
            c1.position,
            "nothing committed"
        );
        assert_eq!(s.snapshot("prod").unwrap().entries.len(), 1);
    }

    #[test]
    fn an_environment_stays_small_enough_for_one_snapshot_frame() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path(), 10).unwrap();
        let big = "x".repeat(500 * 1024);
        let mut last = None;
        for i in 0..20 {
            match s.commit("prod", &[set(&format!("CERT{i}"), &big)], None) {
                Ok(c) => last = Some(c.position),
                Err(e @ StoreError::TooLarge { .. }) => {
                    let m = e.to_string();
                    assert!(m.contains("limit") && m.contains("\"prod\""), "{m}");
                    assert!(i >= 8, "refused too early at {i}");
                    assert_eq!(
                        s.position("prod").unwrap(),
                        last.unwrap(),
                        "nothing committed"
                    );
                    return;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("20 values of 500 KiB were accepted");
    }

    /// Control characters cost 6 bytes on the wire: seven 512 KiB values of them would make
    /// a 22 MB snapshot, over an agent's frame limit. The limit counts what is sent.
    #[test]
    fn the_limit_counts_bytes_as_sent() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path(), 10).unwrap();
        let ctl = String::from_utf8(vec![1; 512 * 1024]).unwrap();
        let mut refused = 0;
        for i in 0..7 {
            match s.commit("prod", &[set(&format!("V{i}"), &ctl)], None) {
                Ok(_) => {}
                Err(StoreError::TooLarge { size, limit, .. }) => {
                    assert!(size > limit);
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 5, "two fit in 8 MiB as sent, not three");
        let snap = s.snapshot("prod").unwrap();
        let frame = crate::hub::snapshot_frame(&snap, true);
        assert!(frame.len() <= super::super::MAX_ENV + super::super::size::FRAME_HEADER);
        let counted = wire_size(&s.lock(), "prod").unwrap();
        assert!(
            counted <= frame.len() && frame.len() <= counted + super::super::size::FRAME_HEADER
        );
    }

    /// An environment left over the limit (by an older version) can still be trimmed: a
    /// write that does not grow it is taken, one that grows it is refused.
    #[test]
    fn an_environment_over_the_limit_can_be_trimmed() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path(), 10).unwrap();
        s.commit("prod", &[set("A", "1")], None).unwrap();
        {
            let conn = s.lock();
            for i in 0..7 {
                conn.execute(
                    "INSERT INTO entries (env, name, value, secret) VALUES ('prod', ?1, ?2, 0)",
                    params![format!("OLD{i}"), vec![1u8; 512 * 1024]],
                )
                .unwrap();
            }
        }
        assert!(matches!(
            s.commit("prod", &[set("B", "2")], None),
            Err(StoreError::TooLarge { .. })
        ));
        s.commit("prod", &[del("OLD0")], None)
            .expect("a delete is taken over the limit");
        s.commit("prod", &[set("OLD1", "small")], None)
            .expect("a smaller value is taken over the limit");
    }
}
