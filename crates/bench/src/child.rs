//! `tether-bench child` (hidden): the supervised program of the benchmarks and of the
//! integration tests. It records its start, environment and every signal it receives, and
//! exits at once on a "bad" value (`--exit-if`).

use std::io::Write;
use std::path::Path;

use tokio::signal::unix::{SignalKind, signal};

use crate::args::BenchChildArgs;

const SIGNALS: &[nix::sys::signal::Signal] = {
    use nix::sys::signal::Signal::*;
    &[
        SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGTERM,
    ]
};

/// The status `--exit-if` exits with.
pub const EXIT_BAD: i32 = 3;

/// The first `NAME=VALUE` of `exit_if` whose variable has that value (as `lookup` finds it).
fn bad_value(
    exit_if: &[String],
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<&str> {
    exit_if.iter().map(String::as_str).find(|cond| {
        let (name, value) = cond.split_once('=').unwrap_or((cond, ""));
        lookup(name).is_some_and(|v| v == value)
    })
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn append(path: Option<&Path>, line: &str) {
    if let Some(p) = path {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

pub async fn run(args: BenchChildArgs) -> std::io::Result<i32> {
    let pid = std::process::id();
    if args.ignore_term {
        // SAFETY: setting a signal to SIG_IGN installs no handler code.
        #[allow(unsafe_code)]
        unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::SigHandler::SigIgn,
            )
        }
        .map_err(std::io::Error::from)?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for &sig in SIGNALS {
        if sig == nix::sys::signal::Signal::SIGTERM && args.ignore_term {
            continue;
        }
        let mut stream = signal(SignalKind::from_raw(sig as i32))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let _ = tx.send(sig);
            }
        });
    }
    // Handlers are in place before anything is reported: a signal sent after `start` is
    // recorded, never fatal.
    if let Some(path) = &args.env_file {
        let mut vars: Vec<String> = std::env::vars_os()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect();
        vars.sort();
        let tmp = path.with_extension(format!("tmp{pid}"));
        std::fs::write(&tmp, vars.join("\n") + "\n")?;
        std::fs::rename(&tmp, path)?;
    }
    append(args.record.as_deref(), &format!("start {pid}"));
    append(
        args.stamp.as_deref(),
        &format!("start {pid} {}", unix_nanos()),
    );
    // Silently: the value would show in the supervising tether's output.
    if bad_value(&args.exit_if, |name| std::env::var_os(name)).is_some() {
        append(args.record.as_deref(), &format!("exit {pid} {EXIT_BAD}"));
        return Ok(EXIT_BAD);
    }
    let mut stdout = std::io::stdout();
    if args.announce {
        let _ = writeln!(stdout, "start");
        let _ = stdout.flush();
    }
    let exit_after = match args.exit_after.as_slice() {
        [ms, code] => Some((std::time::Duration::from_millis(*ms), *code as i32)),
        _ => None,
    };
    let sleep = tokio::time::sleep(
        exit_after
            .map(|e| e.0)
            .unwrap_or(std::time::Duration::MAX / 4),
    );
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            Some(sig) = rx.recv() => {
                append(args.record.as_deref(), &format!("{} {pid}", sig.as_str()));
                let _ = writeln!(stdout, "{}", sig.as_str());
                let _ = stdout.flush();
                if matches!(sig, nix::sys::signal::Signal::SIGTERM | nix::sys::signal::Signal::SIGINT) {
                    return Ok(0);
                }
            }
            _ = &mut sleep => {
                let code = exit_after.map(|e| e.1).unwrap_or(0);
                append(args.record.as_deref(), &format!("exit {pid} {code}"));
                return Ok(code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_is_one_equal_to_the_variable() {
        let env = |name: &str| (name == "MODE").then(|| "bad".into());
        let conds = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(bad_value(&conds(&["MODE=bad"]), env), Some("MODE=bad"));
        assert_eq!(bad_value(&conds(&["MODE=good", "OTHER=bad"]), env), None);
        assert_eq!(bad_value(&conds(&["MODE=ba"]), env), None);
        assert_eq!(
            bad_value(&conds(&["OTHER="]), env),
            None,
            "unset is not empty"
        );
    }
}
