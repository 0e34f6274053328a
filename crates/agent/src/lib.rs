//! tether's agent: `tether run` (supervise a program), `tether watch` (a sidecar) and
//! `tether check`. It links none of the node's code.
//!
//! Layout (the arrows point one way: `config` builds the specs that `output`, `source` and
//! `supervisor` own; nothing below `config` reads it back):
//! - `args`, `config`: flags and the TOML file, validated into one [`config::Config`].
//! - `action`: what a change does (restart, signal, exec, none).
//! - `state`: the merged view of entries with its diff.
//! - `source`: `file:`/`dir:` sources, their parsers and the `notify` watcher; `source::net`
//!   follows an environment on tether nodes (with its saved state and backoff).
//! - `output`: formats, the `dir` symlink swap, the child's environment, default places;
//!   [`atomic`]: how bytes reach the disk (outputs and the saved state).
//! - `debounce`: quiet window, max wait and splay; `gate`: under a rollout policy, a change
//!   that restarts (or signals) waits for a slot from the node.
//! - `supervisor`: the child's owner task behind a `Spawner`, the reaper, spawning, stopping.
//! - `target`: watch mode's pidfile/process-name targets and exec hooks.
//! - `run`: the loop tying sources to outputs and actions ([`run()`]); `signals`: tether's
//!   own signal handlers; `reload`: tether's configuration read again (SIGHUP, or an edit
//!   of its file) and applied in place.
//! - `once`: `--once` (render every output once and exit) and `--dry-run` (report, touch
//!   nothing), which `run()` hands over to.
//! - `bake`: health after a change: the checks, the bake after each version from the
//!   nodes, its report, and the rollback to the last healthy values.
//! - `tasks`: the tracker every spawned task belongs to, stopped within a deadline.
//! - `health`: what the agent tells about itself: `/healthz`, `/readyz`, `/metrics`
//!   (`--listen-metrics`) and systemd's notifications, from one-line observation calls.

// `unsafe` only where a syscall wrapper needs it, allowed block by block with its SAFETY.
#![deny(unsafe_code)]

mod action;
pub mod args;
pub mod atomic;
pub mod bake;
pub mod config;
mod debounce;
mod gate;
pub mod health;
mod once;
mod output;
mod reload;
mod run;
mod signals;
pub mod source;
mod state;
mod supervisor;
mod target;
mod tasks;

pub use once::{EXIT_CANTCREAT, EXIT_NOINPUT, EXIT_UNAVAILABLE, OnceSpec};
pub use output::template::unknown_names as unknown_template_names;
pub use run::{AgentError, run};
