//! Bearer tokens: stored as SHA-256 hashes in the server config, each with a role (read,
//! write, admin), environment patterns and whether it may read secret values. Comparison is
//! constant-time. With no tokens the node runs in an explicit dev mode (loopback only).

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tether_core::glob::GlobSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

/// A token as written in the server config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// `sha256:<64 hex>` as printed by `tether serve hash-token`.
    pub hash: String,
    pub role: Role,
    /// Environment name patterns (globs); left out: all. An empty list is refused, since
    /// a token that may touch nothing is a mistake, not a policy.
    #[serde(default)]
    pub envs: Option<Vec<String>>,
    /// Whether secret values are sent to this token (default true).
    #[serde(default = "yes")]
    pub secrets: bool,
}

fn yes() -> bool {
    true
}

/// What a request may do.
#[derive(Clone)]
pub struct Grant {
    pub name: String,
    pub role: Role,
    envs: Option<GlobSet>,
    pub secrets: bool,
    /// The hash of the token that gave it (`None` in dev mode): what a reload looks the
    /// token up by ([`Auth::recheck`]). Shared with the table: every agent connection
    /// keeps a grant, and this costs each of them a pointer, not the hash.
    hash: Option<Arc<[u8; 32]>>,
}

/// The hash is left out: it is not the token, but it is no one's business in a log.
impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("envs", &self.envs.is_some())
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// Why a connection opened with a token may not go on after a reload of the token table:
/// the WebSocket close code and reason its agent is given (`docs/protocol.md`).
#[derive(Debug, PartialEq, Eq)]
pub struct Revoked {
    pub code: u16,
    pub reason: String,
}

/// Close code: the connection's token is no longer in the node's config.
pub const CLOSE_TOKEN_REVOKED: u16 = 4401;
/// Close code: the connection's token no longer grants what the connection follows (an
/// environment, or secret values).
pub const CLOSE_TOKEN_NARROWED: u16 = 4403;

impl Grant {
    pub fn dev() -> Grant {
        Grant {
            name: "dev-mode".into(),
            role: Role::Admin,
            envs: None,
            secrets: true,
            hash: None,
        }
    }

    pub fn covers(&self, env: &str) -> bool {
        self.envs.as_ref().is_none_or(|g| g.is_match(env))
    }

    pub fn can_read(&self, env: &str) -> bool {
        self.covers(env)
    }

    pub fn can_write(&self, env: &str) -> bool {
        self.role >= Role::Write && self.covers(env)
    }
}

struct Token {
    hash: [u8; 32],
    grant: Grant,
}

/// The node's token table.
pub struct Auth {
    tokens: Vec<Token>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token (send `Authorization: Bearer <token>`)")]
    Missing,
    #[error("invalid token")]
    Invalid,
}

impl Auth {
    /// Build the table; returns every problem found, keyed by token position. Refused:
    /// a bad hash, a bad pattern, `envs = []` (it would grant nothing; the key left out
    /// grants every environment), and two tokens with the same hash (one secret, two roles).
    pub fn new(tokens: &[TokenConfig]) -> Result<Auth, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut out: Vec<Token> = Vec::new();
        // Which token (position, name) each hash came from, to name both of a duplicate.
        let mut seen: Vec<([u8; 32], usize, &str)> = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let key = format!("token[{i}]");
            let hash = match parse_hash(&t.hash) {
                Ok(h) => h,
                Err(e) => {
                    problems.push((format!("{key}.hash"), e));
                    continue;
                }
            };
            if let Some((_, j, first)) = seen.iter().find(|(h, _, _)| *h == hash) {
                problems.push((
                    format!("{key}.hash"),
                    format!(
                        "token {:?} has the same hash as token {first:?} (token[{j}]): one secret cannot have two roles; give each token its own secret",
                        t.name
                    ),
                ));
                continue;
            }
            seen.push((hash, i, &t.name));
            let envs = match &t.envs {
                None => None,
                Some(patterns) if patterns.is_empty() => {
                    problems.push((
                        format!("{key}.envs"),
                        format!(
                            "token {:?} has envs = [], which grants no environment: list patterns, or leave envs out (or use [\"*\"]) for every environment",
                            t.name
                        ),
                    ));
                    continue;
                }
                Some(patterns) => match GlobSet::new(patterns) {
                    Ok(set) => Some(set),
                    Err(e) => {
                        problems.push((format!("{key}.envs"), e.to_string()));
                        continue;
                    }
                },
            };
            out.push(Token {
                hash,
                grant: Grant {
                    name: t.name.clone(),
                    role: t.role,
                    envs,
                    secrets: t.secrets,
                    hash: Some(Arc::new(hash)),
                },
            });
        }
        if problems.is_empty() {
            Ok(Auth { tokens: out })
        } else {
            Err(problems)
        }
    }

    pub fn dev_mode(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Check an `Authorization` header value.
    pub fn check(&self, header: Option<&str>) -> Result<Grant, AuthError> {
        if self.dev_mode() {
            return Ok(Grant::dev());
        }
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every token so timing says nothing about which one matched.
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.hash.ct_eq(&presented)) {
                found = Some(&t.grant);
            }
        }
        found.cloned().ok_or(AuthError::Invalid)
    }
}

