//! Logging setup: tracing to stderr, text or JSON (coloured on a terminal unless `NO_COLOR`),
//! level from `--log-level` or `TETHER_LOG`: a level (`debug`), or a default and levels by
//! target (`info,tether_agent=debug`). The filter can be changed while running (a reload),
//! through the returned [`LogControl`].

use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use tether_core::settings::{LogControl, LogFormat};

/// Start logging. `level` (from flags or the config file) wins over `TETHER_LOG`; a filter
/// that does not parse falls back to `info`.
pub fn init(level: Option<&str>, format: LogFormat) -> LogControl {
    let (filter, handle) = reload::Layer::new(filter_for(level).unwrap_or_else(|_| default()));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry.with(layer).try_init(),
    };
    LogControl::new(move |level| {
        let filter = filter_for(level)?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))
    })
}

/// The filter for `level`, else `TETHER_LOG`, else `info`; an error names what did not parse.
fn filter_for(level: Option<&str>) -> Result<Targets, String> {
    match level
        .map(str::to_owned)
        .or_else(|| std::env::var("TETHER_LOG").ok())
    {
        Some(s) => Targets::from_str(s.trim())
            .map_err(|e| format!("{s:?} is not a log level or filter ({e})")),
        None => Ok(default()),
    }
}

fn default() -> Targets {
    Targets::new().with_default(LevelFilter::INFO)
}

/// Colours only on a terminal (a log file or the journal gets plain text), and not when
/// `NO_COLOR` is set to anything but the empty string (https://no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn filters_parse_or_name_what_did_not() {
        assert!(filter_for(Some("debug")).is_ok());
        assert!(filter_for(Some("info,tether_agent=trace")).is_ok());
        let e = filter_for(Some("tether_agent=loud")).expect_err("not a level");
        assert!(e.contains("tether_agent=loud"), "{e}");
    }

    #[test]
    fn no_color_set_and_not_empty_turns_colours_off() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))), "empty means unset");
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(true, Some(OsStr::new("0"))), "any value counts");
        assert!(!colour(false, None), "never off a terminal");
    }
}
