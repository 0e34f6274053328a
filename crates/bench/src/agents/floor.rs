//! The machine's floor for the fan-out figure. A bare node (`tether-bench bare-node`, a
//! process of its own as a node is) upgrades the same light clients and then, per round,
//! writes one change frame to each of them by a bare loop of `send(2)`, over as many threads
//! as a node's fan-out has: no HTTP request, no store, no judging, no locks. What is left
//! is the kernel's loopback TCP path and the clients, which the node's figure shares. The
//! bench alternates blocks of rounds between the node and this floor, so that both see the
//! same machine: a shared VM's speed changes from minute to minute.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use nix::sys::socket::MsgFlags;

use super::clients::Fleet;
use super::{cpu_ms, ms, percentile, settle};
use tether_core::protocol::{Epoch, Position, ServerMsg, WireChange};
use tether_core::secret::Value;
use tether_node::hub::{change_frame, encode, ws_text_frame};
use tether_node::store::ChangeSet;

/// The environment the clients follow.
const ENV: &str = "bench";

#[derive(Args, Debug, Clone)]
pub struct BareNodeArgs {
    /// Clients expected at once (sets the descriptor limit).
    #[arg(long)]
    pub count: usize,
    /// Sender threads.
    #[arg(long)]
    pub threads: usize,
}

/// `tether-bench bare-node`: print `addr ADDR`, then accept and upgrade clients for as long
/// as it runs. Commands on stdin, each answered on stdout: `send VERSION` writes that change
/// to every client held (`sent N`, N the clients that did not take it whole), `drop` closes
/// them all (`dropped`). Ends at the end of stdin.
pub fn bare_node(args: &BareNodeArgs) -> anyhow::Result<()> {
    super::raise_nofile(args.count as u64 + 1024);
    let listener = TcpListener::bind("127.0.0.1:0").context("listening")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "addr {}", listener.local_addr()?)?;
    out.flush()?;
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let acceptor = held.clone();
    std::thread::Builder::new()
        .name("bare-accept".into())
        .spawn(move || {
            loop {
                let Ok((mut s, _)) = listener.accept() else {
                    // Out of descriptors, say: wait for some to be closed, without spinning
                    // on the cores the figures are taken on.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                // A client that fails its upgrade never syncs: the bench reports it.
                let _ = upgrade(&mut s, &acceptor);
            }
        })
        .context("starting the acceptor")?;
    let senders = Senders::start(args.threads)?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line == "drop" {
            lock(&held).clear();
            writeln!(out, "dropped")?;
        } else if let Some(version) = line.strip_prefix("send ") {
            let version: u64 = version.parse().context("version")?;
            let fds: Arc<Vec<RawFd>> =
                Arc::new(lock(&held).iter().map(|c| c.as_raw_fd()).collect());
            // The descriptors stay open while the senders use them: only `drop`, which
            // waits for this answer, closes them.
            let short = senders.send(change(version), fds)?;
            writeln!(out, "sent {short}")?;
        } else {
            bail!("unknown command {line:?}");
        }
        out.flush()?;
    }
    Ok(())
}

fn lock(held: &Mutex<Vec<TcpStream>>) -> std::sync::MutexGuard<'_, Vec<TcpStream>> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read the upgrade request and the hello frame; answer 101, hold the connection, then
/// answer `synced` (so that a client synced is one that every later `send` reaches).
fn upgrade(s: &mut TcpStream, held: &Mutex<Vec<TcpStream>>) -> anyhow::Result<()> {
    // Bounded, so that a client that stalls cannot hold the acceptor.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("the client closed during the upgrade");
        }
        data.extend_from_slice(&buf[..n]);
    }
    // The light clients send RFC 6455's sample key, whose accept value this is (they do not
    // check it).
    s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )?;
    // The hello: a masked client frame, skipped whole (length, mask key, payload).
    let mut head = [0u8; 2];
    s.read_exact(&mut head)?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l)?;
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l)?;
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let skipped = std::io::copy(&mut Read::by_ref(s).take(len + 4), &mut std::io::sink())?;
    if skipped != len + 4 {
        bail!("the client closed during its hello");
    }
    let synced = encode(&ServerMsg::Synced {
        env: ENV.into(),
        position: position(0),
    });
    let mut held = lock(held);
    held.push(s.try_clone()?);
    s.write_all(&ws_text_frame(synced.as_bytes()))?;
    Ok(())
}

