//! The keyshade source's settings: the `[keyshade]` table and the `--keyshade-*` flags,
//! filled in from keyshade's own files the way `keyshade run` reads them, validated into a
//! [`KeyshadeSpec`] whose `Debug` shows neither the token nor the private key.
//!
//! Precedence, highest first: flags (and their `TETHER_KEYSHADE_*` variables), the
//! `[keyshade]` table, `TETHER_KEYSHADE_TOKEN` / `TETHER_KEYSHADE_PRIVATE_KEY` (used when
//! neither of the above sets the token / key, like `TETHER_TOKEN`), then keyshade's files:
//! `./keyshade.json` (workspace, project, environment, quitOnDecryptionFailure),
//! `~/.keyshade/profiles.json` (token and base URL of a profile) and
//! `~/.keyshade/private-keys.json` (the project's private key). Those files are read only
//! when keyshade is in use, and a missing one is no error.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tether_core::secret::Value;
use tether_core::settings::{Problem, parse_duration};

use super::crypto::PrivateKey;
use crate::args::KeyshadeArgs;

mod checks;
mod files;

pub use checks::check_base_url;
use checks::check_slug;
use files::{Profile, ProjectFile};

/// The hosted keyshade API, used when neither tether nor a profile names one.
pub const DEFAULT_BASE_URL: &str = "https://api.keyshade.xyz";
/// How often the snapshot is fetched again while connected.
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);
pub const TOKEN_VAR: &str = "TETHER_KEYSHADE_TOKEN";
pub const PRIVATE_KEY_VAR: &str = "TETHER_KEYSHADE_PRIVATE_KEY";

/// The `[keyshade]` table as written (flags overlaid). Unknown keys are refused.
#[derive(Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawKeyshade {
    pub base_url: Option<String>,
    pub workspace: Option<String>,
    pub project: Option<String>,
    pub environment: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub private_key: Option<String>,
    pub private_key_file: Option<PathBuf>,
    pub quit_on_decryption_failure: Option<bool>,
    pub snapshot_interval: Option<String>,
    /// The profile of `~/.keyshade/profiles.json` to use (default: the file's default).
    pub profile: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for RawKeyshade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("RawKeyshade")
            .field("base_url", &self.base_url)
            .field("workspace", &self.workspace)
            .field("project", &self.project)
            .field("environment", &self.environment)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("private_key", &redacted(&self.private_key))
            .field("private_key_file", &self.private_key_file)
            .field(
                "quit_on_decryption_failure",
                &self.quit_on_decryption_failure,
            )
            .field("snapshot_interval", &self.snapshot_interval)
            .field("profile", &self.profile)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl RawKeyshade {
    /// Overlay the `--keyshade-*` flags on the file's table; any flag creates the table. A
    /// file flag replaces the file's inline value too (flags win).
    pub fn overlay(slot: &mut Option<RawKeyshade>, a: &KeyshadeArgs) {
        if !a.any() {
            return;
        }
        let t = slot.get_or_insert_with(RawKeyshade::default);
        fn set<T: Clone>(slot: &mut Option<T>, v: &Option<T>) {
            if v.is_some() {
                *slot = v.clone();
            }
        }
        set(&mut t.base_url, &a.url);
        set(&mut t.workspace, &a.workspace);
        set(&mut t.project, &a.project);
        set(&mut t.environment, &a.environment);
        if a.token_file.is_some() {
            t.token = None;
            t.token_file = a.token_file.clone();
        }
        if a.private_key_file.is_some() {
            t.private_key = None;
            t.private_key_file = a.private_key_file.clone();
        }
        set(&mut t.profile, &a.profile);
        set(&mut t.ca_file, &a.ca_file);
    }
}

/// What keyshade's settings read from outside tether's config: the process's variables and
/// the places keyshade keeps its files. Injected, so tests never read the real `~`.
#[derive(Clone, Default)]
pub struct Context {
    /// `$HOME`: keyshade's files are under `$HOME/.keyshade/`.
    pub home: Option<PathBuf>,
    /// The working directory, where `keyshade.json` is looked for.
    pub cwd: Option<PathBuf>,
    /// `TETHER_KEYSHADE_TOKEN`.
    pub token_var: Option<Value>,
    /// `TETHER_KEYSHADE_PRIVATE_KEY`.
    pub private_key_var: Option<Value>,
}

impl Context {
    pub fn from_process() -> Context {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| Value::from(v.trim()))
        };
        Context {
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
            cwd: std::env::current_dir().ok(),
            token_var: var(TOKEN_VAR),
            private_key_var: var(PRIVATE_KEY_VAR),
        }
    }

    fn keyshade_dir(&self) -> Option<PathBuf> {
        self.home.as_ref().map(|h| h.join(".keyshade"))
    }
}

