//! The embedded store's files under `--data`. They hold secrets, so they are 0600 whatever
//! the umask and the directory's mode. A new store is built whole (schema and all) under a
//! temporary name and renamed into place, so `tether.db` never exists without its tables;
//! a `tether.db` that is there but empty or damaged is refused until the operator chooses:
//! restore a backup, or start once with `--reset-store`, which moves the damaged files
//! aside and keeps what can still be read.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags, params};

use super::StoreError;
use tether_core::protocol::Epoch;

pub const DB: &str = "tether.db";
/// The database and the files SQLite keeps beside it in WAL mode.
const FILES: [&str; 3] = [DB, "tether.db-wal", "tether.db-shm"];

/// A store that was there and is now empty or damaged: the node does not start on it.
#[derive(Debug, thiserror::Error)]
#[error(
    "store {} is damaged: {reason}; restore it from a backup (then `POST /v1/envs/ENV/reset` each environment), \
     or start once with --reset-store to move the damaged files aside and keep what can still be read",
    path.display()
)]
pub struct Damaged {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Damaged(#[from] Damaged),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{what} {}: {e}", path.display()))
}

/// Whether an SQLite error means the file's content is damaged (rather than, say, locked).
pub fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Make `dir/tether.db` ready to open: the directory created 0700 (a warning when an
/// existing one is open to other users), existing files made 0600, a first start's store
/// built, a damaged store refused or, with `reset`, replaced. Returns the database's path.
pub fn prepare(dir: &Path, reset: bool) -> Result<PathBuf, OpenError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("cannot create data dir", dir, e))?;
    let mode = fs::metadata(dir)
        .map_err(|e| io("cannot read data dir", dir, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:04o}", mode & 0o7777),
            "the data directory is open to other users; the store's files are kept 0600, but make it 0700 (chmod 700)"
        );
    }
    for name in FILES {
        private(&dir.join(name))?;
    }
    let db = dir.join(DB);
    let damage = if db.exists() {
        check(&db)?
    } else if len(&dir.join(FILES[1])) > 0 {
        Some(format!(
            "{DB} is missing but its write-ahead log {} is there",
            FILES[1]
        ))
    } else {
        // A first start.
        let tmp = build(dir, &[])?;
        install(dir, &tmp)?;
        return Ok(db);
    };
    match damage {
        None if reset => {
            tracing::warn!(store = %db.display(), "--reset-store given, but the store is not damaged: nothing reset; remove the flag");
            Ok(db)
        }
        None => Ok(db),
        Some(reason) if !reset => Err(Damaged { path: db, reason }.into()),
        Some(reason) => {
            replace(dir, &reason)?;
            Ok(db)
        }
    }
}

/// Make an existing file 0600 if it is open to anyone else.
fn private(path: &Path) -> Result<(), StoreError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| io("cannot make private (chmod 600)", path, e))?;
        tracing::info!(file = %path.display(), "store file made 0600");
    }
    Ok(())
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What is wrong with an existing database, if anything: empty, not a database, missing
/// tables, or failing `PRAGMA quick_check` (which reads every page once: a few seconds
/// for a store of a gigabyte). Read only: a damaged file is left as it was found.
fn check(db: &Path) -> Result<Option<String>, StoreError> {
    if len(db) == 0 && len(&db.with_file_name(FILES[1])) == 0 {
        return Ok(Some(format!("{DB} is empty (0 bytes)")));
    }
    let damaged = |e: rusqlite::Error| {
        if is_corrupt(&e) {
            Ok(Some(e.to_string()))
        } else {
            Err(StoreError::Unavailable(format!(
                "cannot check {}: {e}",
                db.display()
            )))
        }
    };
    let conn = match Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Ok(c) => c,
        Err(e) => return damaged(e),
    };
    let tables: Vec<String> = match conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
    {
        Ok(t) => t,
        Err(e) => return damaged(e),
    };
    for table in ["envs", "entries", "history"] {
        if !tables.iter().any(|t| t == table) {
            return Ok(Some(format!(
                "it has no {table} table (emptied, or not a tether store)"
            )));
        }
    }
    let report: Vec<String> = match conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
    {
        Ok(r) => r,
        Err(e) => return damaged(e),
    };
    if report != ["ok"] {
        return Ok(Some(format!("quick_check: {}", report.join("; "))));
    }
    Ok(None)
}

