//! The bench's writes: put → child-signal latency through a real agent, and sustained
//! change sets per second, both over kept-alive HTTP connections to a node.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A kept-alive HTTP/1.1 connection for timing writes without process or TLS overhead.
pub struct Http {
    stream: StdTcpStream,
    host: String,
}

impl Http {
    pub fn connect(addr: &str) -> anyhow::Result<Http> {
        let stream = StdTcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            host: addr.to_string(),
        })
    }

    /// One write; a connection the node closed while idle is opened again once.
    pub fn put(&mut self, env: &str, name: &str, value: &str) -> anyhow::Result<()> {
        match self.try_put(env, name, value) {
            Ok(()) => Ok(()),
            Err(_) => {
                *self = Http::connect(&self.host.clone())?;
                self.try_put(env, name, value)
            }
        }
    }

    fn try_put(&mut self, env: &str, name: &str, value: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({"changes": [{"name": name, "value": value}]}).to_string();
        let req = format!(
            "POST /v1/envs/{env}/changes HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.write_all(req.as_bytes())?;
        // Read the head, then exactly Content-Length bytes.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.stream.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 200") {
            bail!("put failed: {}", head.lines().next().unwrap_or(""));
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok(())
    }
}

/// Connections writing at once in the throughput figure.
pub const WRITERS: usize = 8;

/// Commits per second through one node with several kept-alive HTTP connections.
pub fn write_throughput(addr: &str, for_: Duration) -> anyhow::Result<(f64, usize)> {
    let start = Instant::now();
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let addr = addr.to_string();
            std::thread::spawn(move || -> anyhow::Result<usize> {
                let mut http = Http::connect(&addr)?;
                let mut n = 0;
                while start.elapsed() < for_ {
                    http.put("throughput", &format!("W{w}"), &n.to_string())?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    }
    Ok((total as f64 / start.elapsed().as_secs_f64(), total))
}

/// Start a real agent following env `lat` with a child that prints each signal; time puts.
pub fn signal_latency(
    exe: &Path,
    bench: &Path,
    dir: &Path,
    addr: &str,
    http: &mut Http,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    http.put("lat", "V", "0")?;
    let mut agent = Command::new(exe)
        .args([
            "run",
            "--env",
            "lat",
            "--no-env",
            "--on-change",
            "signal:USR1",
            "--debounce",
            "0",
            "--max-wait",
            "0",
            "--log-level",
            "warn",
        ])
        .arg("--server")
        .arg(format!("http://{addr}"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--output")
        .arg(dir.join("lat.env"))
        .arg("--")
        .arg(bench)
        .arg("child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the agent")?;
    let stdout = agent.stdout.take().context("agent stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim() == "SIGUSR1" && tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    let out = dir.join("lat.env");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&out).is_ok_and(|s| s.contains("V=0")) {
        if Instant::now() > deadline {
            bail!("the agent did not render its first state");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut samples = Vec::with_capacity(n);
    for i in 1..=n + 20 {
        let t0 = Instant::now();
        http.put("lat", "V", &i.to_string())?;
        let t1 = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow::anyhow!("no signal for change {i}"))?;
        if i > 20 {
            samples.push(t1.saturating_duration_since(t0));
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.wait();
    samples.sort();
    Ok(samples)
}
