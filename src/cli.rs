//! The `tether` command line (clap): the verbs, each taking the flags its crate defines.
//! The agent's verbs are always there; the node's and the admin verbs only in the full
//! build (the `node` feature).

use clap::{Parser, Subcommand};
use tether_agent::args::{CheckArgs, RunArgs, WatchArgs};

#[derive(Parser, Debug)]
#[command(
    name = "tether",
    version,
    about = "Keep a running program in step with live configuration",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Supervise CMD: render values to files and/or its environment, signal or restart it on change.
    Run(RunArgs),
    /// Sidecar: render values to files and signal another process (pidfile or name) or run a hook.
    Watch(WatchArgs),
    /// Validate a config file; print every problem with its key, or the effective config.
    Check(CheckArgs),
    /// A node of the change-notification cluster: HTTP API and WebSocket for agents.
    #[cfg(feature = "node")]
    Serve(tether_node::args::ServeArgs),
    /// Set entries in an environment, as one atomic change set.
    #[cfg(feature = "node")]
    Put(tether_client::args::PutArgs),
    /// Print an environment (or one entry's value).
    #[cfg(feature = "node")]
    Get(tether_client::args::GetArgs),
    /// Delete entries from an environment, as one atomic change set.
    #[cfg(feature = "node")]
    Rm(tether_client::args::RmArgs),
    /// Rollout status: how many agents applied the newest version, are healthy, failed.
    #[cfg(feature = "node")]
    Status(tether_client::args::StatusArgs),
    /// An environment's rollout policy: how many agents may act on a change at once.
    #[cfg(feature = "node")]
    Policy(tether_client::args::PolicyArgs),
    /// Act on an environment's rollout (resume after a halt).
    #[cfg(feature = "node")]
    Rollout(tether_client::args::RolloutArgs),
    /// Print a shell completion script to stdout, e.g. `tether completions bash`.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout, e.g. `tether man | man -l -`.
    Man,
}

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (unique ids, valid flag names) for every verb: a clash
    /// between flags merged from several crates panics only when the verb is parsed.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
