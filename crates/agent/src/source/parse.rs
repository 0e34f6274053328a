//! Parsing of dotenv and JSON source documents into key/value pairs; owns the
//! rule that parse errors never contain any part of a value.
//!
//! Errors carry only line numbers, JSON positions and (where safe) key names.
//! Duplicate keys: the last value wins, at the position of the first
//! appearance. JSON pairs come out sorted by key (`serde_json::Map` order).

use std::collections::HashMap;

use serde_json::Value;
use serde_json::error::Category;

/// One parsed key/value pair, values as raw bytes (UTF-8 text from these parsers).
pub type Pairs = Vec<(String, Vec<u8>)>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: {reason}")]
    Dotenv { line: usize, reason: String },
    #[error("json: {reason}")]
    Json { reason: String },
}

fn dotenv_err(line: usize, reason: impl Into<String>) -> ParseError {
    ParseError::Dotenv {
        line,
        reason: reason.into(),
    }
}

fn json_err(reason: impl Into<String>) -> ParseError {
    ParseError::Json {
        reason: reason.into(),
    }
}

/// Parses a dotenv document (no variable interpolation).
///
/// Supports comments, `export `, unquoted values with ` #` inline comments,
/// single-quoted literals and double-quoted values with escapes; quoted
/// values may span lines. CRLF endings and a leading UTF-8 BOM are accepted.
pub fn parse_dotenv(text: &str) -> Result<Pairs, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = text.replace("\r\n", "\n");
    let lines: Vec<&str> = text.split('\n').collect();
    let mut pairs = Pairs::new();
    let mut seen = HashMap::new();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let line = lines[i].trim_start();
        i += 1;
        if line.trim_end().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = strip_export(line).split_once('=') else {
            return Err(dotenv_err(line_no, "expected KEY=VALUE"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(dotenv_err(line_no, "empty key"));
        }
        if key.chars().any(char::is_whitespace) {
            // Not echoed: a malformed line may be a value that lost its key.
            return Err(dotenv_err(line_no, "key contains whitespace"));
        }
        let trimmed = raw.trim_start();
        let value = match trimmed.chars().next() {
            Some(quote @ ('\'' | '"')) => {
                let (value, consumed) =
                    parse_quoted(&trimmed[1..], quote, &lines[i..], line_no, key)?;
                i += consumed;
                value
            }
            _ => unquoted(raw).to_owned(),
        };
        upsert(&mut pairs, &mut seen, key.to_owned(), value.into_bytes());
    }
    Ok(pairs)
}

/// Removes an `export ` prefix, unless `export` is itself the key.
fn strip_export(line: &str) -> &str {
    match line.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) && !rest.trim_start().starts_with('=') => {
            rest.trim_start()
        }
        _ => line,
    }
}

/// An unquoted value: trimmed, cut at the first `#` preceded by whitespace.
fn unquoted(raw: &str) -> &str {
    let mut prev_ws = false;
    for (pos, c) in raw.char_indices() {
        if c == '#' && prev_ws {
            return raw[..pos].trim();
        }
        prev_ws = c.is_whitespace();
    }
    raw.trim()
}

/// Parses a quoted value whose body starts at `first` (just after the opening
/// quote), continuing into `rest` when the value spans lines. Returns the value
/// and how many lines of `rest` were consumed.
fn parse_quoted(
    first: &str,
    quote: char,
    rest: &[&str],
    start_line: usize,
    key: &str,
) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut segment = first;
    let mut consumed = 0;
    loop {
        let mut chars = segment.char_indices();
        while let Some((pos, c)) = chars.next() {
            if c == quote {
                let tail = segment[pos + 1..].trim_start();
                if !(tail.is_empty() || tail.starts_with('#')) {
                    return Err(dotenv_err(
                        start_line + consumed,
                        format!("unexpected text after closing quote of {key:?}"),
                    ));
                }
                return Ok((out, consumed));
            }
            if c == '\\' && quote == '"' {
                match chars.next().map(|(_, e)| e) {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some(e @ ('\\' | '"' | '$' | '\'')) => out.push(e),
                    Some(e) => {
                        out.push('\\');
                        out.push(e);
                    }
                    // Backslash at end of line: kept, the newline follows.
                    None => out.push('\\'),
                }
                continue;
            }
            out.push(c);
        }
        let Some(next) = rest.get(consumed) else {
            return Err(dotenv_err(
                start_line,
                format!("unterminated quoted value for {key:?}"),
            ));
        };
        out.push('\n');
        segment = next;
        consumed += 1;
    }
}

