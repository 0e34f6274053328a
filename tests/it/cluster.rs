//! Cluster mode against a real `redis-server`: three nodes on port 0, agents on different
//! nodes, and the faults of issue 4 (a node killed, Redis stopped and restarted without its
//! data, subscriber connections killed), ending with a chaos run (all of those at once, plus
//! agents killed and restarted from their state) that checks no update is lost, none is
//! applied out of order, no output file is seen partial and no value goes back.
//!
//! Every process writes its log into the test's scratch directory; when a test fails the
//! directory is kept and the tail of each log is printed.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value as Json, json};

use crate::support::{
    BENCH_BIN, BIN, DEADLINE, Work, alive, run_to_end, wait_for, wait_for_within,
};

/// The environment every test follows.
const ENV: &str = "prod";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A child process whose stdout and stderr go to files; SIGKILLed and reaped on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(program: &str, args: &[String], cwd: &Path, log: PathBuf) -> Proc {
        let out = fs::File::create(log.with_extension("out")).expect("stdout file");
        let err = fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Proc { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One command to Redis over a plain connection (inline protocol); the whole reply.
fn redis_cmd(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // QUIT makes the server close after answering, so reading to the end gets the reply.
    s.write_all(format!("{cmd}\r\nQUIT\r\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// A redis-server on a loopback port, without persistence: a restart loses everything.
struct Redis {
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    starts: usize,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: dir.to_path_buf(),
            proc: None,
            starts: 0,
        };
        r.launch();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start on `self.port` and wait until this very process answers; retry briefly if the
    /// port is taken.
    fn launch(&mut self) {
        let start = Instant::now();
        loop {
            self.starts += 1;
            let args: Vec<String> = [
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.dir.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = self.dir.join(format!("redis.{}.log", self.starts));
            let mut p = Proc::spawn("redis-server", &args, &self.dir, log);
            let ours = format!("process_id:{}", p.pid());
            loop {
                if redis_cmd(self.port, "INFO server").is_ok_and(|r| r.contains(&ours)) {
                    self.proc = Some(p);
                    return;
                }
                if p.exited() || start.elapsed() > DEADLINE {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            assert!(
                start.elapsed() < DEADLINE,
                "redis-server did not start on port {}: {}",
                self.port,
                p.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Kill every Pub/Sub connection; returns how many there were.
    fn kill_subscribers(&self) -> u64 {
        let reply = redis_cmd(self.port, "CLIENT KILL TYPE pubsub").expect("CLIENT KILL");
        reply
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(':'))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected CLIENT KILL reply {reply:?}"))
    }
}

/// A `tether serve` node of the cluster. Restarts keep its port.
struct Node {
    id: String,
    port: u16,
    redis: String,
    dir: PathBuf,
    extra: Vec<String>,
    proc: Option<Proc>,
    starts: usize,
}

impl Node {
    fn start(id: &str, redis: &str, dir: &Path, extra: &[&str]) -> Node {
        let mut n = Node {
            id: id.to_string(),
            port: 0,
            redis: redis.to_string(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
            starts: 0,
        };
        n.launch();
        n
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn up(&self) -> bool {
        self.proc.is_some()
    }

    /// Start listening on `self.port` (0 the first time) and wait for its "node listening"
    /// line; on a fixed port that is briefly taken, try again.
    fn launch(&mut self) {
        let start = Instant::now();
        loop {
            self.starts += 1;
            let mut args: Vec<String> = vec![
                "serve".into(),
                "--listen".into(),
                format!("127.0.0.1:{}", self.port),
                "--redis".into(),
                self.redis.clone(),
                "--node-id".into(),
                self.id.clone(),
                "--repair-interval".into(),
                "500ms".into(),
                "--heartbeat".into(),
                "1s".into(),
                "--log-format".into(),
                "json".into(),
            ];
            args.extend(self.extra.iter().cloned());
            let log = self
                .dir
                .join(format!("node-{}.{}.log", self.id, self.starts));
            let mut p = Proc::spawn(BIN, &args, &self.dir, log);
            loop {
                let port = p.log().lines().find_map(|l| {
                    let v: Json = serde_json::from_str(l).ok()?;
                    v.get("addr")?.as_str()?.rsplit(':').next()?.parse().ok()
                });
                if let Some(port) = port {
                    self.port = port;
                    self.proc = Some(p);
                    return;
                }
                if p.exited() || start.elapsed() > DEADLINE {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            assert!(
                self.port != 0 && start.elapsed() < DEADLINE,
                "node {} did not start: {}",
                self.id,
                p.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGKILL, then start again on the same port.
    fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Every log of every start, in order.
    fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                fs::read_to_string(self.dir.join(format!("node-{}.{i}.log", self.id)))
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// A `tether run` agent following `prod` on some nodes, rendering a dotenv file and
/// signalling the fixture child on change. The signal is WINCH, whose default action is to
/// do nothing: a change that lands in the instant between the child's start and the moment
/// it installs its handlers must not kill it (USR1 would: that race belongs to any reload
/// signal, and is not what these tests are about).
struct Agent {
    name: String,
    dir: PathBuf,
    servers: Vec<String>,
    out: PathBuf,
    record: PathBuf,
    proc: Proc,
    /// Processes started so far (each keeps its own log).
    runs: usize,
}

impl Agent {
    fn start(dir: &Path, name: &str, servers: &[String]) -> Agent {
        let out = dir.join(format!("{name}.env"));
        let record = dir.join(format!("{name}.record"));
        let proc = Agent::spawn(dir, name, servers, &dir.join(format!("{name}.log")));
        Agent {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            servers: servers.to_vec(),
            out,
            record,
            proc,
            runs: 1,
        }
    }

    /// SIGKILL the agent (its child goes with it) and start it again with the same state
    /// directory and output; the new process logs to `NAME.RUN.log`.
    fn restart(&mut self) {
        self.proc.kill();
        self.respawn();
    }

    fn respawn(&mut self) {
        self.runs += 1;
        let log = self.dir.join(format!("{}.{}.log", self.name, self.runs));
        self.proc = Agent::spawn(&self.dir, &self.name, &self.servers, &log);
    }

    /// The log of every process, in order.
    fn logs(&self) -> Vec<String> {
        (1..=self.runs)
            .map(|run| {
                let name = match run {
                    1 => format!("{}.log", self.name),
                    n => format!("{}.{n}.log", self.name),
                };
                fs::read_to_string(self.dir.join(name)).unwrap_or_default()
            })
            .collect()
    }

    fn spawn(dir: &Path, name: &str, servers: &[String], log: &Path) -> Proc {
        let out = dir.join(format!("{name}.env"));
        let record = dir.join(format!("{name}.record"));
        let mut args: Vec<String> = vec!["run".into()];
        for s in servers {
            args.push("--server".into());
            args.push(s.clone());
        }
        args.extend(
            [
                "--env",
                ENV,
                "--state-dir",
                &dir.join(format!("{name}.state")).display().to_string(),
                "--output",
                &out.display().to_string(),
                "--no-env",
                "--on-change",
                "signal:WINCH",
                "--debounce",
                "0",
                "--log-level",
                "info,tether=debug",
                "--log-format",
                "json",
                "--",
                BENCH_BIN,
                "child",
                "--record",
                &record.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        Proc::spawn(BIN, &args, dir, log.to_path_buf())
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn value(&self, key: &str) -> Option<String> {
        dotenv_value(&self.output(), key)
    }

    fn log(&self) -> String {
        self.proc.log()
    }

    /// How often the fixture child was started.
    fn child_starts(&self) -> usize {
        fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("start "))
            .count()
    }

    /// Connections made, by every process so far.
    fn connects(&self) -> usize {
        self.logs()
            .iter()
            .flat_map(|l| log_events(l))
            .filter(|v| v["message"] == "connected to node")
            .count()
    }

    /// Where the agent's state stands, from its last applied snapshot or change set.
    fn position(&self) -> Option<Pos> {
        applied(&self.log()).last().map(|a| a.pos())
    }
}

fn dotenv_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// Redis, some nodes and the agents of one test. Dropping it stops everything; on a failed
/// test it prints the tail of every log and keeps the directory.
struct Cluster {
    work: Work,
    redis: Redis,
    nodes: Vec<Node>,
    agents: Vec<Agent>,
}

impl Cluster {
    /// Redis and `n` nodes (`a`, `b`, `c`...), each ready (subscribed).
    fn start(n: usize, node_args: &[&str]) -> Cluster {
        let work = Work::new();
        let redis = Redis::start(work.dir.path());
        let nodes = (0..n)
            .map(|i| {
                let id = ((b'a' + i as u8) as char).to_string();
                Node::start(&id, &redis.url(), work.dir.path(), node_args)
            })
            .collect();
        let c = Cluster {
            work,
            redis,
            nodes,
            agents: Vec::new(),
        };
        for n in &c.nodes {
            wait_for(&format!("node {} ready", n.id), || {
                get(n.port, "/readyz").is_ok_and(|(s, _)| s == 200)
            });
        }
        c
    }

    fn dir(&self) -> &Path {
        self.work.dir.path()
    }

    /// Start an agent pointed at the given nodes and wait until it rendered its first state
    /// and its child runs; returns its index.
    fn agent(&mut self, nodes: &[usize]) -> usize {
        let servers: Vec<String> = nodes.iter().map(|&i| self.nodes[i].url()).collect();
        let name = format!("agent{}", self.agents.len() + 1);
        let a = Agent::start(self.dir(), &name, &servers);
        self.agents.push(a);
        let a = self.agents.last().expect("just pushed");
        wait_for(&format!("{name}'s first render and child"), || {
            a.out.exists() && a.child_starts() == 1
        });
        self.agents.len() - 1
    }

    /// Commit through node `i`, which must succeed; returns the new position.
    fn write(&self, i: usize, pairs: &[(&str, &str)]) -> Pos {
        match post_changes(self.nodes[i].port, pairs) {
            Ok((200, body)) => Pos::from_json(&body["position"]),
            other => panic!(
                "write {pairs:?} through node {}: {other:?}",
                self.nodes[i].id
            ),
        }
    }

    /// Wait until every agent's output has `key=value`.
    fn converge(&self, key: &str, value: &str, within: Duration) {
        wait_for_within(
            &format!("every agent to render {key}={value}"),
            within,
            &mut || {
                self.agents
                    .iter()
                    .all(|a| a.value(key).as_deref() == Some(value))
            },
        );
    }

    /// Index of the one node that reports the agent connected (status "connected").
    fn connected_node(&self) -> usize {
        let mut found = None;
        wait_for("the agent to be connected to exactly one node", || {
            let on: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].up())
                .filter(|&i| {
                    get(
                        self.nodes[i].port,
                        &format!("/v1/envs/{ENV}/status?scope=node"),
                    )
                    .is_ok_and(|(s, v)| s == 200 && v["agents"].as_u64() == Some(1))
                })
                .collect();
            found = on.first().copied();
            on.len() == 1
        });
        found.expect("found")
    }

    fn dump(&self) {
        let tail = |name: &str, text: &str| {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            eprintln!("--- {name} (last {} lines):", lines.len() - from);
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        };
        for n in &self.nodes {
            tail(&format!("node {}", n.id), &n.logs());
        }
        for a in &self.agents {
            tail(&a.name, &a.log());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump();
            let kept = std::mem::replace(&mut self.work, Work::new()).dir.keep();
            eprintln!("--- logs kept in {}", kept.display());
        }
        // Agents first, so they do not spend their last moments failing over.
        self.agents.clear();
        for n in &mut self.nodes {
            n.kill();
        }
        self.redis.kill();
    }
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

fn read_json(mut resp: ureq::http::Response<ureq::Body>) -> Result<(u16, Json), String> {
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Json::Null)))
}

fn get(port: u16, path: &str) -> Result<(u16, Json), String> {
    let resp = http()
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .map_err(|e| e.to_string())?;
    read_json(resp)
}

fn get_text(port: u16, path: &str) -> String {
    http()
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

/// One change set setting each pair, through the node on `port`.
fn post_changes_with(
    http: &ureq::Agent,
    port: u16,
    pairs: &[(&str, &str)],
) -> Result<(u16, Json), String> {
    let changes: Vec<Json> = pairs
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let resp = http
        .post(&format!("http://127.0.0.1:{port}/v1/envs/{ENV}/changes"))
        .send_json(json!({ "changes": changes }))
        .map_err(|e| e.to_string())?;
    read_json(resp)
}

fn post_changes(port: u16, pairs: &[(&str, &str)]) -> Result<(u16, Json), String> {
    post_changes_with(&http(), port, pairs)
}

/// A metric of a node's `/metrics`.
fn metric(port: u16, name: &str) -> Option<u64> {
    get_text(port, "/metrics").lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A position as the agent logs it (`EPOCH/VERSION`, epoch in hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    epoch: u64,
    version: u64,
}

impl Pos {
    fn parse(s: &str) -> Option<Pos> {
        let (e, v) = s.split_once('/')?;
        Some(Pos {
            epoch: u64::from_str_radix(e, 16).ok()?,
            version: v.parse().ok()?,
        })
    }

    fn from_json(v: &Json) -> Pos {
        Pos {
            epoch: v["epoch"]
                .as_str()
                .and_then(|e| u64::from_str_radix(e, 16).ok())
                .unwrap_or_else(|| panic!("no epoch in {v}")),
            version: v["version"]
                .as_u64()
                .unwrap_or_else(|| panic!("no version in {v}")),
        }
    }
}

/// What an agent's network source did to its state, from its log.
#[derive(Clone, Copy, Debug)]
enum Applied {
    Resumed(Pos),
    Snapshot(Pos),
    Change(Pos),
}

impl Applied {
    fn pos(self) -> Pos {
        match self {
            Applied::Resumed(p) | Applied::Snapshot(p) | Applied::Change(p) => p,
        }
    }
}

fn log_events(log: &str) -> Vec<Json> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .collect()
}

fn applied(log: &str) -> Vec<Applied> {
    log_events(log)
        .iter()
        .filter_map(|v| {
            let pos = || Pos::parse(v["position"].as_str()?);
            match v["message"].as_str()? {
                "resuming from saved state" => Some(Applied::Resumed(pos()?)),
                "snapshot applied" => Some(Applied::Snapshot(pos()?)),
                "change set applied" => Some(Applied::Change(pos()?)),
                _ => None,
            }
        })
        .collect()
}

/// The position rules, checked on what an agent applied: a change set only at exactly one
/// above the previous position of the same epoch; a snapshot only forward (a newer epoch, or
/// a higher version of the same one). Returns how many snapshots were applied.
fn check_order(name: &str, events: &[Applied]) -> usize {
    let mut cur: Option<Pos> = None;
    let mut snapshots = 0;
    for (i, e) in events.iter().enumerate() {
        let ok = match (*e, cur) {
            (Applied::Resumed(_), None) => true,
            (Applied::Resumed(_), Some(_)) => false,
            (Applied::Snapshot(_), None) => true,
            (Applied::Snapshot(p), Some(c)) => p > c,
            (Applied::Change(p), Some(c)) => p.epoch == c.epoch && p.version == c.version + 1,
            (Applied::Change(_), None) => false,
        };
        assert!(
            ok,
            "{name}: {e:?} (event {i}) does not follow {cur:?}; all events: {events:?}"
        );
        if matches!(e, Applied::Snapshot(_)) {
            snapshots += 1;
        }
        cur = Some(e.pos());
    }
    snapshots
}

/// Sets a flag when its thread panics, so the other threads of a scope stop too (the scope
/// waits for them before passing the panic on).
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// What a reader saw of one agent's output file.
#[derive(Default)]
struct Seen {
    reads: u64,
    last: u64,
    problems: Vec<String>,
}

/// Read `path` every millisecond until `stop`: each read must be a whole render (ends with a
/// newline, `K` and `K2` from the same change set) and `K` must never go down.
fn watch_output(path: &Path, stop: &AtomicBool, seen: &Mutex<Seen>) {
    while !stop.load(Ordering::SeqCst) {
        match fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("read {}: {e}", path.display()),
            Ok(text) => {
                let mut s = seen.lock().unwrap();
                s.reads += 1;
                let k = dotenv_value(&text, "K");
                let k2 = dotenv_value(&text, "K2");
                match (k.as_deref().map(str::parse::<u64>), k2) {
                    (Some(Ok(k)), Some(k2)) if text.ends_with('\n') && k.to_string() == k2 => {
                        if k < s.last {
                            let m = format!("K went back from {} to {k}", s.last);
                            s.problems.push(m);
                        }
                        s.last = k;
                    }
                    _ => {
                        let m = format!("partial or inconsistent output: {text:?}");
                        s.problems.push(m);
                    }
                }
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Write `K=n`, `K2=n` for n in `range`, each through a random live node, retrying a write
/// that failed (503, connection refused) until it commits. Returns (attempts, successes).
/// Gives up early when `stop` is set (the test failed elsewhere).
fn write_counter(
    ports: &[u16],
    range: std::ops::RangeInclusive<u64>,
    pace: std::ops::Range<u64>,
    mut rng: StdRng,
    progress: &AtomicU64,
    stop: &AtomicBool,
) -> (u64, u64) {
    let _stop = StopOnPanic(stop);
    let http = http();
    let (mut attempts, mut ok) = (0, 0);
    for n in range {
        let v = n.to_string();
        let start = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                return (attempts, ok);
            }
            let port = ports[rng.gen_range(0..ports.len())];
            attempts += 1;
            match post_changes_with(&http, port, &[("K", &v), ("K2", &v)]) {
                Ok((200, _)) => {
                    ok += 1;
                    break;
                }
                Ok((503, body)) => assert_eq!(body["error"]["code"], "unavailable", "{body}"),
                Ok((status, body)) => panic!("write K={v}: unexpected HTTP {status}: {body}"),
                Err(_) => {}
            }
            assert!(
                start.elapsed() < DEADLINE,
                "write K={v} could not commit through any node for {DEADLINE:?}"
            );
            // Pace the retries (the faults clear up by themselves).
            thread::sleep(Duration::from_millis(10));
        }
        progress.store(n, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(rng.gen_range(pace.clone())));
    }
    (attempts, ok)
}

/// No node panicked.
fn assert_no_panic(c: &Cluster) {
    for n in &c.nodes {
        assert!(!n.logs().contains("panicked"), "node {} panicked", n.id);
    }
    for a in &c.agents {
        for log in a.logs() {
            assert!(!log.contains("panicked"), "{} panicked", a.name);
        }
    }
}

#[test]
fn a_write_through_any_node_reaches_agents_on_every_node() {
    let mut c = Cluster::start(3, &[]);
    // Each agent knows one node only; the environment does not exist yet (empty render).
    c.agent(&[0]);
    c.agent(&[1]);

    let node_c = c.nodes[2].url();
    let (code, out, err) = run_to_end(c.dir(), &["put", "--server", &node_c, "--env", ENV, "K=1"]);
    assert_eq!(code, 0, "{out}{err}");
    c.converge("K", "1", DEADLINE);

    // Two entries in one put: one change set, one version.
    let (code, out, err) = run_to_end(
        c.dir(),
        &["put", "--server", &node_c, "--env", ENV, "X=1", "Y=2"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("at version 2"), "{out}");
    c.converge("Y", "2", DEADLINE);
    let (status, view) = get(c.nodes[0].port, &format!("/v1/envs/{ENV}")).unwrap();
    assert_eq!(status, 200);
    assert_eq!(view["position"]["version"], 2, "{view}");
    assert_eq!(view["entries"].as_array().map(Vec::len), Some(3), "{view}");

    for a in &c.agents {
        assert_eq!(a.value("X").as_deref(), Some("1"));
        let events = applied(&a.log());
        check_order(&a.name, &events);
        // The put of X and Y arrived as one change set at version 2.
        let at2: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Applied::Change(p) if p.version == 2))
            .collect();
        assert_eq!(at2.len(), 1, "{}: {events:?}", a.name);
    }
    // Each agent is on its own node, and each acknowledged the current version there.
    for (i, expect) in [(0, 1), (1, 1), (2, 0)] {
        let port = c.nodes[i].port;
        wait_for("acknowledgements on every node", || {
            get(port, &format!("/v1/envs/{ENV}/status?scope=node")).is_ok_and(|(_, s)| {
                s["scope"] == "node"
                    && s["agents"].as_u64() == Some(expect)
                    && s["current"].as_u64() == Some(expect)
            })
        });
    }
    // Any node answers for the whole cluster (a load balancer sends the request anywhere),
    // node C too, which has no agent of its own.
    for i in 0..3 {
        let port = c.nodes[i].port;
        wait_for("the cluster's rollout from every node", || {
            get(port, &format!("/v1/envs/{ENV}/status")).is_ok_and(|(_, s)| {
                s["scope"] == "cluster"
                    && s["agents"].as_u64() == Some(2)
                    && s["current"].as_u64() == Some(2)
                    && s["by_version"]["2"].as_u64() == Some(2)
            })
        });
    }
    let (_, s) = get(c.nodes[2].port, &format!("/v1/envs/{ENV}/status")).unwrap();
    let on: std::collections::BTreeSet<&str> = s["connected"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["node"].as_str())
        .collect();
    let expect: std::collections::BTreeSet<&str> =
        [c.nodes[0].id.as_str(), c.nodes[1].id.as_str()].into();
    assert_eq!(on, expect, "{s}");
    // `tether status` given one node, or all of them, reports the cluster once.
    let servers: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("http://127.0.0.1:{}", n.port))
        .collect();
    for given in [&servers[2..], &servers[..]] {
        let mut args = vec!["status", "--env", ENV, "--json"];
        for s in given {
            args.extend(["--server", s.as_str()]);
        }
        let (code, out, err) = crate::support::run_to_end(std::path::Path::new("/"), &args);
        assert_eq!(code, 0, "{err}");
        let total: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(total["agents"], 2, "{out}");
        assert_eq!(total["current"], 2, "{out}");
        assert_eq!(total["nodes"].as_array().map(Vec::len), Some(3), "{out}");
    }
    // A node that goes away drops out of the registry once its entry expires.
    c.nodes[1].kill();
    wait_for("the killed node's agents to drop out", || {
        get(c.nodes[2].port, &format!("/v1/envs/{ENV}/status")).is_ok_and(|(_, s)| {
            s["node_registries"]
                .as_array()
                .is_some_and(|n| n.iter().all(|n| n["node"] != c.nodes[1].id.as_str()))
        })
    });
    assert_no_panic(&c);
}

#[test]
fn killing_a_node_moves_its_agent_to_another_with_nothing_lost() {
    let mut c = Cluster::start(3, &[]);
    c.write(0, &[("K", "1")]);
    let a = c.agent(&[0, 1, 2]);
    c.converge("K", "1", DEADLINE);
    let mut last = 1;
    for _ in 0..2 {
        let victim = c.connected_node();
        c.nodes[victim].kill();
        // Writes go on through a remaining node while the agent fails over.
        let live = (0..3).find(|&i| c.nodes[i].up()).expect("a live node");
        for _ in 0..5 {
            last += 1;
            c.write(live, &[("K", &last.to_string())]);
        }
        c.converge("K", &last.to_string(), DEADLINE);
    }
    let agent = &c.agents[a];
    let events = applied(&agent.log());
    // One snapshot (the first state); everything after came as change sets from history.
    assert_eq!(check_order(&agent.name, &events), 1, "{events:?}");
    assert_eq!(events.last().map(|e| e.pos().version), Some(last));
    assert!(
        agent.connects() >= 3,
        "the agent connected {} times",
        agent.connects()
    );
    assert_eq!(agent.child_starts(), 1, "the child was restarted");
    assert_no_panic(&c);
}

#[test]
fn redis_down_degrades_and_redis_back_empty_resumes_without_going_back() {
    // Redis without persistence, which the nodes are told may lose its data.
    let mut c = Cluster::start(3, &["--reset-store"]);
    let a1 = c.agent(&[0]);
    c.agent(&[1]);
    let old = c.write(2, &[("K", "1")]);
    c.converge("K", "1", DEADLINE);
    c.write(2, &[("K", "2")]);
    c.converge("K", "2", DEADLINE);
    let connects: Vec<usize> = c.agents.iter().map(Agent::connects).collect();

    c.redis.kill();
    for n in &c.nodes {
        let (status, body) = post_changes(n.port, &[("K", "3")]).expect("an answer");
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("redis"), "{body}");
        assert_eq!(get(n.port, "/healthz").map(|r| r.0), Ok(200));
        wait_for("readyz to report degraded", || {
            get(n.port, "/readyz").is_ok_and(|(s, v)| {
                s == 503 && v["status"] == "degraded" && v["reason"].is_string()
            })
        });
    }
    // Agent connections stay up: their nodes go on sending heartbeats for longer than an
    // agent waits before it calls a connection dead (2.5 heartbeats).
    let frames = |i: usize| metric(c.nodes[i].port, "tether_frames_sent_total").unwrap_or(0);
    let before = [frames(0), frames(1)];
    wait_for("three heartbeats to each agent while redis is down", || {
        frames(0) >= before[0] + 3 && frames(1) >= before[1] + 3
    });
    for i in 0..2 {
        assert_eq!(metric(c.nodes[i].port, "tether_agents_connected"), Some(1));
    }
    let now: Vec<usize> = c.agents.iter().map(Agent::connects).collect();
    assert_eq!(now, connects, "agents reconnected while redis was down");

    // Redis comes back without its data: the nodes recover by themselves.
    c.redis.launch();
    for n in &c.nodes {
        wait_for("readyz back to ready", || {
            get(n.port, "/readyz").is_ok_and(|(s, _)| s == 200)
        });
    }
    // An agent reconnecting now is ahead of the (empty) store: it keeps what it has.
    c.nodes[0].restart();
    let agent1 = &c.agents[a1];
    wait_for("agent 1 to reconnect to the restarted node", || {
        agent1.connects() > connects[a1] && agent1.log().contains("older snapshot ignored")
    });
    assert_eq!(agent1.value("K").as_deref(), Some("2"));
    // So does an agent that starts now from its saved state: the node has nothing newer, so
    // it renders what it saved and starts its child.
    c.agents[1].restart();
    let agent2 = &c.agents[1];
    wait_for("agent 2 to start again from its saved state", || {
        agent2.child_starts() == 2 && agent2.log().contains("first render complete")
    });
    assert_eq!(agent2.value("K").as_deref(), Some("2"));
    assert!(agent2.log().contains("resuming from saved state"));

    // A new write starts a new history; every agent takes it through a snapshot.
    let new = c.write(2, &[("K", "3")]);
    assert!(
        new.epoch > old.epoch && new.version == 1,
        "{old:?} then {new:?}"
    );
    c.converge("K", "3", DEADLINE);
    for a in &c.agents {
        let events = applied(&a.log());
        check_order(&a.name, &events);
        assert!(
            matches!(events.last(), Some(Applied::Snapshot(p)) if *p == new),
            "{}: {events:?}",
            a.name
        );
        assert_eq!(
            a.child_starts(),
            a.runs,
            "{}: the child was restarted",
            a.name
        );
    }
    assert_no_panic(&c);
}

#[test]
fn killed_subscriber_connections_are_repaired_from_the_stream() {
    const WRITES: u64 = 150;
    let mut c = Cluster::start(3, &[]);
    c.write(0, &[("K", "0"), ("K2", "0")]);
    for i in 0..3 {
        c.agent(&[i]);
    }
    c.converge("K", "0", DEADLINE);
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.port).collect();
    let stop = AtomicBool::new(false);
    let seen: Vec<Mutex<Seen>> = c.agents.iter().map(|_| Mutex::default()).collect();
    let progress = AtomicU64::new(0);
    let (mut kills, mut killed) = (0u64, 0u64);
    thread::scope(|s| {
        for (a, seen) in c.agents.iter().zip(&seen) {
            let (stop, out) = (&stop, a.out.clone());
            s.spawn(move || watch_output(&out, stop, seen));
        }
        let _stop = StopOnPanic(&stop);
        let writer = s.spawn(|| {
            write_counter(
                &ports,
                1..=WRITES,
                1..6,
                StdRng::from_entropy(),
                &progress,
                &stop,
            )
        });
        while !writer.is_finished() {
            kills += 1;
            killed += c.redis.kill_subscribers();
            // Pace the kills over the writes.
            thread::sleep(Duration::from_millis(30));
        }
        let (attempts, ok) = writer.join().expect("writer");
        eprintln!(
            "pubsub: {ok} writes committed ({attempts} attempts); {kills} CLIENT KILL, {killed} subscriber connections killed"
        );
        let within = Duration::from_secs(30);
        c.converge("K", &WRITES.to_string(), within);
        wait_for("every reader to see the last write", || {
            seen.iter().all(|s| s.lock().unwrap().last == WRITES)
        });
        stop.store(true, Ordering::SeqCst);
    });
    assert!(killed > 0, "no subscriber connection was killed");
    for (a, seen) in c.agents.iter().zip(&seen) {
        let seen = seen.lock().unwrap();
        assert!(seen.problems.is_empty(), "{}: {:?}", a.name, seen.problems);
        assert_eq!(seen.last, WRITES, "{}", a.name);
        check_order(&a.name, &applied(&a.log()));
    }
    assert_no_panic(&c);
}

#[derive(Debug, Default)]
struct Faults {
    node_kills: u64,
    pubsub_kills: u64,
    subscribers_killed: u64,
    redis_restarts: u64,
    agent_restarts: u64,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL this many random nodes at once, restart them after a while.
    Nodes(usize),
    /// `CLIENT KILL TYPE pubsub`.
    Pubsub,
    /// SIGKILL Redis, restart it empty after a while.
    Redis,
    /// SIGKILL a random agent, restart it after a while from its state directory.
    AgentKill,
}

/// Inject `schedule` spread over the writes: fault `i` once the writer has committed
/// `(i + 1) * writes / (len + 1)` writes.
#[allow(clippy::too_many_arguments)]
fn inject(
    schedule: &[Fault],
    writes: u64,
    mut rng: StdRng,
    progress: &AtomicU64,
    stop: &AtomicBool,
    nodes: &mut [Node],
    redis: &mut Redis,
    agents: &Mutex<Vec<Agent>>,
) -> Faults {
    let _stop = StopOnPanic(stop);
    let mut f = Faults::default();
    for (i, fault) in schedule.iter().enumerate() {
        let at = (i as u64 + 1) * writes / (schedule.len() as u64 + 1);
        let start = Instant::now();
        while progress.load(Ordering::SeqCst) < at {
            if stop.load(Ordering::SeqCst) {
                return f;
            }
            assert!(start.elapsed() < DEADLINE * 2, "the writer stalled");
            thread::sleep(Duration::from_millis(2));
        }
        // Down for a while (pacing, not synchronization): writes go on meanwhile.
        let down = Duration::from_millis(rng.gen_range(100..500));
        match fault {
            Fault::Nodes(k) => {
                let mut victims: Vec<usize> = (0..nodes.len()).collect();
                victims.shuffle(&mut rng);
                victims.truncate(*k);
                for &n in &victims {
                    nodes[n].kill();
                }
                thread::sleep(down);
                for &n in &victims {
                    nodes[n].launch();
                }
                f.node_kills += victims.len() as u64;
            }
            Fault::Pubsub => {
                f.subscribers_killed += redis.kill_subscribers();
                f.pubsub_kills += 1;
            }
            Fault::Redis => {
                redis.kill();
                thread::sleep(down);
                redis.launch();
                f.redis_restarts += 1;
            }
            Fault::AgentKill => {
                let mut agents = agents.lock().unwrap();
                let a = rng.gen_range(0..agents.len());
                agents[a].proc.kill();
                thread::sleep(down);
                agents[a].respawn();
                f.agent_restarts += 1;
            }
        }
    }
    f
}

/// The chaos run's seed: `TETHER_CHAOS_SEED` when set (to replay a run), else a fresh one.
/// Printed either way (test output is shown when the test fails).
fn chaos_seed() -> u64 {
    let seed = match std::env::var("TETHER_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TETHER_CHAOS_SEED={s:?}: not a number (a u64)")),
        Err(_) => rand::random(),
    };
    eprintln!("chaos: seed {seed} (replay with TETHER_CHAOS_SEED={seed})");
    seed
}

/// The chaos run. Redis, three nodes (short history) and six agents (two per node;
/// three fail over among all nodes, three know only their own). One writer commits
/// `K=n, K2=n` for n = 1..=WRITES through random nodes, retrying what fails; meanwhile faults
/// are injected, spread over the writes: nodes SIGKILLed (one or two at a time) and
/// restarted on their ports, subscriber connections killed, Redis SIGKILLed and restarted
/// empty (twice: each time history starts again under a new epoch), agents SIGKILLed and
/// restarted from their state directory. Checked: every agent converges to the last write
/// and the store's position; each agent process applied change sets at exactly +1 or moved
/// forward by a snapshot; a reader per agent never saw a partial output file nor `K` going
/// down; no agent restarted its child.
///
/// Its random choices (the node each write goes to, the writer's pace, which nodes and
/// agents are killed, how long each stays down) come from one seed: `TETHER_CHAOS_SEED=N`
/// replays them (the timing of real processes still varies); without it a seed is drawn.
/// The seed is printed first, so a failing run's output says how to replay it.
#[test]
fn chaos_run_loses_nothing() {
    const WRITES: u64 = 800;
    let mut seeds = StdRng::seed_from_u64(chaos_seed());
    let (writer_rng, injector_rng) = (
        StdRng::seed_from_u64(seeds.r#gen()),
        StdRng::seed_from_u64(seeds.r#gen()),
    );
    use Fault::*;
    #[rustfmt::skip]
    let schedule = [
        Pubsub, Nodes(1), AgentKill, Pubsub, Nodes(1), Nodes(2), Pubsub, Redis, AgentKill,
        Pubsub, Nodes(1), Pubsub, Nodes(2), AgentKill, Nodes(1), Pubsub, Redis, Nodes(1),
        Pubsub, AgentKill, Nodes(2), Pubsub, Nodes(1), Pubsub,
    ];
    let started = Instant::now();
    // A short history, so agents that were away long enough need a snapshot.
    // Redis restarts empty: the nodes are told it may lose its data.
    let mut c = Cluster::start(3, &["--history", "30", "--reset-store"]);
    c.write(0, &[("K", "0"), ("K2", "0")]);
    // Six agents, two per node: half fail over among all three, half know only their node.
    for i in 0..6 {
        let nodes: Vec<usize> = if i < 3 {
            vec![i, (i + 1) % 3, (i + 2) % 3]
        } else {
            vec![i % 3]
        };
        c.agent(&nodes);
    }
    c.converge("K", "0", DEADLINE);

    let ports: Vec<u16> = c.nodes.iter().map(|n| n.port).collect();
    let outs: Vec<PathBuf> = c.agents.iter().map(|a| a.out.clone()).collect();
    let stop = AtomicBool::new(false);
    let seen: Vec<Mutex<Seen>> = outs.iter().map(|_| Mutex::default()).collect();
    let progress = AtomicU64::new(0);
    // The fault injector restarts agents while the test watches them.
    let agents = Mutex::new(std::mem::take(&mut c.agents));
    let Cluster { nodes, redis, .. } = &mut c;
    let (attempts, ok, faults) = thread::scope(|s| {
        for (out, seen) in outs.iter().zip(&seen) {
            let stop = &stop;
            s.spawn(move || watch_output(out, stop, seen));
        }
        let _stop = StopOnPanic(&stop);
        let writer =
            s.spawn(|| write_counter(&ports, 1..=WRITES, 0..8, writer_rng, &progress, &stop));
        let injector = s.spawn(|| {
            inject(
                &schedule,
                WRITES,
                injector_rng,
                &progress,
                &stop,
                nodes,
                redis,
                &agents,
            )
        });
        let faults = injector.join().expect("fault injector");
        let (attempts, ok) = writer.join().expect("writer");
        let writes_done = Instant::now();
        let last = WRITES.to_string();
        wait_for_within(
            "every agent to converge within 30s of the last write",
            Duration::from_secs(30),
            &mut || {
                let agents = agents.lock().unwrap();
                agents
                    .iter()
                    .all(|a| a.value("K").as_deref() == Some(&last))
            },
        );
        let converged_in = writes_done.elapsed();
        eprintln!(
            "chaos: writes {ok} committed / {attempts} attempted; faults: {} nodes killed, {} CLIENT KILL pubsub ({} connections), {} redis restarts, {} agents killed; all agents converged {converged_in:?} after the last write",
            faults.node_kills,
            faults.pubsub_kills,
            faults.subscribers_killed,
            faults.redis_restarts,
            faults.agent_restarts,
        );
        wait_for("every reader to see the last write", || {
            seen.iter().all(|s| s.lock().unwrap().last == WRITES)
        });
        stop.store(true, Ordering::SeqCst);
        (attempts, ok, faults)
    });
    c.agents = agents.into_inner().unwrap();

    // The store's final position: every agent must stand exactly there.
    let (_, view) = get(c.nodes[0].port, &format!("/v1/envs/{ENV}")).expect("read the env");
    let fin = Pos::from_json(&view["position"]);
    for a in &c.agents {
        wait_for("every agent's position to be the store's", || {
            a.position() == Some(fin)
        });
    }
    let mut snapshots = 0;
    let mut reads = 0;
    for (a, seen) in c.agents.iter().zip(&seen) {
        let seen = seen.lock().unwrap();
        assert!(seen.problems.is_empty(), "{}: {:?}", a.name, seen.problems);
        assert_eq!(seen.last, WRITES, "{}", a.name);
        reads += seen.reads;
        let mut epochs = std::collections::BTreeSet::new();
        for (run, log) in a.logs().iter().enumerate() {
            let events = applied(log);
            snapshots += check_order(&format!("{} (run {})", a.name, run + 1), &events);
            epochs.extend(events.iter().map(|e| e.pos().epoch));
        }
        // Across a Redis restart that lost the data, the agent moved into a newer history
        // (it may skip a short-lived epoch it was not connected for: a snapshot jumps it).
        if faults.redis_restarts > 0 {
            assert!(
                epochs.len() >= 2 && epochs.last() == Some(&fin.epoch),
                "{}: did not move into the newest history: {epochs:?}",
                a.name
            );
        }
        assert!(alive(a.proc.pid() as i32), "{} exited", a.name);
        // One child per agent process (a process killed early may not have started one).
        let started: Vec<usize> = a
            .logs()
            .iter()
            .map(|l| {
                log_events(l)
                    .iter()
                    .filter(|v| v["message"] == "child started")
                    .count()
            })
            .collect();
        assert!(started.iter().all(|&n| n <= 1), "{}: {started:?}", a.name);
        assert_eq!(started.last(), Some(&1), "{}", a.name);
        assert_eq!(
            a.child_starts(),
            started.iter().sum::<usize>(),
            "{}",
            a.name
        );
    }
    let connects: usize = c.agents.iter().map(Agent::connects).sum();
    let converged = c
        .agents
        .iter()
        .filter(|a| a.value("K") == Some(WRITES.to_string()) && a.position() == Some(fin))
        .count();
    eprintln!(
        "chaos: {snapshots} snapshots applied, {connects} connections, {reads} output reads; {converged} of {} agents at {:016x}/{}; {:?} in all",
        c.agents.len(),
        fin.epoch,
        fin.version,
        started.elapsed(),
    );
    assert_eq!(converged, c.agents.len());
    assert_eq!(ok, WRITES);
    assert!(attempts >= ok);
    let scheduled = |f: fn(&Fault) -> bool| schedule.iter().filter(|x| f(x)).count() as u64;
    assert_eq!(faults.pubsub_kills, scheduled(|f| matches!(f, Pubsub)));
    assert_eq!(faults.redis_restarts, scheduled(|f| matches!(f, Redis)));
    assert_eq!(faults.agent_restarts, scheduled(|f| matches!(f, AgentKill)));
    assert!(faults.node_kills >= scheduled(|f| matches!(f, Nodes(_))));
    assert!(faults.subscribers_killed >= 1, "{faults:?}");
    assert!(
        snapshots >= 2 * c.agents.len(),
        "every agent starts from a snapshot and crosses each new epoch by one"
    );
    assert_no_panic(&c);
}

/// Redis restarts from an older snapshot of itself (RDB): the same epoch at a lower
/// version. Versions the agents already have would be reused for new changes and dropped
/// as duplicates; instead the nodes start a new history, and new writes reach everyone.
#[test]
fn redis_reloading_an_older_snapshot_does_not_swallow_new_writes() {
    let mut c = Cluster::start(2, &[]);
    c.write(1, &[("K", "1")]);
    c.agent(&[0]);
    c.write(1, &[("K", "2")]);
    c.converge("K", "2", DEADLINE);
    redis_cmd(c.redis.port, "SAVE").expect("SAVE");
    for k in 3..=5 {
        c.write(1, &[("K", &k.to_string())]);
    }
    c.converge("K", "5", DEADLINE);

    // Redis dies and comes back from the snapshot taken at K=2.
    c.redis.kill();
    c.redis.launch();
    wait_for("redis reloaded the older snapshot", || {
        redis_cmd(c.redis.port, "HGET tether:env:{prod}:values K").is_ok_and(|r| r.contains('2'))
    });
    wait_for("nodes ready again", || {
        c.nodes
            .iter()
            .all(|n| get(n.port, "/readyz").is_ok_and(|(s, _)| s == 200))
    });
    c.write(1, &[("K", "6")]);
    c.converge("K", "6", DEADLINE);
    c.write(0, &[("K", "7")]);
    c.converge("K", "7", DEADLINE);
    assert_no_panic(&c);
}
