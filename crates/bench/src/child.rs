//! `tether-bench child` (hidden): the supervised program of the benchmarks and of the
//! integration tests. It records its start, environment and every signal it receives.

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

/// `--exit-if NAME=VALUE`: the variable NAME holds VALUE.
fn bad_value(exit_if: Option<&str>) -> bool {
    let Some((name, value)) = exit_if.and_then(|s| s.split_once('=')) else {
        return false;
    };
    std::env::var_os(name).is_some_and(|v| v == value)
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
    if bad_value(args.exit_if.as_deref()) {
        append(args.record.as_deref(), &format!("exit {pid} 3"));
        return Ok(3);
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
