//! What the agent's and the node's configurations share: problems reported with their key
//! (all at once), durations written `30s`, the log flags and format, the host's name.

use std::fmt;
use std::time::Duration;

/// One problem, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// A configuration with one problem.
    pub fn one(key: &str, message: impl Into<String>) -> Self {
        ConfigError(vec![Problem {
            key: key.into(),
            message: message.into(),
        }])
    }

    /// Add the line of `text` where `span` (of a TOML parse error) starts to the first
    /// problem's message.
    pub fn with_span(mut self, text: &str, span: Option<std::ops::Range<usize>>) -> Self {
        if let (Some(span), Some(p)) = (span, self.0.first_mut()) {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            p.message = format!("{} (line {line})", p.message);
        }
        self
    }
}

/// `"30s"`, `"200ms"`, `"1m30s"`, or `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration like 30s or 200ms ({e})"))
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `text` (the default when `None`) or `json`.
    pub fn parse(s: Option<&str>) -> Result<LogFormat, String> {
        match s {
            None | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(format!("{other:?} is not text or json")),
        }
    }
}

/// The log flags every long-running verb takes.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct LogArgs {
    /// Log level or filter (error, warn, info, debug, trace); falls back to TETHER_LOG.
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT", env = "TETHER_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

/// The running process's log filter, which a reload changes. The binary's logging owns the
/// filter and hands the verb a control; `LogControl::none()` where nothing can change it.
#[derive(Clone)]
pub struct LogControl(Option<std::sync::Arc<SetLevel>>);

type SetLevel = dyn Fn(Option<&str>) -> Result<(), String> + Send + Sync;

impl LogControl {
    /// A control that calls `set` with the new level (`None`: the default, `TETHER_LOG` or
    /// `info`); `set` refuses a filter that does not parse.
    pub fn new(set: impl Fn(Option<&str>) -> Result<(), String> + Send + Sync + 'static) -> Self {
        LogControl(Some(std::sync::Arc::new(set)))
    }

    /// A control that changes nothing (tests, embedders).
    pub fn none() -> Self {
        LogControl(None)
    }

    /// Use `level` from now on.
    pub fn set(&self, level: Option<&str>) -> Result<(), String> {
        match &self.0 {
            Some(set) => set(level),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for LogControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "LogControl"
        } else {
            "LogControl(none)"
        })
    }
}

/// This host's name, or `unknown` when it has none that is UTF-8.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn log_formats() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("json")), Ok(LogFormat::Json));
        assert!(LogFormat::parse(Some("xml")).is_err());
    }
}
