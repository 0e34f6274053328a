//! What watch mode acts on: the process named by a pidfile or found by name in /proc, and
//! exec hooks (run without a shell, with a timeout, exit status logged).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::config::WatchTarget;
use crate::run::Hook;
use crate::supervisor::{Exit, Reaper};
use crate::tasks::Tasks;
use tether_core::signal::Signal;

/// Hooks run one at a time, in order.
/// At the shutdown a hook still running is left to itself, as it was before tasks were
/// stopped: its process group goes on without tether.
pub(crate) fn spawn_hook_runner(reaper: Reaper, tasks: &Tasks) -> mpsc::UnboundedSender<Hook> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Hook>();
    tasks.spawn(tracing::info_span!("hooks"), async move {
        while let Some(first) = rx.recv().await {
            // Runs that queued up while a hook ran are merged: one run per hook, with every
            // changed name, so a slow hook never falls further and further behind.
            // The latest timeout holds (a reload may have changed it).
            let mut runs: Vec<(Vec<String>, BTreeSet<String>)> = Vec::new();
            let mut queue = vec![first];
            while let Ok(more) = rx.try_recv() {
                queue.push(more);
            }
            let mut limit = Duration::ZERO;
            for (argv, changed, timeout) in queue {
                limit = timeout;
                match runs.iter_mut().find(|(a, _)| *a == argv) {
                    Some((_, names)) => names.extend(changed),
                    None => runs.push((argv, changed.into_iter().collect())),
                }
            }
            for (argv, names) in runs {
                let changed: Vec<String> = names.into_iter().collect();
                run_hook(&reaper, &argv, &changed, limit).await;
            }
        }
    });
    tx
}

/// Signal every target process. Returns how many were signalled.
pub fn signal_targets(target: &WatchTarget, sig: Signal) -> usize {
    let mut pids = Vec::new();
    if let Some(pidfile) = &target.pidfile {
        match read_pidfile(pidfile) {
            Ok(pid) => pids.push(pid),
            Err(e) => {
                tracing::warn!(pidfile = %pidfile.display(), error = %e, "cannot signal through pidfile")
            }
        }
    }
    if let Some(name) = &target.process {
        let found = find_by_name(name);
        if found.is_empty() {
            tracing::warn!(process = %name, "no process with this name to signal");
        }
        pids.extend(found);
    }
    pids.sort();
    pids.dedup();
    let mut n = 0;
    for pid in pids {
        match kill(pid, sig.0) {
            Ok(()) => {
                tracing::info!(pid = pid.as_raw(), signal = %sig, "signalled");
                crate::health::signal_sent(sig);
                n += 1;
            }
            Err(e) => {
                tracing::warn!(pid = pid.as_raw(), signal = %sig, error = %e, "cannot signal")
            }
        }
    }
    n
}

pub(crate) fn read_pidfile(path: &Path) -> Result<Pid, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    match text.trim().parse::<i32>() {
        Ok(n) if n > 1 => Ok(Pid::from_raw(n)),
        _ => Err("does not hold a process id".into()),
    }
}

/// Processes whose `comm` or first argument's base name is `name`, tether itself excluded.
pub fn find_by_name(name: &str) -> Vec<Pid> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // The kernel truncates comm to 15 bytes.
    let comm_name: String = name.chars().take(15).collect();
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let base = Path::new("/proc").join(pid.to_string());
            let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            if comm.trim_end_matches('\n') == comm_name {
                return true;
            }
            let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            let base_name = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
            !base_name.is_empty() && base_name == name.as_bytes()
        })
        .map(Pid::from_raw)
        .collect()
}

/// Run a hook to completion or until `limit`, then kill its process group. Logs the outcome.
pub async fn run_hook(
    reaper: &Reaper,
    argv: &[String],
    changed: &[String],
    limit: Duration,
) -> Option<Exit> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("TETHER_CHANGED", changed.join(","));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let (pid, exit) = match reaper.spawn(&mut cmd) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(hook = %argv[0], error = %e, "cannot start hook");
            return None;
        }
    };
    let exit = match tokio::time::timeout(limit, exit).await {
        Ok(Ok(exit)) => exit,
        Ok(Err(_)) => return None,
        Err(_) => {
            tracing::error!(hook = %argv[0], timeout = ?limit, "hook timed out; killing it");
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            return None;
        }
    };
    if exit.success() {
        tracing::info!(hook = %argv[0], %exit, "hook finished");
    } else {
        tracing::error!(hook = %argv[0], %exit, "hook failed");
    }
    Some(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_a_process_by_name() {
        let reaper = Reaper::start().unwrap();
        let (pid, exit) = reaper.spawn(Command::new("sleep").arg("30")).unwrap();
        // The child may still be between fork and exec: wait for its name, with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !find_by_name("sleep").contains(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {pid} not found by name"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(exit.await.is_ok());
    }

    #[test]
    fn pidfile_must_hold_a_pid() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pid");
        std::fs::write(&p, "1234\n").unwrap();
        assert_eq!(read_pidfile(&p), Ok(Pid::from_raw(1234)));
        std::fs::write(&p, "nope").unwrap();
        assert!(read_pidfile(&p).is_err());
        assert!(read_pidfile(&d.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn hook_timeout_kills_it() {
        let reaper = Reaper::start().unwrap();
        let argv = vec!["sleep".to_string(), "30".to_string()];
        assert_eq!(
            run_hook(&reaper, &argv, &[], Duration::from_millis(50)).await,
            None
        );
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            "test \"$TETHER_CHANGED\" = A,B".to_string(),
        ];
        let changed = vec!["A".to_string(), "B".to_string()];
        assert_eq!(
            run_hook(&reaper, &argv, &changed, Duration::from_secs(10)).await,
            Some(Exit::Code(0))
        );
    }
}