/// The validated keyshade source.
#[derive(Clone, PartialEq)]
pub struct KeyshadeSpec {
    /// `http(s)://host[:port][/path]`, no trailing slash. REST calls go to
    /// `{base_url}/api/...`; the socket to the same host.
    pub base_url: String,
    pub workspace: String,
    pub project: String,
    pub environment: String,
    /// The token as read at start; sent as `x-keyshade-token`.
    pub token: Value,
    /// Where the token was read from, when a file: re-read at each connection attempt.
    pub token_file: Option<PathBuf>,
    /// Where the token came from, for messages (never the token itself).
    pub token_source: String,
    /// `None`: the project's secrets cannot be decrypted (reported when one arrives).
    pub private_key: Option<PrivateKey>,
    /// Where the private key came from, or where it was looked for, for messages.
    pub private_key_source: String,
    pub quit_on_decryption_failure: bool,
    pub snapshot_interval: Duration,
    pub ca_file: Option<PathBuf>,
    /// The profile of `~/.keyshade/profiles.json` that was used, if one was.
    pub profile: Option<String>,
}

impl fmt::Debug for KeyshadeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyshadeSpec")
            .field("base_url", &self.base_url)
            .field("workspace", &self.workspace)
            .field("project", &self.project)
            .field("environment", &self.environment)
            .field("token", &"<redacted>")
            .field("token_file", &self.token_file)
            .field("token_source", &self.token_source)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("private_key_source", &self.private_key_source)
            .field(
                "quit_on_decryption_failure",
                &self.quit_on_decryption_failure,
            )
            .field("snapshot_interval", &self.snapshot_interval)
            .field("ca_file", &self.ca_file)
            .field("profile", &self.profile)
            .finish()
    }
}

impl KeyshadeSpec {
    /// The effective settings for `tether check`: the token and private key redacted (the
    /// public key, which is not secret, tells which private key is in use).
    pub fn to_toml(&self) -> toml::Table {
        use toml::Value as V;
        let mut t = toml::Table::new();
        let mut put = |k: &str, v: String| {
            t.insert(k.into(), V::String(v));
        };
        put("base_url", self.base_url.clone());
        put("workspace", self.workspace.clone());
        put("project", self.project.clone());
        put("environment", self.environment.clone());
        put("token", "<redacted>".into());
        put("token_source", self.token_source.clone());
        if let Some(path) = &self.token_file {
            put("token_file", path.display().to_string());
        }
        if let Some(key) = &self.private_key {
            put("private_key", "<redacted>".into());
            put("public_key", key.public_key_hex());
        }
        put("private_key_source", self.private_key_source.clone());
        put(
            "snapshot_interval",
            humantime::format_duration(self.snapshot_interval).to_string(),
        );
        if let Some(path) = &self.ca_file {
            put("ca_file", path.display().to_string());
        }
        if let Some(p) = &self.profile {
            put("profile", p.clone());
        }
        t.insert(
            "quit_on_decryption_failure".into(),
            V::Boolean(self.quit_on_decryption_failure),
        );
        t
    }
}

/// Whether the keyshade source is in use: a `[keyshade]` table (which any `--keyshade-*`
/// flag creates) or one of its variables.
pub fn in_use(raw: Option<&RawKeyshade>, ctx: &Context) -> bool {
    raw.is_some() || ctx.token_var.is_some() || ctx.private_key_var.is_some()
}

