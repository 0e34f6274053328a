//! `tether-bench rollout`: a paced rollout end to end. One node, N agents (`tether run` of
//! the test child, restarting it on change, baking `--bake` after each restart) under a
//! policy of `max_unavailable`; one write that every agent restarts for, timed from the
//! write to "every agent healthy" (the node's `GET /v1/envs/{env}/rollout`), printed beside
//! the ideal: ⌈agents / max_unavailable⌉ rounds of one agent's own restart-and-bake, as
//! measured alone first. Loopback only; stops everything it started. Asserts nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value as Json, json};

use crate::agents::{raise_nofile, start_node};

#[derive(Args, Debug, Clone)]
pub struct RolloutBenchArgs {
    /// Agents (each a `tether run` with its child).
    #[arg(long, default_value_t = 200)]
    pub agents: usize,
    /// The policy's max_unavailable: agents restarting at once.
    #[arg(long, default_value_t = 20)]
    pub max_unavailable: u32,
    /// The agents' bake after a restart.
    #[arg(long, default_value = "1s")]
    pub bake: String,
    /// Times one agent's restart-and-bake alone is measured (the median is used).
    #[arg(long, default_value_t = 3)]
    pub solo_rounds: usize,
    /// Directory for the node's data and the agents' files (default: under /dev/shm).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The tether binary to measure (default: `tether` beside this one).
    #[arg(long, value_name = "PATH")]
    pub tether: Option<PathBuf>,
}

/// How long any one phase may take before the bench gives up.
const PHASE: Duration = Duration::from_secs(600);

/// The agents the bench started (each with its log file); SIGTERMed (then reaped) on drop,
/// children with them.
struct Agents(Vec<(Child, PathBuf)>);

