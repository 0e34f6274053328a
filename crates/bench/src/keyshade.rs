//! `tether-bench keyshade`: tether and `keyshade run` (its Node.js client, socket.io-client
//! 4.7, emulated by `tests/keyshade-server/keyshade-run.js`) following the same keyshade
//! test server in one run, one after the other: peak RSS and CPU of each follower process
//! (not its child) and event → child latency over the same events. Prints figures and the
//! ratios against issue 14's targets; asserts nothing.
//!
//! Each event is stored first (untimed), then sent as `configuration-updated` through the
//! server's control API; the time runs from just before that request is written until the
//! follower's stdout shows the child was told: `SIGUSR1` from tether's child (signal), or
//! `start` from a new child (restart; keyshade run always restarts, by SIGKILL and a new
//! shell). `server` runs the test server, `follower` the processes under test.

mod floor;
mod follower;
mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::procfs::{Cpu, Memory};
use follower::{Follower, Kind, Paths};
use server::Server;

pub const WORKSPACE: &str = "bench";
pub const PROJECT: &str = "app";
pub const ENVIRONMENT: &str = "prod";
pub const KEY: &str = "6f1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100aa";
const WARMUP: usize = 20;
const TARGET_RSS_RATIO: f64 = 10.0;
const TARGET_P99_RATIO: f64 = 2.0;

#[derive(Args, Debug, Clone)]
pub struct KeyshadeBenchArgs {
    /// Events to time (after a warm-up of 20).
    #[arg(long, default_value_t = 500)]
    pub events: usize,
    /// Seconds of idle following to measure CPU over.
    #[arg(long, default_value_t = 30)]
    pub idle_secs: u64,
    /// Send secrets (encrypted; each follower decrypts every event) instead of variables.
    #[arg(long)]
    pub secrets: bool,
    /// Also measure tether restarting its child, like for like with keyshade run.
    #[arg(long)]
    pub with_restart: bool,
    /// A tether binary to measure (default: `tether` beside this one); repeat it to measure
    /// several builds in one run. `--with-restart` uses the first.
    #[arg(long, value_name = "PATH")]
    pub tether: Vec<PathBuf>,
    /// The test server's directory (default: tests/keyshade-server of this source tree).
    #[arg(long)]
    pub server_dir: Option<PathBuf>,
}

struct Figures {
    kind: Kind,
    label: String,
    latencies: Vec<Duration>,
    received: Vec<Duration>,
    busy: Cpu,
    idle: Cpu,
    idle_period: Duration,
    start_rss: u64,
    memory: Memory,
    warning: Option<String>,
}

pub fn run(args: KeyshadeBenchArgs) -> anyhow::Result<i32> {
    let binaries = match args.tether.is_empty() {
        true => vec![crate::bins::tether(None)?],
        false => args
            .tether
            .iter()
            .map(|p| crate::bins::tether(Some(p)))
            .collect::<anyhow::Result<_>>()?,
    };
    let bench = crate::bins::bench()?;
    let server_dir = args.server_dir.clone().unwrap_or_else(server::default_dir);
    let work = tempfile_dir()?;
    let mut kinds: Vec<(Kind, &std::path::Path)> = binaries
        .iter()
        .map(|b| (Kind::TetherSignal, b.as_path()))
        .collect();
    if args.with_restart {
        kinds.push((Kind::TetherRestart, &binaries[0]));
    }
    kinds.push((Kind::KeyshadeRun, &binaries[0]));

    // One user per follower: keyshade allows one live session per user.
    let mut server_args: Vec<String> = ["--workspace", WORKSPACE, "--project"]
        .map(String::from)
        .into();
    server_args.push(format!("{PROJECT}:{KEY}:{ENVIRONMENT}"));
    for i in 0..=kinds.len() {
        server_args.extend(["--token".into(), format!("ks.pat.bench{i}=user{i}")]);
    }
    let server = Server::start(&server_dir, &server_args)?;
    for i in 0..20 {
        let what = if i % 4 == 0 { "secret" } else { "variable" };
        let body = json!({"project": PROJECT, "environment": ENVIRONMENT,
                          "name": format!("APP_SETTING_{i:02}"), "value": format!("value-{i}"),
                          "emit": false});
        server.control(what, &body)?;
    }
    print_header(&args, &binaries, &server_dir);

    let paths = Paths {
        bench: &bench,
        server_dir: &server_dir,
        work: &work.0,
    };
    eprintln!("floor (a bare client): {} events...", args.events);
    let bare = floor::Bare::start(&server, &format!("ks.pat.bench{}", kinds.len()))?;
    let mut floor = Vec::with_capacity(args.events);
    for n in 0..WARMUP + args.events {
        let t0 = emit(&server, args.secrets, n)?;
        let t1 = bare.wait(Duration::from_secs(10))?;
        if n >= WARMUP {
            floor.push(t1.saturating_duration_since(t0));
        }
    }
    drop(bare);
    floor.sort();

    let mut all = Vec::new();
    for (i, (kind, exe)) in kinds.into_iter().enumerate() {
        let label = kind.label(exe);
        eprintln!("{label}: {} events (+{WARMUP} warm-up)...", args.events);
        let f = Follower::start(kind, exe, &paths, &server, &format!("ks.pat.bench{i}"))?;
        all.push(measure(&args, f, &server)?);
    }
    report(&all, &floor);
    Ok(0)
}