/// Build the keyshade source from its table and keyshade's files, pushing every problem.
/// `None` when keyshade is not in use or a problem was found.
pub fn parse(
    raw: Option<&RawKeyshade>,
    ctx: &Context,
    problems: &mut Vec<Problem>,
) -> Option<KeyshadeSpec> {
    if !in_use(raw, ctx) {
        return None;
    }
    let empty = RawKeyshade::default();
    let raw = raw.unwrap_or(&empty);
    let before = problems.len();
    let mut push = |key: &str, message: String| {
        problems.push(Problem {
            key: key.into(),
            message,
        })
    };

    let project_file = ctx
        .cwd
        .as_ref()
        .map(|cwd| files::read_project_file(&cwd.join("keyshade.json"), &mut push))
        .unwrap_or_default();
    let ProjectFile {
        path: project_path,
        workspace: pf_workspace,
        project: pf_project,
        environment: pf_environment,
        quit: pf_quit,
    } = project_file;
    let keyshade_json = project_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "./keyshade.json".into());

    // The profile: read when it can supply something or was asked for by name.
    let profiles_path = ctx.keyshade_dir().map(|d| d.join("profiles.json"));
    let wants_profile = raw.profile.is_some()
        || raw.base_url.is_none()
        || (raw.token.is_none() && raw.token_file.is_none() && ctx.token_var.is_none());
    let profile: Option<Profile> = match (&profiles_path, wants_profile) {
        (Some(path), true) => files::read_profile(path, raw.profile.as_deref(), &mut push),
        _ => None,
    };
    if raw.profile.is_some() && profiles_path.is_none() {
        push(
            "keyshade.profile",
            "a profile is named but HOME is not set, so ~/.keyshade/profiles.json cannot be found"
                .into(),
        );
    }

    let mut slug = |key: &str, flag: &str, from_raw: &Option<String>, from_file: Option<String>| {
        let Some(value) = from_raw.clone().or(from_file) else {
            let name = key.trim_start_matches("keyshade.");
            push(
                key,
                format!(
                    "no {name}: set `{name}` in [keyshade], --{flag}, or `{name}` in {keyshade_json}"
                ),
            );
            return None;
        };
        match check_slug(&value) {
            Ok(()) => Some(value),
            Err(e) => {
                push(key, e);
                None
            }
        }
    };
    let workspace = slug(
        "keyshade.workspace",
        "keyshade-workspace",
        &raw.workspace,
        pf_workspace,
    );
    let project = slug(
        "keyshade.project",
        "keyshade-project",
        &raw.project,
        pf_project,
    );
    let environment = slug(
        "keyshade.environment",
        "keyshade-environment",
        &raw.environment,
        pf_environment,
    );

    let base_url = match raw
        .base_url
        .clone()
        .or_else(|| profile.as_ref().and_then(|p| p.base_url.clone()))
    {
        Some(url) => match check_base_url(&url) {
            Ok(url) => Some(url),
            Err(e) => {
                push("keyshade.base_url", e);
                None
            }
        },
        None => Some(DEFAULT_BASE_URL.to_string()),
    };

    // The token.
    let token = match (&raw.token, &raw.token_file) {
        (Some(_), Some(_)) => {
            push(
                "keyshade.token",
                "give either token or token_file in [keyshade], not both".into(),
            );
            None
        }
        (Some(t), None) => Some((Value::from(t.trim()), "[keyshade] token".to_string())),
        (None, Some(path)) => {
            files::read_secret_file(path, "keyshade.token_file", &mut push).map(|t| {
                (
                    Value::from(t.as_str()),
                    format!("token_file {}", path.display()),
                )
            })
        }
        (None, None) => match (&ctx.token_var, &profile) {
            (Some(t), _) => Some((t.clone(), TOKEN_VAR.to_string())),
            (None, Some(p)) if p.token.is_some() => p.token.clone().map(|t| {
                let source = format!("profile {:?} of {}", p.name, p.path.display());
                (t, source)
            }),
            (None, _) => {
                push(
                    "keyshade.token",
                    format!(
                        "no token: set token_file (or token) in [keyshade], \
                         --keyshade-token-file, {TOKEN_VAR}, or a profile with a token in {}",
                        profiles_path
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "~/.keyshade/profiles.json".into())
                    ),
                );
                None
            }
        },
    };
    if let Some((t, source)) = &token {
        if t.is_empty() {
            push(
                "keyshade.token",
                format!("the token from {source} is empty"),
            );
        } else if !header_safe(t.expose()) {
            push(
                "keyshade.token",
                format!(
                    "the token from {source} has a character that cannot go in an HTTP header \
                     (a line break, a control or non-ASCII character)"
                ),
            );
        }
    }

    // The private key: none is no error (a project may have no secrets).
    let private_key = files::private_key(
        raw,
        ctx,
        project.as_deref(),
        workspace.as_deref(),
        environment.as_deref(),
        &mut push,
    );

    let snapshot_interval = match &raw.snapshot_interval {
        None => Some(DEFAULT_SNAPSHOT_INTERVAL),
        Some(s) => match parse_duration(s) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            Ok(_) => {
                push(
                    "keyshade.snapshot_interval",
                    format!("{s:?} is too short: the snapshot is fetched at most once a second"),
                );
                None
            }
            Err(e) => {
                push("keyshade.snapshot_interval", e);
                None
            }
        },
    };
    if let Some(ca) = &raw.ca_file {
        if !ca.is_file() {
            push(
                "keyshade.ca_file",
                format!("{} is not a readable file", ca.display()),
            );
        }
    }

    if problems.len() > before {
        return None;
    }
    let (token, token_source) = token?;
    let (private_key, private_key_source) = private_key;
    Some(KeyshadeSpec {
        base_url: base_url?,
        workspace: workspace?,
        project: project?,
        environment: environment?,
        token,
        token_file: raw.token_file.clone().filter(|_| raw.token.is_none()),
        token_source,
        private_key,
        private_key_source,
        quit_on_decryption_failure: raw.quit_on_decryption_failure.or(pf_quit).unwrap_or(false),
        snapshot_interval: snapshot_interval?,
        ca_file: raw.ca_file.clone(),
        profile: profile.map(|p| p.name),
    })
}

/// Whether `token` can go in an HTTP header as it is: printable ASCII and spaces only (a CR
/// or LF would end the header). Checked at start and on every re-read of `token_file`.
pub(crate) fn header_safe(token: &[u8]) -> bool {
    token.iter().all(|b| (0x20..0x7f).contains(b))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