/// Inserts a pair; a repeated key replaces the earlier value in place.
fn upsert(pairs: &mut Pairs, seen: &mut HashMap<String, usize>, key: String, value: Vec<u8>) {
    match seen.get(&key) {
        Some(&idx) => pairs[idx].1 = value,
        None => {
            seen.insert(key.clone(), pairs.len());
            pairs.push((key, value));
        }
    }
}

/// Parses a JSON object of scalar values. Strings are taken as-is; numbers
/// and booleans become their JSON text as serde_json prints it (`1`, `1.5`,
/// `true`; `1e2` becomes `100.0`, integers beyond 64 bits become `1e+20`-style);
/// null, arrays and objects are errors naming the key.
pub fn parse_json(text: &str) -> Result<Pairs, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc: Value = serde_json::from_str(text).map_err(|e| json_err(describe(&e)))?;
    let Value::Object(map) = doc else {
        return Err(json_err("document must be an object"));
    };
    map.into_iter()
        .map(|(key, value)| {
            let bytes = match value {
                Value::String(s) => s.into_bytes(),
                Value::Number(n) => n.to_string().into_bytes(),
                Value::Bool(b) => b.to_string().into_bytes(),
                Value::Null => return Err(json_err(format!("{key:?}: null is not allowed"))),
                Value::Array(_) => {
                    return Err(json_err(format!("{key:?}: arrays are not allowed")));
                }
                Value::Object(_) => {
                    return Err(json_err(format!("{key:?}: objects are not allowed")));
                }
            };
            Ok((key, bytes))
        })
        .collect()
}

