//! `tether bench agents`: a load generator against a real node. Opens N light protocol
//! clients (no child processes) and reports node memory per idle connection, the time for
//! one change to reach all of them, and put → child-signal latency through one node for a
//! real agent. Prints figures; asserts nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::protocol::{ClientMsg, Subscription};

#[derive(Args, Debug, Clone)]
pub struct AgentsBenchArgs {
    /// Protocol clients to open.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Changes to fan out to all clients.
    #[arg(long, default_value_t = 20)]
    pub fanouts: usize,
    /// Put → signal round trips through one agent.
    #[arg(long, default_value_t = 1000)]
    pub changes: usize,
    /// Use these nodes (comma list of base URLs) instead of starting one; clients are
    /// spread over them round-robin.
    #[arg(long, value_delimiter = ',')]
    pub server: Vec<String>,
    /// Directory for the node's data and the agent's files (default: under /dev/shm).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A node process started by the bench.
struct NodeProc {
    child: Child,
    addr: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn start_node(exe: &Path, data: &Path) -> anyhow::Result<NodeProc> {
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--heartbeat",
            "15s",
        ])
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the node")?;
    let stderr = child.stderr.take().context("node stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        if Instant::now() > deadline {
            bail!("the node did not report its address");
        }
        let Some(line) = lines.next() else {
            bail!("the node exited before listening")
        };
        let line = line?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(a) = v.get("addr").and_then(|a| a.as_str()) {
                break a.to_string();
            }
        }
    };
    // Keep draining the node's log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(NodeProc { child, addr })
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let hard = hard.max(want);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
        }
    }
}

/// A kept-alive HTTP/1.1 connection for timing writes without process or TLS overhead.
struct Http {
    stream: StdTcpStream,
    host: String,
}

