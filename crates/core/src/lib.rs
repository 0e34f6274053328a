//! What the agent and the node share: the wire types and the rules of positions, the limits
//! on names and sizes, the secret value type, signals, the small settings helpers both sides
//! parse their configuration with, and the few process-level services both need (systemd
//! notifications, the open-file limit).
//!
//! Layout:
//! - [`protocol`]: the messages between agents and nodes, positions `(epoch, version)` and
//!   the verdict on a change (apply, duplicate, gap).
//! - [`limits`]: frame, value and environment sizes; the rule for names.
//! - [`secret`]: [`secret::Value`], which never prints its bytes.
//! - [`signal`]: one signal type that reads `HUP`, `SIGHUP`, `hup` and `1`.
//! - [`settings`]: configuration problems with their keys, durations, log format, hostname.
//! - [`logname`]: names as log lines show them (escaped, cut).
//! - [`glob`]: `*`, `?` and `[...]` patterns on names.
//! - [`endpoint`]: node URLs (`http(s)`/`ws(s)`) and the TLS client config with a CA file.
//! - [`notify`]: systemd's service notifications (`READY=1`, `STATUS=`, the watchdog).
//! - [`fdlimit`]: the open-file limit, raised at start.
//! - [`rollout`]: rollout policies (slots, waves, bake, failures) and health states.
//! - [`prom`]: Prometheus' text format (`# HELP`/`# TYPE`, samples, escaped labels).

#![forbid(unsafe_code)]

pub mod endpoint;
pub mod fdlimit;
pub mod glob;
pub mod limits;
pub mod logname;
pub mod notify;
pub mod prom;
pub mod protocol;
pub mod rollout;
pub mod secret;
pub mod settings;
pub mod signal;
