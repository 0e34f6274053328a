//! Names from sources and nodes made fit for a log line: escaped, so that a name cannot
//! forge or garble log lines, and cut when long.

/// A name from a source or a node, fit for a log line: control and other unprintable
/// characters escaped (`\n`, `\u{1b}`), so a name cannot forge or garble log lines, and long
/// names cut to their first [`NAME_SHOWN`] characters with their full length in bytes.
pub fn name(name: &str) -> LogName<'_> {
    LogName(name)
}

/// How many characters of a long name a log line shows.
pub const NAME_SHOWN: usize = 64;

/// See [`name`].
pub struct LogName<'a>(&'a str);

impl std::fmt::Display for LogName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        let cut = s.char_indices().nth(NAME_SHOWN).map(|(i, _)| i);
        let shown = &s[..cut.unwrap_or(s.len())];
        for c in shown.chars() {
            // Escaped like `{:?}`, except quotes, which are printable and unambiguous here.
            match c {
                '"' | '\'' => write!(f, "{c}")?,
                c => write!(f, "{}", c.escape_debug())?,
            }
        }
        if cut.is_some() {
            write!(f, "...({} bytes)", s.len())?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for LogName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Names for a log line, each escaped and cut as [`name`] does, at most [`NAMES_SHOWN`] of
/// them (then how many more).
pub fn names(names: &[String]) -> LogNames<'_> {
    LogNames(names)
}

/// How many names of a long list a log line shows.
pub const NAMES_SHOWN: usize = 20;

/// See [`names`].
pub struct LogNames<'a>(&'a [String]);

impl std::fmt::Display for LogNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[")?;
        for (i, n) in self.0.iter().take(NAMES_SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", name(n))?;
        }
        if self.0.len() > NAMES_SHOWN {
            write!(f, ", ... {} more", self.0.len() - NAMES_SHOWN)?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_cut() {
        assert_eq!(name("DB_URL").to_string(), "DB_URL");
        assert_eq!(
            name("A\nINFO forged\r\x1b[31m\\").to_string(),
            "A\\nINFO forged\\r\\u{1b}[31m\\\\"
        );
        assert_eq!(name("\u{202e}x").to_string(), "\\u{202e}x");
        assert_eq!(name("it's \"q\"").to_string(), "it's \"q\"");
        assert_eq!(format!("{:?}", name("a\tb")), "\"a\\tb\"");
        let long = "é".repeat(200);
        let shown = name(&long).to_string();
        assert_eq!(shown, format!("{}...(400 bytes)", "é".repeat(NAME_SHOWN)));
        let many: Vec<String> = (0..25).map(|i| format!("K{i}")).collect();
        let s = names(&many).to_string();
        assert!(
            s.starts_with("[K0, K1, ") && s.ends_with(", K19, ... 5 more]"),
            "{s}"
        );
        assert_eq!(names(&["a\nb".into()]).to_string(), "[a\\nb]");
    }
}