impl Auth {
    /// Whether a connection opened with `old`, following `envs`, may go on under this
    /// table (after a reload): its token is still here (looked up by hash; in dev mode
    /// everything goes on, and a dev-mode grant ends once tokens are configured), still
    /// covers every environment in `envs`, and still reads secret values if it did.
    pub fn recheck(&self, old: &Grant, envs: &[String]) -> Result<(), Revoked> {
        if self.dev_mode() {
            return Ok(());
        }
        let found = old
            .hash
            .as_deref()
            .and_then(|h| self.tokens.iter().find(|t| t.hash == *h));
        let Some(now) = found.map(|t| &t.grant) else {
            let reason = match old.hash {
                Some(_) => format!("token {:?} was removed from the node's config", old.name),
                None => "the node left dev mode: a token is needed".to_string(),
            };
            return Err(Revoked {
                code: CLOSE_TOKEN_REVOKED,
                reason,
            });
        };
        if let Some(env) = envs.iter().find(|e| !now.covers(e)) {
            return Err(Revoked {
                code: CLOSE_TOKEN_NARROWED,
                reason: format!("token {:?} no longer grants environment {env:?}", now.name),
            });
        }
        if old.secrets && !now.secrets {
            return Err(Revoked {
                code: CLOSE_TOKEN_NARROWED,
                reason: format!("token {:?} may no longer read secret values", now.name),
            });
        }
        Ok(())
    }
}

