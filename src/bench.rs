//! `tether bench`: change-to-signal latency, peak RSS and idle CPU of a real `tether run`
//! that supervises `tether bench-child`. Prints figures next to the targets; asserts nothing.
//!
//! The bench starts this very binary as `tether run --source file:… --output … --no-env
//! --on-change signal:USR1 --debounce 0 -- tether bench-child`, with the child's stdout
//! piped back: the child prints `SIGUSR1` when the signal reaches it. Each change replaces the
//! source file the way config management does (write a temp file, rename it over the source);
//! the time runs from just before the rename until the line is read.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal as NixSignal, kill};
use nix::unistd::Pid;

use crate::cli::BenchArgs;

/// Untimed changes first: page faults, lazy allocations and cold caches are not the steady state.
const WARMUP: usize = 20;
/// How long one change may take to reach the child before the bench gives up.
const SIGNAL_DEADLINE: Duration = Duration::from_secs(5);
/// How long tether may take to start (first render, child up with its handlers installed).
const START_DEADLINE: Duration = Duration::from_secs(20);

const TARGET_P99: Duration = Duration::from_millis(2);
const TARGET_RSS_KIB: u64 = 4 * 1024;
const TARGET_IDLE_MS_PER_MIN: f64 = 2.0;

pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    // The bench is sequential and timing-sensitive: it blocks its (current-thread) runtime
    // on purpose, and a plain thread reads the child's stdout.
    let work = WorkDir::create(args.dir.as_deref())?;
    let report = measure(&args, &work.path)?;
    report.print(&args);
    Ok(0)
}

/// The bench's files; removed on drop.
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
        for sub in ["src", "out"] {
            std::fs::create_dir_all(path.join(sub))
                .with_context(|| format!("cannot create {}", path.join(sub).display()))?;
        }
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The `tether run` under test. Dropping it stops it (TERM, then KILL after a deadline).
struct Tether {
    proc: Child,
    waited: Option<ExitStatus>,
}