impl Agents {
    /// An agent that exited, with the end of its log: the bench cannot go on without it.
    fn check(&mut self) -> anyhow::Result<()> {
        for (c, log) in &mut self.0 {
            if let Ok(Some(status)) = c.try_wait() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                let hint = if text.contains("inotify") || text.contains("Too many open files") {
                    " (a per-user limit: raise `ulimit -n` or fs.inotify.max_user_instances, \
                     or run fewer --agents)"
                } else {
                    ""
                };
                bail!(
                    "an agent exited ({status}){hint}; its log ({}) ends:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for (c, _) in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for (c, _) in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 request (`Connection: close`) to the node: the status and the JSON body.
fn http(addr: &str, method: &str, path: &str, body: Option<&Json>) -> anyhow::Result<(u16, Json)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(Json::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, text) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, serde_json::from_str(text).unwrap_or(Json::Null)))
}

fn ok(addr: &str, method: &str, path: &str, body: Option<&Json>) -> anyhow::Result<Json> {
    match http(addr, method, path, body)? {
        (200..=299, json) => Ok(json),
        (status, json) => bail!("{method} {path}: {status} {json}"),
    }
}

/// Write `N=value` to `env`; the version it became.
fn write(addr: &str, env: &str, value: &str) -> anyhow::Result<u64> {
    let body = json!({"changes": [{"name": "N", "value": value}]});
    let r = ok(
        addr,
        "POST",
        &format!("/v1/envs/{env}/changes"),
        Some(&body),
    )?;
    r.pointer("/position/version")
        .and_then(Json::as_u64)
        .context("the node sent no version")
}

/// Wait until `agents` agents are healthy at `version` of `env`; when that was seen. Every
/// agent started must live meanwhile.
fn healthy(
    addr: &str,
    env: &str,
    version: u64,
    agents: usize,
    started: &mut Agents,
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    let mut last = Json::Null;
    while start.elapsed() < PHASE {
        started.check()?;
        let (status, r) = http(addr, "GET", &format!("/v1/envs/{env}/rollout"), None)?;
        if status == 404 && r.pointer("/error/message") == Some(&json!("no such endpoint")) {
            bail!("this node has no rollouts (GET /v1/envs/{env}/rollout is not there)");
        }
        if r["version"].as_u64() == Some(version) && r["healthy"].as_u64() == Some(agents as u64) {
            return Ok(Instant::now());
        }
        if r["state"] == "halted" {
            bail!("the rollout of {env} halted: {r}");
        }
        last = r;
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{agents} agent(s) of {env} not healthy at version {version} after {PHASE:?}: {last}")
}

/// Start `n` agents following `env`, their files under `dir`.
fn start_agents(
    exe: &Path,
    addr: &str,
    env: &str,
    n: usize,
    bake: &str,
    dir: &Path,
    into: &mut Agents,
) -> anyhow::Result<()> {
    let bench = crate::bins::bench()?;
    for k in 0..n {
        let name = format!("{env}-{k}");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(exe)
            .args(["run", "--server", &format!("http://{addr}"), "--env", env])
            .arg("--state-dir")
            .arg(dir.join(format!("{name}.state")))
            .arg("--output")
            .arg(dir.join(format!("{name}.env")))
            .args(["--on-change", "restart", "--debounce", "0", "--bake", bake])
            .args(["--log-level", "warn", "--"])
            .arg(&bench)
            .arg("child")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting an agent")?;
        into.0.push((child, log));
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn run(args: RolloutBenchArgs) -> anyhow::Result<i32> {
    if args.agents == 0 || args.max_unavailable == 0 {
        bail!("--agents and --max-unavailable are at least 1");
    }
    let bake = tether_core::settings::parse_duration(&args.bake)
        .map_err(|e| anyhow::anyhow!("--bake: {e}"))?;
    let exe = crate::bins::tether(args.tether.as_deref())?;
    let dir = args.dir.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "/dev/shm/tether-bench-rollout-{}",
            std::process::id()
        ))
    });
    std::fs::create_dir_all(&dir)?;
    let result = measure(&args, &exe, bake, &dir);
    // Whatever happened, the processes are gone by now (dropped in `measure`).
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn measure(args: &RolloutBenchArgs, exe: &Path, bake: Duration, dir: &Path) -> anyhow::Result<i32> {
    let exe = exe.to_path_buf();
    let dir = dir.to_path_buf();
    raise_nofile(args.agents as u64 * 8 + 1024);
    let node = start_node(&exe, &dir.join("data"), None)?;
    let addr = node.addr.clone();
    println!(
        "tether-bench rollout: {} agent(s), max_unavailable {}, bake {}, one node at {addr}",
        args.agents, args.max_unavailable, args.bake
    );
    let mut agents = Agents(Vec::new());

    // One agent alone, no policy: its restart-and-bake, from a write to healthy.
    let solo = "bench-solo";
    let v = write(&addr, solo, "0")?;
    start_agents(&exe, &addr, solo, 1, &args.bake, &dir, &mut agents)?;
    healthy(&addr, solo, v, 1, &mut agents)?;
    let mut rounds = Vec::new();
    for i in 1..=args.solo_rounds.max(1) {
        let at = Instant::now();
        let v = write(&addr, solo, &i.to_string())?;
        rounds.push(healthy(&addr, solo, v, 1, &mut agents)? - at);
    }
    rounds.sort();
    let one = rounds[rounds.len() / 2];
    println!(
        "one agent alone, write → healthy (restart + bake): {} (median of {})",
        secs(one),
        rounds.len()
    );
    println!(
        "  of which restart and checks: {}",
        secs(one.saturating_sub(bake))
    );

    // The fleet, under a policy.
    let env = "bench";
    let policy = json!({"max_unavailable": args.max_unavailable});
    ok(
        &addr,
        "PUT",
        &format!("/v1/envs/{env}/policy"),
        Some(&policy),
    )?;
    let v = write(&addr, env, "0")?;
    let started = Instant::now();
    start_agents(&exe, &addr, env, args.agents, &args.bake, &dir, &mut agents)?;
    healthy(&addr, env, v, args.agents, &mut agents)?;
    println!(
        "{} agents started and healthy in {}",
        args.agents,
        secs(started.elapsed())
    );

    let at = Instant::now();
    let v = write(&addr, env, "1")?;
    let took = healthy(&addr, env, v, args.agents, &mut agents)? - at;
    let rounds = args.agents.div_ceil(args.max_unavailable as usize) as u32;
    let ideal = one * rounds;
    println!(
        "write → every agent healthy ({} agents, max_unavailable {}): {}",
        args.agents,
        args.max_unavailable,
        secs(took)
    );
    println!(
        "ideal ({rounds} rounds × {} restart + bake): {}",
        secs(one),
        secs(ideal)
    );
    println!(
        "ratio to the ideal: {:.2}",
        took.as_secs_f64() / ideal.as_secs_f64().max(1e-9)
    );
    drop(agents);
    drop(node);
    Ok(0)
}
