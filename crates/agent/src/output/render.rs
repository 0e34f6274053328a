//! Rendering entries into the bytes of each output format, skipping (and naming) entries
//! whose name or value the format cannot carry.

use std::fmt;
use std::str::FromStr;

use crate::state::Entries;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `KEY=value` lines, quoted when needed; readable by tether's own dotenv source.
    Dotenv,
    /// One JSON object of strings.
    Json,
    /// `export KEY='value'` lines for `source`/`.` in a shell.
    Shell,
    /// One file per key, published by an atomic symlink swap.
    Dir,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dotenv" | "env" => Ok(Format::Dotenv),
            "json" => Ok(Format::Json),
            "shell" | "sh" => Ok(Format::Shell),
            "dir" => Ok(Format::Dir),
            other => Err(format!("{other:?} is not one of dotenv, json, shell, dir")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Dotenv => "dotenv",
            Format::Json => "json",
            Format::Shell => "shell",
            Format::Dir => "dir",
        })
    }
}

/// What an output holds.
#[derive(Clone, PartialEq, Eq)]
pub enum Rendered {
    File(Vec<u8>),
    Dir(Vec<(String, Vec<u8>)>),
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rendered::File(b) => write!(f, "File(<{} bytes redacted>)", b.len()),
            Rendered::Dir(files) => write!(f, "Dir(<{} files redacted>)", files.len()),
        }
    }
}

/// An entry left out of an output, and why. Holds the name, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: &'static str,
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what environments, dotenv and shell files can carry.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A safe file name inside a `dir` output: not empty, no `/`, no NUL, no leading dot
/// (which also rules out `.` and `..`).
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\0')
}

pub fn render(format: Format, entries: &Entries) -> (Rendered, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut skip = |name: &str, reason| {
        skipped.push(Skipped {
            name: name.to_string(),
            reason,
        })
    };
    let rendered = match format {
        Format::Dir => Rendered::Dir(
            entries
                .iter()
                .filter(|(k, _)| valid_file_name(k) || (skip(k, "not a safe file name"), false).1)
                .map(|(k, e)| (k.clone(), e.value.expose().to_vec()))
                .collect(),
        ),
        Format::Json => {
            let mut map = serde_json::Map::new();
            for (k, e) in entries {
                match e.value.expose_str() {
                    Some(v) => {
                        map.insert(k.clone(), serde_json::Value::String(v.to_string()));
                    }
                    None => skip(k, "value is not UTF-8 text"),
                }
            }
            let mut out = serde_json::to_vec_pretty(&map).unwrap_or_default();
            out.push(b'\n');
            Rendered::File(out)
        }
        Format::Dotenv | Format::Shell => {
            let mut out = String::new();
            for (k, e) in entries {
                if !valid_env_name(k) {
                    skip(k, "not a valid variable name");
                    continue;
                }
                let Some(v) = e.value.expose_str() else {
                    skip(k, "value is not UTF-8 text");
                    continue;
                };
                if v.contains('\0') {
                    skip(k, "value contains NUL");
                    continue;
                }
                if format == Format::Shell {
                    out.push_str("export ");
                    out.push_str(k);
                    out.push('=');
                    shell_quote(v, &mut out);
                } else {
                    out.push_str(k);
                    out.push('=');
                    dotenv_quote(v, &mut out);
                }
                out.push('\n');
            }
            Rendered::File(out.into_bytes())
        }
    };
    (rendered, skipped)
}

fn dotenv_quote(v: &str, out: &mut String) {
    let plain = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+,".contains(c));
    if plain {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn shell_quote(v: &str, out: &mut String) {
    out.push('\'');
    out.push_str(&v.replace('\'', "'\\''"));
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse::parse_dotenv;
    use crate::state::entries;

    fn file(r: Rendered) -> String {
        match r {
            Rendered::File(b) => String::from_utf8(b).unwrap(),
            Rendered::Dir(_) => panic!("not a file"),
        }
    }

    #[test]
    fn dotenv_round_trips_through_the_source_parser() {
        let tricky = [
            ("A", "plain"),
            ("B", "two words"),
            ("C", "quote \" and back\\slash"),
            ("D", "line1\nline2"),
            ("E", "$HOME not expanded"),
            ("F", ""),
            ("G", "hash # inside"),
            ("H", "'single'"),
        ];
        let e = entries(&tricky);
        let (r, skipped) = render(Format::Dotenv, &e);
        assert!(skipped.is_empty());
        let text = file(r);
        let parsed = parse_dotenv(&text).unwrap();
        let want: Vec<(String, Vec<u8>)> = tricky
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(parsed, want, "{text}");
    }

    #[test]
    fn shell_quotes_single_quotes() {
        let (r, _) = render(Format::Shell, &entries(&[("A", "it's $x")]));
        assert_eq!(file(r), "export A='it'\\''s $x'\n");
    }

    #[test]
    fn json_is_an_object_of_strings() {
        let (r, _) = render(Format::Json, &entries(&[("a.b", "1"), ("C", "x\"y")]));
        let v: serde_json::Value = serde_json::from_str(&file(r)).unwrap();
        assert_eq!(v, serde_json::json!({"a.b": "1", "C": "x\"y"}));
    }

    #[test]
    fn invalid_names_are_skipped_and_named_without_values() {
        let e = entries(&[
            ("GOOD", "v"),
            ("bad-name", "s3cr3t"),
            ("1X", "v"),
            ("A=B", "v"),
        ]);
        let (r, skipped) = render(Format::Dotenv, &e);
        assert_eq!(file(r), "GOOD=v\n");
        let names: Vec<&str> = skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["1X", "A=B", "bad-name"]);
        assert!(!format!("{skipped:?}").contains("s3cr3t"));

        let e = entries(&[
            ("ok.txt", "v"),
            ("../etc", "v"),
            ("a/b", "v"),
            (".hidden", "v"),
            ("nul\0", "v"),
            ("", "v"),
        ]);
        let (r, skipped) = render(Format::Dir, &e);
        assert_eq!(r, Rendered::Dir(vec![("ok.txt".into(), b"v".to_vec())]));
        assert_eq!(skipped.len(), 5);
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("_A1"));
        assert!(!valid_env_name(""));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name("A B"));
        assert!(!valid_env_name("É"));
    }
}
