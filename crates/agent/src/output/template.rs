//! Template outputs: a minijinja template (a file, watched, or inline text) rendered from the
//! entries, strict about names (a name that does not exist is an error, never an empty
//! string), with the filters a config author needs. Errors never carry a value: they say
//! the kind, the template and its line, and which names were missing.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use minijinja::value::{Enumerator, Object, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};

use crate::state::Entries;

/// Where a template's text comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// A file, read at each render and watched.
    File(PathBuf),
    /// Text given in the config (`contents = "..."`).
    Inline(String),
}

impl TemplateSource {
    /// The name errors use: the file's path, or `inline`.
    pub fn name(&self) -> String {
        match self {
            TemplateSource::File(p) => p.display().to_string(),
            TemplateSource::Inline(_) => "inline".into(),
        }
    }

    /// The template's text.
    pub fn text(&self) -> Result<String, TemplateError> {
        match self {
            TemplateSource::File(p) => {
                std::fs::read_to_string(p).map_err(|e| TemplateError::Read {
                    path: p.clone(),
                    why: e.to_string(),
                })
            }
            TemplateSource::Inline(s) => Ok(s.clone()),
        }
    }
}

/// A template that could not be read, parsed or rendered. Holds no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template {}: cannot read it: {why}", path.display())]
    Read { path: PathBuf, why: String },
    /// What failed, where, and the names that were asked for but missing.
    #[error("template {name}{}: {what}{}", line.map(|l| format!(" line {l}")).unwrap_or_default(), missing_note(missing))]
    Render {
        name: String,
        line: Option<usize>,
        what: String,
        missing: Vec<String>,
    },
}

fn missing_note(missing: &[String]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = missing
            .iter()
            .map(|n| tether_core::logname::name(n).to_string())
            .collect();
        format!(" (missing: {})", names.join(", "))
    }
}

/// Our own filters' error details start with this, so they (and only they, besides syntax
/// errors) are shown: a builtin's detail may quote a value.
const OURS: &str = "tether: ";

/// Names minijinja resolves itself when the root does not have them.
const ENGINE_NAMES: &[&str] = &["range", "dict", "namespace", "loop", "self", "super"];

/// The root of the template's context: every entry by name, `values` (a mapping, for names
/// that are not identifiers) and `names` (the sorted list). Records names looked up and
/// not found, so an error can say which.
#[derive(Debug)]
struct Root {
    entries: Arc<Entries>,
    missing: Arc<Mutex<BTreeSet<String>>>,
    mapping: bool,
}

fn value_of(e: &crate::state::Entry) -> Value {
    match e.value.expose_str() {
        Some(s) => Value::from(s),
        None => Value::from_bytes(e.value.expose().to_vec()),
    }
}

impl Object for Root {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        if !self.mapping {
            match key {
                "values" => {
                    return Some(Value::from_object(Root {
                        entries: self.entries.clone(),
                        missing: self.missing.clone(),
                        mapping: true,
                    }));
                }
                "names" => {
                    return Some(Value::from(
                        self.entries.keys().cloned().collect::<Vec<_>>(),
                    ));
                }
                _ => {}
            }
        }
        match self.entries.get(key) {
            Some(e) => Some(value_of(e)),
            None => {
                if self.mapping || !ENGINE_NAMES.contains(&key) {
                    self.missing
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(key.to_string());
                }
                None
            }
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        if self.mapping {
            Enumerator::Values(
                self.entries
                    .keys()
                    .map(|k| Value::from(k.as_str()))
                    .collect(),
            )
        } else {
            Enumerator::NonEnumerable
        }
    }
}

fn ours(msg: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("{OURS}{msg}"))
}

fn text_of(v: &Value) -> Result<String, Error> {
    if let Some(s) = v.as_str() {
        return Ok(s.to_string());
    }
    if let Some(b) = v.as_bytes() {
        return String::from_utf8(b.to_vec()).map_err(|_| ours("value is not UTF-8 text"));
    }
    if v.is_undefined() {
        return Err(ours("a value is missing"));
    }
    Ok(v.to_string())
}

/// JSON string quoting (also valid YAML double-quoted scalar syntax).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn to_json(v: &Value) -> Result<String, Error> {
    use minijinja::value::ValueKind as K;
    Ok(match v.kind() {
        K::Undefined => return Err(ours("a value is missing")),
        K::None => "null".into(),
        K::Bool | K::Number => v.to_string(),
        K::Seq | K::Iterable => {
            let items: Result<Vec<String>, Error> = v.try_iter()?.map(|i| to_json(&i)).collect();
            format!("[{}]", items?.join(", "))
        }
        K::Map => {
            let mut parts = Vec::new();
            for k in v.try_iter()? {
                let val = v.get_item(&k)?;
                parts.push(format!(
                    "{}: {}",
                    json_string(&text_of(&k)?),
                    to_json(&val)?
                ));
            }
            format!("{{{}}}", parts.join(", "))
        }
        _ => json_string(&text_of(v)?),
    })
}

