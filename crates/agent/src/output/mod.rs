//! Outputs: where rendered values go (files in dotenv, json, shell or dir format, and the
//! child's environment), written atomically and only when their bytes change.

pub mod check;
pub mod env;
mod land;
mod place;
pub mod render;
pub mod template;
mod template_watch;
pub use template_watch::TemplateWatch;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::atomic;
pub use crate::atomic::Owner;
pub use check::CheckSpec;
pub use env::{EnvSpec, EnvVars};
pub use land::land;
pub use place::{default_dir, ensure_private_dir, resolve_path};
pub use render::{Format, Rendered, valid_env_name};
pub use template::{TemplateError, TemplateSource};

use crate::action::Action;
use crate::state::Entries;

/// One output as validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    pub path: PathBuf,
    pub format: Format,
    pub mode: u32,
    pub owner: Option<Owner>,
    pub on_change: Action,
    /// Rendered from this template instead of `format`.
    pub template: Option<TemplateSource>,
    /// Run on the rendered temp file before it replaces the output.
    pub check: Option<CheckSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: atomic::WriteError,
    },
    #[error("output {path}: cannot create its directory: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "default output directory {dir}: {why}; another user could read or replace the files \
         there: remove it (or make it yours, mode 0700), or give the output a full path"
    )]
    UnsafeDir { dir: PathBuf, why: String },
    #[error("output {path}: {source}")]
    Template {
        path: PathBuf,
        #[source]
        source: TemplateError,
    },
    #[error("output {path}: {why}")]
    Check { path: PathBuf, why: String },
}

/// An output's new content, rendered (and checked) but not yet in place.
pub enum Prepared {
    File(atomic::Staged, Rendered),
    Dir(Rendered),
}

/// One output file or directory and what it last held.
pub struct Output {
    pub spec: OutputSpec,
    last: Option<Rendered>,
    /// The shared default directory this output lives in, checked before each use.
    private_dir: Option<PathBuf>,
}

impl Output {
    pub fn new(spec: OutputSpec) -> Self {
        let probe = spec.path.parent().unwrap_or(Path::new("/"));
        if !atomic::is_tmpfs(probe) {
            tracing::warn!(
                path = %spec.path.display(),
                "output is not on tmpfs: secret values will reach the disk"
            );
        }
        let private_dir = spec.path.parent().filter(|p| *p == default_dir());
        Output {
            private_dir: private_dir.map(Path::to_path_buf),
            spec,
            last: None,
        }
    }

    /// Render `entries` and write them if the bytes differ from what the output holds.
    /// Returns whether anything was written.
    pub async fn apply(&mut self, entries: &Entries) -> Result<bool, OutputError> {
        match self.prepare(entries).await? {
            Some(p) => self.commit(p).map(|()| true),
            None => Ok(false),
        }
    }

    /// The bytes this output would hold for `entries` (entries it cannot carry are logged).
    pub fn render(&self, entries: &Entries) -> Result<Rendered, OutputError> {
        self.rendered(entries, true)
    }

    /// Whether landing `entries` would write this output (its bytes differ from what it
    /// holds), found without writing or logging anything. A render that fails writes
    /// nothing. (The check, run only when it does write, is not run here.)
    pub(crate) fn would_write(&self, entries: &Entries) -> bool {
        self.rendered(entries, false).is_ok_and(|r| !self.holds(&r))
    }

    /// Whether the output holds `r` already: what it last wrote or, before its first
    /// write, what an earlier run left there.
    pub(crate) fn holds(&self, r: &Rendered) -> bool {
        match &self.last {
            Some(last) => last == r,
            None => self.read_existing().as_ref() == Some(r),
        }
    }

    fn rendered(&self, entries: &Entries, log: bool) -> Result<Rendered, OutputError> {
        if let Some(t) = &self.spec.template {
            let err = |source| OutputError::Template {
                path: self.spec.path.clone(),
                source,
            };
            let text = t.text().map_err(err)?;
            return template::render(&t.name(), &text, entries)
                .map(Rendered::File)
                .map_err(err);
        }
        let (rendered, skipped) = render::render(self.spec.format, entries);
        for s in skipped.iter().filter(|_| log) {
            tracing::error!(
                key = %tether_core::logname::name(&s.name),
                output = %self.spec.path.display(),
                reason = s.reason,
                "entry skipped"
            );
        }
        Ok(rendered)
    }

