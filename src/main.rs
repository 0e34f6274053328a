//! tether's entry point: parse the command line, run the verb, exit with its code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tether::cli::Cli::parse();
    let code = tether::app::run(cli);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