/// `sha256:<hex>` for a token, as the server config stores it.
pub fn hash_token(token: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(token.trim().as_bytes()))
    )
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let hexpart = s
        .strip_prefix("sha256:")
        .ok_or("must start with \"sha256:\" (see `tether serve hash-token`)")?;
    let bytes = hex::decode(hexpart).map_err(|_| "is not hex".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "must be 64 hex digits".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Auth {
        Auth::new(&[
            TokenConfig {
                name: "agents".into(),
                hash: hash_token("read-token"),
                role: Role::Read,
                envs: Some(vec!["prod".into(), "staging-*".into()]),
                secrets: true,
            },
            TokenConfig {
                name: "ci".into(),
                hash: hash_token("write-token"),
                role: Role::Write,
                envs: None,
                secrets: false,
            },
        ])
        .unwrap()
    }

    #[test]
    fn bearer_tokens_by_hash() {
        let a = table();
        assert!(!a.dev_mode());
        assert_eq!(a.check(None).unwrap_err(), AuthError::Missing);
        assert_eq!(a.check(Some("Basic x")).unwrap_err(), AuthError::Missing);
        assert_eq!(
            a.check(Some("Bearer nope")).unwrap_err(),
            AuthError::Invalid
        );
        let g = a.check(Some("Bearer read-token")).unwrap();
        assert!(g.can_read("prod") && g.can_read("staging-eu") && !g.can_read("dev"));
        assert!(!g.can_write("prod"));
        let w = a.check(Some("Bearer write-token")).unwrap();
        assert!(w.can_write("anything") && !w.secrets);
    }

    #[test]
    fn bad_config_reports_every_problem() {
        let bad = TokenConfig {
            name: "x".into(),
            hash: "md5:abc".into(),
            role: Role::Read,
            envs: None,
            secrets: true,
        };
        let worse = TokenConfig {
            hash: "sha256:zz".into(),
            ..bad.clone()
        };
        let errs = Auth::new(&[bad, worse]).err().unwrap();
        assert_eq!(errs.len(), 2);
    }

    fn token(name: &str, secret: &str, envs: Option<Vec<&str>>) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            hash: hash_token(secret),
            role: Role::Read,
            envs: envs.map(|v| v.into_iter().map(String::from).collect()),
            secrets: true,
        }
    }

    #[test]
    fn empty_envs_is_refused_and_absent_envs_grants_all() {
        let errs = Auth::new(&[token("agents", "t1", Some(vec![]))])
            .err()
            .expect("envs = [] refused");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "token[0].envs");
        assert!(errs[0].1.contains("\"agents\"") && errs[0].1.contains("envs = []"));
        let all = Auth::new(&[token("agents", "t1", None)]).unwrap();
        assert!(all.check(Some("Bearer t1")).unwrap().can_read("anything"));
    }

    #[test]
    fn duplicate_hashes_are_refused_naming_both_tokens() {
        let errs = Auth::new(&[
            token("agents", "s3cret-x", None),
            token("other", "different", None),
            token("ci", "s3cret-x", Some(vec!["prod"])),
        ])
        .err()
        .expect("duplicate hash refused");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "token[2].hash");
        let m = &errs[0].1;
        assert!(m.contains("\"ci\"") && m.contains("\"agents\"") && m.contains("token[0]"));
        assert!(
            !m.contains("s3cret-x"),
            "the secret is not in the message: {m}"
        );
    }

    #[test]
    fn recheck_after_a_reload() {
        let before = Auth::new(&[
            token("a", "t-a", None),
            token("b", "t-b", Some(vec!["prod", "dev"])),
            token("c", "t-c", None),
        ])
        .unwrap();
        let a = before.check(Some("Bearer t-a")).unwrap();
        let b = before.check(Some("Bearer t-b")).unwrap();
        let c = before.check(Some("Bearer t-c")).unwrap();
        let mut c_public = token("c", "t-c", None);
        c_public.secrets = false;
        // a: same; b: renamed, narrowed to prod; c: no secrets any more.
        let after = Auth::new(&[
            token("a", "t-a", None),
            token("b2", "t-b", Some(vec!["prod"])),
            c_public,
        ])
        .unwrap();
        let envs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(after.recheck(&a, &envs(&["prod", "x"])), Ok(()));
        assert_eq!(after.recheck(&b, &envs(&["prod"])), Ok(()));
        let narrowed = after.recheck(&b, &envs(&["prod", "dev"])).unwrap_err();
        assert_eq!(narrowed.code, CLOSE_TOKEN_NARROWED);
        assert!(narrowed.reason.contains("\"dev\""), "{}", narrowed.reason);
        let secrets = after.recheck(&c, &envs(&["prod"])).unwrap_err();
        assert_eq!(secrets.code, CLOSE_TOKEN_NARROWED);
        // Removed: refused, named, the secret nowhere.
        let gone = Auth::new(&[token("b", "t-b", None)]).unwrap();
        let r = gone.recheck(&a, &envs(&["prod"])).unwrap_err();
        assert_eq!(r.code, CLOSE_TOKEN_REVOKED);
        assert!(r.reason.contains("\"a\"") && !r.reason.contains("t-a"));
        // Dev mode: everything goes on; leaving it ends dev-mode connections.
        let dev = Auth::new(&[]).unwrap();
        assert_eq!(dev.recheck(&a, &envs(&["prod"])), Ok(()));
        let r = gone.recheck(&Grant::dev(), &envs(&["prod"])).unwrap_err();
        assert_eq!(r.code, CLOSE_TOKEN_REVOKED);
        assert!(!format!("{a:?}").contains("hash"));
    }

    #[test]
    fn hash_format() {
        let h = hash_token("abc");
        assert_eq!(
            h,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(parse_hash(&h).is_ok());
    }
}
