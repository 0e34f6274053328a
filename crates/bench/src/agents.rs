//! `tether-bench agents`: a load generator against a real node. Opens N light protocol
//! clients (no child processes) and reports node memory per idle connection, the time for
//! one change to reach all of them, and put → child-signal latency through one node for a
//! real agent, and, for scale, the machine's floor for the fan-out: the same clients fed the
//! same change by a bare `send(2)` loop. Prints figures; asserts nothing. `clients` holds the
//! light clients, `floor` the bare node, `writes` the latency and throughput figures.

use std::io::{BufRead, BufReader};
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

mod clients;
mod floor;
mod writes;

pub use floor::{BareNodeArgs, bare_node};
use writes::{Http, WRITERS, signal_latency, write_throughput};

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
    /// Start this many nodes; more than one makes a cluster over a redis-server the bench
    /// starts on a loopback port. The agent follows node 1, writes go through node 2.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The redis-server binary for --nodes > 1.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// Seconds of sustained writes for the throughput figure.
    #[arg(long, default_value_t = 3)]
    pub write_secs: u64,
    /// Skip the floor figure (a bare send loop in place of the node; skipped too with
    /// --server, whose nodes may be elsewhere).
    #[arg(long)]
    pub no_floor: bool,
    /// The tether binary to measure (default: `tether` beside this one).
    #[arg(long, value_name = "PATH")]
    pub tether: Option<PathBuf>,
    /// Threads reading the clients' sockets.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub client_threads: u16,
}

/// A node process started by the bench.
pub(crate) struct NodeProc {
    child: Child,
    pub(crate) addr: String,
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

/// A redis-server started by the bench.
struct RedisProc(Child);

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(bin: &Path) -> anyhow::Result<(RedisProc, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(bin)
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
        ])
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((RedisProc(child), port))
}

pub(crate) fn start_node(exe: &Path, data: &Path, redis: Option<u16>) -> anyhow::Result<NodeProc> {
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--heartbeat",
        "15s",
    ])
    .arg("--data")
    .arg(data);
    if let Some(port) = redis {
        cmd.arg("--redis").arg(format!("redis://127.0.0.1:{port}"));
    }
    let mut child = cmd
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

pub(crate) fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let hard = hard.max(want);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
        }
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