/// An environment read back from a damaged store.
struct Kept {
    env: String,
    epoch: Epoch,
    version: u64,
    entries: Vec<(String, Vec<u8>, bool)>,
}

/// Every environment whose position and entries can still be read in full, and the names
/// of those that cannot (or a note that none could be listed).
fn salvage(db: &Path) -> (Vec<Kept>, Vec<String>) {
    let read = || -> rusqlite::Result<(Vec<Kept>, Vec<String>)> {
        let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let envs: Vec<(String, i64, i64)> = conn
            .prepare("SELECT name, epoch, version FROM envs ORDER BY name")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let (mut kept, mut lost) = (Vec::new(), Vec::new());
        for (env, epoch, version) in envs {
            let entries = conn
                .prepare("SELECT name, value, secret FROM entries WHERE env = ?1")
                .and_then(|mut s| {
                    s.query_map(params![env], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                });
            match entries {
                Ok(entries) => kept.push(Kept {
                    env,
                    epoch: Epoch(epoch as u64),
                    version: version as u64,
                    entries,
                }),
                Err(e) => {
                    tracing::error!(env, error = %e, "environment cannot be read from the damaged store");
                    lost.push(env);
                }
            }
        }
        Ok((kept, lost))
    };
    match read() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "no environment can be listed from the damaged store");
            (Vec::new(), vec!["(any environment it held)".into()])
        }
    }
}

/// Build a complete store under a temporary name: schema, the `kept` environments each at
/// a new, greater epoch (every agent takes a snapshot) with no history, WAL mode; synced.
fn build(dir: &Path, kept: &[Kept]) -> Result<PathBuf, StoreError> {
    let tmp = dir.join("tether.db.new");
    for stale in [tmp.clone(), dir.join("tether.db.new-journal")] {
        if stale.exists() {
            fs::remove_file(&stale).map_err(|e| io("cannot remove", &stale, e))?;
        }
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("cannot create", &tmp, e))?;
    let err =
        |e: rusqlite::Error| StoreError::Unavailable(format!("building {}: {e}", tmp.display()));
    let mut conn = Connection::open(&tmp).map_err(err)?;
    let tx = conn.transaction().map_err(err)?;
    tx.execute_batch(super::sqlite::SCHEMA).map_err(err)?;
    for k in kept {
        let epoch = Epoch(Epoch::generate().0.max(k.epoch.0 + 1));
        tx.execute(
            "INSERT INTO envs (name, epoch, version) VALUES (?1, ?2, ?3)",
            params![k.env, epoch.0 as i64, k.version as i64],
        )
        .map_err(err)?;
        for (name, value, secret) in &k.entries {
            tx.execute(
                "INSERT INTO entries (env, name, value, secret) VALUES (?1, ?2, ?3, ?4)",
                params![k.env, name, value, secret],
            )
            .map_err(err)?;
        }
    }
    tx.commit().map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.close().map_err(|(_, e)| err(e))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync", &tmp, e))?;
    Ok(tmp)
}

