//! Atomic file output: owns how tether puts bytes on disk so that a reader never sees a partial
//! secret. `write_atomic` replaces one file (temp file + fsync + rename + dir fsync);
//! `publish_dir`/`read_published`/`remove_published` manage a kubelet-style directory
//! (`..<timestamp>` data dir, `..data` symlink, `NAME -> ..data/NAME`); `is_tmpfs` tells whether
//! output lands in memory-backed storage.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const DATA_LINK: &str = "..data";
const DATA_TMP_LINK: &str = "..data_tmp";
/// Prefix of the temporary per-name symlinks: fixed length, so a name of the full 255 bytes
/// still fits (a temp named after the entry would not).
const LINK_TMP: &str = "..link_tmp-";
const RAMFS_MAGIC: u32 = 0x8584_58f6;

/// Ownership to apply to written files; `None` fields leave that id unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WriteError {
    let path = path.to_path_buf();
    move |source| WriteError::Io { op, path, source }
}

fn invalid(op: &'static str, path: &Path, msg: &str) -> WriteError {
    err(op, path)(io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()))
}

fn rand_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn fsync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync dir", dir))
}

/// Removes the path on drop unless disarmed (cleanup of temp files/dirs on error paths).
struct Cleanup(Option<PathBuf>, bool);

impl Cleanup {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self.0.take() {
            Some(p) if self.1 => drop(fs::remove_dir_all(p)),
            Some(p) => drop(fs::remove_file(p)),
            None => {}
        }
    }
}

/// Creates `path` exclusively with mode 0600, writes `bytes`, applies the final mode/owner
/// and fsyncs.
fn write_new(path: &Path, bytes: &[u8], mode: u32, owner: Option<Owner>) -> Result<(), WriteError> {
    let mut opts = OpenOptions::new();
    let mut file =
        (opts.write(true).create_new(true).mode(0o600).open(path)).map_err(err("create", path))?;
    file.write_all(bytes).map_err(err("write", path))?;
    finish_file(&file, path, mode, owner)
}

/// Points a fresh symlink `tmp` at `target` and renames it over `link`.
fn swap_symlink(target: &Path, tmp: &Path, link: &Path) -> Result<(), WriteError> {
    let _ = fs::remove_file(tmp); // stale `..data_tmp` from a crashed run
    std::os::unix::fs::symlink(target, tmp).map_err(err("symlink", tmp))?;
    let mut guard = Cleanup(Some(tmp.to_path_buf()), false);
    fs::rename(tmp, link).map_err(err("rename", link))?;
    guard.disarm();
    Ok(())
}

fn finish_file(
    file: &File,
    path: &Path,
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), WriteError> {
    file.set_permissions(Permissions::from_mode(mode & 0o7777))
        .map_err(err("chmod", path))?;
    if let Some(o) = owner {
        std::os::unix::fs::fchown(file, o.uid, o.gid).map_err(err("chown", path))?;
    }
    file.sync_all().map_err(err("fsync", path))
}

/// Best effort: removes `.{name}.tmp-*` regular files left in `dir` by a crashed earlier run.
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix));
        if stale && e.file_type().is_ok_and(|t| !t.is_dir()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Write `bytes` to `path` atomically: temp file in the same directory (name starts with
/// "." so directory readers skip it, created with O_EXCL and mode 0600), write all, set final
/// `mode` (fchmod) and `owner` (fchown) BEFORE the rename, fsync the file, rename over
/// `path`, fsync the directory. On any error the temp file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), WriteError> {
    stage(path, bytes, mode, owner)?.commit()
}

/// A file written in full beside its destination, not yet renamed over it; dropped
/// uncommitted, it is removed and the destination is untouched.
pub struct Staged {
    path: PathBuf,
    tmp: PathBuf,
    guard: Cleanup,
}

/// The first half of [`write_atomic`]: the temp file, complete, with its final mode and
/// owner, fsynced.
pub fn stage(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<Staged, WriteError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| invalid("write", path, "path has no UTF-8 file name"))?;
    let tmp = parent_of(path).join(format!(".{name}.tmp-{}", rand_suffix()));
    let guard = Cleanup(Some(tmp.clone()), false);
    write_new(&tmp, bytes, mode, owner)?;
    Ok(Staged {
        path: path.to_path_buf(),
        tmp,
        guard,
    })
}