fn position(version: u64) -> Position {
    Position {
        epoch: Epoch(1),
        version,
    }
}

/// The change frame a node sends when `V` is set to `version`, built by the node's code.
fn change(version: u64) -> Bytes {
    let set = ChangeSet {
        env: ENV.into(),
        position: position(version),
        changes: vec![WireChange {
            name: "V".into(),
            value: Some(Value::from(version.to_string())),
            secret: false,
            delete: false,
        }],
    };
    ws_text_frame(change_frame(&set, true).as_bytes())
}

/// A frame, the connections, and where to say how many did not take it whole.
type Round = (Bytes, Arc<Vec<RawFd>>, mpsc::Sender<usize>);

/// Threads that each write a frame to their share of the connections, woken per frame as a
/// node's fan-out threads are.
struct Senders(Vec<mpsc::Sender<Round>>);

impl Senders {
    fn start(threads: usize) -> anyhow::Result<Senders> {
        let threads = threads.max(1);
        let mut senders = Vec::new();
        for t in 0..threads {
            let (tx, rx) = mpsc::channel::<Round>();
            std::thread::Builder::new()
                .name(format!("bare-send-{t}"))
                .spawn(move || {
                    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
                    while let Ok((frame, fds, done)) = rx.recv() {
                        let short = fds
                            .iter()
                            .skip(t)
                            .step_by(threads)
                            .filter(|&&fd| {
                                nix::sys::socket::send(fd, &frame, flags) != Ok(frame.len())
                            })
                            .count();
                        let _ = done.send(short);
                    }
                })
                .context("starting a sender thread")?;
            senders.push(tx);
        }
        Ok(Senders(senders))
    }

    /// Returns how many connections did not take the frame whole (a bare loop does not
    /// queue the rest: the bench reports them rather than time a broken stream).
    fn send(&self, frame: Bytes, fds: Arc<Vec<RawFd>>) -> anyhow::Result<usize> {
        let (done_tx, done) = mpsc::channel();
        for s in &self.0 {
            s.send((frame.clone(), fds.clone(), done_tx.clone()))
                .map_err(|_| anyhow::anyhow!("a sender thread stopped"))?;
        }
        let mut short = 0;
        for _ in &self.0 {
            short += done.recv().context("a sender thread stopped")?;
        }
        Ok(short)
    }
}

/// A bare node process; killed on drop.
pub struct BareNode {
    child: Child,
    stdin: ChildStdin,
    /// Its answers, read by a thread of their own so that each wait has a deadline.
    answers: mpsc::Receiver<String>,
    addr: String,
}

/// How long the bare node may take to answer a command.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

