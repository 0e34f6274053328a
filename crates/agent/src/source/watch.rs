//! Watches sources with `notify` (inotify) and reports which source to reload.
//!
//! A file source is watched through its parent directory, so saves by rename, deletion and
//! re-creation, and Kubernetes' `..data` symlink swap are all seen. Writes in place are taken
//! at close (IN_CLOSE_WRITE), never mid-write. A file source that is a symlink into another
//! directory is also watched where it points ([`SourceWatcher::follow`]), so edits of the
//! file behind the link are seen too, and a link that is re-pointed moves that watch along.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{SourceKind, SourceSpec};

/// Keeps the watches alive; drop it to stop watching.
pub struct SourceWatcher {
    /// None without any source to watch: an inotify instance is a per-user resource
    /// (128 by default), so an agent fed only by nodes takes none.
    watcher: Option<notify::RecommendedWatcher>,
    specs: Vec<SourceSpec>,
    /// Shared with the event handler (notify's thread).
    targets: Arc<Mutex<Vec<Target>>>,
    /// How many targets need each watched directory.
    watched: BTreeMap<PathBuf, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start the file watcher: {0}")]
    Start(#[source] notify::Error),
    /// Names the source as the user gave it, and the directory actually watched.
    #[error("source {spec}: cannot watch {dir}: {source}")]
    Dir {
        spec: String,
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

struct Target {
    index: usize,
    dir: PathBuf,
    /// `None`: any entry of `dir` matters (a `dir:` source).
    name: Option<OsString>,
    /// Where a symlinked file source points, rather than where the user named it.
    followed: bool,
}

impl Target {
    fn matches(&self, path: &Path) -> bool {
        if path.parent() != Some(self.dir.as_path()) && path != self.dir {
            return false;
        }
        match (&self.name, path.file_name()) {
            (None, _) => true,
            (Some(want), Some(got)) => got == want || got.as_encoded_bytes().starts_with(b".."),
            (Some(_), None) => false,
        }
    }
}

/// Whether an event may have changed what a reader would see.
fn relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        // A new regular file is read when its writer closes it; a new symlink is complete.
        EventKind::Create(CreateKind::File) => event.paths.iter().any(|p| {
            p.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
        }),
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Name(_)) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        // Data written in place: wait for the close.
        EventKind::Modify(_) => false,
        EventKind::Any | EventKind::Other => true,
    }
}

/// Watch every source; the index of a source that may have changed is sent on `tx`.
pub fn watch(
    specs: &[SourceSpec],
    tx: mpsc::UnboundedSender<usize>,
) -> Result<SourceWatcher, WatchError> {
    let targets: Vec<Target> = specs
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let abs = absolute(&s.path);
            match s.kind {
                SourceKind::Dir => Target {
                    index,
                    dir: canonical_dir(&abs),
                    name: None,
                    followed: false,
                },
                SourceKind::Dotenv | SourceKind::Json => Target {
                    index,
                    dir: canonical_dir(abs.parent().unwrap_or(Path::new("/"))),
                    name: abs.file_name().map(OsString::from),
                    followed: false,
                },
            }
        })
        .collect();
    let shared = Arc::new(Mutex::new(Vec::<Target>::new()));
    let in_handler = shared.clone();
    let handler = move |res: notify::Result<Event>| {
        let targets = in_handler.lock().unwrap_or_else(PoisonError::into_inner);
        match res {
            Ok(event) if relevant(&event) => {
                for t in targets.iter() {
                    if event.paths.iter().any(|p| t.matches(p)) {
                        let _ = tx.send(t.index);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "file watch error; reloading every source");
                for t in targets.iter() {
                    let _ = tx.send(t.index);
                }
            }
        }
    };
    let watcher = match specs.is_empty() {
        true => None,
        false => Some(notify::recommended_watcher(handler).map_err(WatchError::Start)?),
    };
    let mut w = SourceWatcher {
        watcher,
        specs: specs.to_vec(),
        targets: shared,
        watched: BTreeMap::new(),
    };
    for t in targets {
        let (dir, index) = (t.dir.clone(), t.index);
        w.add(t).map_err(|mut source| {
            // notify appends the paths to its message; `dir` already says it.
            source.paths.clear();
            WatchError::Dir {
                spec: specs[index].to_string(),
                dir,
                source,
            }
        })?;
    }
    for i in 0..specs.len() {
        w.follow(i);
    }
    Ok(w)
}

