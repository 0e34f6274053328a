//! What the bench reads about another process from /proc: its children, its signal
//! handlers, its memory by mapping, and its CPU time and wake-ups.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;

/// The fields after `comm` in /proc/PID/stat (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// A `Name:` line's value in a /proc status-like text.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// A `Name:   123 kB` line's number.
fn kib(text: &str, name: &str) -> u64 {
    field(text, name)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .collect()
}

/// Whether `pid` has a handler installed for `sig` (SigCgt in /proc/PID/status).
pub fn catches(pid: u32, sig: Signal) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| field(&s, "SigCgt"))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|mask| mask & (1 << (sig as i32 - 1)) != 0)
}

/// Memory of one process, in KiB.
pub struct Memory {
    pub hwm: u64,
    pub rss: u64,
    /// Proportional set size: shared pages divided among the processes that map them.
    pub pss: u64,
    /// Pages no other process maps (USS).
    pub private: u64,
    /// Resident pages of the executable (code, read-only data, relocated data).
    pub exe: u64,
    /// Resident pages of other mapped files (libc, libm, ld.so...).
    pub libs: u64,
    /// Heap, stacks and other anonymous memory.
    pub anon: u64,
    pub threads: u64,
}

impl Memory {
    /// `exe` tells the executable's mappings from the shared libraries'.
    pub fn read(pid: u32, exe: &Path) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let exe = exe.to_string_lossy();
        let (mut in_exe, mut in_libs, mut in_anon) = (0, 0, 0);
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
                    p if p == exe => in_exe += n,
                    p if p.starts_with('/') => in_libs += n,
                    _ => in_anon += n,
                }
            }
        }
        Ok(Memory {
            hwm: kib(&status, "VmHWM"),
            rss: kib(&status, "VmRSS"),
            pss: kib(&rollup, "Pss"),
            private: kib(&rollup, "Private_Clean") + kib(&rollup, "Private_Dirty"),
            exe: in_exe,
            libs: in_libs,
            anon: in_anon,
            threads: kib(&status, "Threads"),
        })
    }
}

/// What one process (all its threads, not its children) has used so far.
#[derive(Clone, Copy)]
pub struct Cpu {
    /// utime + stime (/proc/PID/stat fields 14 and 15), in clock ticks.
    pub ticks: u64,
    /// The process CPU-time clock (nanoseconds), when it can be read.
    pub clock: Option<Duration>,
    /// Voluntary and involuntary context switches of every thread: how often it woke up.
    pub switches: u64,
}

impl Cpu {
    pub fn read(pid: u32) -> anyhow::Result<Cpu> {
        let f = stat_fields(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(Cpu {
            ticks: n(11) + n(12),
            clock: process_clock(pid),
            switches: switches(pid),
        })
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            ticks: self.ticks.saturating_sub(earlier.ticks),
            clock: self
                .clock
                .zip(earlier.clock)
                .map(|(now, then)| now.saturating_sub(then)),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }
}

/// The length of a clock tick (sysconf CLK_TCK, usually 10 ms).
pub fn tick() -> Duration {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&n| n > 0)
        .unwrap_or(100);
    Duration::from_nanos(1_000_000_000 / hz as u64)
}

/// CPU time of every thread of `pid`, from its process CPU-time clock.
#[allow(unsafe_code)]
fn process_clock(pid: u32) -> Option<Duration> {
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

fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|s| {
            ["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"]
                .iter()
                .filter_map(|f| field(&s, f)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let mem = Memory::read(me, &exe).unwrap();
        assert!(mem.rss > 0 && mem.hwm >= mem.rss);
        assert!(mem.exe > 0 && mem.anon > 0, "smaps is split by mapping");
        let cpu = Cpu::read(me).unwrap();
        assert!(cpu.clock.is_some_and(|c| c > Duration::ZERO));
        assert!(cpu.since(&cpu).clock == Some(Duration::ZERO));
        assert!(tick() > Duration::ZERO);
    }

    #[test]
    fn finds_a_child_and_its_handlers() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(children_of(std::process::id()).contains(&pid));
        assert!(!catches(pid, Signal::SIGUSR1), "sleep installs no handler");
        // The reaper of other tests in this binary may collect it first.
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn parses_status_lines() {
        let s = "Name:\tx\nVmHWM:\t    6884 kB\nSigCgt:\t0000000000000200\n";
        assert_eq!(kib(s, "VmHWM"), 6884);
        assert_eq!(kib(s, "VmRSS"), 0);
        assert_eq!(field(s, "SigCgt").as_deref(), Some("0000000000000200"));
    }
}
