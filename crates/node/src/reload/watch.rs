//! Following the node's own files (its config file, its TLS certificate and key) with
//! `notify` (inotify). Each file is watched through its directory, so saves by rename and
//! Kubernetes' `..data` symlink swap of a mounted ConfigMap or Secret are seen; a file that
//! is a symlink into another directory is also watched where it points. The watcher only
//! says "look again": the reload task waits for the burst to settle and compares contents.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last event before the files are read: an editor's or a tool's
/// writes (a certificate, then its key) come as one burst.
pub const QUIET: Duration = Duration::from_millis(250);
/// Longest a burst is waited out.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Keeps the watches alive; drop it to stop watching.
pub struct FileWatch {
    watcher: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    /// Names of entries whose events matter (shared with notify's thread).
    names: Arc<Mutex<HashSet<OsString>>>,
}

/// Whether an event may have changed what a reader of the file would see.
fn relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Name(_)) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        // Data written in place: wait for the close.
        EventKind::Modify(_) => false,
        EventKind::Any | EventKind::Other => true,
    }
}

/// Whether an entry named `name` matters: one of the files, or a `..`-entry of a
/// Kubernetes volume (`..data`, `..2024_01_01_…`).
fn matters(names: &HashSet<OsString>, path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| names.contains(n) || n.as_encoded_bytes().starts_with(b".."))
}

impl FileWatch {
    /// Watch `files`; `tx` hears "look again".
    pub fn start(files: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> notify::Result<FileWatch> {
        let names = Arc::new(Mutex::new(HashSet::new()));
        let in_handler = names.clone();
        let handler = move |res: notify::Result<Event>| match res {
            Ok(event) if relevant(&event) => {
                let names = in_handler.lock().unwrap_or_else(PoisonError::into_inner);
                if event.paths.iter().any(|p| matters(&names, p)) {
                    let _ = tx.send(());
                }
            }
            Ok(_) => {}
            // Events may have been lost (a full queue): look, the contents decide.
            Err(_) => {
                let _ = tx.send(());
            }
        };
        let watcher = notify::recommended_watcher(handler)?;
        let mut w = FileWatch {
            watcher,
            dirs: BTreeSet::new(),
            names,
        };
        w.follow(files)?;
        Ok(w)
    }

    /// Watch what `files` name now: their directories, and where those that are symlinks
    /// point (call again after a change: a link may have been re-pointed, a path changed).
    pub fn follow(&mut self, files: &[PathBuf]) -> notify::Result<()> {
        let mut dirs = BTreeSet::new();
        let mut names = HashSet::new();
        for file in files {
            let file = absolute(file);
            for path in [Some(file.clone()), std::fs::canonicalize(&file).ok()]
                .into_iter()
                .flatten()
            {
                if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                    dirs.insert(dir.to_path_buf());
                    names.insert(name.to_os_string());
                }
            }
        }
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = names;
        for gone in self.dirs.difference(&dirs) {
            // It may be gone already (a volume's old `..2024_…` directory).
            let _ = self.watcher.unwatch(gone);
        }
        let mut first_error = None;
        let mut watched = BTreeSet::new();
        for dir in dirs {
            if self.dirs.contains(&dir) {
                watched.insert(dir);
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.dirs = watched;
        first_error.map_or(Ok(()), Err)
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Wait until `rx` has been quiet for [`QUIET`] (at most [`MAX_WAIT`]); false if it closed.
pub async fn settle(rx: &mut mpsc::UnboundedReceiver<()>) -> bool {
    let until = tokio::time::Instant::now() + MAX_WAIT;
    loop {
        let quiet = tokio::time::sleep(QUIET);
        tokio::select! {
            _ = quiet => return true,
            _ = tokio::time::sleep_until(until) => return true,
            e = rx.recv() => if e.is_none() { return false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn heard(rx: &mut mpsc::UnboundedReceiver<()>) -> bool {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .is_ok()
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<()>) {
        while rx.try_recv().is_ok() {}
    }
    #[tokio::test]
    async fn renames_symlink_swaps_and_links_elsewhere_are_seen_others_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("serve.toml"), "a").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _w = FileWatch::start(&[d.join("serve.toml")], tx).unwrap();

        // An atomic save: heard.
        std::fs::write(d.join(".serve.toml.tmp"), "b").unwrap();
        std::fs::rename(d.join(".serve.toml.tmp"), d.join("serve.toml")).unwrap();
        assert!(heard(&mut rx).await);
        drain(&mut rx);

        // A Kubernetes-style swap: serve.toml -> ..data/serve.toml, ..data re-pointed.
        let k = tempfile::tempdir().unwrap();
        let k = k.path();
        std::fs::create_dir(k.join("..v1")).unwrap();
        std::fs::write(k.join("..v1/serve.toml"), "1").unwrap();
        std::os::unix::fs::symlink("..v1", k.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/serve.toml", k.join("serve.toml")).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _k = FileWatch::start(&[k.join("serve.toml")], tx).unwrap();
        std::fs::create_dir(k.join("..v2")).unwrap();
        std::fs::write(k.join("..v2/serve.toml"), "2").unwrap();
        std::os::unix::fs::symlink("..v2", k.join("..data_tmp")).unwrap();
        std::fs::rename(k.join("..data_tmp"), k.join("..data")).unwrap();
        assert!(heard(&mut rx).await);

        // A link into another directory: an edit there is heard.
        let real = tempfile::tempdir().unwrap();
        let linked = tempfile::tempdir().unwrap();
        std::fs::write(real.path().join("node.pem"), "c").unwrap();
        std::os::unix::fs::symlink(real.path().join("node.pem"), linked.path().join("tls.pem"))
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _l = FileWatch::start(&[linked.path().join("tls.pem")], tx).unwrap();
        std::fs::write(real.path().join("node.pem"), "d").unwrap();
        assert!(heard(&mut rx).await);
    }

    #[tokio::test]
    async fn unrelated_files_are_not_heard() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("serve.toml"), "a").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _w = FileWatch::start(&[d.join("serve.toml")], tx).unwrap();
        std::fs::write(d.join("other.txt"), "x").unwrap();
        std::fs::rename(d.join("other.txt"), d.join("other2.txt")).unwrap();
        std::fs::remove_file(d.join("other2.txt")).unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        assert!(got.is_err(), "an unrelated file is not heard");
        let names: HashSet<OsString> = [OsString::from("serve.toml")].into();
        assert!(matters(&names, Path::new("/etc/tether/serve.toml")));
        assert!(matters(&names, Path::new("/etc/tether/..data")));
        assert!(!matters(&names, Path::new("/etc/tether/serve.toml.bak")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_settles_into_one_look() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        let sender = tokio::spawn(async move {
            for _ in 0..5 {
                tx.send(()).unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tx
        });
        assert!(settle(&mut rx).await);
        // The last event came at 400 ms; quiet for 250 ms after it.
        assert_eq!(start.elapsed(), Duration::from_millis(650));
        drop(sender.await.unwrap());
        assert!(!settle(&mut rx).await, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_burst_is_waited_out_at_most_max_wait() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        let _sender = tokio::spawn(async move {
            loop {
                if tx.send(()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        assert!(settle(&mut rx).await);
        assert_eq!(start.elapsed(), MAX_WAIT);
    }
}
