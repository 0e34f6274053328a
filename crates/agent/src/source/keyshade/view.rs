//! The followed keyshade environment as the agent sees it: the last REST snapshot with the
//! live `configuration-updated` events applied on top. Pure (no I/O), so its rules are
//! tested here: a snapshot replaces everything (deletions converge), the events received
//! while it was fetched are applied again on top of it, a duplicate event changes nothing,
//! a secret that fails to decrypt keeps its last good value. Secrets are entries marked
//! secret; variables are not.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::crypto::{self, PrivateKey};
use super::rest::Snapshot;
use crate::state::{Entries, Entry};
use tether_core::secret::Value;

/// One `configuration-updated` event. `Debug` shows no value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Update {
    pub name: String,
    /// Plain text, or eccrypto's JSON ciphertext when `!plaintext`.
    pub value: String,
    pub plaintext: bool,
}

impl Update {
    /// `{name, value, isPlaintext}` (or an older server's `isSecret`). Without either, a
    /// value that is eccrypto's JSON is taken for a secret. The error never shows a value.
    pub(crate) fn parse(data: &Json) -> Result<Update, String> {
        let name = data
            .get("name")
            .and_then(Json::as_str)
            .ok_or("configuration-updated without a \"name\"")?;
        let value = data
            .get("value")
            .ok_or("configuration-updated without a \"value\"")?;
        let value = match value {
            Json::String(s) => s.clone(),
            Json::Null => String::new(),
            Json::Number(_) | Json::Bool(_) => value.to_string(),
            _ => return Err("configuration-updated whose value is not text".into()),
        };
        let plaintext = match (
            data.get("isPlaintext").and_then(Json::as_bool),
            data.get("isSecret").and_then(Json::as_bool),
        ) {
            (Some(p), _) => p,
            (None, Some(s)) => !s,
            (None, None) => !looks_encrypted(&value),
        };
        Ok(Update {
            name: name.to_string(),
            value,
            plaintext,
        })
    }
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Update")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("plaintext", &self.plaintext)
            .finish()
    }
}

fn looks_encrypted(value: &str) -> bool {
    value.trim_start().starts_with('{') && value.contains("\"ephemPublicKey\"")
}

/// A secret this agent cannot decrypt (reported by name, never by value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Undecryptable {
    pub name: String,
    /// No private key is configured for the project at all.
    pub no_key: bool,
    pub why: String,
}

#[derive(Default)]
pub(crate) struct View {
    entries: Entries,
    /// The ciphertext each secret's value was decrypted from: an unchanged secret (every
    /// periodic snapshot, a duplicated event) is not decrypted again.
    decrypted: BTreeMap<String, String>,
    /// Ciphertexts that failed, by name: reported once, not at every snapshot.
    failed: BTreeMap<String, String>,
    /// A snapshot has been applied: the view is a state the agent can use.
    ready: bool,
}

impl View {
    pub(crate) fn entries(&self) -> &Entries {
        &self.entries
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready
    }

    /// The snapshot, then `replay` (the events received since it was asked for) on top.
    /// Names it lacks are gone. Returns the secrets that newly failed to decrypt; each keeps
    /// its last good value if it had one.
    pub(crate) fn snapshot(
        &mut self,
        snap: &Snapshot,
        replay: &[Update],
        key: Option<&PrivateKey>,
    ) -> Vec<Undecryptable> {
        let mut problems = Vec::new();
        let old = std::mem::take(&mut self.entries);
        let mut decrypted = BTreeMap::new();
        let mut failed = BTreeMap::new();
        for v in &snap.variables {
            self.entries.insert(v.name.clone(), plain(&v.value, false));
        }
        for s in &snap.secrets {
            if self.entries.contains_key(&s.name) {
                tracing::warn!(key = %tether_core::logname::name(&s.name), "keyshade has a secret and a variable of this name; the secret wins");
            }
            let last_good = old.get(&s.name).filter(|e| e.secret);
            match self.decrypt(&s.name, &s.value, key, last_good) {
                Ok(entry) => {
                    decrypted.insert(s.name.clone(), s.value.clone());
                    self.entries.insert(s.name.clone(), entry);
                }
                Err(problem) => {
                    failed.insert(s.name.clone(), s.value.clone());
                    if let Some(p) = problem {
                        problems.push(p);
                    }
                    if let Some(e) = last_good {
                        self.entries.insert(s.name.clone(), e.clone());
                        if let Some(w) = self.decrypted.get(&s.name) {
                            decrypted.insert(s.name.clone(), w.clone());
                        }
                    }
                }
            }
        }
        self.decrypted = decrypted;
        self.failed = failed;
        self.ready = true;
        for u in replay {
            problems.extend(self.update(u, key));
        }
        problems
    }

    /// Apply one live event. Returns the problem when its secret newly failed to decrypt
    /// (the name then keeps its last good value).
    pub(crate) fn update(&mut self, u: &Update, key: Option<&PrivateKey>) -> Option<Undecryptable> {
        if u.plaintext {
            // A name known as a secret stays marked secret (a project that lets keyshade
            // keep its key sends secrets in plain text).
            let secret = self.entries.get(&u.name).is_some_and(|e| e.secret);
            self.decrypted.remove(&u.name);
            self.entries.insert(u.name.clone(), plain(&u.value, secret));
            return None;
        }
        let last_good = self.entries.get(&u.name).filter(|e| e.secret).cloned();
        match self.decrypt(&u.name, &u.value, key, last_good.as_ref()) {
            Ok(entry) => {
                self.failed.remove(&u.name);
                self.decrypted.insert(u.name.clone(), u.value.clone());
                self.entries.insert(u.name.clone(), entry);
                None
            }
            Err(problem) => {
                self.failed.insert(u.name.clone(), u.value.clone());
                problem
            }
        }
    }

    /// The entry for secret `name` with ciphertext `wire`: the last one when the ciphertext
    /// is unchanged, else decrypted now. `Err(None)`: failed before with this ciphertext,
    /// already reported.
    fn decrypt(
        &self,
        name: &str,
        wire: &str,
        key: Option<&PrivateKey>,
        last_good: Option<&Entry>,
    ) -> Result<Entry, Option<Undecryptable>> {
        if let Some(e) = last_good {
            if self.decrypted.get(name).is_some_and(|w| w == wire) {
                return Ok(e.clone());
            }
        }
        if self.failed.get(name).is_some_and(|w| w == wire) {
            return Err(None);
        }
        let Some(key) = key else {
            return Err(Some(Undecryptable {
                name: name.to_string(),
                no_key: true,
                why: "no private key is configured for this project".into(),
            }));
        };
        match crypto::decrypt(key, wire) {
            Ok(bytes) => Ok(Entry {
                value: Value::new(bytes),
                secret: true,
            }),
            Err(e) => Err(Some(Undecryptable {
                name: name.to_string(),
                no_key: false,
                why: e.to_string(),
            })),
        }
    }
}

fn plain(value: &str, secret: bool) -> Entry {
    Entry {
        value: Value::from(value),
        secret,
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