/// A base64 encoder/decoder with the standard alphabet and padding.
pub(crate) mod b64 {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(b: &[u8]) -> String {
        let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let body = s
            .strip_suffix(b"==")
            .or_else(|| s.strip_suffix(b"="))
            .unwrap_or(&s);
        let mut out = Vec::with_capacity(body.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for &c in body {
            let v = A.iter().position(|&a| a == c)? as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        (s.len() % 4 == 0 || !s.ends_with(b"=")).then_some(out)
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_filter("required", |v: Value, name: Option<String>| {
        if v.is_undefined() || v.is_none() {
            Err(ours(&match name {
                Some(n) => format!(
                    "required value {} is missing",
                    tether_core::logname::name(&n)
                ),
                None => "a required value is missing".into(),
            }))
        } else {
            Ok(v)
        }
    });
    let b64encode = |v: Value| -> Result<String, Error> {
        match v.as_bytes() {
            Some(b) => Ok(b64::encode(b)),
            None => Ok(b64::encode(text_of(&v)?.as_bytes())),
        }
    };
    env.add_filter("b64encode", b64encode);
    env.add_filter("base64", b64encode);
    env.add_filter("b64decode", |v: Value| -> Result<Value, Error> {
        let bytes = b64::decode(&text_of(&v)?).ok_or_else(|| ours("b64decode: not base64"))?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => Value::from(s),
            Err(e) => Value::from_bytes(e.into_bytes()),
        })
    });
    env.add_filter("tojson", |v: Value| to_json(&v));
    env.add_filter("toyaml", |v: Value| -> Result<String, Error> {
        match v.kind() {
            minijinja::value::ValueKind::String | minijinja::value::ValueKind::Bytes => {
                Ok(json_string(&text_of(&v)?))
            }
            // JSON is YAML: flow style for lists and maps.
            _ => to_json(&v),
        }
    });
    env.add_filter("totoml", |v: Value| -> Result<String, Error> {
        Ok(toml::Value::String(text_of(&v)?).to_string())
    });
    env.add_filter("shell_quote", |v: Value| -> Result<String, Error> {
        Ok(format!("'{}'", text_of(&v)?.replace('\'', r"'\''")))
    });
    env
}

fn redact(e: &Error, name: &str, missing: &BTreeSet<String>) -> TemplateError {
    let what = match (e.kind(), e.detail()) {
        (ErrorKind::SyntaxError, Some(d)) => format!("syntax error: {d}"),
        (_, Some(d)) if d.starts_with(OURS) => d[OURS.len()..].to_string(),
        (kind, _) => kind.to_string(),
    };
    let show_missing = matches!(e.kind(), ErrorKind::UndefinedError)
        || e.detail().is_some_and(|d| d.contains("missing"));
    TemplateError::Render {
        name: name.to_string(),
        line: e.line(),
        what,
        missing: if show_missing {
            missing.iter().cloned().collect()
        } else {
            Vec::new()
        },
    }
}

/// Parse `text` (named `name` in errors): syntax errors, and the top-level names it reads.
pub fn validate(name: &str, text: &str) -> Result<BTreeSet<String>, TemplateError> {
    let env = environment();
    let t = env
        .template_from_named_str(name, text)
        .map_err(|e| redact(&e, name, &BTreeSet::new()))?;
    Ok(t.undeclared_variables(false)
        .into_iter()
        .filter(|n| n != "values" && n != "names" && !ENGINE_NAMES.contains(&n.as_str()))
        .collect())
}

/// Render `text` from `entries`.
pub fn render(name: &str, text: &str, entries: &Entries) -> Result<Vec<u8>, TemplateError> {
    let env = environment();
    let missing = Arc::new(Mutex::new(BTreeSet::new()));
    let root = Value::from_object(Root {
        entries: Arc::new(entries.clone()),
        missing: missing.clone(),
        mapping: false,
    });
    let out = env
        .template_from_named_str(name, text)
        .and_then(|t| t.render(root));
    match out {
        Ok(s) => Ok(s.into_bytes()),
        Err(e) => {
            let missing = missing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            Err(redact(&e, name, &missing))
        }
    }
}

/// For `tether check`: a warning for each name a template reads that no configured source
/// provides. Only known when every source is a readable file source (a node's or
/// keyshade's names are not known before they answer); `values[...]` lookups are not seen.
pub fn unknown_names(cfg: &crate::config::Config) -> Vec<String> {
    if cfg.net.is_some() || cfg.keyshade.is_some() {
        return Vec::new();
    }
    let mut known = BTreeSet::new();
    for s in &cfg.sources {
        match crate::source::load(s) {
            Ok(entries) => known.extend(entries.into_keys()),
            Err(_) => return Vec::new(),
        }
    }
    let mut warnings = Vec::new();
    for o in &cfg.outputs {
        let Some(t) = &o.template else { continue };
        let Ok(names) = t.text().and_then(|text| validate(&t.name(), &text)) else {
            continue;
        };
        for n in names.difference(&known) {
            warnings.push(format!(
                "output {}: template {} reads {}, which no source provides",
                o.path.display(),
                t.name(),
                tether_core::logname::name(n)
            ));
        }
    }
    warnings
}

impl fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
