//! Local sources of values: `file:` (dotenv or JSON) and `dir:` (one file per key), each
//! keeping its last good entries, and the `notify` watcher that tells the agent to reload.

pub mod dir;
pub mod keyshade;
pub mod net;
pub mod parse;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::state::{Entries, Entry};
use tether_core::secret::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Dotenv,
    Json,
    Dir,
}

/// Where a source reads from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    pub kind: SourceKind,
    pub path: PathBuf,
}

impl SourceSpec {
    /// `file:PATH` (format by extension), `dotenv:PATH`, `json:PATH`, `dir:PATH`.
    pub fn parse(s: &str) -> Result<SourceSpec, String> {
        let (kind, path) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not KIND:PATH (file:, dotenv:, json: or dir:)"))?;
        if path.is_empty() {
            return Err(format!("{s:?} has no path"));
        }
        let path = PathBuf::from(path);
        let kind = match kind {
            "file" => Self::kind_for_file(&path),
            "dotenv" | "env" => SourceKind::Dotenv,
            "json" => SourceKind::Json,
            "dir" => SourceKind::Dir,
            other => {
                return Err(format!(
                    "unknown source kind {other:?} (file, dotenv, json, dir)"
                ));
            }
        };
        Ok(SourceSpec { kind, path })
    }

    pub fn kind_for_file(path: &Path) -> SourceKind {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => SourceKind::Json,
            _ => SourceKind::Dotenv,
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            SourceKind::Dotenv => "dotenv",
            SourceKind::Json => "json",
            SourceKind::Dir => "dir",
        };
        write!(f, "{kind}:{}", self.path.display())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: parse::ParseError,
    },
}

impl SourceError {
    /// The file is gone (deleted, or mid-swap); the caller keeps the last good values.
    pub fn is_missing(&self) -> bool {
        matches!(self, SourceError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Read a source once. Values from local sources are treated as secret.
pub fn load(spec: &SourceSpec) -> Result<Entries, SourceError> {
    let pairs = match spec.kind {
        SourceKind::Dir => dir::read(&spec.path).map_err(|source| SourceError::Read {
            path: spec.path.clone(),
            source,
        })?,
        SourceKind::Dotenv | SourceKind::Json => {
            let text = std::fs::read_to_string(&spec.path).map_err(|source| SourceError::Read {
                path: spec.path.clone(),
                source,
            })?;
            let parsed = if spec.kind == SourceKind::Json {
                parse::parse_json(&text)
            } else {
                parse::parse_dotenv(&text)
            };
            parsed.map_err(|source| SourceError::Parse {
                path: spec.path.clone(),
                source,
            })?
        }
    };
    Ok(pairs
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                Entry {
                    value: Value::new(v),
                    secret: true,
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_syntax() {
        assert_eq!(
            SourceSpec::parse("file:/a/b.json").unwrap().kind,
            SourceKind::Json
        );
        assert_eq!(
            SourceSpec::parse("file:/a/b.env").unwrap().kind,
            SourceKind::Dotenv
        );
        assert_eq!(
            SourceSpec::parse("json:/a/b.conf").unwrap().kind,
            SourceKind::Json
        );
        assert_eq!(SourceSpec::parse("dir:/s").unwrap().to_string(), "dir:/s");
        assert!(SourceSpec::parse("/a/b").is_err());
        assert!(SourceSpec::parse("file:").is_err());
        assert!(SourceSpec::parse("http:/x").is_err());
    }

    #[test]
    fn parse_errors_name_the_file_not_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.env");
        std::fs::write(&path, "A=\"s3cr3t\n").unwrap();
        let err = load(&SourceSpec {
            kind: SourceKind::Dotenv,
            path,
        })
        .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("a.env"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}