pub fn run(args: AgentsBenchArgs) -> anyhow::Result<i32> {
    let exe = crate::bins::tether(args.tether.as_deref())?;
    let bench = crate::bins::bench()?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => PathBuf::from(format!(
            "/dev/shm/tether-bench-agents-{}",
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&dir)?;
    raise_nofile(args.count as u64 * 2 + 1024);

    let mut redis = None;
    let mut started = Vec::new();
    let addrs: Vec<String> = if args.server.is_empty() {
        let redis_port = if args.nodes > 1 {
            let (r, port) = start_redis(&args.redis_server)?;
            redis = Some(r);
            Some(port)
        } else {
            None
        };
        for i in 0..args.nodes.max(1) {
            started.push(start_node(&exe, &dir.join(format!("data{i}")), redis_port)?);
        }
        started.iter().map(|n| n.addr.clone()).collect()
    } else {
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
    let node_pid = started.first().map(|n| n.child.id());
    let node_pids: Vec<u32> = started.iter().map(|n| n.child.id()).collect();
    println!(
        "tether-bench agents: {} client(s) over {} node(s) {:?}",
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

    // Writes go through the second node when there is one; the agent follows the first.
    let write_addr = addrs[1 % addrs.len()].clone();
    let mut http = Http::connect(&write_addr)?;
    http.put("bench", "V", "0")?;

    // 1. put → child signal through one node.
    let latency = signal_latency(&exe, &bench, &dir, &addrs[0], &mut http, args.changes)?;

    // Sustained writes through one node.
    let throughput = write_throughput(&write_addr, Duration::from_secs(args.write_secs))?;

    // 2. Open the clients.
    let baseline: u64 = node_pids.iter().map(|&p| rss_kib(p)).sum();
    let t_open = Instant::now();
    let threads = usize::from(args.client_threads);
    let fleet = clients::Fleet::open(&addrs, "bench", args.count, threads)?;
    let open_time = t_open.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let loaded: u64 = node_pids.iter().map(|&p| rss_kib(p)).sum();

    // 3. Fan-out: one change to every client, timed from just before the write until the
    // last client has read it; in blocks of rounds alternating with the floor's.
    let skip = if args.no_floor {
        floor::Skip::Asked
    } else if !args.server.is_empty() {
        floor::Skip::Remote
    } else {
        floor::Skip::No
    };
    let mut floor = floor::Floor::start(&bench, skip, args.count);
    let mut fanout = Vec::new();
    let (mut node_cpu, mut clients_cpu) = (0.0, 0.0);
    let mut fleet = Some(fleet);
    let mut version = 1_000_000;
    while fanout.len() < args.fanouts {
        let f = match fleet.take() {
            Some(f) => f,
            None => {
                let f = clients::Fleet::open(&addrs, "bench", args.count, threads)?;
                settle(&node_pids);
                f
            }
        };
        let rounds = match floor.bare {
            Some(_) => floor::BLOCK.min(args.fanouts - fanout.len()),
            None => args.fanouts - fanout.len(),
        };
        let cpu_before: f64 = node_pids.iter().map(|&p| cpu_ms(p)).sum();
        let own_before = cpu_ms(std::process::id());
        for _ in 0..rounds {
            version += 1;
            f.expect(version);
            let t0 = Instant::now();
            http.put("bench", "V", &version.to_string())?;
            let last = f
                .wait(Duration::from_secs(30))
                .with_context(|| format!("fan-out {}", fanout.len() + 1))?;
            fanout.push(last.saturating_duration_since(t0));
            std::thread::sleep(Duration::from_millis(50));
        }
        node_cpu += node_pids.iter().map(|&p| cpu_ms(p)).sum::<f64>() - cpu_before;
        clients_cpu += cpu_ms(std::process::id()) - own_before;
        if floor.bare.is_some() {
            // The node's clients go, so that the floor's have the machine to themselves.
            drop(f);
            settle(&node_pids);
            floor.block(rounds, &mut version, threads);
        } else {
            fleet = Some(f);
        }
    }
    fanout.sort();
    floor.times.sort();

    println!();
    let path = if addrs.len() > 1 {
        "write through node 2 → child of an agent on node 1"
    } else {
        "put → child signal through one node"
    };
    println!(
        "{path} ({} changes, debounce 0, timed from a direct HTTP request):",
        latency.len()
    );
    println!(
        "  p50 {}   p90 {}   p99 {}   max {}   (target p99 < {})",
        ms(percentile(&latency, 0.5)),
        ms(percentile(&latency, 0.9)),
        ms(percentile(&latency, 0.99)),
        ms(percentile(&latency, 1.0)),
        if addrs.len() > 1 {
            "1.5 ms across nodes"
        } else {
            "1 ms"
        }
    );
    println!(
        "sustained writes through one node ({}): {:.0} change sets/s ({} writers, {} commits in {:?})",
        if args.nodes > 1 {
            "redis store"
        } else {
            "sqlite store"
        },
        throughput.0,
        WRITERS,
        throughput.1,
        Duration::from_secs(args.write_secs)
    );
    println!(
        "{} clients connected and synced in {}",
        args.count,
        ms(open_time)
    );
    if let Some(pid) = node_pid {
        let per = (loaded.saturating_sub(baseline)) as f64 * 1024.0 / args.count as f64;
        println!(
            "node RSS ({} node(s)): {} KiB before clients, {} KiB with {} idle clients → {:.2} KiB per connection (target ≤ 6 KiB)",
            node_pids.len(),
            baseline,
            loaded,
            args.count,
            per / 1024.0
        );
        println!("node peak RSS (VmHWM): {} KiB", status_field(pid, "VmHWM:"));
    }
    println!(
        "one change → all {} clients: p50 {}   max {}   over {} changes (target < {})",
        args.count,
        ms(percentile(&fanout, 0.5)),
        ms(percentile(&fanout, 1.0)),
        fanout.len(),
        if addrs.len() > 1 {
            "60 ms over the nodes"
        } else {
            "50 ms on one node"
        }
    );
    if node_pid.is_some() {
        println!(
            "  CPU time per fan-out: node {:.1} ms, the {} clients {:.1} ms ({} reader threads; all on the same {} cores)",
            node_cpu / fanout.len().max(1) as f64,
            args.count,
            clients_cpu / fanout.len().max(1) as f64,
            threads,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
    drop(fleet);
    drop(started);
    drop(redis);
    floor.report(&fanout);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(0)
}

/// Wait (up to 10 s) until these processes are idle, under 2 ms of CPU in 100 ms: a node
/// done with the connections that just closed or opened.
pub(crate) fn settle(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let cpu = || pids.iter().map(|&p| cpu_ms(p)).sum::<f64>();
    let mut last = cpu();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu();
        if now - last < 2.0 {
            return;
        }
        last = now;
    }
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
