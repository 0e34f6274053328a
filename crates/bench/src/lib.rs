//! tether's benchmarks, never shipped: they start the real binaries, print their figures
//! next to the targets and assert nothing. Also the child process the benchmarks and the
//! integration tests supervise.
//!
//! Layout:
//! - [`file`]: `tether run` following a file source (edit → signal, memory, idle CPU).
//! - [`agents`]: a node (or three over Redis) loaded with light protocol clients, with the
//!   machine's floor for the fan-out figure (`agents/floor.rs`).
//! - [`keyshade`]: tether and `keyshade run` (Node.js) following one keyshade test server.
//! - [`rollout`]: N agents restarting under a rollout policy, against the ideal pace.
//! - [`child`]: the supervised child that records the signals and environment it gets.
//! - `template`: `file --template`'s 200-line template and its figure.
//! - `procfs`, `bins`: /proc readers; where the binaries under test are.

// `unsafe` only for syscalls nix does not wrap, allowed block by block with its SAFETY.
#![deny(unsafe_code)]

pub mod agents;
pub mod args;
mod bins;
pub mod child;
pub mod file;
pub mod keyshade;
mod procfs;
pub mod rollout;
mod template;

pub use args::{BenchChildArgs, BenchCli, BenchCommand};

/// Run `tether-bench`'s command line; returns the process exit code.
pub fn main(cli: BenchCli) -> i32 {
    let result = match cli.command {
        BenchCommand::File(args) => block_on(file::run(args)),
        BenchCommand::Agents(args) => agents::run(args),
        BenchCommand::Keyshade(args) => keyshade::run(args),
        BenchCommand::Rollout(args) => rollout::run(args),
        BenchCommand::Child(args) => block_on(async { Ok(child::run(args).await?) }),
        BenchCommand::BareNode(args) => agents::bare_node(&args).map(|()| 0),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tether-bench: {e:#}");
            1
        }
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<i32>>>(f: F) -> anyhow::Result<i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
