//! `tether-bench`: the benchmarks (`file`, `agents`) and the processes they start. Built
//! with the `bench` feature; never shipped.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let code = tether_bench::main(tether_bench::BenchCli::parse());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
