//! Rendering entries into the bytes of each output format, skipping (and naming) entries
//! whose name or value the format cannot carry.

use std::fmt;
use std::str::FromStr;

use crate::state::Entries;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `KEY=value` lines, quoted when needed; read back exactly by tether's own dotenv
    /// source, by python-dotenv and by `sh` (`set -a; . FILE`, which runs nothing).
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

/// The longest file name Linux file systems take, in bytes (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Why `name` cannot be a file of a `dir` output (empty, over [`NAME_MAX`] bytes, a `/`, a
/// NUL, a leading dot, which also rules out `.` and `..`), or None if it can.
fn file_name_problem(name: &str) -> Option<&'static str> {
    if name.len() > NAME_MAX {
        Some("name is longer than the 255 bytes a file name can hold")
    } else if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
        Some("not a safe file name (empty, leading dot, / or NUL)")
    } else {
        None
    }
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
                .filter(|(k, _)| match file_name_problem(k) {
                    Some(reason) => (skip(k, reason), false).1,
                    None => true,
                })
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
                    let start = out.len();
                    out.push_str(k);
                    out.push('=');
                    if let Err(reason) = dotenv_quote(v, &mut out) {
                        out.truncate(start);
                        skip(k, reason);
                        continue;
                    }
                }
                out.push('\n');
            }
            Rendered::File(out.into_bytes())
        }
    };
    (rendered, skipped)
}

/// Write `v` so that `sh` (`set -a; . FILE`: inert, nothing expanded or run), python-dotenv
/// (with its default interpolation) and tether's own dotenv source all read back exactly `v`:
/// bare when every character is plain; else single-quoted (literal in all three) when it holds
/// no `'`, no `\\` pair and no trailing `\`; else double-quoted with `\\` and `\"` escaped
/// (the only escapes all three share) when it holds no `$` or backtick. Values no common
/// spelling carries are refused with the reason.
fn dotenv_quote(v: &str, out: &mut String) -> Result<(), &'static str> {
    if v.contains('\r') {
        // python-dotenv reads the file in universal-newline mode: a CR becomes LF, and its
        // `\r` escape means CR to no shell.
        return Err(
            "value holds a carriage return, which python-dotenv reads as a newline (use json or shell)",
        );
    }
    if expands_in_python_dotenv(v) {
        return Err(
            "value holds ${...}, which python-dotenv expands in every quoting (use json or shell)",
        );
    }
    if v.ends_with('\\') {
        // python-dotenv takes `\'` or `\"` before the closing quote for an escaped quote.
        return Err(
            "value ends with a backslash, which python-dotenv misreads (use json or shell)",
        );
    }
    let plain = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+,".contains(c));
    if plain {
        out.push_str(v);
    } else if !v.contains('\'') && !v.contains("\\\\") {
        out.push('\'');
        out.push_str(v);
        out.push('\'');
    } else if !v.contains(['$', '`']) {
        out.push('"');
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                c => out.push(c),
            }
        }
        out.push('"');
    } else {
        return Err(
            "value holds a ' or \\\\ as well as $ or a backtick: no dotenv quoting reads the same in sh and python-dotenv (use json or shell)",
        );
    }
    Ok(())
}

/// Whether python-dotenv would expand part of `v`: a `${` with a `}` after it (a superset of
/// its `${NAME}` / `${NAME:-DEFAULT}` pattern, which no quoting or escape turns off).
fn expands_in_python_dotenv(v: &str) -> bool {
    v.find("${").is_some_and(|i| v[i..].contains('}'))
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
    fn dotenv_carries_every_character_or_names_the_key() {
        // Every character from U+0001 to U+00FF alone and inside text, and awkward mixes.
        let mut values: Vec<String> = (1u32..=255)
            .filter_map(char::from_u32)
            .filter(|c| *c != '\r')
            .flat_map(|c| [c.to_string(), format!("a{c}b")])
            .filter(|v| v != "\\")
            .collect();
        values.extend(
            [
                "$(touch pwned)",
                "`touch pwned`",
                "it's",
                "a\\\\b",
                "\\'",
                "\\\"",
                "\\n",
                "\u{8}\u{1b}[31m",
                "é ü 日本 🦀",
                "\u{2028}\u{85}",
                " lead and trail ",
                "# not a comment",
                "$HOME",
                "${HOME",
                "}${",
                "export X=1",
                "",
                "\n\n",
            ]
            .map(String::from),
        );
        let keys: Vec<String> = (0..values.len()).map(|i| format!("K{i}")).collect();
        let pairs: Vec<(&str, &str)> = keys
            .iter()
            .map(String::as_str)
            .zip(values.iter().map(String::as_str))
            .collect();
        let e = entries(&pairs);
        let (r, skipped) = render(Format::Dotenv, &e);
        assert_eq!(skipped, [], "every one of these has a common spelling");
        let text = file(r);
        let parsed: std::collections::BTreeMap<String, Vec<u8>> =
            parse_dotenv(&text).unwrap().into_iter().collect();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(parsed[&format!("K{i}")], v.as_bytes(), "{v:?} in {text}");
        }

        // What no spelling carries for both sh and python-dotenv is skipped, by name.
        let refused = [
            ("CR", "a\rb"),
            ("EXPANDS", "${HOME}"),
            ("TRAILING", "ends\\"),
            ("QUOTE_DOLLAR", "it's $x"),
            ("PAIR_TICK", "a\\\\b`x`"),
            ("OK", "fine"),
        ];
        let (r, skipped) = render(Format::Dotenv, &entries(&refused));
        assert_eq!(file(r), "OK=fine\n");
        let mut names: Vec<&str> = skipped.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["CR", "EXPANDS", "PAIR_TICK", "QUOTE_DOLLAR", "TRAILING"]
        );
    }

    #[test]
    fn dotenv_spellings() {
        let spell = |v: &str| {
            let (r, _) = render(Format::Dotenv, &entries(&[("K", v)]));
            file(r)
        };
        assert_eq!(spell("plain-1.2:3@x"), "K=plain-1.2:3@x\n");
        assert_eq!(spell("$(x) `y`"), "K='$(x) `y`'\n");
        assert_eq!(spell("it's \\ \""), "K=\"it's \\\\ \\\"\"\n");
        assert_eq!(spell("a\\\\b"), "K=\"a\\\\\\\\b\"\n");
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

        // Names may be longer than a file name can be: only those are skipped.
        let (n255, n256) = ("n".repeat(255), "n".repeat(256));
        let e = entries(&[(n255.as_str(), "a"), (n256.as_str(), "b"), ("k", "c")]);
        let (r, skipped) = render(Format::Dir, &e);
        let Rendered::Dir(files) = r else { panic!() };
        assert_eq!(
            files.iter().map(|f| f.0.len()).collect::<Vec<_>>(),
            [1, 255]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].name, n256);
        assert!(skipped[0].reason.contains("255"), "{}", skipped[0].reason);
        let (r, skipped) = render(Format::Json, &e);
        assert!(
            skipped.is_empty() && file(r).contains(&n256),
            "json holds any name"
        );
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
