//! The machine's floor for the fan-out figure. A bare node (`tether bench-bare-node`, a
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
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use nix::sys::socket::MsgFlags;

use super::clients::Fleet;
use crate::protocol::{Epoch, Position, ServerMsg, WireChange};
use crate::secret::Value;
use crate::server::hub::ws_text_frame;

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

/// `tether bench-bare-node`: print `addr ADDR`, then accept and upgrade clients for as long
/// as it runs. Commands on stdin, each answered on stdout: `send VERSION` writes that change
/// to every client held (`sent`), `drop` closes them all (`dropped`). Ends at the end of
/// stdin.
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
            senders.send(change(version)?, fds)?;
            writeln!(out, "sent")?;
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
    let synced = serde_json::to_vec(&ServerMsg::Synced {
        env: ENV.into(),
        position: position(0),
    })?;
    let mut held = lock(held);
    held.push(s.try_clone()?);
    s.write_all(&ws_text_frame(&synced))?;
    Ok(())
}

fn position(version: u64) -> Position {
    Position {
        epoch: Epoch(1),
        version,
    }
}

/// The change frame a node sends when `V` is set to `version`.
fn change(version: u64) -> anyhow::Result<Bytes> {
    let msg = ServerMsg::Change {
        env: ENV.into(),
        position: position(version),
        changes: vec![WireChange {
            name: "V".into(),
            value: Some(Value::from(version.to_string())),
            secret: false,
            delete: false,
        }],
    };
    Ok(ws_text_frame(&serde_json::to_vec(&msg)?))
}

type Round = (Bytes, Arc<Vec<RawFd>>, mpsc::Sender<()>);

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
                        for &fd in fds.iter().skip(t).step_by(threads) {
                            // A client that cannot take the frame shows as one that never
                            // got it: the bench reports it.
                            let _ = nix::sys::socket::send(fd, &frame, flags);
                        }
                        let _ = done.send(());
                    }
                })
                .context("starting a sender thread")?;
            senders.push(tx);
        }
        Ok(Senders(senders))
    }

    fn send(&self, frame: Bytes, fds: Arc<Vec<RawFd>>) -> anyhow::Result<()> {
        let (done_tx, done) = mpsc::channel();
        for s in &self.0 {
            s.send((frame.clone(), fds.clone(), done_tx.clone()))
                .map_err(|_| anyhow::anyhow!("a sender thread stopped"))?;
        }
        for _ in &self.0 {
            done.recv().context("a sender thread stopped")?;
        }
        Ok(())
    }
}

/// A bare node process; killed on drop.
pub struct BareNode {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
}

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
            .arg("bench-bare-node")
            .args(["--count", &count.to_string()])
            .args(["--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the bare node")?;
        let stdin = child.stdin.take().context("bare node stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("bare node stdout")?);
        let mut node = BareNode {
            child,
            stdin,
            stdout,
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
        let last = fleet.wait(Duration::from_secs(30))?;
        self.expect("sent")?;
        Ok(last.saturating_duration_since(t0))
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
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the bare node exited");
        }
        Ok(line.trim_end().to_string())
    }
}