/// Describes a serde_json error by category and position only, never by its
/// own message, so no input text can leak into the reason.
fn describe(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "invalid data",
        Category::Eof => "unexpected end of input",
    };
    format!("{what} at line {}, column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> Vec<(String, String)> {
        let pairs = parse_dotenv(text).unwrap().into_iter();
        pairs
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn one(text: &str) -> String {
        let pairs = env(text);
        assert_eq!(pairs.len(), 1, "{pairs:?}");
        pairs[0].1.clone()
    }

    fn line_of(text: &str) -> usize {
        match parse_dotenv(text).unwrap_err() {
            ParseError::Dotenv { line, .. } => line,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn assert_no_secret(err: &ParseError) {
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("s3cr3t"), "value leaked: {shown}");
        }
    }

    #[test]
    fn basic_pairs_in_order() {
        assert_eq!(env("A=1\nB=two\n"), kv(&[("A", "1"), ("B", "two")]));
        assert_eq!(one("A=b=c=="), "b=c==");
        assert_eq!(one("U=postgres://u:p@h/db?x=1"), "postgres://u:p@h/db?x=1");
    }

    #[test]
    fn blank_lines_and_comments_ignored() {
        assert_eq!(env("\n   \n# c\n   # indented\n\tA=1\n\n").len(), 1);
        assert!(env("").is_empty());
        assert!(env("# only comment").is_empty());
    }

    #[test]
    fn export_prefix() {
        assert_eq!(env("export A=1"), kv(&[("A", "1")]));
        assert_eq!(env("export\t  B = 2"), kv(&[("B", "2")]));
        assert_eq!(env("exportC=3"), kv(&[("exportC", "3")]));
        assert_eq!(env("export=4"), kv(&[("export", "4")]));
        assert_eq!(env("export = 5"), kv(&[("export", "5")]));
    }

    #[test]
    fn whitespace_around_key_and_equals_trimmed() {
        assert_eq!(env("  KEY \t=\t value  \t"), kv(&[("KEY", "value")]));
        assert_eq!(one("A=hello world"), "hello world");
    }

    #[test]
    fn empty_values() {
        for text in ["A=", "A=   ", "A=''", "A=\"\"", "A= # just a comment"] {
            assert_eq!(one(text), "", "{text}");
        }
    }

    #[test]
    fn inline_comments_on_unquoted() {
        assert_eq!(one("A=b #c"), "b");
        assert_eq!(one("A=b\t# c"), "b");
        assert_eq!(one("A=b#c"), "b#c");
        assert_eq!(one("A=#b"), "#b");
        assert_eq!(one("A=x#y #z"), "x#y");
    }

    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(one(r"A='a\nb \$x #no'"), r"a\nb \$x #no");
        assert_eq!(one("A='  padded  '"), "  padded  ");
        assert_eq!(one("A='say \"hi\"'"), "say \"hi\"");
    }

    #[test]
    fn double_quote_escapes() {
        assert_eq!(one(r#"A="a\nb\rc\td""#), "a\nb\rc\td");
        assert_eq!(one(r#"A="\\ \" \$ \'""#), "\\ \" $ '");
        assert_eq!(one(r#"A="x # not comment""#), "x # not comment");
    }

    #[test]
    fn unknown_escape_kept() {
        assert_eq!(one(r#"A="\q\w""#), r"\q\w");
        assert_eq!(one(r#"A="C:\dir""#), r"C:\dir");
    }

    #[test]
    fn multiline_double_quoted() {
        let got = env("A=\"line1\nline2  \n# kept\n  line4\"\nB=2");
        assert_eq!(
            got,
            kv(&[("A", "line1\nline2  \n# kept\n  line4"), ("B", "2")])
        );
    }

    #[test]
    fn multiline_single_quoted_pem() {
        let got = env("KEY='-----BEGIN-----\nabc\\n\n-----END-----'\nNEXT=1\n");
        let pem = "-----BEGIN-----\nabc\\n\n-----END-----";
        assert_eq!(got, kv(&[("KEY", pem), ("NEXT", "1")]));
    }

    #[test]
    fn crlf_line_endings() {
        let got = env("A=1\r\nB=\"x\r\ny\"\r\n# c\r\nC='z' \r\n");
        assert_eq!(got, kv(&[("A", "1"), ("B", "x\ny"), ("C", "z")]));
    }

    #[test]
    fn bom_skipped() {
        assert_eq!(env("\u{feff}A=1"), kv(&[("A", "1")]));
        assert_eq!(parse_json("\u{feff}{\"A\":\"1\"}").unwrap()[0].0, "A");
    }

    #[test]
    fn after_closing_quote_whitespace_or_comment() {
        assert_eq!(one("A=\"v\"   "), "v");
        assert_eq!(one("A='v' # comment"), "v");
        assert_eq!(one("A=\"v\"#comment"), "v");
        assert_eq!(line_of("X=1\nA=\"v\" junk"), 2);
        assert_eq!(line_of("A='v'junk"), 1);
    }

    #[test]
    fn trailing_text_error_reports_closing_line() {
        assert_eq!(line_of("A=\"one\ntwo\"oops\n"), 2);
        assert_eq!(line_of("A='one\n\ntwo' x\n"), 3);
    }

    #[test]
    fn unterminated_quote_reports_start_line() {
        assert_eq!(line_of("A=1\n\nB=\"never\nclosed\nC=3\n"), 3);
        assert_eq!(line_of("A='open"), 1);
        assert_eq!(line_of("A=\"ends with backslash\\\""), 1);
    }

    #[test]
    fn missing_equals_is_error() {
        let err = parse_dotenv("A=1\nJUSTAKEY\n").unwrap_err();
        let reason = "expected KEY=VALUE".to_string();
        assert_eq!(err, ParseError::Dotenv { line: 2, reason });
        assert_eq!(err.to_string(), "line 2: expected KEY=VALUE");
        assert_eq!(line_of("export"), 1);
    }

    #[test]
    fn empty_key_is_error() {
        assert_eq!(line_of("=value"), 1);
        assert_eq!(line_of("A=1\n   = x"), 2);
    }

    #[test]
    fn key_with_whitespace_is_error_but_otherwise_unvalidated() {
        assert_eq!(line_of("A B=1"), 1);
        assert_eq!(line_of("A=1\nexport A\tB=2"), 2);
        assert_eq!(env("a.b-c=1\n1X=2"), kv(&[("a.b-c", "1"), ("1X", "2")]));
    }

    #[test]
    fn duplicate_keys_last_wins_first_position() {
        assert_eq!(env("A=1\nB=2\nA=3"), kv(&[("A", "3"), ("B", "2")]));
    }

    #[test]
    fn no_interpolation_and_utf8() {
        assert_eq!(one("A=${HOME}/x"), "${HOME}/x");
        assert_eq!(one("A=\"$HOME\""), "$HOME");
        assert_eq!(one("A=héllo wörld"), "héllo wörld");
        assert_eq!(one("A=\"日本\\n語\""), "日本\n語");
    }

    #[test]
    fn dotenv_errors_never_contain_values() {
        for text in [
            "PASS=\"s3cr3t",
            "PASS='s3cr3t",
            "PASS=\"s3cr3t\"s3cr3t",
            "PASS='x' s3cr3t",
            "s3cr3t",
            "my s3cr3t=1",
            "export s3cr3t",
            "A=1\n\"s3cr3t\nmore",
        ] {
            assert_no_secret(&parse_dotenv(text).unwrap_err());
        }
    }

    #[test]
    fn dotenv_error_may_name_key() {
        let err = parse_dotenv("PASSWORD=\"s3cr3t").unwrap_err();
        assert!(err.to_string().contains("PASSWORD"), "{err}");
        assert_no_secret(&err);
    }

    #[test]
    fn json_scalars() {
        let text = r#"{"s":"text","i":1,"f":1.5,"neg":-7,"t":true,"b":false}"#;
        let got = parse_json(text).unwrap().into_iter();
        let got: Vec<_> = got
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect();
        let want = [("b", "false"), ("f", "1.5"), ("i", "1"), ("neg", "-7")];
        assert_eq!(
            got,
            kv(&[&want[..], &[("s", "text"), ("t", "true")]].concat())
        );
    }

    #[test]
    fn json_strings_as_is() {
        let got = parse_json(r#"{"K":" a\nb \"q\" ${X} "}"#).unwrap();
        assert_eq!(got, vec![("K".to_string(), b" a\nb \"q\" ${X} ".to_vec())]);
        assert!(parse_json("{}").unwrap().is_empty());
    }

    #[test]
    fn json_duplicate_last_wins() {
        let got = parse_json(r#"{"A":"1","A":"2"}"#).unwrap();
        assert_eq!(got, vec![("A".to_string(), b"2".to_vec())]);
    }

    #[test]
    fn json_non_scalar_values_name_key_only() {
        for (text, kind) in [
            (r#"{"TOKEN":null}"#, "null"),
            (r#"{"TOKEN":["s3cr3t"]}"#, "arrays"),
            (r#"{"TOKEN":{"inner":"s3cr3t"}}"#, "objects"),
        ] {
            let err = parse_json(text).unwrap_err();
            let shown = err.to_string();
            assert!(shown.contains("TOKEN") && shown.contains(kind), "{shown}");
            assert_no_secret(&err);
        }
    }

    #[test]
    fn json_must_be_object() {
        for text in [r#"["s3cr3t"]"#, r#""s3cr3t""#, "42", "null", "true"] {
            let err = parse_json(text).unwrap_err();
            assert_eq!(err, json_err("document must be an object"));
            assert_no_secret(&err);
        }
    }

    #[test]
    fn json_syntax_errors_never_contain_values() {
        for text in [
            r#"{"PASS":"s3cr3t"#,
            r#"{"PASS":"s3cr3t\q"}"#,
            r#"{"PASS":s3cr3t}"#,
            r#"{"PASS":"s3cr3t"} s3cr3t"#,
            "{\"PASS\":\"s3cr3t\u{1}\"}",
            r#"{"PASS":1e99999999}"#,
            "",
        ] {
            let err = parse_json(text).unwrap_err();
            assert!(matches!(err, ParseError::Json { .. }), "{err:?}");
            assert!(err.to_string().contains("line 1"), "{err}");
            assert_no_secret(&err);
        }
    }
}