impl SourceWatcher {
    /// Start reporting events of `t`, watching its directory unless another target does.
    fn add(&mut self, t: Target) -> notify::Result<()> {
        let count = self.watched.get(&t.dir).copied().unwrap_or(0);
        if count == 0 {
            if let Some(w) = self.watcher.as_mut() {
                w.watch(&t.dir, RecursiveMode::NonRecursive)?;
            }
        }
        self.watched.insert(t.dir.clone(), count + 1);
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(t);
        Ok(())
    }

    /// Stop reporting the followed target of source `index`, if any.
    fn drop_followed(&mut self, index: usize) {
        let removed: Vec<Target> = {
            let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
            let (gone, kept) = std::mem::take(&mut *targets)
                .into_iter()
                .partition(|t| t.followed && t.index == index);
            *targets = kept;
            gone
        };
        for t in removed {
            match self.watched.get(&t.dir).copied() {
                Some(1) => {
                    self.watched.remove(&t.dir);
                    // The directory may be gone already; nothing to undo then.
                    if let Some(w) = self.watcher.as_mut() {
                        let _ = w.unwatch(&t.dir);
                    }
                }
                Some(n) => {
                    self.watched.insert(t.dir, n - 1);
                }
                None => {}
            }
        }
    }

    /// Watch where file source `index` resolves to when that is another directory; call it
    /// after each load of the source, since the link may have been re-pointed.
    pub fn follow(&mut self, index: usize) {
        let spec = self.specs[index].clone();
        if spec.kind == SourceKind::Dir {
            return;
        }
        let abs = absolute(&spec.path);
        let Some(dir) = abs.parent().map(Path::to_path_buf) else {
            return;
        };
        // Gone for now: keep watching where it was; it may come back there.
        let Ok(real) = std::fs::canonicalize(&abs) else {
            return;
        };
        let (Some(real_dir), Some(real_name)) = (real.parent(), real.file_name()) else {
            return;
        };
        let own_dir = std::fs::canonicalize(&dir).ok();
        let same_place = own_dir.as_deref() == Some(real_dir);
        // Kubernetes' layout (`name -> ..data/name`, `..data -> ..2024_…`) is already seen
        // through the swap of `..data` in the source's own directory.
        let kubernetes = real_dir.parent().is_some_and(|p| {
            own_dir.as_deref() == Some(p)
                && real_dir
                    .file_name()
                    .is_some_and(|n| n.as_encoded_bytes().starts_with(b".."))
        });
        let want = (!same_place && !kubernetes).then(|| (real_dir.to_path_buf(), real_name));
        let current = self
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|t| t.followed && t.index == index)
            .map(|t| (t.dir.clone(), t.name.clone()));
        if current.as_ref().map(|(d, n)| (d, n.as_deref()))
            == want.as_ref().map(|(d, n)| (d, Some(*n)))
        {
            return;
        }
        self.drop_followed(index);
        let Some((real_dir, real_name)) = want else {
            return;
        };
        let target = Target {
            index,
            dir: real_dir.clone(),
            name: Some(real_name.to_os_string()),
            followed: true,
        };
        match self.add(target) {
            Ok(()) => {
                tracing::debug!(source = %spec, dir = %real_dir.display(), "watching where the source links to")
            }
            Err(e) => tracing::warn!(
                source = %spec,
                dir = %real_dir.display(),
                error = %e,
                "cannot watch where the source links to; edits there are seen only when the link changes"
            ),
        }
    }
}

