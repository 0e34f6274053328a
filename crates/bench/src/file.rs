//! `tether-bench file`: change-to-signal latency, peak RSS and idle CPU of a real `tether run`
//! that supervises `tether-bench child`. Prints figures next to the targets; asserts nothing.
//!
//! The bench starts the tether binary under test as `tether run --source file:… --output … --no-env
//! --on-change signal:USR1 --debounce 0 -- tether-bench child`, with the child's stdout
//! piped back: the child prints `SIGUSR1` when the signal reaches it. Each change replaces the
//! source file the way config management does (write a temp file, rename it over the source);
//! the time runs from just before the rename until the bench reads the line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::args::BenchArgs;
use crate::procfs::{Cpu, Memory};

/// Untimed changes first: page faults, lazy allocations and cold caches are not the steady state.
const WARMUP: usize = 20;
/// How long one change may take to reach the child before the bench gives up.
const SIGNAL_DEADLINE: Duration = Duration::from_secs(5);
/// How long tether may take to start (first render, child up with its handlers installed).
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long tether may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

const TARGET_P99: Duration = Duration::from_millis(2);
const TARGET_RSS_KIB: u64 = 4 * 1024;
const TARGET_IDLE_MS_PER_MIN: f64 = 2.0;

pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    // The bench is sequential and timing-sensitive: it blocks its (current-thread) runtime
    // on purpose, and a plain thread reads the child's stdout.
    let entries = args.entries.max(1);
    let work = WorkDir::create(args.dir.as_deref())?;
    print_header(&work.path, entries);
    // Several --tether binaries are measured one after the other, on the same files.
    let binaries = match args.tether.is_empty() {
        true => vec![crate::bins::tether(None)?],
        false => args
            .tether
            .iter()
            .map(|p| crate::bins::tether(Some(p)))
            .collect::<anyhow::Result<_>>()?,
    };
    for exe in &binaries {
        let size = std::fs::metadata(exe).map_or(0, |m| m.len());
        println!();
        println!(
            "binary:  {} ({:.1} MiB{})",
            exe.display(),
            size as f64 / (1024.0 * 1024.0),
            if exe.components().any(|c| c.as_os_str() == "debug") {
                ", a DEBUG build: figures are not representative"
            } else {
                ""
            }
        );
        let report = measure(&args, exe, entries, &work.path, None)?;
        report.print();
        if args.template {
            let tmpl = work.path.join("src/app.conf.tmpl");
            std::fs::write(&tmpl, crate::template::text(entries))
                .context("cannot write the template")?;
            println!("the same with a template output instead of the dotenv one:");
            let report = measure(&args, exe, entries, &work.path, Some(&tmpl))?;
            crate::template::print(&report.latencies, entries, percentile);
        }
    }
    Ok(0)
}

