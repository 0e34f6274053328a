//! Where the endpoints listen: a TCP address, or a unix socket (`unix:PATH`) created 0660
//! (tether's user and group may connect), published under its name only once its mode is
//! set, and removed on exit. A stale socket left by a dead tether is replaced; a socket
//! someone listens on, or a path that is not a socket, is refused.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the unix socket: connecting needs write permission on it.
pub const SOCKET_MODE: u32 = 0o660;

/// A validated `--listen-metrics` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, like unix:/run/tether/agent.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "{s:?} is not an address like 127.0.0.1:9464, [::1]:9464 or unix:/run/tether/agent.sock"
            )
        })
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen for the agent's endpoints on {addr} (listen_metrics): {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot listen for the agent's endpoints on unix:{} (listen_metrics): the path exists and is not a socket; remove it or choose another path",
        .0.display()
    )]
    NotSocket(PathBuf),
    #[error(
        "cannot listen for the agent's endpoints on unix:{} (listen_metrics): another process listens on it (another tether?)",
        .0.display()
    )]
    InUse(PathBuf),
}

fn bind_error(path: &Path, source: std::io::Error) -> ListenError {
    ListenError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    }
}

/// The socket file this process published; removed when dropped, if it is still ours.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bind a unix socket at `path`: check what is there, bind under a temporary name in the
/// same directory, set its mode, then move it to `path` (never over a file that appeared
/// meanwhile).
pub fn bind_unix(path: &Path) -> Result<(tokio::net::UnixListener, SocketFile), ListenError> {
    clear_stale(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| bind_error(path, std::io::Error::other("the path has no file name")))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_socket()) {
        // Left by a tether that had this pid before.
        let _ = std::fs::remove_file(&tmp);
    }
    let listener = tokio::net::UnixListener::bind(&tmp).map_err(|e| bind_error(path, e))?;
    let publish = || -> std::io::Result<()> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        rename_noreplace(&tmp, path)
    };
    if let Err(e) = publish() {
        let _ = std::fs::remove_file(&tmp);
        return Err(match e.kind() {
            std::io::ErrorKind::AlreadyExists => ListenError::InUse(path.to_path_buf()),
            _ => bind_error(path, e),
        });
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| bind_error(path, e))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        },
    ))
}

/// A socket nobody listens on is stale and removed; anything else there is refused.
fn clear_stale(path: &Path) -> Result<(), ListenError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bind_error(path, e)),
        Ok(m) if !m.file_type().is_socket() => Err(ListenError::NotSocket(path.to_path_buf())),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(ListenError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale socket nobody listens on");
                std::fs::remove_file(path).map_err(|e| bind_error(path, e))
            }
            Err(e) => Err(bind_error(path, e)),
        },
    }
}

/// `rename`, failing with `AlreadyExists` when `to` exists (where the filesystem supports
/// asking for that; otherwise a plain rename, the stale check having just run).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::fcntl::{RenameFlags, renameat2};
    match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => std::fs::rename(from, to),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses() {
        assert_eq!(
            "127.0.0.1:9464".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:0".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("[::1]:0".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/t.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/run/t.sock".into()))
        );
        for bad in ["unix:", "localhost", "9464", "127.0.0.1", ""] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad:?}");
        }
        assert_eq!(
            ListenAddr::Unix("/a b".into()).to_string(),
            "unix:/a b".to_string()
        );
    }

    #[tokio::test]
    async fn unix_socket_mode_stale_file_and_removal() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("agent.sock");
        // A stale socket (bound, then its listener gone) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (listener, file) = bind_unix(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, SOCKET_MODE);
        // One listening: refused, and left alone.
        assert!(matches!(bind_unix(&path), Err(ListenError::InUse(_))));
        assert!(path.exists());
        drop(listener);
        drop(file);
        assert!(!path.exists(), "removed on drop");
        // Not a socket: refused, untouched.
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(bind_unix(&path), Err(ListenError::NotSocket(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
        // Only leftovers of this process's own temporary name remain possible: none here.
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[tokio::test]
    async fn a_replaced_socket_file_is_not_removed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("agent.sock");
        let (_listener, file) = bind_unix(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
    }
}
