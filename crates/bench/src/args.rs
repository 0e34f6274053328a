//! The benchmarks' flags (clap).

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `tether-bench`: the benchmarks, and the processes they start.
#[derive(clap::Parser, Debug)]
#[command(
    name = "tether-bench",
    version,
    about = "Benchmarks of tether; they print their figures and assert nothing"
)]
pub struct BenchCli {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// `tether run` following a file source: edit → signal latency, peak memory, idle CPU.
    File(BenchArgs),
    /// Load a node with light protocol clients: memory per connection, fan-out time,
    /// put → signal latency.
    Agents(crate::agents::AgentsBenchArgs),
    /// tether and `keyshade run` (socket.io-client, emulated) following one keyshade test
    /// server: peak RSS, CPU, event → child latency, and the ratios against the targets.
    Keyshade(crate::keyshade::KeyshadeBenchArgs),
    /// Internal: the child process that the benchmarks and the tests supervise.
    #[command(hide = true)]
    Child(BenchChildArgs),
    /// Internal: the bare node of `agents`' floor figure.
    #[command(hide = true, name = "bare-node")]
    BareNode(crate::agents::BareNodeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Changes to time.
    #[arg(long, default_value_t = 1000)]
    pub changes: usize,
    /// Entries in the source file.
    #[arg(long, default_value_t = 1000)]
    pub entries: usize,
    /// Seconds of idle time to measure CPU over.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Where the bench creates its scratch dir `tether-bench-PID` (default /dev/shm, a tmpfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also time a 200-line template output over the same values (`--template SRC:DEST`
    /// instead of the dotenv output), printed after the dotenv figures.
    #[arg(long)]
    pub template: bool,
    /// A tether binary to measure (default: `tether` beside this one); repeat it to measure
    /// several builds one after the other in one run.
    #[arg(long, value_name = "PATH")]
    pub tether: Vec<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchChildArgs {
    /// Append one line per received signal (`SIGNAME`) to this file; write the env at start.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Write the environment (KEY=VALUE lines) to this file at start.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Ignore SIGTERM (for grace-period tests).
    #[arg(long)]
    pub ignore_term: bool,
    /// Print `start` on stdout once the signal handlers are in place (the keyshade bench
    /// times restarts by it).
    #[arg(long)]
    pub announce: bool,
    /// Exit with this code after this many milliseconds.
    #[arg(long, num_args = 2, value_names = ["MS", "CODE"])]
    pub exit_after: Vec<u64>,
    /// Exit 3 right after starting (once `start` is recorded) when the environment variable
    /// NAME holds VALUE: a program that a bad value breaks.
    #[arg(long, value_name = "NAME=VALUE")]
    pub exit_if: Option<String>,
}