/// The bench's files (`src/` for the source, `out/` for tether's output); removed on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(root: Option<&Path>) -> anyhow::Result<WorkDir> {
        let root = match root {
            Some(r) => r.to_path_buf(),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let path = root.join(format!("tether-bench-{}", std::process::id()));
        let work = WorkDir { path };
        for sub in ["src", "out"] {
            let dir = work.path.join(sub);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(work)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The `tether run` under test. Dropping it stops it.
struct Tether {
    proc: Child,
    exited: Option<ExitStatus>,
}

impl Tether {
    fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Its exit status, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.proc.try_wait().ok().flatten();
        }
        self.exited
    }

    /// SIGTERM, then SIGKILL if it is still there after [`STOP_DEADLINE`].
    fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.exited() {
            return Ok(s);
        }
        let pid = Pid::from_raw(self.pid() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = kill(pid, Signal::SIGKILL);
        self.exited = Some(self.proc.wait()?);
        bail!("tether did not stop within {STOP_DEADLINE:?} of SIGTERM; killed it")
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The source file: one entry that changes with each version, the rest fixed.
fn source_text(entries: usize, version: usize) -> String {
    let mut s = format!("BENCH_VERSION={version}\n");
    for i in 1..entries {
        s.push_str(&format!(
            "APP_SETTING_{i:05}=value-{i:05}-0123456789abcdefghijklmnopqrstuv\n"
        ));
    }
    s
}

/// `N cores (CPU model), Linux RELEASE`.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown kernel".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {kernel}")
}

fn print_header(dir: &Path, entries: usize) {
    let fs = if tether_agent::atomic::is_tmpfs(dir) {
        "tmpfs: fsync is nearly free"
    } else {
        "NOT tmpfs: every change pays for real fsyncs"
    };
    println!("tether-bench file: `tether run` supervising `tether-bench child`");
    println!("machine: {}", machine());
    println!("load:    {} (1, 5, 15 min) at start", load_average());
    println!("files:   {} ({fs})", dir.display());
    println!(
        "source:  dotenv, {entries} entries ({} bytes), one value changed per version, replaced \
         by write temp + rename",
        source_text(entries, 0).len()
    );
    println!("tether:  output dotenv 0600 in another dir, --no-env, signal:USR1, debounce 0");
    println!();
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

struct Report {
    entries: usize,
    latencies: Vec<Duration>,
    load_after_changes: String,
    start_rss: u64,
    memory: Memory,
    idle_period: Duration,
    idle: Cpu,
    unexpected: Vec<String>,
    exit: ExitStatus,
}

/// One run of tether: the dotenv output, or `template`'s render.
fn measure(
    args: &BenchArgs,
    exe: &Path,
    entries: usize,
    dir: &Path,
    template: Option<&Path>,
) -> anyhow::Result<Report> {
    let child = crate::bins::bench()?;
    let src = dir.join("src/src.env");
    let tmp = dir.join("src/.src.env.tmp");
    let out = dir.join(match template {
        Some(_) => "out/app.conf",
        None => "out/out.env",
    });
    std::fs::write(&src, source_text(entries, 0)).context("cannot write the source")?;
    let output: Vec<String> = match template {
        Some(t) => vec![
            "--template".into(),
            format!("{}:{}", t.display(), out.display()),
        ],
        None => vec!["--output".into(), out.display().to_string()],
    };

    let mut proc = Command::new(exe)
        .arg("run")
        .arg("--source")
        .arg(format!("file:{}", src.display()))
        .args(&output)
        .args(["--no-env", "--on-change", "signal:USR1"])
        .args(["--debounce", "0", "--max-wait", "0", "--log-level", "warn"])
        .arg("--")
        .arg(&child)
        .arg("child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start tether run")?;
    let stdout = proc.stdout.take().context("tether's stdout")?;
    let mut tether = Tether { proc, exited: None };
    let pid = tether.pid();

    // Each line the child prints, stamped as it arrives.
    let (tx, lines) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });

    wait_ready(&mut tether, &out)?;
    let start_rss = Memory::read(pid, exe)?.rss;

    eprintln!("timing {} changes (+{WARMUP} warm-up)...", args.changes);
    let mut latencies = Vec::with_capacity(args.changes);
    let mut unexpected = Vec::new();
    for version in 1..=args.changes + WARMUP {
        // Anything already on the pipe is a signal that no change asked for.
        unexpected.extend(lines.try_iter().map(|(_, l)| l));
        std::fs::write(&tmp, source_text(entries, version)).context("cannot write the source")?;
        let t0 = Instant::now();
        std::fs::rename(&tmp, &src).context("cannot replace the source")?;
        let Ok((t1, line)) = lines.recv_timeout(SIGNAL_DEADLINE) else {
            let state = match tether.exited() {
                Some(s) => format!("tether exited: {s}"),
                None => "tether is still running".into(),
            };
            bail!(
                "change {version}: no signal reached the child within {SIGNAL_DEADLINE:?} ({state})"
            );
        };
        if line != "SIGUSR1" {
            bail!("change {version}: the child reported {line:?}, not SIGUSR1");
        }
        if version > WARMUP {
            latencies.push(t1.saturating_duration_since(t0));
        }
    }
    let load_after_changes = load_average();
    let memory = Memory::read(pid, exe)?;

    let idle_period = Duration::from_secs(args.idle_secs);
    eprintln!("idling {} s...", idle_period.as_secs());
    let before = Cpu::read(pid)?;
    std::thread::sleep(idle_period);
    let idle = Cpu::read(pid)?.since(&before);
    unexpected.extend(lines.try_iter().map(|(_, l)| l));

    let exit = tether.stop()?;
    latencies.sort();
    Ok(Report {
        entries,
        latencies,
        load_after_changes,
        start_rss,
        memory,
        idle_period,
        idle,
        unexpected,
        exit,
    })
}

