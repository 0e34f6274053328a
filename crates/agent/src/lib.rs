//! tether's agent: `tether run` (supervise a program), `tether watch` (a sidecar) and
//! `tether check`. It links none of the node's code.
//!
//! Layout:
//! - `args`, `config`: flags and the TOML file, validated into one [`config::Config`].
//! - `state`: the merged view of entries with its diff.
//! - `source`: `file:`/`dir:` sources, their parsers and the `notify` watcher; `source::net`
//!   follows an environment on tether nodes.
//! - `output`: formats, atomic writes, `dir` symlink swap, the child's environment.
//! - `debounce`: quiet window, max wait and splay.
//! - `supervisor`: the child's owner task, the reaper, spawning and stopping.
//! - `target`: watch mode's pidfile/process-name targets and exec hooks.
//! - `run`: the loop tying sources to outputs and actions ([`run()`]).
//! - `tasks`: the tracker every spawned task belongs to, stopped within a deadline.

// `unsafe` only where a syscall wrapper needs it, allowed block by block with its SAFETY.
#![deny(unsafe_code)]

pub mod args;
pub mod config;
pub mod debounce;
pub mod output;
mod run;
pub mod source;
pub mod state;
pub mod supervisor;
pub mod target;
pub mod tasks;

pub use run::{AgentError, run};
