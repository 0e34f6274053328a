//! The rollout tests' fleet: one node, or Redis and three nodes; agents (`tether run` with
//! the fixture child, a health command and a bake); writes, policies and the rollout as the
//! nodes report it; and the children's timestamps, from which the tests count how many
//! children were restarting at once.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value as Json, json};

use crate::support::{
    BENCH_BIN, DEADLINE, Tether, Work, free_port, http_request, run_to_end, start_node_at,
    wait_for_within,
};

/// The environment every test follows.
pub const ENV: &str = "prod";
/// Generous: a rollout of 50 agents on a busy 2-core machine takes a while.
pub const ROLLOUT_DEADLINE: Duration = Duration::from_secs(180);

pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A redis-server on a loopback port, without persistence; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start(w: &Work) -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(w.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = Redis { port, child };
        wait_for_within("redis-server to answer", DEADLINE, &mut || r.ping());
        r
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tether serve` node; `restart` starts it again on the same port.
pub struct Node {
    pub id: String,
    pub port: u16,
    args: Vec<String>,
    pub proc: Option<Tether>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if let Some(c) = p.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Start again on the same port (after `kill`), retrying while the port is taken.
    pub fn restart(&mut self, w: &Work) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (proc, _) = start_node_at(w.dir.path(), &format!("127.0.0.1:{}", self.port), &args);
        self.proc = Some(proc);
    }
}

/// One agent: `tether run` of the fixture child, restarting it on change, its files named
/// after it in the workspace.
pub struct Agent {
    pub name: String,
    pub proc: Tether,
    stamp: PathBuf,
    health: PathBuf,
    child_env: PathBuf,
}

impl Agent {
    /// Child starts, as unix nanoseconds (`--stamp`).
    pub fn starts(&self) -> Vec<u128> {
        stamps(&self.stamp, "start")
    }

    /// Health checks that passed, as unix nanoseconds (the health command's stamps).
    pub fn healthy(&self) -> Vec<u128> {
        stamps(&self.health, "healthy")
    }

    /// The child's environment at its latest start.
    pub fn child_env(&self, name: &str) -> Option<String> {
        fs::read_to_string(&self.child_env)
            .unwrap_or_default()
            .lines()
            .find_map(|l| Some(l.strip_prefix(name)?.strip_prefix('=')?.to_string()))
    }
}

fn stamps(path: &PathBuf, word: &str) -> Vec<u128> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(word)).then_some(())?;
            it.last()?.parse().ok()
        })
        .collect()
}

/// Nodes (and Redis when there are several), the agents, and the workspace. Dropping it
/// stops the agents first, then the nodes.
pub struct Fleet {
    pub work: Work,
    pub nodes: Vec<Node>,
    pub agents: Vec<Agent>,
    /// Kept until the fleet is dropped (after the nodes).
    _redis: Option<Redis>,
}

impl Fleet {
    /// One node (`nodes == 1`, SQLite) or `nodes` over one Redis, each with `extra` flags.
    pub fn start(nodes: usize, extra: &[&str]) -> Fleet {
        let work = Work::new();
        let redis = (nodes > 1).then(|| Redis::start(&work));
        let mut started = Vec::new();
        for i in 0..nodes {
            let id = ((b'a' + i as u8) as char).to_string();
            let mut args: Vec<String> = vec!["--heartbeat".into(), "1s".into()];
            match &redis {
                Some(r) => args.extend(
                    [
                        "--redis",
                        &r.url(),
                        "--node-id",
                        &id,
                        "--repair-interval",
                        "500ms",
                    ]
                    .map(String::from),
                ),
                None => args.extend(["--data".into(), work.path("data").display().to_string()]),
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let (proc, port) = start_node_at(work.dir.path(), "127.0.0.1:0", &a);
            started.push(Node {
                id,
                port,
                args,
                proc: Some(proc),
            });
        }
        Fleet {
            work,
            nodes: started,
            agents: Vec::new(),
            _redis: redis,
        }
    }

    /// The URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// A node that is up.
    fn live(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.proc.is_some())
            .expect("a node is up")
    }

    /// Start `n` agents, each listing every node (it picks one at random, and fails over),
    /// each baking `bake` after a restart with a health command that stamps
    /// its file, and a child that exits 3 when `MODE=bad`.
    pub fn start_agents(&mut self, n: usize, bake: &str, extra: &[&str]) {
        for _ in 0..n {
            let k = self.agents.len();
            let name = format!("a{k}");
            let p = |s: &str| self.work.path(&format!("{name}.{s}"));
            let (stamp, health, child_env) = (p("stamp"), p("health"), p("childenv"));
            let mut args: Vec<String> = vec!["run".into()];
            for j in 0..self.nodes.len() {
                args.push("--server".into());
                args.push(self.url((k + j) % self.nodes.len()));
            }
            let health_cmd = format!("sh -c 'echo healthy $(date +%s%N) >> {}'", health.display());
            args.extend(
                [
                    "--env",
                    ENV,
                    "--state-dir",
                    &p("state").display().to_string(),
                    "--output",
                    &p("env").display().to_string(),
                    "--on-change",
                    "restart",
                    "--debounce",
                    "0",
                    "--bake",
                    bake,
                    "--health-interval",
                    "200ms",
                    "--health-cmd",
                    &health_cmd,
                ]
                .map(String::from),
            );
            args.extend(extra.iter().map(|s| s.to_string()));
            args.extend(
                [
                    "--",
                    BENCH_BIN,
                    "child",
                    "--exit-if",
                    "MODE=bad",
                    "--stamp",
                    &stamp.display().to_string(),
                    "--env-file",
                    &child_env.display().to_string(),
                ]
                .map(String::from),
            );
            let proc = Tether::start(self.work.dir.path(), &args, &[]);
            self.agents.push(Agent {
                name,
                proc,
                stamp,
                health,
                child_env,
            });
        }
    }

    /// Commit `pairs` through node `i`; returns the new version.
    pub fn write(&self, i: usize, pairs: &[(&str, &str)]) -> u64 {
        let changes: Vec<Json> = pairs
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect();
        let r = http_request(
            "POST",
            &format!("{}/v1/envs/{ENV}/changes", self.url(i)),
            None,
            Some(&json!({ "changes": changes })),
        );
        assert_eq!(r.status, 200, "write {pairs:?}: {}", r.text);
        r.json["position"]["version"].as_u64().expect("a version")
    }

    /// `tether ARGS --server <a live node>` to its end: (code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let url = self.live().url();
        let mut all = args.to_vec();
        all.extend(["--server", url.as_str()]);
        run_to_end(self.work.dir.path(), &all)
    }

    /// `tether policy set --env prod ARGS`, which must succeed.
    pub fn set_policy(&self, args: &[&str]) {
        let mut all = vec!["policy", "set", "--env", ENV];
        all.extend_from_slice(args);
        let (code, out, err) = self.cli(&all);
        assert_eq!(code, 0, "policy set {args:?}:\n{out}{err}");
    }

    /// The rollout as node `i` reports it (`GET /v1/envs/prod/rollout`); `Null` if the node
    /// does not answer 200.
    pub fn rollout_at(&self, i: usize) -> Json {
        let r = http_request(
            "GET",
            &format!("{}/v1/envs/{ENV}/rollout", self.url(i)),
            None,
            None,
        );
        if r.status == 200 { r.json } else { Json::Null }
    }

    /// The rollout as a live node reports it.
    pub fn rollout(&self) -> Json {
        let i = self
            .nodes
            .iter()
            .position(|n| n.proc.is_some())
            .expect("a node is up");
        self.rollout_at(i)
    }

    /// The index of the node agent `k` is connected to, as the nodes' status says
    /// (agents name themselves `HOST/PID`; an agent picks its first node at random).
    pub fn node_of(&self, k: usize) -> Option<usize> {
        let live = self.nodes.iter().position(|n| n.proc.is_some())?;
        let r = http_request(
            "GET",
            &format!("{}/v1/envs/{ENV}/status", self.url(live)),
            None,
            None,
        );
        let me = format!("/{}", self.agents[k].proc.pid());
        let node = r.json["connected"]
            .as_array()?
            .iter()
            .find(|a| a["agent"].as_str().is_some_and(|n| n.ends_with(&me)))?["node"]
            .as_str()?
            .to_string();
        self.nodes.iter().position(|n| n.id == node)
    }

    /// Wait until the rollout of `version` satisfies `cond`; the rollout seen last.
    pub fn wait_rollout(
        &self,
        what: &str,
        version: u64,
        mut cond: impl FnMut(&Json) -> bool,
    ) -> Json {
        let mut last = Json::Null;
        let mut check = || {
            last = self.rollout();
            last["version"].as_u64() == Some(version) && cond(&last)
        };
        let start = std::time::Instant::now();
        while !check() {
            if start.elapsed() > ROLLOUT_DEADLINE {
                panic!("timed out waiting for {what}; the rollout last: {last}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        last
    }

    /// Wait until every agent's child started once, and the first version is healthy
    /// everywhere.
    pub fn wait_settled(&self, version: u64) {
        let n = self.agents.len() as u64;
        self.wait_rollout("every agent healthy at the first version", version, |r| {
            r["state"] == "done" && r["healthy"].as_u64() == Some(n)
        });
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                if let Some(p) = &n.proc {
                    eprintln!("--- node {}:", n.id);
                    let err = p.stderr();
                    let lines: Vec<&str> = err.lines().collect();
                    for l in &lines[lines.len().saturating_sub(60)..] {
                        eprintln!("{l}");
                    }
                }
            }
            // Every agent's log is kept beside its files; the first few are printed.
            for a in &self.agents {
                let _ = fs::write(self.work.path(&format!("{}.log", a.name)), a.proc.stderr());
            }
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some(p) = &n.proc {
                    let _ = fs::write(self.work.path(&format!("node{i}.log")), p.stderr());
                }
            }
            for a in self.agents.iter().take(3) {
                eprintln!("--- agent {}:", a.name);
                a.proc.dump();
            }
            let kept = std::mem::replace(&mut self.work, Work::new()).dir.keep();
            eprintln!("--- files kept in {}", kept.display());
        }
        self.agents.clear();
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

/// The most children that were restarting at once after `since`. Each child start after
/// `since` opens an interval; the last of its agent's passing health checks before the
/// agent's next start closes it (the checks run while the agent bakes, holding its slot,
/// and stop when it reports). A start with no check after it stays open to the end.
pub fn most_at_once(agents: &[Agent], since: u128) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for a in agents {
        let healthy = a.healthy();
        let starts = a.starts();
        for (i, &s) in starts.iter().enumerate().filter(|(_, s)| **s > since) {
            events.push((s, 1));
            let next = starts.get(i + 1).copied().unwrap_or(u128::MAX);
            if let Some(h) = healthy
                .iter()
                .copied()
                .filter(|&h| h >= s && h < next)
                .max()
            {
                events.push((h, -1));
            }
        }
    }
    // At equal times an end comes before a start: touching intervals do not overlap.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// Each agent's child starts and passing checks after `since`, in ms from it, for a
/// failure's message.
pub fn timeline(agents: &[Agent], since: u128) -> String {
    let ms = |v: Vec<u128>| -> Vec<u128> {
        v.into_iter()
            .filter(|&t| t > since)
            .map(|t| (t - since) / 1_000_000)
            .collect()
    };
    agents
        .iter()
        .map(|a| {
            format!(
                "{} (pid {}): starts {:?} checks {:?}\n",
                a.name,
                a.proc.pid(),
                ms(a.starts()),
                ms(a.healthy())
            )
        })
        .collect()
}