/// Until the first render is written and the child runs with its SIGUSR1 handler installed
/// (a signal before that would kill it).
fn wait_ready(tether: &mut Tether, out: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(s) = tether.exited() {
            bail!("tether exited during start-up: {s}");
        }
        let child_ready = || {
            crate::procfs::children_of(tether.pid())
                .into_iter()
                .any(|c| crate::procfs::catches(c, Signal::SIGUSR1))
        };
        if out.exists() && child_ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("tether and its child were not up within {START_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

impl Report {
    /// CPU milliseconds per minute of idle time.
    fn per_minute(&self, used: Duration) -> f64 {
        used.as_secs_f64() * 1000.0 * 60.0 / self.idle_period.as_secs_f64().max(1e-9)
    }

    fn print(&self) {
        let l = &self.latencies;
        let p99 = percentile(l, 0.99);
        println!(
            "change → SIGUSR1 read from the child's stdout, {} changes after {WARMUP} warm-up:",
            l.len()
        );
        if let (Some(min), Some(max)) = (l.first(), l.last()) {
            let mean = l.iter().sum::<Duration>() / l.len() as u32;
            println!(
                "  p50 {}   p90 {}   p99 {}   max {}   (min {}, mean {})",
                us(percentile(l, 0.5)),
                us(percentile(l, 0.9)),
                us(p99),
                us(*max),
                us(*min),
                us(mean)
            );
        }
        println!("  load after the changes: {}", self.load_after_changes);
        if !self.unexpected.is_empty() {
            println!(
                "  WARNING: {} line(s) that no change asked for: {:?}",
                self.unexpected.len(),
                self.unexpected
            );
        }

        let m = &self.memory;
        println!(
            "memory of the tether process (not the child), {} entries:",
            self.entries
        );
        println!(
            "  peak RSS (VmHWM) {}   RSS {}   (after start-up {})   {} threads",
            mib(m.hwm),
            mib(m.rss),
            mib(self.start_rss),
            m.threads
        );
        println!(
            "  RSS by mapping: executable {}, shared libraries {}, heap/stacks/anon {}",
            mib(m.exe),
            mib(m.libs),
            mib(m.anon)
        );
        println!(
            "  PSS {}   private (USS) {}   (RSS counts whole pages of code that the child and \
             other processes share)",
            mib(m.pss),
            mib(m.private)
        );

        let tick = crate::procfs::tick();
        let by_ticks = tick * self.idle.ticks as u32;
        println!(
            "idle CPU of the tether process (not the child) over {} s:",
            self.idle_period.as_secs()
        );
        match self.idle.clock {
            Some(c) => println!(
                "  {:.3} ms by the process CPU clock → {:.3} ms/min",
                c.as_secs_f64() * 1000.0,
                self.per_minute(c)
            ),
            None => println!("  process CPU clock unreadable; ticks only"),
        }
        println!(
            "  utime+stime {} tick(s) of {} ms → {:.1} ms/min;   {} context switches (wake-ups)",
            self.idle.ticks,
            tick.as_millis(),
            self.per_minute(by_ticks),
            self.idle.switches
        );
        println!("tether exited after SIGTERM: {}", self.exit);
        println!();

        let idle = self.per_minute(self.idle.clock.unwrap_or(by_ticks));
        let row = |what: &str, got: String, target: &str, pass: bool| {
            let verdict = if pass { "PASS" } else { "MISS" };
            println!("  {what:<22} {got:>14}   {target:<12} {verdict}");
        };
        println!("targets (informational):");
        row(
            "p99 change → signal",
            us(p99),
            "< 2 ms",
            !l.is_empty() && p99 < TARGET_P99,
        );
        row("peak RSS", mib(m.hwm), "< 4 MiB", m.hwm < TARGET_RSS_KIB);
        row(
            "idle CPU",
            format!("{idle:.3} ms/min"),
            "< 2 ms/min",
            idle < TARGET_IDLE_MS_PER_MIN,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_micros(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_micros(100));
        assert_eq!(percentile(&v[..1], 0.99), Duration::from_micros(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn each_version_changes_one_value() {
        let (a, b) = (source_text(3, 1), source_text(3, 2));
        assert_eq!(a.lines().count(), 3);
        assert_ne!(a.lines().next(), b.lines().next());
        assert!(a.lines().skip(1).eq(b.lines().skip(1)));
        let parsed = tether_agent::source::parse::parse_dotenv(&a).unwrap();
        assert_eq!(parsed.len(), 3, "tether reads every entry");
    }
}
