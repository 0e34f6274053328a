//! Test harness: a temp workspace, the real binary started in a clean environment, and
//! waits on conditions with deadlines. On failure the command, stdout and stderr are printed.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod tls;
pub mod ws;

pub const BIN: &str = env!("CARGO_BIN_EXE_tether");
/// The benchmarks' binary, whose hidden `child` verb is the program the tests supervise.
pub const BENCH_BIN: &str = env!("CARGO_BIN_EXE_tether-bench");
/// Generous: CI machines are small and may be busy.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Wait until `cond` holds, or panic with `what` after the deadline.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for_within(what, DEADLINE, &mut cond)
}

pub fn wait_for_within(what: &str, deadline: Duration, cond: &mut dyn FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A scratch directory (under /dev/shm so fsync is cheap) with helpers to write sources.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Work {
        let dir = tempfile::Builder::new()
            .prefix("tether-it-")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("temp dir");
        Work { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replace a file atomically (write temp + rename), as editors and tools do.
    pub fn write(&self, name: &str, content: &str) {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        fs::write(&tmp, content).expect("write temp");
        fs::rename(&tmp, &path).expect("rename");
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// Lines of the fixture's record file (`start PID`, `SIGHUP PID`, `exit PID CODE`).
    pub fn record(&self) -> Vec<String> {
        self.read("record").lines().map(str::to_owned).collect()
    }

    /// Pids the fixture reported at each start, in order.
    pub fn starts(&self) -> Vec<i32> {
        self.record()
            .iter()
            .filter_map(|l| l.strip_prefix("start ")?.trim().parse().ok())
            .collect()
    }

    /// Signals received by the fixture, as names (`SIGHUP`), in order.
    pub fn signals(&self) -> Vec<String> {
        self.record()
            .iter()
            .filter(|l| l.starts_with("SIG"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// The fixture's environment at its latest start, as KEY=VALUE lines.
    pub fn child_env(&self) -> Vec<String> {
        self.read("env").lines().map(str::to_owned).collect()
    }

    /// The fixture command line: `tether-bench child --record R --env-file E [extra...]`.
    pub fn child_args(&self, extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            BENCH_BIN.to_string(),
            "child".into(),
            "--record".into(),
            self.path("record").display().to_string(),
            "--env-file".into(),
            self.path("env").display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }
}

/// A running tether process whose output is captured to files (read on failure).
pub struct Tether {
    pub child: Option<Child>,
    pub cmdline: String,
    out: PathBuf,
    err: PathBuf,
    _logs: tempfile::TempDir,
}

impl Tether {
    /// Start `tether ARGS` in a clean environment (only PATH, plus `envs`), in `cwd`.
    pub fn start<I, S>(cwd: &Path, args: I, envs: &[(&str, &str)]) -> Tether
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let logs = tempfile::tempdir().expect("log dir");
        let out = logs.path().join("stdout");
        let err = logs.path().join("stderr");
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("XDG_RUNTIME_DIR", cwd)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&err).expect("stderr file"));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let cmdline = format!("{cmd:?}");
        let child = cmd.spawn().expect("spawn tether");
        Tether {
            child: Some(child),
            cmdline,
            out,
            err,
            _logs: logs,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Its log so far, colours stripped.
    pub fn logs(&self) -> String {
        strip_ansi(&self.stderr())
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal tether");
    }

    /// Wait for tether to exit (with the deadline) and return its status.
    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if start.elapsed() > DEADLINE {
                self.dump();
                panic!("tether did not exit within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Like [`wait_for`], but prints tether's output if the condition never holds.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > DEADLINE {
                self.dump();
                panic!("timed out after {DEADLINE:?} waiting for: {what}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn dump(&self) {
        eprintln!("--- command: {}", self.cmdline);
        eprintln!("--- stdout:\n{}", self.stdout());
        eprintln!("--- stderr:\n{}", self.stderr());
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if std::thread::panicking() {
                self.dump();
            }
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Run tether to completion (for `check` and bad-usage cases).
pub fn run_to_end(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    run_to_end_env(cwd, args, &[])
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Like [`run_to_end`], with extra environment variables (e.g. `TETHER_TOKEN`).
pub fn run_to_end_env(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    run_bin_to_end(BIN, cwd, args, envs)
}

/// Run `bin` with `args` in a clean environment to its end: (exit code, stdout, stderr).
pub fn run_bin_to_end(
    bin: &str,
    cwd: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn tether");
    let start = Instant::now();
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("tether {args:?} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// Remove ANSI escape sequences (coloured log output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The port of a "node listening" log line (`addr=127.0.0.1:PORT` in text logs,
/// `"addr":"127.0.0.1:PORT"` in JSON logs).
pub fn listening_port(logs: &str) -> Option<u16> {
    let logs = strip_ansi(logs);
    let line = logs.lines().find(|l| l.contains("node listening"))?;
    let at = line.find("addr")? + "addr".len();
    let rest = line[at..].trim_start_matches(['=', '"', ':']);
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.rsplit(':').next()?.parse().ok()
}

/// Start `tether serve --listen LISTEN ARGS...` and wait for it to log its address.
/// Returns the node and its port. Panics (with the node's output) if it exits first.
pub fn start_node_at(cwd: &Path, listen: &str, args: &[&str]) -> (Tether, u16) {
    let mut all = vec!["serve", "--listen", listen];
    all.extend_from_slice(args);
    let mut node = Tether::start(cwd, &all, &[]);
    let start = Instant::now();
    loop {
        if let Some(port) = listening_port(&node.stderr()) {
            return (node, port);
        }
        if let Some(st) = node
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            node.dump();
            panic!("node exited with {st} before listening");
        }
        if start.elapsed() > DEADLINE {
            node.dump();
            panic!("node did not log its address within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Start a node on a free loopback port (port 0).
pub fn start_node(cwd: &Path, args: &[&str]) -> (Tether, u16) {
    start_node_at(cwd, "127.0.0.1:0", args)
}

/// A loopback port that was free a moment ago (bind port 0, read it, let it go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// One HTTP answer: the status, the body as text and as JSON (`Null` when it is not JSON),
/// and the `WWW-Authenticate` header.
pub struct Resp {
    pub status: u16,
    pub text: String,
    pub json: serde_json::Value,
    pub www_authenticate: Option<String>,
}

/// One HTTP request (JSON body if any, bearer token if any); any status is returned, never
/// an error for 4xx/5xx. Bodies up to 64 MiB are read.
pub fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Resp {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let result = match body {
        Some(b) => agent.run(
            req.header("content-type", "application/json")
                .body(b.to_string())
                .expect("a request"),
        ),
        None => agent.run(req.body(()).expect("a request")),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_default();
    Resp {
        status: resp.status().as_u16(),
        json: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
        www_authenticate,
    }
}
