//! Logging setup: tracing to stderr, text or JSON, level from `--log-level` or `TETHER_LOG`:
//! a level (`debug`), or a default and levels by target (`info,tether_agent=debug`).

use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use tether_core::settings::LogFormat;

/// Start logging. `level` (from flags or the config file) wins over `TETHER_LOG`; a filter
/// that does not parse falls back to `info`.
pub fn init(level: Option<&str>, format: LogFormat) {
    let filter = level
        .map(str::to_owned)
        .or_else(|| std::env::var("TETHER_LOG").ok())
        .and_then(|s| Targets::from_str(s.trim()).ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry.with(layer).try_init(),
    };
}