impl Tether {
    fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// SIGTERM, then wait up to 10 s, then SIGKILL.
    fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.waited {
            return Ok(s);
        }
        let pid = Pid::from_raw(self.pid() as i32);
        let _ = kill(pid, NixSignal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.proc.try_wait()? {
                self.waited = Some(s);
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = kill(pid, NixSignal::SIGKILL);
                let s = self.proc.wait()?;
                self.waited = Some(s);
                bail!("tether did not stop within 10 s of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

struct Report {
    machine: Machine,
    dir: PathBuf,
    tmpfs: bool,
    source_bytes: usize,
    latencies: Vec<Duration>,
    start_rss_kib: u64,
    memory: Memory,
    idle: Idle,
    unexpected: Vec<String>,
    exit: ExitStatus,
}

struct Machine {
    cores: usize,
    cpu: String,
    kernel: String,
}

impl Machine {
    fn read() -> Machine {
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
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel,
        }
    }
}

/// The source file: one entry that changes per version, the rest fixed.
fn source_text(entries: usize, version: usize) -> String {
    let mut s = format!("BENCH_VERSION={version}\n");
    for i in 1..entries {
        s.push_str(&format!(
            "APP_SETTING_{i:05}=value-{i:05}-0123456789abcdefghijklmnopqrstuv\n"
        ));
    }
    s
}

fn measure(args: &BenchArgs, dir: &Path) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot locate the tether binary")?;
    let src = dir.join("src/src.env");
    let tmp = dir.join("src/.src.env.tmp");
    let out = dir.join("out/out.env");
    let first = source_text(args.entries.max(1), 0);
    std::fs::write(&src, &first).context("cannot write the source")?;

    let mut proc = Command::new(&exe)
        .arg("run")
        .arg("--source")
        .arg(format!("file:{}", src.display()))
        .arg("--output")
        .arg(&out)
        .args(["--no-env", "--on-change", "signal:USR1"])
        .args(["--debounce", "0", "--max-wait", "0", "--log-level", "warn"])
        .arg("--")
        .arg(&exe)
        .arg("bench-child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start tether run")?;
    let stdout = proc.stdout.take().context("tether's stdout")?;
    let mut tether = Tether { proc, waited: None };
    let pid = tether.pid();

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
    let start_rss_kib = Memory::read(pid, &exe)?.rss_kib;

    let total = args.changes + WARMUP;
    eprintln!(
        "timing {} changes (+{WARMUP} warm-up) with {} entries...",
        args.changes,
        args.entries.max(1)
    );
    let mut latencies = Vec::with_capacity(args.changes);
    let mut unexpected = Vec::new();
    for version in 1..=total {
        // Anything already on the pipe is a signal that no change asked for.
        unexpected.extend(lines.try_iter().map(|(_, l)| l));
        std::fs::write(&tmp, source_text(args.entries.max(1), version))
            .context("cannot write the source")?;
        let t0 = Instant::now();
        std::fs::rename(&tmp, &src).context("cannot replace the source")?;
        let (t1, line) = match lines.recv_timeout(SIGNAL_DEADLINE) {
            Ok(got) => got,
            Err(_) => {
                let state = match tether.proc.try_wait() {
                    Ok(Some(s)) => format!("tether exited ({s})"),
                    _ => "tether is still running".into(),
                };
                bail!(
                    "change {version}: no signal reached the child within {SIGNAL_DEADLINE:?} ({state})"
                );
            }
        };
        if line != "SIGUSR1" {
            bail!("change {version}: the child reported {line:?}, not SIGUSR1");
        }
        if version > WARMUP {
            latencies.push(t1.saturating_duration_since(t0));
        }
    }
    let memory = Memory::read(pid, &exe)?;

    eprintln!("idling {} s...", args.idle_secs);
    let idle = Idle::measure(pid, Duration::from_secs(args.idle_secs))?;
    unexpected.extend(lines.try_iter().map(|(_, l)| l));

    let exit = tether.stop()?;
    latencies.sort();
    Ok(Report {
        machine: Machine::read(),
        dir: dir.to_path_buf(),
        tmpfs: crate::output::atomic::is_tmpfs(dir),
        source_bytes: first.len(),
        latencies,
        start_rss_kib,
        memory,
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
        if let Some(s) = tether.proc.try_wait()? {
            tether.waited = Some(s);
            bail!("tether exited during start-up ({s})");
        }
        if out.exists() {
            let ready = children_of(tether.pid())
                .into_iter()
                .any(|c| catches(c, NixSignal::SIGUSR1));
            if ready {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("tether and its child were not up within {START_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The fields after `comm` in /proc/PID/stat (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .collect()
}

fn status_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Whether `pid` has a handler installed for `sig` (SigCgt in /proc/PID/status).
fn catches(pid: u32, sig: NixSignal) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| status_field(&s, "SigCgt"))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|mask| mask & (1 << (sig as i32 - 1)) != 0)
}

struct Memory {
    hwm_kib: u64,
    rss_kib: u64,
    /// Proportional set size: shared pages divided among the processes that map them.
    pss_kib: u64,
    /// Pages no other process maps (USS).
    private_kib: u64,
    /// Resident pages of the tether executable (code, read-only data, relocated data).
    exe_kib: u64,
    /// Resident pages of other mapped files (libc, libm, ld.so...).
    libs_kib: u64,
    /// Heap, stacks and other anonymous memory.
    anon_kib: u64,
    threads: u64,
}

impl Memory {
    fn read(pid: u32, exe: &Path) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let kib = |text: &str, name: &str| -> u64 {
            status_field(text, name)
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let (mut exe_kib, mut libs_kib, mut anon_kib) = (0, 0, 0);
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let exe = exe.to_string_lossy();
        let mut path = String::new();
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields
                .first()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                // A mapping's header: range, perms, offset, dev, inode, [path].
                path = fields.get(5..).map(|p| p.join(" ")).unwrap_or_default();
            } else if let ["Rss:", n, ..] = fields.as_slice() {
                let n: u64 = n.parse().unwrap_or(0);
                match path.as_str() {
                    p if p == exe => exe_kib += n,
                    p if p.starts_with('/') => libs_kib += n,
                    _ => anon_kib += n,
                }
            }
        }
        Ok(Memory {
            hwm_kib: kib(&status, "VmHWM"),
            rss_kib: kib(&status, "VmRSS"),
            pss_kib: kib(&rollup, "Pss"),
            private_kib: kib(&rollup, "Private_Clean") + kib(&rollup, "Private_Dirty"),
            exe_kib,
            libs_kib,
            anon_kib,
            threads: kib(&status, "Threads"),
        })
    }
}

/// CPU used by one process (all its threads, not its children) over an idle period.
struct Idle {
    period: Duration,
    ticks: u64,
    tick: Duration,
    /// From the process CPU-time clock (nanosecond resolution), when it can be read.
    cpu: Option<Duration>,
    switches: u64,
}

impl Idle {
    fn measure(pid: u32, period: Duration) -> anyhow::Result<Idle> {
        let tick_hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&n| n > 0)
            .unwrap_or(100) as u64;
        let ticks = || -> anyhow::Result<u64> {
            let f = stat_fields(pid).context("cannot read tether's /proc stat")?;
            // Fields 14 (utime) and 15 (stime).
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Ok(n(11) + n(12))
        };
        let (t0, c0, s0) = (ticks()?, process_cpu(pid), switches(pid));
        std::thread::sleep(period);
        let (t1, c1, s1) = (ticks()?, process_cpu(pid), switches(pid));
        Ok(Idle {
            period,
            ticks: t1.saturating_sub(t0),
            tick: Duration::from_nanos(1_000_000_000 / tick_hz),
            cpu: c0.zip(c1).map(|(a, b)| b.saturating_sub(a)),
            switches: s1.saturating_sub(s0),
        })
    }

    /// The best figure: the nanosecond clock, else the tick count.
    fn used(&self) -> Duration {
        self.cpu.unwrap_or(self.tick * self.ticks as u32)
    }

    fn ms_per_min(&self, used: Duration) -> f64 {
        let secs = self.period.as_secs_f64().max(1e-9);
        used.as_secs_f64() * 1000.0 * 60.0 / secs
    }
}

/// CPU time of every thread of `pid`, from its process CPU-time clock.
fn process_cpu(pid: u32) -> Option<Duration> {
    use nix::libc;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t through a valid pointer.
    if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } != 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Context switches of every thread of `pid` so far: how often it woke up.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|s| {
            ["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"]
                .iter()
                .filter_map(|f| status_field(&s, f)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
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

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

impl Report {
    fn print(&self, args: &BenchArgs) {
        let m = &self.machine;
        let build = if cfg!(debug_assertions) {
            "DEBUG build: figures are not representative, use --release"
        } else {
            "release build"
        };
        println!("tether bench: `tether run` supervising `tether bench-child`");
        println!(
            "machine: {} cores ({}), {}, {build}",
            m.cores, m.cpu, m.kernel
        );
        println!(
            "files:   {} ({})",
            self.dir.display(),
            if self.tmpfs {
                "tmpfs: fsync is nearly free"
            } else {
                "NOT tmpfs: every change pays for real fsyncs"
            }
        );
        println!(
            "source:  dotenv, {} entries ({} bytes), one value changed per version, replaced by \
             write temp + rename; output: dotenv 0600 in a separate dir; on change: signal:USR1",
            args.entries.max(1),
            self.source_bytes
        );
        println!();

        let l = &self.latencies;
        let p99 = percentile(l, 0.99);
        println!(
            "change → SIGUSR1 read from the child's stdout, {} changes (after {WARMUP} warm-up), debounce 0:",
            l.len()
        );
        if l.is_empty() {
            println!("  (no changes timed)");
        } else {
            let mean = l.iter().sum::<Duration>() / l.len() as u32;
            println!(
                "  p50 {}   p90 {}   p99 {}   max {}   mean {}   min {}",
                us(percentile(l, 0.5)),
                us(percentile(l, 0.9)),
                us(p99),
                us(l[l.len() - 1]),
                us(mean),
                us(l[0])
            );
        }
        if !self.unexpected.is_empty() {
            println!(
                "  WARNING: {} signal(s) arrived that no change asked for: {:?}",
                self.unexpected.len(),
                self.unexpected
            );
        }

        let mem = &self.memory;
        println!(
            "memory of the tether process (not the child), {} entries:",
            args.entries.max(1)
        );
        println!(
            "  peak RSS (VmHWM) {}   RSS now {}   RSS after start-up {}   {} threads",
            mib(mem.hwm_kib),
            mib(mem.rss_kib),
            mib(self.start_rss_kib),
            mem.threads
        );
        println!(
            "  RSS now by mapping: tether executable {}, shared libraries {}, heap/stacks/anon {}",
            mib(mem.exe_kib),
            mib(mem.libs_kib),
            mib(mem.anon_kib)
        );
        println!(
            "  PSS {}   private (USS) {}   (RSS counts every mapped page of libc and of the \
             executable, which the child and other processes share)",
            mib(mem.pss_kib),
            mib(mem.private_kib)
        );

        let idle = &self.idle;
        let tick_ms = idle.tick.as_secs_f64() * 1000.0;
        println!(
            "idle {} s, tether process only (not the child):",
            idle.period.as_secs()
        );
        match idle.cpu {
            Some(cpu) => println!(
                "  CPU {:.3} ms (process CPU clock) → {:.3} ms/min",
                cpu.as_secs_f64() * 1000.0,
                idle.ms_per_min(cpu)
            ),
            None => println!("  CPU clock of the process unreadable; ticks only"),
        }
        println!(
            "  utime+stime {} tick(s) of {tick_ms:.0} ms → {:.1} ms/min;   {} context switches",
            idle.ticks,
            idle.ms_per_min(idle.tick * idle.ticks as u32),
            idle.switches
        );
        println!("tether exited with {} after SIGTERM", self.exit);
        println!();

        let idle_rate = idle.ms_per_min(idle.used());
        println!("targets (informational):");
        let row = |what: &str, got: String, target: &str, pass: bool| {
            println!("  {what:<22} {got:>14}   {target:<12} {}", verdict(pass));
        };
        row(
            "p99 change → signal",
            us(p99),
            "< 2 ms",
            !l.is_empty() && p99 < TARGET_P99,
        );
        row(
            "peak RSS",
            mib(mem.hwm_kib),
            "< 4 MiB",
            mem.hwm_kib < TARGET_RSS_KIB,
        );
        row(
            "idle CPU",
            format!("{idle_rate:.3} ms/min"),
            "< 2 ms/min",
            idle_rate < TARGET_IDLE_MS_PER_MIN,
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
    fn source_changes_one_value_per_version() {
        let a = source_text(3, 1);
        let b = source_text(3, 2);
        assert_eq!(a.lines().count(), 3);
        assert_ne!(a, b);
        assert_eq!(
            a.lines().skip(1).collect::<Vec<_>>(),
            b.lines().skip(1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let mem = Memory::read(me, &exe).unwrap();
        assert!(mem.rss_kib > 0 && mem.hwm_kib >= mem.rss_kib);
        assert!(mem.exe_kib > 0 && mem.anon_kib > 0, "smaps is categorised");
        assert!(process_cpu(me).is_some());
        assert!(stat_fields(me).is_some_and(|f| f.len() > 12));
    }
}
