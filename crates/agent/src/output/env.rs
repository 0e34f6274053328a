//! The child's environment: which entries are injected (include/exclude globs), under what
//! prefix, and the rule that names must be valid variable names and values free of NUL.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use tether_core::glob::GlobSet;

use super::render::{Skipped, valid_env_name};
use crate::state::Entries;

/// Injected variables, in name order.
pub type EnvVars = Vec<(OsString, OsString)>;

#[derive(Clone, Debug)]
pub struct EnvSpec {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub prefix: String,
    include_set: GlobSet,
    exclude_set: GlobSet,
}

fn build(patterns: &[String]) -> Result<GlobSet, String> {
    GlobSet::new(patterns).map_err(|e| e.to_string())
}

impl EnvSpec {
    pub fn new(include: Vec<String>, exclude: Vec<String>, prefix: String) -> Result<Self, String> {
        Ok(EnvSpec {
            include_set: build(&include)?,
            exclude_set: build(&exclude)?,
            include,
            exclude,
            prefix,
        })
    }

    /// Whether an entry name is injected (before the prefix is added).
    pub fn selects(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include_set.is_match(name))
            && !self.exclude_set.is_match(name)
    }

    /// The variables to inject, and the entries that could not be.
    pub fn render(&self, entries: &Entries) -> (EnvVars, Vec<Skipped>) {
        let mut vars = Vec::new();
        let mut skipped = Vec::new();
        for (name, e) in entries.iter().filter(|(n, _)| self.selects(n)) {
            let full = format!("{}{name}", self.prefix);
            let reason = if !valid_env_name(&full) {
                Some("not a valid variable name")
            } else if e.value.expose().contains(&0) {
                Some("value contains NUL")
            } else {
                None
            };
            match reason {
                Some(reason) => skipped.push(Skipped {
                    name: name.clone(),
                    reason,
                }),
                None => vars.push((
                    OsString::from(full),
                    OsString::from_vec(e.value.expose().to_vec()),
                )),
            }
        }
        (vars, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::entries;

    #[test]
    fn globs_and_prefix() {
        let spec = EnvSpec::new(
            vec!["DB_*".into(), "API_KEY".into()],
            vec!["*_DEBUG".into()],
            "APP_".into(),
        )
        .unwrap();
        let e = entries(&[
            ("DB_URL", "u"),
            ("DB_DEBUG", "1"),
            ("API_KEY", "k"),
            ("OTHER", "o"),
        ]);
        let (vars, skipped) = spec.render(&e);
        assert!(skipped.is_empty());
        assert_eq!(
            vars,
            vec![
                (OsString::from("APP_API_KEY"), OsString::from("k")),
                (OsString::from("APP_DB_URL"), OsString::from("u")),
            ]
        );
    }

    #[test]
    fn bad_names_and_nul_values_are_skipped() {
        let spec = EnvSpec::new(vec![], vec![], String::new()).unwrap();
        let mut e = entries(&[("OK", "1"), ("a.b", "2"), ("X", "y")]);
        e.get_mut("X").unwrap().value = tether_core::secret::Value::new(b"a\0b".to_vec());
        let (vars, skipped) = spec.render(&e);
        assert_eq!(vars.len(), 1);
        assert_eq!(
            skipped.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["X", "a.b"]
        );
    }

    #[test]
    fn bad_glob_is_an_error() {
        assert!(EnvSpec::new(vec!["[".into()], vec![], String::new()).is_err());
    }
}
