//! Where outputs go by default: a tmpfs runtime directory of tether's own user, created
//! private and refused when someone else could write there.

use std::path::{Path, PathBuf};

use super::{OutputError, atomic};

/// Where outputs named by a bare file name go: a tmpfs runtime directory of tether's own
/// user. `$XDG_RUNTIME_DIR/tether` (private to the user by the XDG spec), else `/run/tether`
/// for root (when `/run` is a writable tmpfs), else `/dev/shm/tether-UID`.
pub fn default_dir() -> PathBuf {
    default_dir_for(
        std::env::var_os("XDG_RUNTIME_DIR"),
        nix::unistd::geteuid().as_raw(),
    )
}

fn default_dir_for(xdg: Option<std::ffi::OsString>, euid: u32) -> PathBuf {
    use nix::unistd::{AccessFlags, access};
    if let Some(xdg) = xdg.filter(|x| Path::new(x).is_absolute() && Path::new(x).is_dir()) {
        return Path::new(&xdg).join("tether");
    }
    let run = Path::new("/run");
    if euid == 0
        && (run.join("tether").is_dir()
            || access(run, AccessFlags::W_OK).is_ok() && atomic::is_tmpfs(run))
    {
        return run.join("tether");
    }
    PathBuf::from(format!("/dev/shm/tether-{euid}"))
}

/// Make sure the shared default directory `dir` is tether's alone: created 0700 if missing;
/// refused if it is not a real directory, belongs to another user or is writable by group or
/// others (whoever can write there can swap the files tether writes).
pub fn ensure_private_dir(dir: &Path) -> Result<(), OutputError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let unsafe_dir = |why: String| OutputError::UnsafeDir {
        dir: dir.to_path_buf(),
        why,
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(OutputError::Dir {
                        path: dir.to_path_buf(),
                        source: e,
                    });
                }
                _ => {}
            }
            std::fs::symlink_metadata(dir)
        }
        other => other,
    }
    .map_err(|e| OutputError::Dir {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        return Err(unsafe_dir(
            "it is not a directory (a symlink or file)".into(),
        ));
    }
    if meta.uid() != euid {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, not to tether's user (uid {euid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "it is writable by group or others (mode {:04o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// A bare file name goes under [`default_dir`]; anything with a `/` is taken as given.
pub fn resolve_path(s: &str) -> PathBuf {
    if s.contains('/') {
        PathBuf::from(s)
    } else {
        default_dir().join(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_go_to_the_runtime_dir() {
        assert_eq!(resolve_path("/etc/x.env"), PathBuf::from("/etc/x.env"));
        assert!(
            resolve_path("x.env")
                .parent()
                .unwrap()
                .starts_with(default_dir())
        );
    }

    #[test]
    fn default_dirs_are_per_user() {
        let d = tempfile::tempdir().unwrap();
        let xdg = Some(d.path().as_os_str().to_owned());
        assert_eq!(default_dir_for(xdg.clone(), 1000), d.path().join("tether"));
        assert_eq!(default_dir_for(xdg, 0), d.path().join("tether"));
        let missing = Some(d.path().join("missing").into_os_string());
        assert_eq!(
            default_dir_for(missing, 1000),
            PathBuf::from("/dev/shm/tether-1000")
        );
        assert_eq!(
            default_dir_for(Some("relative".into()), 1001),
            PathBuf::from("/dev/shm/tether-1001")
        );
        let root = default_dir_for(None, 0);
        assert!(
            root == Path::new("/run/tether") || root == Path::new("/dev/shm/tether-0"),
            "{root:?}"
        );
    }

    #[test]
    fn the_default_dir_must_be_ours_and_private() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("tether");
        ensure_private_dir(&dir).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o077, 0, "created private");
        ensure_private_dir(&dir).unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_private_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&*dir.to_string_lossy()) && err.contains("0777"),
            "{err}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = ensure_private_dir(&link).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");

        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let err = ensure_private_dir(&dir).unwrap_err().to_string();
            assert!(err.contains("uid 65534"), "{err}");
        }
    }
}
