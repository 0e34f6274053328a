//! The follower's saved state: the last applied position and entries of the environment, in
//! a 0600 file per environment, node set and token, so that an agent can start (degraded)
//! while no node is reachable and resume from its position when one is.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NetSpec;
use super::{Follower, to_entries};
use tether_core::protocol::{Position, WireEntry};

/// Saved state: position and entries of the followed environment.
#[derive(Serialize, Deserialize)]
pub(super) struct Saved {
    env: String,
    position: Position,
    entries: Vec<WireEntry>,
}

/// The saved state's file: per environment, and per set of nodes and token, so two agents
/// on one host that follow the same name in different clusters, or with tokens that see
/// different secrets, never load each other's state. A token read from a file counts by
/// the file's path, not its content: a rotated token (a Kubernetes Secret swapped in place)
/// keeps its agent's saved state across a restart.
pub(super) fn state_file_name(spec: &NetSpec) -> String {
    use sha2::{Digest, Sha256};
    let mut servers: Vec<&str> = spec.servers.iter().map(String::as_str).collect();
    servers.sort_unstable();
    let mut h = Sha256::new();
    for s in servers {
        h.update(s.as_bytes());
        h.update([0]);
    }
    match (&spec.token_file, &spec.token) {
        (Some(file), _) => {
            h.update(b"file:");
            h.update(file.as_os_str().as_encoded_bytes());
        }
        (None, Some(t)) => h.update(t.expose()),
        (None, None) => {}
    }
    let digest = hex::encode(h.finalize());
    format!("{}-{}.json", spec.env, &digest[..12])
}

/// Where the state is kept when `--state-dir` is not given.
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        return Some(PathBuf::from(d));
    }
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/lib/tether"));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return Some(Path::new(&d).join("tether"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state/tether"))
}

impl Follower {
    pub(super) fn load_saved(&mut self) {
        let Some(path) = &self.state_file else { return };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        match serde_json::from_str::<Saved>(&text) {
            Ok(saved) if saved.env == self.spec.env => {
                self.entries = to_entries(saved.entries);
                self.position = Some(saved.position);
                tracing::info!(env = %self.spec.env, position = %saved.position, "resuming from saved state");
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "saved state is for another environment; ignored")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "saved state unreadable; ignored")
            }
        }
    }

    pub(super) fn save(&self) {
        if self.mode == super::Mode::DryRun {
            return;
        }
        let (Some(path), Some(position)) = (&self.state_file, self.position) else {
            return;
        };
        let saved = Saved {
            env: self.spec.env.clone(),
            position,
            entries: self
                .entries
                .iter()
                .map(|(k, e)| WireEntry {
                    name: k.clone(),
                    value: Some(e.value.clone()),
                    secret: e.secret,
                })
                .collect(),
        };
        let Ok(bytes) = serde_json::to_vec(&saved) else {
            return;
        };
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
        }
        if let Err(e) = crate::atomic::write_atomic(path, &bytes, 0o600, None) {
            tracing::warn!(error = %e, "cannot save state");
        }
    }
}
