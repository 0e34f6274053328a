//! tether's entry point: parse the command line, run the verb, exit with its code.
//!
//! - `cli`: the verbs and the flags of each (defined by the crates that run them).
//! - `app`: each verb as `main` calls it, mapped to an exit code.
//! - `logging`: tracing to stderr, text or JSON.
//! - `docs`: shell completions and the man page, generated from `cli`.

// `unsafe` only for the one allocator setting in `app`, allowed there with its SAFETY.
#![deny(unsafe_code)]

mod app;
mod cli;
mod docs;
mod logging;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let code = app::run(cli::Cli::parse());
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