    /// Render `entries`; when the bytes differ from what the output holds, write them to a
    /// temp file beside it and run the check on it. `None`: nothing to write.
    pub async fn prepare(&mut self, entries: &Entries) -> Result<Option<Prepared>, OutputError> {
        if let Some(dir) = &self.private_dir {
            // Before anything is read or written there: someone else's directory could hand
            // us their content or take ours.
            ensure_private_dir(dir)?;
        }
        let rendered = self.render(entries)?;
        if self.last.is_none() {
            // Left by an earlier run (--keep-outputs): identical content is not rewritten.
            self.last = self.read_existing();
        }
        if self.last.as_ref() == Some(&rendered) {
            return Ok(None);
        }
        self.make_parent()?;
        match rendered {
            Rendered::File(bytes) => {
                let path = &self.spec.path;
                let staged = atomic::stage(path, &bytes, self.spec.mode, self.spec.owner).map_err(
                    |source| OutputError::Write {
                        path: path.clone(),
                        source,
                    },
                )?;
                if let Some(c) = &self.spec.check {
                    check::run(c, staged.tmp(), path, entries)
                        .await
                        .map_err(|why| OutputError::Check {
                            path: path.clone(),
                            why,
                        })?;
                }
                Ok(Some(Prepared::File(staged, Rendered::File(bytes))))
            }
            dir => Ok(Some(Prepared::Dir(dir))),
        }
    }

    /// Put prepared content in place.
    pub fn commit(&mut self, p: Prepared) -> Result<(), OutputError> {
        let path = &self.spec.path;
        let err = |source| OutputError::Write {
            path: path.clone(),
            source,
        };
        let rendered = match p {
            Prepared::File(staged, rendered) => {
                staged.commit().map_err(err)?;
                rendered
            }
            Prepared::Dir(rendered) => {
                if let Rendered::Dir(files) = &rendered {
                    atomic::publish_dir(path, files, self.spec.mode, self.spec.owner)
                        .map_err(err)?;
                }
                rendered
            }
        };
        self.last = Some(rendered);
        Ok(())
    }

    /// What an earlier run left, if it also has the mode and owner this output wants
    /// (otherwise it is rewritten, which sets them).
    pub(crate) fn read_existing(&self) -> Option<Rendered> {
        use std::os::unix::fs::MetadataExt;
        match self.spec.format {
            Format::Dir => atomic::read_published(&self.spec.path).map(Rendered::Dir),
            _ => {
                let meta = std::fs::symlink_metadata(&self.spec.path).ok()?;
                let owner_ok = self.spec.owner.is_none_or(|o| {
                    o.uid.is_none_or(|u| u == meta.uid()) && o.gid.is_none_or(|g| g == meta.gid())
                });
                if !meta.is_file() || meta.mode() & 0o7777 != self.spec.mode || !owner_ok {
                    return None;
                }
                std::fs::read(&self.spec.path).ok().map(Rendered::File)
            }
        }
    }

    fn make_parent(&self) -> Result<(), OutputError> {
        let path = &self.spec.path;
        if let Some(parent) = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.exists())
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| OutputError::Dir {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Remove what this output wrote (on a clean exit).
    pub fn remove(&self) {
        let res = match self.spec.format {
            Format::Dir => atomic::remove_published(&self.spec.path).map_err(|e| e.to_string()),
            _ => match std::fs::remove_file(&self.spec.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            },
        };
        if let Err(error) = res {
            tracing::warn!(path = %self.spec.path.display(), %error, "cannot remove output");
        }
    }
}

impl Owner {
    /// `USER[:GROUP]`, `UID[:GID]`, or `:GROUP`.
    pub fn parse(s: &str) -> Result<Owner, String> {
        use nix::unistd::{Group, User};
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let uid = match user {
            "" => None,
            u => Some(match u.parse::<u32>() {
                Ok(n) => n,
                Err(_) => match lookup_id(u, "/etc/passwd", |n| {
                    Ok(User::from_name(n)?.map(|u| u.uid.as_raw()))
                }) {
                    Ok(Some(uid)) => uid,
                    _ => return Err(format!("no such user {u:?}{STATIC_NOTE}")),
                },
            }),
        };
        let gid = match group {
            None | Some("") => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => match lookup_id(g, "/etc/group", |n| {
                    Ok(Group::from_name(n)?.map(|g| g.gid.as_raw()))
                }) {
                    Ok(Some(gid)) => gid,
                    _ => return Err(format!("no such group {g:?}{STATIC_NOTE}")),
                },
            }),
        };
        if uid.is_none() && gid.is_none() {
            return Err("owner needs a user, a group or both (USER:GROUP)".into());
        }
        Ok(Owner { uid, gid })
    }
}