/// Store event `n` (untimed), then send it; returns when the send began.
fn emit(server: &Server, secrets: bool, n: usize) -> anyhow::Result<Instant> {
    let kind = if secrets { "secret" } else { "variable" };
    let stored = server.control(
        kind,
        &json!({"project": PROJECT, "environment": ENVIRONMENT, "name": "BENCH_VALUE",
                "value": format!("v{n}-{}", std::process::id()), "emit": false}),
    )?;
    let payload = json!({"name": "BENCH_VALUE", "value": stored["value"],
                         "isPlaintext": !secrets});
    let call = server.connect()?;
    let t0 = Instant::now();
    let sent = call.post(
        "emit",
        &json!({"project": PROJECT, "environment": ENVIRONMENT, "payload": payload}),
    )?;
    anyhow::ensure!(
        sent["sent"] == 1,
        "event {n}: sent to {} sockets",
        sent["sent"]
    );
    Ok(t0)
}

fn measure(args: &KeyshadeBenchArgs, mut f: Follower, server: &Server) -> anyhow::Result<Figures> {
    let pid = f.pid();
    let start_rss = Memory::read(pid, &f.exe)?.rss;
    let mut latencies = Vec::with_capacity(args.events);
    let mut received = Vec::new();
    let mut before = Cpu::read(pid)?;
    for n in 0..WARMUP + args.events {
        if n == WARMUP {
            before = Cpu::read(pid)?;
        }
        // Each event's value differs from the one before (the snapshot's, at the first).
        let t0 = emit(server, args.secrets, n)?;
        let (t1, got) = f.wait_done(Duration::from_secs(10))?;
        if n >= WARMUP {
            latencies.push(t1.saturating_duration_since(t0));
            received.extend(got.map(|t| t.saturating_duration_since(t0)));
        }
    }
    let busy = Cpu::read(pid)?.since(&before);
    let idle_from = Cpu::read(pid)?;
    let idle_period = Duration::from_secs(args.idle_secs.max(1));
    std::thread::sleep(idle_period);
    let idle = Cpu::read(pid)?.since(&idle_from);
    let memory = Memory::read(pid, &f.exe)?;
    let (kind, label) = (f.kind, f.label.clone());
    let warning = f.stop();
    latencies.sort();
    received.sort();
    Ok(Figures {
        kind,
        label,
        latencies,
        received,
        busy,
        idle,
        idle_period,
        start_rss,
        memory,
        warning,
    })
}

