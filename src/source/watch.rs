//! Watches sources with `notify` (inotify) and reports which source to reload.
//!
//! A file source is watched through its parent directory, so saves by rename, deletion and
//! re-creation, and Kubernetes' `..data` symlink swap are all seen. Writes in place are taken
//! at close (IN_CLOSE_WRITE), never mid-write.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{SourceKind, SourceSpec};

/// Keeps the watches alive; drop it to stop watching.
pub struct SourceWatcher {
    _watcher: notify::RecommendedWatcher,
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
                    dir: abs,
                    name: None,
                },
                SourceKind::Dotenv | SourceKind::Json => Target {
                    index,
                    dir: abs
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| PathBuf::from("/")),
                    name: abs.file_name().map(OsString::from),
                },
            }
        })
        .collect();
    // Each watched directory, with the first source that needs it (for errors).
    let dirs: Vec<(PathBuf, usize)> = {
        let mut d: Vec<(PathBuf, usize)> =
            targets.iter().map(|t| (t.dir.clone(), t.index)).collect();
        d.sort();
        d.dedup_by(|a, b| a.0 == b.0);
        d
    };
    let handler = move |res: notify::Result<Event>| match res {
        Ok(event) if relevant(&event) => {
            for t in &targets {
                if event.paths.iter().any(|p| t.matches(p)) {
                    let _ = tx.send(t.index);
                }
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "file watch error; reloading every source");
            for t in &targets {
                let _ = tx.send(t.index);
            }
        }
    };
    let mut watcher = notify::recommended_watcher(handler).map_err(WatchError::Start)?;
    for (dir, index) in dirs {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|mut source| {
                // notify appends the paths to its message; `dir` already says it.
                source.paths.clear();
                WatchError::Dir {
                    spec: specs[index].to_string(),
                    dir,
                    source,
                }
            })?;
    }
    Ok(SourceWatcher { _watcher: watcher })
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
        let _w = watch(
            &[SourceSpec {
                kind: SourceKind::Dotenv,
                path: file.clone(),
            }],
            tx,
        )
        .unwrap();
        std::fs::write(d.path().join("other.txt"), "x").unwrap();
        std::fs::write(&file, "A=2").unwrap();
        // The first event that arrives is for our file, after the other file's write.
        assert_eq!(next(&mut rx).await, Some(0));
        assert!(rx.try_recv().is_err() || std::fs::read_to_string(&file).unwrap() == "A=2");
    }
}