impl Drop for BareNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BareNode {
    /// Start one for up to `count` clients, writing over `threads` threads.
    pub fn start(exe: &Path, count: usize, threads: usize) -> anyhow::Result<BareNode> {
        let mut child = Command::new(exe)
            .arg("bare-node")
            .args(["--count", &count.to_string()])
            .args(["--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the bare node")?;
        let stdin = child.stdin.take().context("bare node stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("bare node stdout")?);
        let (tx, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("bare-answers".into())
            .spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("starting the bare node's reader")?;
        let mut node = BareNode {
            child,
            stdin,
            answers,
            addr: String::new(),
        };
        let line = node.line()?;
        node.addr = line
            .strip_prefix("addr ")
            .with_context(|| format!("the bare node said {line:?}"))?
            .to_string();
        Ok(node)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One round: write `version` to every client and time it as the node's fan-out is
    /// timed, from just before the command until the last client has read it.
    pub fn round(&mut self, fleet: &Fleet, version: u64) -> anyhow::Result<Duration> {
        fleet.expect(version);
        let t0 = Instant::now();
        writeln!(self.stdin, "send {version}")?;
        self.stdin.flush()?;
        let last = fleet.wait(Duration::from_secs(30));
        let short = self.line()?;
        if short != "sent 0" {
            bail!("the bare node could not write the whole frame to every client ({short:?})");
        }
        Ok(last?.saturating_duration_since(t0))
    }

    /// Close the connections it holds (their clients are gone).
    pub fn drop_clients(&mut self) -> anyhow::Result<()> {
        writeln!(self.stdin, "drop")?;
        self.stdin.flush()?;
        self.expect("dropped")
    }

    fn expect(&mut self, answer: &str) -> anyhow::Result<()> {
        let line = self.line()?;
        if line != answer {
            bail!("the bare node said {line:?}, not {answer:?}");
        }
        Ok(())
    }

    fn line(&mut self) -> anyhow::Result<String> {
        match self.answers.recv_timeout(ANSWER_DEADLINE) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("the bare node did not answer within {ANSWER_DEADLINE:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the bare node exited"),
        }
    }
}

/// Rounds of the node's fan-out, then as many of the floor's, in turn.
pub const BLOCK: usize = 10;

/// The floor's side of the fan-out figure, measured in blocks between the node's.
/// Whether the floor is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    No,
    /// `--no-floor`.
    Asked,
    /// `--server`: the nodes may be on other machines, with another floor.
    Remote,
}

pub struct Floor {
    pub bare: Option<BareNode>,
    count: usize,
    pub times: Vec<Duration>,
    /// Milliseconds over all rounds: the bare node's, the clients'.
    sender_cpu: f64,
    clients_cpu: f64,
    /// Why it stopped, if it failed: the node's figures stand without it.
    failed: Option<String>,
    skip: Skip,
}

impl Floor {
    pub fn start(exe: &Path, skip: Skip, count: usize) -> Floor {
        let (bare, failed) = if skip != Skip::No {
            (None, None)
        } else {
            let threads = tether_node::hub::fan_out_threads();
            match BareNode::start(exe, count, threads) {
                Ok(b) => (Some(b), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        };
        Floor {
            bare,
            count,
            times: Vec::new(),
            sender_cpu: 0.0,
            clients_cpu: 0.0,
            failed,
            skip,
        }
    }

    /// `rounds` rounds through the bare node; on failure the bench goes on without it.
    pub fn block(&mut self, rounds: usize, version: &mut u64, threads: usize) {
        if let Err(e) = self.try_block(rounds, version, threads) {
            self.failed = Some(format!("{e:#}"));
            self.bare = None;
        }
    }

    fn try_block(
        &mut self,
        rounds: usize,
        version: &mut u64,
        threads: usize,
    ) -> anyhow::Result<()> {
        let Some(bare) = self.bare.as_mut() else {
            return Ok(());
        };
        let fleet = Fleet::open(&[bare.addr().to_string()], ENV, self.count, threads)?;
        settle(&[bare.pid()]);
        let (bare_before, own_before) = (cpu_ms(bare.pid()), cpu_ms(std::process::id()));
        for _ in 0..rounds {
            *version += 1;
            let took = bare
                .round(&fleet, *version)
                .with_context(|| format!("bare fan-out {}", self.times.len() + 1))?;
            self.times.push(took);
            std::thread::sleep(Duration::from_millis(50));
        }
        self.sender_cpu += cpu_ms(bare.pid()) - bare_before;
        self.clients_cpu += cpu_ms(std::process::id()) - own_before;
        drop(fleet);
        bare.drop_clients()?;
        // Done with the connections that closed, before the node's turn.
        settle(&[bare.pid()]);
        Ok(())
    }

    pub fn report(&self, fanout: &[Duration]) {
        match self.skip {
            Skip::No => {}
            Skip::Asked => return,
            Skip::Remote => {
                println!("the machine's floor: not measured for nodes given with --server");
                return;
            }
        }
        println!(
            "the machine's floor, the same clients fed by a bare send(2) loop over {} threads (no HTTP, store, judging or locks), in blocks of {BLOCK} rounds taking turns with the node's:",
            tether_node::hub::fan_out_threads()
        );
        if let Some(e) = &self.failed {
            // The figures above stand; say why this one is missing or short.
            println!("  not measured: {e}");
        }
        if self.times.is_empty() {
            return;
        }
        let rounds = self.times.len() as f64;
        let (nodes, bare) = (percentile(fanout, 0.5), percentile(&self.times, 0.5));
        println!(
            "  p50 {}   max {}   over {} changes   CPU time per fan-out: sender {:.1} ms, clients {:.1} ms",
            ms(bare),
            ms(percentile(&self.times, 1.0)),
            self.times.len(),
            self.sender_cpu / rounds,
            self.clients_cpu / rounds,
        );
        println!(
            "  the fan-out's p50 above is {:+.1} ms ({:+.0}%) over this floor",
            (nodes.as_secs_f64() - bare.as_secs_f64()) * 1000.0,
            (nodes.as_secs_f64() / bare.as_secs_f64().max(1e-9) - 1.0) * 100.0
        );
    }
}