impl Http {
    fn connect(addr: &str) -> anyhow::Result<Http> {
        let stream = StdTcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            host: addr.to_string(),
        })
    }

    fn put(&mut self, env: &str, name: &str, value: &str) -> anyhow::Result<()> {
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(args: AgentsBenchArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("locating tether")?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => PathBuf::from(format!(
            "/dev/shm/tether-bench-agents-{}",
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&dir)?;
    raise_nofile(args.count as u64 * 2 + 1024);

    let started;
    let addrs: Vec<String> = if args.server.is_empty() {
        started = Some(start_node(&exe, &dir.join("data"))?);
        vec![started.as_ref().map(|n| n.addr.clone()).unwrap_or_default()]
    } else {
        started = None;
        args.server
            .iter()
            .map(|s| {
                s.trim_start_matches("http://")
                    .trim_start_matches("ws://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect()
    };
    let node_pid = started.as_ref().map(|n| n.child.id());
    println!(
        "tether bench agents: {} client(s) over {} node(s) {:?}",
        args.count,
        addrs.len(),
        addrs
    );
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel()
    );

    let mut http = Http::connect(&addrs[0])?;
    http.put("bench", "V", "0")?;

    // 1. put → child signal through one node.
    let latency = signal_latency(&exe, &dir, &addrs[0], &mut http, args.changes)?;

    // 2. Open the clients.
    let baseline = node_pid.map(rss_kib).unwrap_or(0);
    let ready = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let target = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t_open = Instant::now();
    let mut tasks = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let url = format!("ws://{}/v1/ws", addrs[i % addrs.len()]);
        let (r, received, target, done) = (
            ready.clone(),
            received.clone(),
            target.clone(),
            done_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client(url, r, received, target, done).await
        }));
        // Pace connection setup a little so the accept queue never overflows.
        if i % 500 == 499 {
            while ready.load(Ordering::Relaxed) + 200 < i {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < args.count {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} clients connected",
                ready.load(Ordering::Relaxed),
                args.count
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open_time = t_open.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = node_pid.map(rss_kib).unwrap_or(0);

    // 3. Fan-out: one change to every client.
    let cpu_before = node_pid.map(cpu_ms).unwrap_or(0.0);
    let mut fanout = Vec::new();
    for v in 1..=args.fanouts as u64 {
        received.store(0, Ordering::SeqCst);
        let version = v + 1_000_000;
        target.store(version, Ordering::SeqCst);
        while done_rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        http.put("bench", "V", &version.to_string())?;
        match tokio::time::timeout(Duration::from_secs(30), done_rx.recv()).await {
            Ok(Some(())) => fanout.push(t0.elapsed()),
            _ => bail!(
                "change {v} reached only {} of {} clients",
                received.load(Ordering::SeqCst),
                args.count
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fanout.sort();
    let node_cpu = node_pid.map(cpu_ms).unwrap_or(0.0) - cpu_before;

    println!();
    println!(
        "put → child signal through one node ({} changes, debounce 0, timed from a direct HTTP request):",
        latency.len()
    );
    println!(
        "  p50 {}   p90 {}   p99 {}   max {}   (target p99 < 1 ms)",
        ms(percentile(&latency, 0.5)),
        ms(percentile(&latency, 0.9)),
        ms(percentile(&latency, 0.99)),
        ms(percentile(&latency, 1.0))
    );
    println!(
        "{} clients connected and synced in {}",
        args.count,
        ms(open_time)
    );
    if let Some(pid) = node_pid {
        let per = (loaded.saturating_sub(baseline)) as f64 * 1024.0 / args.count as f64;
        println!(
            "node RSS: {} KiB before clients, {} KiB with {} idle clients → {:.2} KiB per connection (target ≤ 6 KiB)",
            baseline,
            loaded,
            args.count,
            per / 1024.0
        );
        println!("node peak RSS (VmHWM): {} KiB", status_field(pid, "VmHWM:"));
    }
    println!(
        "one change → all {} clients: p50 {}   max {}   over {} changes (target < 50 ms on one node)",
        args.count,
        ms(percentile(&fanout, 0.5)),
        ms(percentile(&fanout, 1.0)),
        fanout.len()
    );
    if node_pid.is_some() {
        println!(
            "  node CPU time per fan-out: {:.1} ms (the rest is the {} clients, on the same 2 cores)",
            node_cpu / fanout.len().max(1) as f64,
            args.count
        );
    }
    for t in tasks {
        t.abort();
    }
    drop(started);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(0)
}

/// CPU time (user + system) a process has used, in milliseconds.
pub fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks * 1000.0 / hz
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_default()
}

/// One light client: hello, wait for synced, then count arrivals of the target version.
async fn client(
    url: String,
    ready: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    target: Arc<std::sync::atomic::AtomicU64>,
    done: tokio::sync::mpsc::UnboundedSender<()>,
) -> anyhow::Result<()> {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    let (mut ws, _) = loop {
        match tokio_tungstenite::connect_async_with_config(&url, Some(config), true).await {
            Ok(x) => break x,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let hello = ClientMsg::Hello {
        agent: "bench".into(),
        subscribe: vec![Subscription {
            env: "bench".into(),
            position: None,
        }],
    };
    ws.send(Message::text(serde_json::to_string(&hello)?))
        .await?;
    let mut synced = false;
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        if !synced {
            if t.starts_with(r#"{"type":"synced""#) {
                synced = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        // Light client: look for the awaited value without parsing the whole frame.
        let want = format!(r#""value":"{}""#, target.load(Ordering::SeqCst));
        if t.starts_with(r#"{"type":"change""#) && t.contains(want.as_str()) {
            let n = received.fetch_add(1, Ordering::SeqCst) + 1;
            if n == ready.load(Ordering::Relaxed) {
                let _ = done.send(());
            }
        }
    }
    Ok(())
}

/// Start a real agent following env `lat` with a child that prints each signal; time puts.
fn signal_latency(
    exe: &Path,
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
        .arg(exe)
        .arg("bench-child")
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
