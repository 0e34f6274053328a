//! The processes that follow the keyshade test server in the bench: tether (signal or
//! restart action) and `keyshade-run.js` (socket.io-client 4.7, restarting its child as
//! `keyshade run` does), each supervising `tether-bench child --announce`. Their stdout
//! lines are stamped as they arrive; dropping one stops it and its child.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::server::Server;
use super::{ENVIRONMENT, KEY, PROJECT, WORKSPACE};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// `tether run`, values in a file, SIGUSR1 to the child on a change.
    TetherSignal,
    /// `tether run`, values in the child's environment, restarted on a change.
    TetherRestart,
    /// `node keyshade-run.js`: `keyshade run`'s restart on every event.
    KeyshadeRun,
}

impl Kind {
    /// How the report names a follower of this kind running `exe`.
    pub fn label(self, exe: &Path) -> String {
        let name = exe
            .file_name()
            .map_or("tether".into(), |n| n.to_string_lossy());
        match self {
            Kind::TetherSignal => format!("{name} (signal)"),
            Kind::TetherRestart => format!("{name} (restart)"),
            Kind::KeyshadeRun => "keyshade run (node)".into(),
        }
    }

    /// The stdout line that marks the child as told of a change.
    pub fn done_line(self) -> &'static str {
        match self {
            Kind::TetherSignal => "SIGUSR1",
            Kind::TetherRestart => "start",
            Kind::KeyshadeRun => "[COMMAND] start",
        }
    }
}

pub struct Follower {
    pub kind: Kind,
    pub label: String,
    proc: Child,
    pub lines: mpsc::Receiver<(Instant, String)>,
    /// The follower's own executable (for memory by mapping).
    pub exe: PathBuf,
    stopped: bool,
}

pub struct Paths<'a> {
    pub bench: &'a Path,
    pub server_dir: &'a Path,
    pub work: &'a Path,
}

impl Follower {
    /// Start one follower of `server` with `token`; ready once its child has announced
    /// itself and the server counts it registered.
    /// `tether` is the binary of the tether kinds.
    pub fn start(
        kind: Kind,
        tether: &Path,
        p: &Paths<'_>,
        server: &Server,
        token: &str,
    ) -> anyhow::Result<Self> {
        let label = kind.label(tether);
        let before = server.state()?["registrations"].as_u64().unwrap_or(0);
        let child = [
            p.bench.display().to_string(),
            "child".into(),
            "--announce".into(),
        ];
        let mut cmd;
        match kind {
            Kind::KeyshadeRun => {
                cmd = Command::new("node");
                cmd.arg(p.server_dir.join("keyshade-run.js"))
                    .args(["--url", &server.url(), "--token", token])
                    .args(["--workspace", WORKSPACE, "--project", PROJECT])
                    .args(["--environment", ENVIRONMENT, "--private-key", KEY, "--"])
                    .args(&child);
            }
            Kind::TetherSignal | Kind::TetherRestart => {
                let token_file = p.work.join("token");
                let key_file = p.work.join("key");
                std::fs::write(&token_file, token).context("cannot write the token file")?;
                std::fs::write(&key_file, KEY).context("cannot write the key file")?;
                cmd = Command::new(tether);
                cmd.args(["run", "--keyshade-url", &server.url()])
                    .args(["--keyshade-workspace", WORKSPACE])
                    .args(["--keyshade-project", PROJECT])
                    .args(["--keyshade-environment", ENVIRONMENT])
                    .arg("--keyshade-token-file")
                    .arg(&token_file)
                    .arg("--keyshade-private-key-file")
                    .arg(&key_file)
                    .args(["--debounce", "0", "--max-wait", "0", "--log-level", "warn"]);
                if kind == Kind::TetherSignal {
                    cmd.arg("--output")
                        .arg(p.work.join("out.env"))
                        .args(["--no-env", "--on-change", "signal:USR1"])
                        .args(["--reload-grace", "0"]);
                } else {
                    cmd.args(["--on-change", "restart"]);
                }
                cmd.arg("--").args(&child);
            }
        }
        let mut proc = cmd
            .env("HOME", p.work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {label}"))?;
        let stdout = proc.stdout.take().context("the follower's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let exe = std::fs::read_link(format!("/proc/{}/exe", proc.id())).unwrap_or_default();
        let mut f = Follower {
            kind,
            label,
            proc,
            lines,
            exe,
            stopped: false,
        };
        f.wait_ready(server, before)?;
        Ok(f)
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Until its child announced itself and the server counts a registration after the
    /// `before` it had.
    fn wait_ready(&mut self, server: &Server, before: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut started = false;
        loop {
            if let Some(s) = self.proc.try_wait()? {
                bail!("{} exited during start-up: {s}", self.label);
            }
            started |= self
                .lines
                .try_iter()
                .any(|(_, l)| l == "start" || l == "[COMMAND] start");
            let registered = server.state()?["registrations"].as_u64() > Some(before);
            if started && registered {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} was not following within 30 s", self.label);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the line that tells the child was told of a change; returns its stamp and,
    /// for keyshade run, the stamp of its "Configuration change received" log line.
    pub fn wait_done(&mut self, limit: Duration) -> anyhow::Result<(Instant, Option<Instant>)> {
        let deadline = Instant::now() + limit;
        let mut received = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((at, line)) = self.lines.recv_timeout(left) else {
                let state = match self.proc.try_wait()? {
                    Some(s) => format!("it exited: {s}"),
                    None => "it is still running".into(),
                };
                bail!(
                    "{}: the child was not told within {limit:?} ({state})",
                    self.label
                );
            };
            if line.contains("Configuration change received") {
                received = Some(at);
            } else if line == self.kind.done_line() {
                return Ok((at, received));
            }
            // Anything else (SIGTERM before a restart, other log lines) is not the mark.
        }
    }

    /// Stop it the way its users do (tether: SIGTERM; keyshade run: SIGINT, the only signal
    /// it handles), then make sure no child is left behind. Returns a warning, if any.
    pub fn stop(mut self) -> Option<String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Option<String> {
        self.stopped = true;
        let pid = self.pid();
        let children = crate::procfs::children_of(pid);
        let sig = match self.kind {
            Kind::KeyshadeRun => Signal::SIGINT,
            _ => Signal::SIGTERM,
        };
        let _ = kill(Pid::from_raw(pid as i32), sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut warning = None;
        while self.proc.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.proc.kill();
                let _ = self.proc.wait();
                warning = Some(format!("{} did not stop within 10 s", self.label));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for c in children {
            // Each child leads its own process group; a live member was left behind (a
            // zombie is only waiting for its reaper).
            if group_alive(c) {
                let _ = kill(Pid::from_raw(-(c as i32)), Signal::SIGKILL);
                warning.get_or_insert(format!("{} left its child running", self.label));
            }
        }
        warning
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if !self.stopped {
            self.shutdown();
        }
    }
}

/// Whether a process of group `pgid` is alive and not a zombie.
fn group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .any(|stat| {
            // After `comm)`: state, ppid, pgrp.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first() != Some(&"Z")
        })
}
