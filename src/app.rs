//! The verbs as `main` calls them: build the config (exit 64 on any problem), start
//! logging, run on a single-threaded runtime, and return the exit code.

use crate::cli::{Cli, Command};
use crate::config::{self, ConfigError, Mode};

/// Exit code for bad usage or configuration (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Run(args) => config::for_run(&args),
        Command::Watch(args) => config::for_watch(&args),
        Command::Check(args) => return check(&args),
        Command::Bench(args) => return finish(block_on(crate::bench::run(args))),
        Command::BenchChild(args) => {
            return finish(block_on(async { Ok(crate::fixture::run(args).await?) }));
        }
    };
    let cfg = match result {
        Ok(cfg) => cfg,
        Err(e) => return usage(e),
    };
    crate::logging::init(cfg.log_level.as_deref(), cfg.log_format);
    finish(block_on(async { Ok(crate::agent::run(cfg).await?) }))
}

fn finish(r: anyhow::Result<anyhow::Result<i32>>) -> i32 {
    match r.and_then(|inner| inner) {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

fn check(args: &crate::cli::CheckArgs) -> i32 {
    let mode = match args.mode.as_str() {
        "run" => Mode::Run,
        "watch" => Mode::Watch,
        other => {
            return usage(ConfigError(vec![config::Problem {
                key: "--mode".into(),
                message: format!("{other:?} is not run or watch"),
            }]));
        }
    };
    let raw = match config::read_file(&args.config) {
        Ok(raw) => raw,
        Err(e) => return usage(e),
    };
    match config::validate(&raw, mode) {
        Ok(cfg) => {
            print!("{}", cfg.to_toml());
            0
        }
        Err(e) => usage(e),
    }
}

fn usage(e: ConfigError) -> i32 {
    eprint!("tether: {e}");
    EXIT_USAGE
}

fn report(e: anyhow::Error) -> i32 {
    eprintln!("tether: {e:#}");
    1
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}
