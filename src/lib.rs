//! tether keeps a running program in step with live configuration.
//!
//! Layout:
//! - `cli`, `config`: flags and the TOML file, validated into one [`config::Config`].
//! - `secret`, `signal`, `state`: the value type that never prints, one signal type, and the
//!   merged view of entries with its diff.
//! - `source`: `file:`/`dir:` sources, their parsers and the `notify` watcher.
//! - `output`: formats, atomic writes, `dir` symlink swap, the child's environment.
//! - `debounce`: quiet window, max wait and splay.
//! - `supervisor`: the child's owner task, the reaper, spawning and stopping.
//! - `target`: watch mode's pidfile/process-name targets and exec hooks.
//! - `agent`: the loop tying sources to outputs and actions.
//! - `app`: the verbs, as called from `main`.

pub mod agent;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod debounce;
pub mod fixture;
pub mod logging;
pub mod output;
pub mod secret;
pub mod signal;
pub mod source;
pub mod state;
pub mod supervisor;
pub mod target;