/// A watched directory by its real path: inotify watches an inode, and two spellings of
/// one directory (through a symlink) must share one watch and match the same events.
fn canonical_dir(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(rx: &mut mpsc::UnboundedReceiver<usize>) -> Option<usize> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
    }

    #[test]
    fn no_source_takes_no_inotify_instance() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let none = watch(&[], tx.clone()).unwrap();
        assert!(
            none.watcher.is_none(),
            "an agent fed only by nodes watches nothing"
        );
        let d = tempfile::tempdir().unwrap();
        let spec = SourceSpec {
            kind: SourceKind::Dotenv,
            path: d.path().join("app.env"),
        };
        assert!(watch(&[spec], tx).unwrap().watcher.is_some());
    }

    #[tokio::test]
    async fn sees_rename_saves_and_recreation() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("app.env");
        std::fs::write(&file, "A=1").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spec = SourceSpec {
            kind: SourceKind::Dotenv,
            path: file.clone(),
        };
        let _w = watch(&[spec], tx).unwrap();

        // Save by rename, as editors do.
        let tmp = d.path().join(".app.env.swp");
        std::fs::write(&tmp, "A=2").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(next(&mut rx).await, Some(0));

        // Delete and re-create.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(next(&mut rx).await, Some(0));
        while rx.try_recv().is_ok() {}
        std::fs::write(&file, "A=3").unwrap();
        assert_eq!(next(&mut rx).await, Some(0));
    }

    #[tokio::test]
    async fn ignores_other_files_in_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("app.env");
        std::fs::write(&file, "A=1").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A second source in another directory marks the point in the event stream.
        let marker_dir = tempfile::tempdir().unwrap();
        let marker = marker_dir.path().join("marker.env");
        std::fs::write(&marker, "M=1").unwrap();
        let specs = [
            SourceSpec {
                kind: SourceKind::Dotenv,
                path: file.clone(),
            },
            SourceSpec {
                kind: SourceKind::Dotenv,
                path: marker.clone(),
            },
        ];
        let _w = watch(&specs, tx).unwrap();
        std::fs::write(d.path().join("other.txt"), "x").unwrap();
        std::fs::write(&marker, "M=2").unwrap();
        // One inotify queue keeps the order: had the other file counted, 0 would come first.
        assert_eq!(next(&mut rx).await, Some(1));
        std::fs::write(&file, "A=2").unwrap();
        assert_eq!(next(&mut rx).await, Some(0));
    }

    #[tokio::test]
    async fn follows_a_symlink_into_another_directory_and_its_retargeting() {
        let d = tempfile::tempdir().unwrap();
        let (conf, real1, real2) = (
            d.path().join("conf"),
            d.path().join("r1"),
            d.path().join("r2"),
        );
        for p in [&conf, &real1, &real2] {
            std::fs::create_dir(p).unwrap();
        }
        std::fs::write(real1.join("app.env"), "A=1").unwrap();
        std::fs::write(real2.join("app.env"), "A=2").unwrap();
        let link = conf.join("app.env");
        std::os::unix::fs::symlink(real1.join("app.env"), &link).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spec = SourceSpec {
            kind: SourceKind::Dotenv,
            path: link.clone(),
        };
        let mut w = watch(&[spec], tx).unwrap();

        // An edit in place behind the link.
        std::fs::write(real1.join("app.env"), "A=11").unwrap();
        assert_eq!(next(&mut rx).await, Some(0));

        // The link re-pointed atomically: seen in the link's directory; after the reload the
        // watch moves to where it now points.
        let tmp = conf.join(".app.env.tmp");
        std::os::unix::fs::symlink(real2.join("app.env"), &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_eq!(next(&mut rx).await, Some(0));
        w.follow(0);
        while rx.try_recv().is_ok() {}
        std::fs::write(real2.join("app.env"), "A=22").unwrap();
        assert_eq!(next(&mut rx).await, Some(0));
        let targets = w.targets.lock().unwrap();
        let followed: Vec<&PathBuf> = targets
            .iter()
            .filter(|t| t.followed)
            .map(|t| &t.dir)
            .collect();
        assert_eq!(followed, [&real2.canonicalize().unwrap()]);
        assert!(!w.watched.contains_key(&real1.canonicalize().unwrap()));
    }

    #[tokio::test]
    async fn the_kubernetes_layout_needs_no_extra_watch() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("..2026_11_28");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("app.env"), "A=1").unwrap();
        std::os::unix::fs::symlink("..2026_11_28", d.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/app.env", d.path().join("app.env")).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let spec = SourceSpec {
            kind: SourceKind::Dotenv,
            path: d.path().join("app.env"),
        };
        let w = watch(&[spec], tx).unwrap();
        assert!(w.targets.lock().unwrap().iter().all(|t| !t.followed));
        assert_eq!(w.watched.len(), 1);
    }

    #[tokio::test]
    async fn one_directory_under_two_spellings_keeps_both_sources_watched() {
        let d = tempfile::tempdir().unwrap();
        let (conf, real) = (d.path().join("conf"), d.path().join("real"));
        std::fs::create_dir(&conf).unwrap();
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("alias")).unwrap();
        std::fs::write(real.join("a.env"), "A=1").unwrap();
        std::fs::write(real.join("b.env"), "B=1").unwrap();
        std::os::unix::fs::symlink(real.join("a.env"), conf.join("a.env")).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let specs = [
            SourceSpec {
                kind: SourceKind::Dotenv,
                path: conf.join("a.env"),
            },
            SourceSpec {
                kind: SourceKind::Dotenv,
                path: d.path().join("alias/b.env"),
            },
        ];
        let _w = watch(&specs, tx).unwrap();
        std::fs::write(d.path().join("alias/b.env"), "B=2").unwrap();
        assert_eq!(next(&mut rx).await, Some(1));
        std::fs::write(real.join("a.env"), "A=2").unwrap();
        assert_eq!(next(&mut rx).await, Some(0));
    }
}