/// A scratch directory (token and key files, tether's output), removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let root = match std::path::Path::new("/dev/shm").is_dir() {
        true => PathBuf::from("/dev/shm"),
        false => std::env::temp_dir(),
    };
    let dir = root.join(format!("tether-bench-keyshade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(TempDir(dir))
}

fn print_header(args: &KeyshadeBenchArgs, tethers: &[PathBuf], dir: &std::path::Path) {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    println!("tether-bench keyshade: tether vs keyshade run following one keyshade test server");
    println!("machine: {}", crate::file::machine());
    println!(
        "load:    {} (1, 5, 15 min) at start",
        crate::file::load_average()
    );
    for t in tethers {
        let size = std::fs::metadata(t).map_or(0, |m| m.len()) as f64 / (1024.0 * 1024.0);
        println!("tether:  {} ({size:.1} MiB)", t.display());
    }
    println!(
        "node:    {node}, {}/keyshade-run.js (socket.io-client 4.7, eccrypto 1.1.6)",
        dir.display()
    );
    println!(
        "events:  {} {} events after {WARMUP} warm-up, one at a time; 20 values at start",
        args.events,
        if args.secrets {
            "secret (encrypted)"
        } else {
            "variable (plaintext)"
        }
    );
    println!("child:   tether-bench child --announce; tether: debounce 0");
    println!();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    crate::file::percentile(sorted, p)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn cpu_ms(c: &Cpu) -> f64 {
    c.clock
        .unwrap_or(crate::procfs::tick() * c.ticks as u32)
        .as_secs_f64()
        * 1e3
}

fn report(all: &[Figures], floor: &[Duration]) {
    let row = |what: &str, cell: &dyn Fn(&Figures) -> String| {
        print!("  {what:<28}");
        for f in all {
            print!(" {:>22}", cell(f));
        }
        println!();
    };
    print!("  {:<28}", "");
    for f in all {
        print!(" {:>22}", f.label);
    }
    println!();
    row("peak RSS (VmHWM)", &|f| mib(f.memory.hwm));
    row("RSS after start-up", &|f| mib(f.start_rss));
    row("private memory (USS)", &|f| mib(f.memory.private));
    row("threads", &|f| f.memory.threads.to_string());
    row("CPU for the events", &|f| {
        format!("{:.0} ms", cpu_ms(&f.busy))
    });
    row("CPU per event", &|f| {
        format!(
            "{:.3} ms",
            cpu_ms(&f.busy) / f.latencies.len().max(1) as f64
        )
    });
    row("idle CPU", &|f| {
        let secs = f.idle_period.as_secs_f64();
        format!("{:.2} ms/min", cpu_ms(&f.idle) * 60.0 / secs)
    });
    row("event → child p50", &|f| {
        ms(percentile(&f.latencies, 0.5))
    });
    row("event → child p99", &|f| {
        ms(percentile(&f.latencies, 0.99))
    });
    row("event → child max", &|f| {
        ms(f.latencies.last().copied().unwrap_or_default())
    });
    row(
        "event → logged p50 / p99",
        &|f| match f.received.is_empty() {
            true => "-".into(),
            false => format!(
                "{} / {}",
                ms(percentile(&f.received, 0.5)),
                ms(percentile(&f.received, 0.99))
            ),
        },
    );
    for f in all {
        if let Some(w) = &f.warning {
            println!("  WARNING: {w}");
        }
    }
    println!(
        "  floor: a bare Socket.IO client in the bench reads the event: p50 {}, p99 {}",
        ms(percentile(floor, 0.5)),
        ms(percentile(floor, 0.99))
    );
    println!("  (event → child: SIGUSR1 reached the child for signal; a new child announced");
    println!("   itself for restart. keyshade run restarts on every event.)");
    println!();
    let Some(k) = all.iter().find(|f| f.kind == Kind::KeyshadeRun) else {
        return;
    };
    let p99 = |f: &Figures| percentile(&f.latencies, 0.99).as_secs_f64();
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    for t in all.iter().filter(|f| f.kind == Kind::TetherSignal) {
        println!("targets (informational), {} against keyshade run:", t.label);
        let rss = k.memory.hwm as f64 / t.memory.hwm.max(1) as f64;
        let lat = p99(k) / p99(t).max(1e-9);
        println!(
            "  peak RSS {rss:>6.1}× smaller   target ≥ {TARGET_RSS_RATIO}×   {}",
            verdict(rss >= TARGET_RSS_RATIO)
        );
        println!(
            "  p99      {lat:>6.1}× lower     target ≥ {TARGET_P99_RATIO}×    {}",
            verdict(lat >= TARGET_P99_RATIO)
        );
    }
    if let Some(r) = all.iter().find(|f| f.kind == Kind::TetherRestart) {
        println!(
            "  like for like (both restart): p99 {:.1}× lower, peak RSS {:.1}× smaller",
            p99(k) / p99(r).max(1e-9),
            k.memory.hwm as f64 / r.memory.hwm.max(1) as f64
        );
    }
}
