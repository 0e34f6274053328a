//! keyshade's own files, read the way its CLI lays them out: `./keyshade.json`,
//! `~/.keyshade/profiles.json` (with `default-profile.json` beside it) and
//! `~/.keyshade/private-keys.json`. Problems name the file and the entry, never a value.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use tether_core::secret::Value;
use zeroize::Zeroizing;

use super::{Context, PRIVATE_KEY_VAR, RawKeyshade};
use crate::source::keyshade::crypto::PrivateKey;

type Push<'a> = &'a mut dyn FnMut(&str, String);

/// What `keyshade init` writes in a project's root.
#[derive(Default)]
pub(super) struct ProjectFile {
    /// Set when the file exists.
    pub path: Option<PathBuf>,
    pub workspace: Option<String>,
    pub project: Option<String>,
    pub environment: Option<String>,
    pub quit: Option<bool>,
}

pub(super) fn read_project_file(path: &Path, push: Push) -> ProjectFile {
    let Some(json) = read_json(path, push) else {
        return ProjectFile::default();
    };
    let mut out = ProjectFile {
        path: Some(path.to_path_buf()),
        ..Default::default()
    };
    let Some(obj) = object(&json, path, push) else {
        return out;
    };
    let key = path.display().to_string();
    let mut text = |name: &str| match obj.get(name) {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => {
            push(&key, format!("`{name}` in {key} is not a string"));
            None
        }
    };
    out.workspace = text("workspace");
    out.project = text("project");
    out.environment = text("environment");
    out.quit = match obj.get("quitOnDecryptionFailure") {
        None | Some(Json::Null) => None,
        Some(Json::Bool(b)) => Some(*b),
        Some(_) => {
            push(
                &key,
                format!("`quitOnDecryptionFailure` in {key} is not true or false"),
            );
            None
        }
    };
    out
}

/// One profile of `profiles.json`.
pub(super) struct Profile {
    pub name: String,
    pub path: PathBuf,
    pub token: Option<Value>,
    pub base_url: Option<String>,
}

