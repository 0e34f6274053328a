//! Glob patterns on names (environment and entry names, never paths): `*` matches any run of
//! characters, `?` one character, `[abc]`, `[a-z]` and `[!a-z]` (or `[^a-z]`) one character of
//! (or not of) a set, and `\` makes the next character literal. Enough for "DB_*" or "prod-?";
//! small enough that neither side needs a regex engine for it.

use std::fmt;

/// A compiled pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    Any,
    Star,
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A pattern that does not parse, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad glob {pattern:?}: {reason}")]
pub struct GlobError {
    pub pattern: String,
    pub reason: &'static str,
}

impl Glob {
    /// Compile `pattern`.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let bad = |reason| GlobError {
            pattern: pattern.to_string(),
            reason,
        };
        let mut tokens = Vec::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' if tokens.last() == Some(&Token::Star) => continue,
                '*' => Token::Star,
                '?' => Token::Any,
                '\\' => Token::Char(chars.next().ok_or_else(|| bad("ends with a lone `\\`"))?),
                '[' => {
                    let mut negated = false;
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let c = chars.next().ok_or_else(|| bad("has an unclosed `[`"))?;
                        match c {
                            '!' | '^' if first && !negated => {
                                negated = true;
                                continue;
                            }
                            ']' if !first => break,
                            _ => {}
                        }
                        first = false;
                        let lo = if c == '\\' {
                            chars.next().ok_or_else(|| bad("has an unclosed `[`"))?
                        } else {
                            c
                        };
                        let mut ahead = chars.clone();
                        match (ahead.next(), ahead.next()) {
                            (Some('-'), Some(hi)) if hi != ']' => {
                                if hi < lo {
                                    return Err(bad("has a range whose end is before its start"));
                                }
                                ranges.push((lo, hi));
                                chars = ahead;
                            }
                            _ => ranges.push((lo, lo)),
                        }
                    }
                    Token::Set { negated, ranges }
                }
                c => Token::Char(c),
            });
        }
        Ok(Glob {
            source: pattern.to_string(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `name` matches.
    pub fn is_match(&self, name: &str) -> bool {
        let text: Vec<char> = name.chars().collect();
        // Classic wildcard matching: on a mismatch, let the last `*` take one more character.
        let (mut t, mut p) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::Star) => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(tok) if tok.matches(text[t]) => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|tok| *tok == Token::Star)
    }
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::Any => true,
            Token::Star => false,
            Token::Set { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.source)
    }
}

/// Several patterns; a name matches the set when it matches any of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobSet(Vec<Glob>);

impl GlobSet {
    /// Compile every pattern; the first that does not parse is the error.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<GlobSet, GlobError> {
        patterns
            .iter()
            .map(|p| Glob::new(p.as_ref()))
            .collect::<Result<_, _>>()
            .map(GlobSet)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.0.iter().any(|g| g.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p).unwrap().is_match(s)
    }

    #[test]
    fn stars_and_questions() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("DB_*", "DB_URL"));
        assert!(m("DB_*", "DB_"));
        assert!(!m("DB_*", "XDB_URL"));
        assert!(m("*_URL", "DB_URL"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(m("a*b*c", "abbbc"));
        assert!(!m("a*b*c", "abcx"));
        assert!(m("a**b", "ab"));
        assert!(m("prod-?", "prod-1"));
        assert!(!m("prod-?", "prod-12"));
        assert!(m("é?", "éü"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(!m("", "x"));
        assert!(m("", ""));
    }

    #[test]
    fn sets_ranges_and_escapes() {
        assert!(m("[abc]x", "bx"));
        assert!(!m("[abc]x", "dx"));
        assert!(m("v[0-9]", "v7"));
        assert!(!m("v[!0-9]", "v7"));
        assert!(m("v[^0-9]", "vx"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("[\\]]", "]"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(Glob::new("[abc").is_err());
        assert!(Glob::new("x\\").is_err());
        assert!(Glob::new("[z-a]").is_err());
        let e = Glob::new("[").unwrap_err().to_string();
        assert!(e.contains("bad glob \"[\""), "{e}");
    }

    #[test]
    fn sets_match_any() {
        let s = GlobSet::new(&["A*", "B?"]).unwrap();
        assert!(s.is_match("Axyz") && s.is_match("B1") && !s.is_match("C"));
        assert!(!GlobSet::default().is_match("A"));
    }
}
