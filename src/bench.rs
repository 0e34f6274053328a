//! `tether bench`: change-to-signal latency, peak RSS and idle CPU of a real `tether run`.

use crate::cli::BenchArgs;

pub async fn run(_args: BenchArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}