/// A statically linked glibc cannot load NSS modules (systemd, LDAP, sssd): asking it for a
/// name that `files` does not have crashes the process. Such a build reads the files itself.
const STATIC: bool = cfg!(target_feature = "crt-static");
const STATIC_NOTE: &str = if STATIC {
    " (this static build reads /etc/passwd and /etc/group, not NSS: give a numeric id)"
} else {
    ""
};

/// A user or group id by name: from `file` in a static build, else through NSS (`nss`).
fn lookup_id(
    name: &str,
    file: &str,
    nss: impl FnOnce(&str) -> nix::Result<Option<u32>>,
) -> std::io::Result<Option<u32>> {
    if STATIC {
        Ok(id_in(&std::fs::read_to_string(file)?, name))
    } else {
        Ok(nss(name)?)
    }
}

/// The id (third field) of `name` in the text of /etc/passwd or /etc/group.
fn id_in(text: &str, name: &str) -> Option<u32> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut fields = l.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.trim().parse().ok()
    })
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = self.uid {
            write!(f, "{u}")?;
        }
        if let Some(g) = self.gid {
            write!(f, ":{g}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::state::entries;

    #[test]
    fn ids_are_read_from_passwd_and_group_text() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/bash\n\
                      app:x:1001:1001::/home/app:/bin/sh\nbroken:x\nodd:x:nan:1::/:/bin/sh\n";
        assert_eq!(id_in(passwd, "root"), Some(0));
        assert_eq!(id_in(passwd, "app"), Some(1001));
        assert_eq!(id_in(passwd, "ap"), None, "names match whole");
        assert_eq!(id_in(passwd, "broken"), None);
        assert_eq!(id_in(passwd, "odd"), None);
        assert_eq!(id_in(passwd, "nobody-here"), None);
        assert_eq!(id_in("staff:x:50:alice,bob\n", "staff"), Some(50));
    }

    fn spec(path: PathBuf, format: Format) -> OutputSpec {
        OutputSpec {
            path,
            format,
            mode: 0o640,
            owner: None,
            on_change: Action::None,
            template: None,
            check: None,
        }
    }

    #[tokio::test]
    async fn unchanged_content_is_not_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/app.env");
        let mut out = Output::new(spec(path.clone(), Format::Dotenv));
        assert!(out.apply(&entries(&[("A", "1")])).await.unwrap());
        let ino = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        assert!(!out.apply(&entries(&[("A", "1")])).await.unwrap());
        let again = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        assert_eq!(ino, again, "not rewritten");
        assert!(out.apply(&entries(&[("A", "2")])).await.unwrap());

        // A fresh output over a file with the same content leaves it alone.
        let mut fresh = Output::new(spec(path.clone(), Format::Dotenv));
        assert!(!fresh.apply(&entries(&[("A", "2")])).await.unwrap());
        fresh.remove();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn unwritable_directory_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("file"), "x").unwrap();
        let mut out = Output::new(spec(d.path().join("file/app.env"), Format::Dotenv));
        let err = out
            .apply(&entries(&[("A", "s3cr3t")]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("file/app.env"), "{err}");
        assert!(!err.contains("s3cr3t"));
    }

    #[test]
    fn owner_syntax() {
        assert_eq!(
            Owner::parse("0:0"),
            Ok(Owner {
                uid: Some(0),
                gid: Some(0)
            })
        );
        assert_eq!(
            Owner::parse("root"),
            Ok(Owner {
                uid: Some(0),
                gid: None
            })
        );
        assert_eq!(
            Owner::parse(":65534"),
            Ok(Owner {
                uid: None,
                gid: Some(65534)
            })
        );
        assert!(Owner::parse("no-such-user-xyz").is_err());
        assert!(Owner::parse(":").is_err());
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;
    use crate::action::Action;
    use crate::state::entries;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_left_over_file_with_the_wrong_mode_is_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("app.env");
        std::fs::write(&path, "A=1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut out = Output::new(OutputSpec {
            path: path.clone(),
            format: Format::Dotenv,
            mode: 0o600,
            owner: None,
            on_change: Action::None,
            template: None,
            check: None,
        });
        assert!(out.apply(&entries(&[("A", "1")])).await.unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }
}