impl Staged {
    /// Where the complete new content is, until [`Staged::commit`].
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Rename the temp file over the destination and fsync the directory.
    pub fn commit(mut self) -> Result<(), WriteError> {
        fs::rename(&self.tmp, &self.path).map_err(err("rename", &self.path))?;
        self.guard.disarm();
        let dir = parent_of(&self.path);
        if let Some(name) = self.path.file_name().and_then(|n| n.to_str()) {
            remove_stale_temps(dir, name);
        }
        fsync_dir(dir)
    }
}

fn check_name(dir: &Path, name: &str) -> Result<(), WriteError> {
    if name.is_empty() || name.len() > 255 || name.starts_with('.') || name.contains(['/', '\0']) {
        return Err(invalid("publish", &dir.join(name), "invalid file name"));
    }
    Ok(())
}

/// UTC `YYYY_MM_DD_HH_MM_SS.nnnnnnnnn` (civil-from-days, no external time crate).
fn utc_stamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    format!(
        "{year:04}_{month:02}_{day:02}_{h:02}_{m:02}_{s:02}.{:09}",
        d.subsec_nanos()
    )
}

/// Name `X` if `link` is a symlink pointing at `..data/X`.
fn published_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    let rest = target.to_str()?.strip_prefix("..data/")?;
    (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
}

/// Publish a directory of files the way kubelet's AtomicWriter does: `dir` holds a data dir
/// `..<UTC timestamp>_<random>` with the files, a symlink `..data` -> that data dir, and for each
/// file a symlink `NAME -> ..data/NAME`. An update writes a new data dir (files with
/// `mode`/`owner`, fsynced; the data dir gets 0755 if `mode` has group/other read bits, else
/// 0700, and `owner`), points a `..data_tmp` symlink at it and renames that over `..data` (the
/// atomic switch), then adds symlinks for new names, removes symlinks for vanished names,
/// removes old data dirs, and fsyncs `dir`. Creates `dir` (mode 0700, chowned to `owner`) if
/// missing. Names that are empty, longer than 255 bytes, start with '.', or contain '/' or NUL
/// are refused with `InvalidInput` before anything is written. A reader opening `dir/NAME` sees
/// complete old or complete new content (or, in a tiny window, ENOENT if the old data dir it
/// resolved is gone).
pub fn publish_dir(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), WriteError> {
    let mut names = BTreeSet::new();
    for (name, _) in files {
        check_name(dir, name)?;
        if !names.insert(name.as_str()) {
            return Err(invalid("publish", &dir.join(name), "duplicate file name"));
        }
    }
    if !dir.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err("create dir", dir))?;
        if let Some(o) = owner {
            std::os::unix::fs::chown(dir, o.uid, o.gid).map_err(err("chown", dir))?;
        }
    }
    // 1. New data dir with all files, fsynced (invisible to readers until the switch).
    let data_name = format!("..{}_{}", utc_stamp(), rand_suffix());
    let data_dir = dir.join(&data_name);
    (DirBuilder::new().mode(0o700).create(&data_dir)).map_err(err("mkdir", &data_dir))?;
    let mut data_guard = Cleanup(Some(data_dir.clone()), true);
    for (name, bytes) in files {
        write_new(&data_dir.join(name), bytes, mode, owner)?;
    }
    let dir_mode = if mode & 0o044 != 0 { 0o755 } else { 0o700 };
    let d = File::open(&data_dir).map_err(err("open", &data_dir))?;
    finish_file(&d, &data_dir, dir_mode, owner)?;
    // 2. Atomic switch: ..data_tmp -> data dir, renamed over ..data.
    let (tmp_link, data_link) = (dir.join(DATA_TMP_LINK), dir.join(DATA_LINK));
    swap_symlink(Path::new(&data_name), &tmp_link, &data_link)?;
    data_guard.disarm();
    // 3. Per-name symlinks: add new ones (atomically replacing anything else of that name).
    for name in &names {
        let link = dir.join(name);
        if published_name(&link).as_deref() != Some(*name) {
            let tmp = dir.join(format!("{LINK_TMP}{}", rand_suffix()));
            swap_symlink(&Path::new(DATA_LINK).join(name), &tmp, &link)?;
        }
    }
    // 4. Remove vanished names, old data dirs and stale temps of our names.
    for entry in fs::read_dir(dir).map_err(err("read dir", dir))? {
        let entry = entry.map_err(err("read dir", dir))?;
        let (path, fname) = (entry.path(), entry.file_name());
        let fname = fname.to_string_lossy();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let stale_tmp = || {
            fname.starts_with(LINK_TMP)
                || names
                    .iter()
                    .any(|n| fname.starts_with(&format!(".{n}.tmp-")))
        };
        if is_dir && fname.starts_with("..") && fname != data_name {
            fs::remove_dir_all(&path).map_err(err("remove old data dir", &path))?;
        } else if !names.contains(&*fname) && published_name(&path).is_some_and(|n| n == fname) {
            fs::remove_file(&path).map_err(err("remove", &path))?;
        } else if !is_dir && stale_tmp() {
            let _ = fs::remove_file(&path);
        }
    }
    fsync_dir(dir)
}

