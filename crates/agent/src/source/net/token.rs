//! The bearer token the follower connects with. A `token_file` is read again at every
//! connection attempt and watched (as sources are: a rename, or Kubernetes' `..data`
//! symlink swap of a rotated Secret), so a rotated token is followed without a restart.
//!
//! A change while connected does not drop the connection: the node checked the token when
//! the connection opened, a rotation normally overlaps the old and new tokens, and a fleet
//! whose Secret rotates would otherwise reconnect all at once. The new token is used for
//! the next connection; revoking the old one is the node's to enforce. A change while the
//! follower waits to reconnect (after a refusal, say) ends the wait at once. The token
//! itself never reaches a log line or an error message.

use std::path::PathBuf;

use tokio::sync::mpsc;

use super::NetSpec;
use crate::source::watch::SourceWatcher;
use crate::source::{SourceKind, SourceSpec};
use tether_core::secret::Value;

/// Where the token comes from, and the last one noticed.
pub(super) struct Token {
    file: Option<PathBuf>,
    /// From `TETHER_TOKEN` (or the file as read at start, for a follower without a watch).
    fixed: Option<Value>,
    /// The watch on the file and its events (none without a file, or if it cannot be set).
    watch: Option<(SourceWatcher, mpsc::UnboundedReceiver<usize>)>,
    /// The token last connected with or last seen to change, to tell a real change from
    /// events that leave the content as it was.
    noticed: Option<Value>,
}

impl Token {
    pub(super) fn new(spec: &NetSpec) -> Token {
        let watch = spec.token_file.as_ref().and_then(|path| {
            let (tx, rx) = mpsc::unbounded_channel();
            let file = SourceSpec {
                kind: SourceKind::Dotenv,
                path: path.clone(),
            };
            match crate::source::watch::watch(&[file], tx) {
                Ok(w) => Some((w, rx)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch token_file; it is still read again at each connection attempt");
                    None
                }
            }
        });
        Token {
            file: spec.token_file.clone(),
            fixed: spec.token.clone(),
            watch,
            noticed: spec.token.clone(),
        }
    }

    /// The token for a connection attempt, read now. An error names the file, not the token.
    pub(super) fn for_connection(&mut self) -> Result<Option<Value>, String> {
        let token = self.read();
        // After a failed read, any token that appears is news.
        self.noticed = token.as_ref().ok().cloned().flatten();
        token
    }

    fn read(&self) -> Result<Option<Value>, String> {
        read(self.file.as_deref(), &self.fixed)
    }

    /// Resolves when the file holds a token other than the last one noticed (never, without
    /// a watched file). Events that leave it as it was, or empty, are waited past.
    pub(super) async fn changed(&mut self) {
        let Token {
            file,
            fixed,
            watch,
            noticed,
        } = self;
        let Some((watcher, rx)) = watch.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            if rx.recv().await.is_none() {
                return std::future::pending().await;
            }
            while rx.try_recv().is_ok() {}
            // A symlinked file may point somewhere else now.
            watcher.follow(0);
            if let Ok(Some(t)) = read(file.as_deref(), fixed) {
                if noticed.as_ref() != Some(&t) {
                    *noticed = Some(t);
                    return;
                }
            }
        }
    }
}

/// The token in `file` (trimmed), or the fixed one without a file.
fn read(file: Option<&std::path::Path>, fixed: &Option<Value>) -> Result<Option<Value>, String> {
    let Some(path) = file else {
        return Ok(fixed.clone());
    };
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(Value::from(t.trim()))),
        Ok(_) => Err(format!(
            "token_file {} is empty; waiting for a token there",
            path.display()
        )),
        Err(e) => Err(format!(
            "cannot read token_file {}: {e}; waiting for a token there",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(file: Option<PathBuf>, token: Option<&str>) -> NetSpec {
        NetSpec {
            servers: vec!["http://127.0.0.1:1".into()],
            env: "prod".into(),
            token: token.map(Value::from),
            token_file: file,
            token_source: String::new(),
            ca_file: None,
            state_dir: None,
            start_without_server: false,
        }
    }

    /// Swap the file as Kubernetes and editors do: a new file renamed over it.
    fn rotate(path: &std::path::Path, content: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_rotated_token_file_keeps_the_saved_state_name() {
        use super::super::saved::state_file_name;
        let file = |p: &str, t: &str| state_file_name(&spec(Some(p.into()), Some(t)));
        assert_eq!(file("/run/t", "old"), file("/run/t", "new"));
        assert_ne!(file("/run/t", "old"), file("/run/other", "old"));
        // A token from the environment has no file: its content tells agents apart.
        let env = |t: &str| state_file_name(&spec(None, Some(t)));
        assert_ne!(env("one"), env("two"));
        assert_ne!(env("old"), file("/run/t", "old"));
    }

    #[tokio::test]
    async fn the_file_is_read_at_each_attempt_and_a_rotation_is_noticed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("token");
        std::fs::write(&path, "old-token\n").unwrap();
        let mut t = Token::new(&spec(Some(path.clone()), Some("old-token")));
        assert_eq!(t.for_connection().unwrap(), Some(Value::from("old-token")));

        // Events that leave the token as it was are waited past.
        rotate(&path, "old-token");
        let same = tokio::time::timeout(Duration::from_millis(300), t.changed()).await;
        assert!(same.is_err(), "no change noticed for the same token");

        rotate(&path, "new-token\n");
        tokio::time::timeout(Duration::from_secs(5), t.changed())
            .await
            .expect("the rotation is noticed");
        assert_eq!(t.for_connection().unwrap(), Some(Value::from("new-token")));
    }

    #[tokio::test]
    async fn a_missing_or_empty_file_is_an_error_naming_the_file_never_the_token() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("token");
        std::fs::write(&path, "s3cr3t-token").unwrap();
        let mut t = Token::new(&spec(Some(path.clone()), Some("s3cr3t-token")));
        std::fs::write(&path, "  \n").unwrap();
        let empty = t.for_connection().unwrap_err();
        assert!(
            empty.contains("token_file") && empty.contains("is empty"),
            "{empty}"
        );
        std::fs::remove_file(&path).unwrap();
        let gone = t.for_connection().unwrap_err();
        assert!(gone.contains(&path.display().to_string()), "{gone}");
        assert!(!format!("{empty}{gone}").contains("s3cr3t"));

        // The same token coming back after the failed read is noticed.
        rotate(&path, "s3cr3t-token");
        tokio::time::timeout(Duration::from_secs(5), t.changed())
            .await
            .expect("the token's return is noticed");
    }

    #[test]
    fn without_a_file_the_fixed_token_is_used() {
        let mut t = Token::new(&spec(None, Some("from-env")));
        assert_eq!(t.for_connection().unwrap(), Some(Value::from("from-env")));
        let mut none = Token::new(&spec(None, None));
        assert_eq!(none.for_connection().unwrap(), None);
    }
}