/// Give the built store its name, atomically, and sync the directory.
fn install(dir: &Path, tmp: &Path) -> Result<(), StoreError> {
    let db = dir.join(DB);
    fs::rename(tmp, &db).map_err(|e| io("cannot rename into place", &db, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

/// `--reset-store` on a damaged store: build a new one from what can be read, move the
/// damaged files aside (`tether.db.damaged-SECS`, never deleted), put the new one in place.
fn replace(dir: &Path, reason: &str) -> Result<(), StoreError> {
    let db = dir.join(DB);
    let (kept, lost) = if db.exists() {
        salvage(&db)
    } else {
        (Vec::new(), vec!["(any environment it held)".into()])
    };
    let tmp = build(dir, &kept)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = dir.join(format!("{DB}.damaged-{secs}"));
    for n in 1.. {
        if FILES.iter().all(|f| !aside_name(&aside, f).exists()) {
            break;
        }
        aside = dir.join(format!("{DB}.damaged-{secs}-{n}"));
    }
    // The damaged database keeps its name until the new one replaces it: a crash in
    // between leaves a store that is still refused, never a missing one.
    if db.exists() {
        fs::hard_link(&db, &aside)
            .or_else(|_| fs::copy(&db, &aside).map(drop))
            .map_err(|e| io("cannot keep a copy of", &db, e))?;
    }
    for name in &FILES[1..] {
        let from = dir.join(name);
        if from.exists() {
            let to = aside_name(&aside, name);
            fs::rename(&from, &to).map_err(|e| io("cannot move aside", &from, e))?;
        }
    }
    install(dir, &tmp)?;
    let envs: Vec<&str> = kept.iter().map(|k| k.env.as_str()).collect();
    tracing::warn!(
        %reason,
        moved_to = %aside.display(),
        kept = ?envs,
        lost = ?lost,
        "--reset-store: the damaged store was moved aside and a new one holds what could be read (new epochs: agents take a snapshot); put lost environments again, and remove --reset-store"
    );
    Ok(())
}

/// Where file `name` of the store goes when moved aside to `aside` (the database's new name).
fn aside_name(aside: &Path, name: &str) -> PathBuf {
    let suffix = name.strip_prefix(DB).unwrap_or_default();
    let mut s = aside.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{CatchUp, StoreError};
    use tether_core::protocol::{Position, WireChange};
    use tether_core::secret::Value;

    fn set(name: &str, v: &str) -> WireChange {
        WireChange {
            name: name.into(),
            value: Some(Value::from(v)),
            secret: true,
            delete: false,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A data dir made 0755 beforehand, as `mkdir` under umask 022 does.
    fn open_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    /// Commits (several, so history has rows), returns the last position; store closed.
    fn written(dir: &Path) -> Position {
        let s = SqliteStore::open(dir, 100).unwrap();
        let mut last = None;
        for i in 0..20 {
            let c = s
                .commit("prod", &[set("A", &format!("v{i}")), set("B", "b")], None)
                .unwrap();
            last = Some(c.position);
        }
        last.unwrap()
    }

    fn damaged(r: Result<SqliteStore, OpenError>) -> String {
        match r {
            Err(OpenError::Damaged(d)) => d.to_string(),
            Err(e) => panic!("not refused as damaged: {e}"),
            Ok(_) => panic!("a damaged store was opened"),
        }
    }

    fn aside(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.contains(".damaged-") && !n.ends_with("-wal") && !n.ends_with("-shm"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn store_files_are_private_in_an_existing_open_directory() {
        let d = open_dir();
        let s = SqliteStore::open(d.path(), 10).unwrap();
        s.commit("prod", &[set("A", "1")], None).unwrap();
        for name in FILES {
            let path = d.path().join(name);
            assert!(path.exists(), "{name} exists while the store is open");
            assert_eq!(mode(&path), 0o600, "{name}");
        }
        drop(s);
        // Files left readable (by an older version, or by hand) are made private at open.
        let db = d.path().join(DB);
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        let _s = SqliteStore::open(d.path(), 10).unwrap();
        for name in FILES {
            assert_eq!(mode(&d.path().join(name)), 0o600, "{name} after reopen");
        }
    }

    #[test]
    fn an_empty_database_file_is_refused_until_reset_store() {
        let d = tempfile::tempdir().unwrap();
        let before = written(d.path());
        fs::write(d.path().join(DB), b"").unwrap();
        let m = damaged(SqliteStore::open(d.path(), 10));
        assert!(
            m.contains("empty (0 bytes)") && m.contains("--reset-store"),
            "{m}"
        );
        assert_eq!(
            len(&d.path().join(DB)),
            0,
            "the damaged file is left as found"
        );

        let s = SqliteStore::open_with(d.path(), 10, true).unwrap();
        assert_eq!(s.list().unwrap(), vec![], "nothing could be kept");
        assert_eq!(aside(d.path()).len(), 1, "{:?}", aside(d.path()));
        drop(s);
        // A reset store is a store: the next start is an ordinary one.
        let s = SqliteStore::open(d.path(), 10).unwrap();
        let c = s.commit("prod", &[set("A", "1")], None).unwrap();
        assert_ne!(c.position.epoch, before.epoch);
    }

    #[test]
    fn a_missing_database_beside_its_log_is_damage_and_no_files_is_a_first_start() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        SqliteStore::open(&dir, 10).unwrap();
        assert_eq!(mode(&dir), 0o700, "a data dir it creates is private");
        fs::remove_file(dir.join(DB)).unwrap();
        fs::write(dir.join(FILES[1]), b"not empty").unwrap();
        let m = damaged(SqliteStore::open(&dir, 10));
        assert!(m.contains("missing"), "{m}");
    }

    #[test]
    fn a_file_without_tables_is_damage() {
        let d = tempfile::tempdir().unwrap();
        let conn = Connection::open(d.path().join(DB)).unwrap();
        conn.execute_batch("CREATE TABLE other (x)").unwrap();
        drop(conn);
        let m = damaged(SqliteStore::open(d.path(), 10));
        assert!(m.contains("no envs table"), "{m}");
    }

    /// Overwrite the root page of the history table with garbage.
    fn damage_history_pages(db: &Path) {
        let conn = Connection::open(db).unwrap();
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        let (root, size): (i64, i64) = (
            conn.query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'history'",
                [],
                |r| r.get(0),
            )
            .unwrap(),
            conn.query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap(),
        );
        drop(conn);
        let mut bytes = fs::read(db).unwrap();
        let at = ((root - 1) * size) as usize;
        bytes[at..at + size as usize].fill(0xA5);
        fs::write(db, bytes).unwrap();
    }

    #[test]
    fn damaged_pages_are_refused_and_reset_store_keeps_what_can_be_read() {
        let d = tempfile::tempdir().unwrap();
        let before = written(d.path());
        damage_history_pages(&d.path().join(DB));
        let m = damaged(SqliteStore::open(d.path(), 10));
        assert!(m.contains("quick_check") || m.contains("malformed"), "{m}");

        let s = SqliteStore::open_with(d.path(), 10, true).unwrap();
        let snap = s.snapshot("prod").unwrap();
        assert!(
            snap.position.epoch > before.epoch,
            "a new epoch: agents take a snapshot"
        );
        assert_eq!(snap.position.version, before.version);
        let values: Vec<_> = snap
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_ref().unwrap().expose().to_vec()))
            .collect();
        assert_eq!(values, [("A", b"v19".to_vec()), ("B", b"b".to_vec())]);
        assert!(matches!(
            s.catch_up("prod", Some(before)).unwrap(),
            CatchUp::Snapshot(x) if x == snap
        ));
        assert_eq!(s.damage(), None);
        assert_eq!(aside(d.path()).len(), 1, "{:?}", aside(d.path()));
    }

    #[test]
    fn an_unreadable_history_falls_back_to_a_snapshot_and_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(d.path(), 100).unwrap();
        let first = s.commit("prod", &[set("A", "1")], None).unwrap();
        s.commit("prod", &[set("A", "2")], None).unwrap();
        let other = Connection::open(d.path().join(DB)).unwrap();
        other
            .execute(
                "UPDATE history SET changes = 'garbage' WHERE version = 2",
                [],
            )
            .unwrap();
        assert_eq!(s.damage(), None);
        match s.catch_up("prod", Some(first.position)) {
            Ok(CatchUp::Snapshot(snap)) => assert_eq!(snap.position.version, 2),
            other => panic!("{other:?}"),
        }
        // A fixed sentence: `/readyz` needs no token, so it names no environment.
        let why = s.damage().expect("damage is reported");
        assert!(why.contains("history") && !why.contains("prod"), "{why}");
        assert!(matches!(
            s.commit("prod", &[set("A", "3")], None),
            Ok(_) | Err(StoreError::Unavailable(_))
        ));
        // A reset drops the damaged history, and the damage with it.
        s.reset("prod").unwrap();
        assert_eq!(s.damage(), None);
    }
}
