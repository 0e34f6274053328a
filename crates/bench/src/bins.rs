//! The programs a benchmark starts: the `tether` binary under test (next to this one, or
//! the one `--tether` names) and this binary again, as the supervised child or the bare node.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The `tether` binary to measure: `explicit`, else `tether` beside this executable.
pub fn tether(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => bench()?
            .parent()
            .context("this executable has no directory")?
            .join("tether"),
    };
    if !path.is_file() {
        bail!(
            "no tether binary at {} (build it, or name one with --tether PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// This executable (`tether-bench`), whose hidden `child` and `bare-node` verbs the
/// benchmarks start.
pub fn bench() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot locate the tether-bench binary")
}