fn read_data_dir(dir: &Path) -> Option<Vec<(String, Vec<u8>)>> {
    let target = fs::read_link(dir.join(DATA_LINK)).ok()?;
    let tname = target.to_str()?;
    if !tname.starts_with("..") || tname.contains('/') {
        return None;
    }
    let data_dir = dir.join(tname);
    let mut out = Vec::new();
    for entry in fs::read_dir(&data_dir).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name().to_str()?.to_string();
        if name.starts_with('.') || !entry.file_type().ok()?.is_file() {
            continue;
        }
        out.push((name, fs::read(entry.path()).ok()?));
    }
    out.sort();
    // `..data` still names the same dir, so it was never being removed while we read it.
    (fs::read_link(dir.join(DATA_LINK)).ok()? == target).then_some(out)
}

/// Read back the files currently published in `dir` (through `..data`), sorted by name.
/// Returns None if the dir is not a published dir. Retries if a concurrent publish swaps
/// `..data` while reading, so the result is always one complete generation.
pub fn read_published(dir: &Path) -> Option<Vec<(String, Vec<u8>)>> {
    (0..3).find_map(|_| read_data_dir(dir))
}

/// Remove what publish_dir created (symlinks, ..data, data dirs); leave other files and the
/// dir itself alone unless it ends up empty (then remove it).
pub fn remove_published(dir: &Path) -> Result<(), WriteError> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r.map_err(err("read dir", dir))?,
    };
    let mut data_dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(err("read dir", dir))?;
        let path = entry.path();
        let Some(fname) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let ft = entry.file_type().map_err(err("stat", &path))?;
        if ft.is_dir() && fname.starts_with("..") {
            data_dirs.push(path);
        } else if ft.is_symlink()
            && (fname == DATA_LINK
                || fname == DATA_TMP_LINK
                || fname.starts_with(LINK_TMP)
                || published_name(&path).is_some_and(|n| n == fname))
        {
            fs::remove_file(&path).map_err(err("remove", &path))?;
        }
    }
    for p in data_dirs {
        fs::remove_dir_all(&p).map_err(err("remove data dir", &p))?;
    }
    let empty = fs::read_dir(dir)
        .map_err(err("read dir", dir))?
        .next()
        .is_none();
    if empty {
        fs::remove_dir(dir).map_err(err("remove dir", dir))?;
    } else {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// True when `path` (or, if it does not exist, its nearest existing ancestor) is on tmpfs or
/// ramfs (statfs f_type).
pub fn is_tmpfs(path: &Path) -> bool {
    let ancestors = path.ancestors().map(|p| match p.as_os_str().is_empty() {
        true => Path::new("."),
        false => p,
    });
    for p in ancestors {
        if let Ok(st) = nix::sys::statfs::statfs(p) {
            let ty = st.filesystem_type();
            return ty == nix::sys::statfs::TMPFS_MAGIC || ty.0 as u32 == RAMFS_MAGIC;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn shm_dir() -> tempfile::TempDir {
        tempfile::TempDir::new_in("/dev/shm").unwrap()
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn files(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn write_read_modes_and_replace() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("secret");
        write_atomic(&p, b"one", 0o640, None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        write_atomic(&p, b"second value", 0o600, None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second value");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(names_in(t.path()), ["secret"]);
    }

    #[test]
    fn owner_is_applied() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        let owner = Owner {
            uid: Some(65534),
            gid: None,
        };
        write_atomic(&p, b"x", 0o600, Some(owner)).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!(md.uid(), 65534);
        assert_eq!(md.gid(), fs::metadata(t.path()).unwrap().gid());
    }

    #[test]
    fn failure_leaves_no_temp_and_stale_temps_are_harmless() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("plain");
        fs::write(&file, b"keep").unwrap();
        assert!(write_atomic(&file.join("x"), b"y", 0o600, None).is_err());
        assert!(write_atomic(&t.path().join("nodir/x"), b"y", 0o600, None).is_err());
        // rename fails (target is a non-empty directory): temp must be cleaned up.
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/inner"), b"").unwrap();
        let e = write_atomic(&t.path().join("d"), b"y", 0o600, None).unwrap_err();
        assert!(e.to_string().starts_with("rename"), "{e}");
        assert_eq!(names_in(t.path()), ["d", "plain"]);
        assert_eq!(fs::read(&file).unwrap(), b"keep");
        // Leftover from a crashed run does not break writes and is swept.
        fs::write(t.path().join(".out.tmp-deadbeef"), b"old").unwrap();
        write_atomic(&t.path().join("out"), b"new", 0o600, None).unwrap();
        assert_eq!(names_in(t.path()), ["d", "out", "plain"]);
    }

    #[test]
    fn publish_structure_update_and_remove() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pub");
        let owner = Some(Owner {
            uid: Some(65534),
            gid: Some(65534),
        });
        publish_dir(&dir, &files(&[("a", "A1"), ("b", "B1")]), 0o640, owner).unwrap();
        let target = fs::read_link(dir.join("..data")).unwrap();
        let tname = target.to_str().unwrap().to_string();
        assert!(tname.starts_with("..20") && !tname.contains('/'), "{tname}");
        assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(fs::read(dir.join("b")).unwrap(), b"B1");
        assert_eq!(fs::metadata(dir.join("a")).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            fs::metadata(dir.join(&tname)).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        for p in [&dir, &dir.join(&tname), &dir.join("b")] {
            let md = fs::metadata(p).unwrap();
            assert_eq!((md.uid(), md.gid()), (65534, 65534));
        }
        assert_eq!(names_in(&dir), [&tname, "..data", "a", "b"]);

        fs::write(dir.join("other"), b"mine").unwrap();
        fs::create_dir(dir.join("..2000_01_01_00_00_00.0_stale")).unwrap();
        // Crash leftovers and a plain file named like a new entry must not break the update.
        std::os::unix::fs::symlink("..nowhere", dir.join("..data_tmp")).unwrap();
        fs::write(dir.join(".b.tmp-0123"), b"old").unwrap();
        fs::write(dir.join("c"), b"plain").unwrap();
        publish_dir(&dir, &files(&[("b", "B2"), ("c", "C2")]), 0o600, None).unwrap();
        let t2 = fs::read_link(dir.join("..data")).unwrap();
        let t2 = t2.to_str().unwrap();
        assert_ne!(t2, tname);
        assert_eq!(names_in(&dir), [t2, "..data", "b", "c", "other"]);
        assert_eq!(fs::metadata(dir.join(t2)).unwrap().mode() & 0o7777, 0o700);
        let expect = files(&[("b", "B2"), ("c", "C2")]);
        assert_eq!(read_published(&dir).unwrap(), expect);

        remove_published(&dir).unwrap();
        assert_eq!(names_in(&dir), ["other"]);
        assert!(read_published(&dir).is_none());
        fs::remove_file(dir.join("other")).unwrap();
        publish_dir(&dir, &files(&[("z", "Z")]), 0o600, None).unwrap();
        remove_published(&dir).unwrap();
        assert!(!dir.exists());
        assert!(read_published(t.path()).is_none());
    }

    #[test]
    fn publish_rejects_bad_names() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pub");
        let too_long = "n".repeat(256);
        for bad in ["", ".hidden", "..data", "a/b", "../x", "nul\0", &too_long] {
            match publish_dir(&dir, &files(&[("ok", "1"), (bad, "2")]), 0o600, None) {
                Err(WriteError::Io { source, .. }) => {
                    assert_eq!(source.kind(), io::ErrorKind::InvalidInput, "{bad:?}")
                }
                Ok(()) => panic!("accepted {bad:?}"),
            }
        }
        assert!(!dir.exists());
        assert!(!t.path().join("x").exists());
        let file = t.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(publish_dir(&file.join("d"), &files(&[("a", "1")]), 0o600, None).is_err());
        assert_eq!(names_in(t.path()), ["file"]);
    }

    #[test]
    fn publish_takes_names_of_the_full_255_bytes() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pub");
        let long = "n".repeat(255);
        publish_dir(&dir, &files(&[(&long, "1"), ("a", "2")]), 0o600, None).unwrap();
        assert_eq!(fs::read(dir.join(&long)).unwrap(), b"1");
        publish_dir(&dir, &files(&[(&long, "3")]), 0o600, None).unwrap();
        assert_eq!(fs::read(dir.join(&long)).unwrap(), b"3");
        assert!(!dir.join("a").exists());
        assert_eq!(names_in(&dir).len(), 3, "data dir, ..data, the long name");
        remove_published(&dir).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn is_tmpfs_detects() {
        assert!(is_tmpfs(Path::new("/dev/shm")));
        assert!(is_tmpfs(Path::new("/dev/shm/does/not/exist")));
        let t = tempfile::tempdir().unwrap();
        let ty = nix::sys::statfs::statfs(t.path())
            .unwrap()
            .filesystem_type();
        let expect = ty == nix::sys::statfs::TMPFS_MAGIC || ty.0 as u32 == RAMFS_MAGIC;
        assert_eq!(is_tmpfs(t.path()), expect);
        assert_eq!(is_tmpfs(&t.path().join("missing/child")), expect);
    }

    /// Runs `write(i)` 1000 times while a reader checks every successful read is A or B.
    fn race(
        read: impl Fn(usize) -> io::Result<Vec<u8>>,
        write: impl Fn(usize) + Send + 'static,
    ) -> (usize, usize) {
        let done = Arc::new(AtomicBool::new(false));
        let d2 = done.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..1000 {
                write(i);
            }
            d2.store(true, Ordering::SeqCst);
        });
        let (mut reads, mut missing) = (0, 0);
        while !done.load(Ordering::SeqCst) {
            match read(reads + missing) {
                Ok(b) => {
                    assert!(b == A || b == B, "torn read: {} bytes", b.len());
                    reads += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing += 1,
                Err(e) => panic!("{e}"),
            }
        }
        writer.join().unwrap();
        (reads, missing)
    }

    const A: &[u8] = b"alpha-content";
    const B: &[u8] = b"bravo-content-that-is-much-longer-than-alpha";

    #[test]
    fn concurrent_write_atomic_never_torn() {
        let t = shm_dir();
        let p = t.path().join("f");
        write_atomic(&p, A, 0o600, None).unwrap();
        let p2 = p.clone();
        let (reads, missing) = race(
            |_| fs::read(&p),
            move |i| write_atomic(&p2, if i % 2 == 0 { B } else { A }, 0o600, None).unwrap(),
        );
        assert!(reads > 0);
        assert_eq!(missing, 0);
        assert_eq!(names_in(t.path()), ["f"]);
    }

    #[test]
    fn concurrent_publish_never_torn() {
        let t = shm_dir();
        let dir = t.path().to_path_buf();
        let set = |c: &[u8]| vec![("f".to_string(), c.to_vec()), ("g".into(), c.to_vec())];
        publish_dir(&dir, &set(A), 0o600, None).unwrap();
        let d2 = dir.clone();
        let read = |i: usize| match i % 8 {
            0 => {
                let got = read_published(&dir).ok_or(io::ErrorKind::NotFound)?;
                assert!(got.len() == 2 && got[0].1 == got[1].1, "mixed generations");
                Ok(got[0].1.clone())
            }
            _ => fs::read(dir.join("f")),
        };
        let (reads, missing) = race(read, move |i| {
            publish_dir(&d2, &set(if i % 2 == 0 { B } else { A }), 0o600, None).unwrap()
        });
        assert!(reads > 0);
        // A reader that resolved `..data` just before the old data dir was removed can get
        // ENOENT on open (same as kubelet); it must never see partial content.
        assert!(missing < reads, "missing={missing} reads={reads}");
        assert_eq!(names_in(&dir).len(), 4);
    }
}
