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
//! - `protocol`: the wire types between agents and nodes, and the position rules.
//! - `source::net`: the agent's network source (follows an environment on the nodes).
//! - `server`: `tether serve`: HTTP API, WebSocket, hub, auth, store.
//! - `client`: the admin verbs (`put`, `get`, `rm`, `status`) over HTTP.
//! - `app`: the verbs, as called from `main`.

pub mod agent;
pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod debounce;
pub mod fixture;
pub mod loadgen;
pub mod logging;
pub mod output;
pub mod protocol;
pub mod secret;
pub mod server;
pub mod signal;
pub mod source;
pub mod state;
pub mod supervisor;
pub mod target;