/// The profile named `wanted`, else the default one: `profiles.json`'s `"default"` (older
/// CLIs: `{"default": "NAME", "NAME": {"apiKey", "baseUrl"}}`), else `userId` of
/// `default-profile.json` (newer CLIs: `{"NAME": {"token", "baseUrl", ...}}`), else a
/// profile called `default`.
pub(super) fn read_profile(path: &Path, wanted: Option<&str>, push: Push) -> Option<Profile> {
    let key = path.display().to_string();
    let Some(json) = read_json(path, push) else {
        if let Some(name) = wanted {
            if !path.exists() {
                push(
                    "keyshade.profile",
                    format!("profile {name:?} is asked for but {key} does not exist"),
                );
            }
        }
        return None;
    };
    let obj = object(&json, path, push)?;
    let name = match wanted {
        Some(name) => name.to_string(),
        None => match obj.get("default") {
            Some(Json::String(name)) => name.clone(),
            _ => match default_profile_name(&path.with_file_name("default-profile.json"), push) {
                Some(name) => name,
                None => "default".to_string(),
            },
        },
    };
    let Some(entry) = obj.get(&name).and_then(Json::as_object) else {
        if wanted.is_some() {
            let names: Vec<&str> = obj
                .iter()
                .filter(|(_, v)| v.is_object())
                .map(|(k, _)| k.as_str())
                .collect();
            push(
                "keyshade.profile",
                format!(
                    "profile {name:?} is not in {key} (its profiles: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            );
        }
        return None;
    };
    let mut text = |field: &str| match entry.get(field) {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s.trim().is_empty() => None,
        Some(Json::String(s)) => Some(s.trim().to_string()),
        Some(_) => {
            push(
                &key,
                format!("`{field}` of profile {name:?} in {key} is not a string"),
            );
            None
        }
    };
    let token = text("token").or_else(|| text("apiKey")).map(Value::from);
    let base_url = text("baseUrl");
    Some(Profile {
        name,
        path: path.to_path_buf(),
        token,
        base_url,
    })
}

fn default_profile_name(path: &Path, push: Push) -> Option<String> {
    let json = read_json(path, push)?;
    json.get("userId")
        .and_then(Json::as_str)
        .map(str::to_string)
}

/// A file holding one secret (a token or a private key), trimmed; a problem under `key`
/// when it cannot be read or is empty.
pub(super) fn read_secret_file(path: &Path, key: &str, push: Push) -> Option<Zeroizing<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let trimmed = text.trim();
            if trimmed.is_empty() {
                push(key, format!("{} is empty", path.display()));
                None
            } else {
                Some(Zeroizing::new(trimmed.to_string()))
            }
        }
        Err(e) => {
            push(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// The project's private key and where it came from (or where it was looked for). A
/// missing key is no problem; one that is there but wrong is.
pub(super) fn private_key(
    raw: &RawKeyshade,
    ctx: &Context,
    project: Option<&str>,
    workspace: Option<&str>,
    environment: Option<&str>,
    push: Push,
) -> (Option<PrivateKey>, String) {
    fn parse(key: &str, text: &str, source: String, push: Push) -> (Option<PrivateKey>, String) {
        match PrivateKey::from_hex(text) {
            Ok(k) => (Some(k), source),
            Err(e) => {
                push(key, format!("{source}: {e}"));
                (None, source)
            }
        }
    }
    match (&raw.private_key, &raw.private_key_file) {
        (Some(_), Some(_)) => {
            push(
                "keyshade.private_key",
                "give either private_key or private_key_file in [keyshade], not both".into(),
            );
            (None, "[keyshade]".into())
        }
        (Some(text), None) => parse(
            "keyshade.private_key",
            text,
            "[keyshade] private_key".into(),
            push,
        ),
        (None, Some(path)) => {
            let source = format!("private_key_file {}", path.display());
            match read_secret_file(path, "keyshade.private_key_file", push) {
                Some(text) => parse("keyshade.private_key_file", &text, source, push),
                None => (None, source),
            }
        }
        (None, None) => {
            if let Some(v) = &ctx.private_key_var {
                let text = v.expose_str().unwrap_or("");
                return parse("keyshade.private_key", text, PRIVATE_KEY_VAR.into(), push);
            }
            let Some(dir) = ctx.keyshade_dir() else {
                return (None, "none: HOME is not set".into());
            };
            let path = dir.join("private-keys.json");
            let none = |project: &str| {
                format!(
                    "none: set private_key_file in [keyshade], --keyshade-private-key-file, \
                     {PRIVATE_KEY_VAR}, or an entry {project:?} in {}",
                    path.display()
                )
            };
            let Some(project) = project else {
                return (None, none("PROJECT"));
            };
            let Some(json) = read_json(&path, push) else {
                return (None, none(project));
            };
            let Some(obj) = object(&json, &path, push) else {
                return (None, none(project));
            };
            // Newer CLIs key by project slug; older ones by workspace_project_environment.
            let legacy = format!(
                "{}_{project}_{}",
                workspace.unwrap_or(""),
                environment.unwrap_or("")
            );
            let found = [project, legacy.as_str()]
                .into_iter()
                .find_map(|name| obj.get(name).map(|v| (name, v)));
            match found {
                None => (None, none(project)),
                Some((name, Json::String(text))) => {
                    let source = format!("entry {name:?} of {}", path.display());
                    parse(&path.display().to_string(), text, source, push)
                }
                Some((name, _)) => {
                    let key = path.display().to_string();
                    push(&key, format!("entry {name:?} of {key} is not a string"));
                    (None, none(project))
                }
            }
        }
    }
}

fn object<'a>(json: &'a Json, path: &Path, push: Push) -> Option<&'a Map<String, Json>> {
    let obj = json.as_object();
    if obj.is_none() {
        let key = path.display().to_string();
        push(&key, format!("{key} is not a JSON object"));
    }
    obj
}

/// Read a JSON file of keyshade's. `None` when it does not exist; a problem (naming the
/// file, never its content) when it cannot be read or is not JSON.
pub(super) fn read_json(path: &Path, push: &mut dyn FnMut(&str, String)) -> Option<Json> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            let key = path.display().to_string();
            push(&key, format!("cannot read {key}: {e}"));
            return None;
        }
    };
    match serde_json::from_str::<Json>(&text) {
        Ok(json) => Some(json),
        Err(e) => {
            // A syntax error's message quotes no content; this one names only the place.
            let key = path.display().to_string();
            push(
                &key,
                format!(
                    "{key} is not JSON (error at line {} column {})",
                    e.line(),
                    e.column()
                ),
            );
            None
        }
    }
}
