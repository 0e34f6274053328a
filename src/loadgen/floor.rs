//! The machine's floor for the fan-out figure. A bare node (`tether bench-bare-node`, a
//! process of its own as a node is) upgrades the same light clients and then, per round,
//! writes one change frame to each of them by a bare loop of `send(2)`, over as many threads
//! as a node's fan-out has: no HTTP request, no store, no judging, no locks. What is left
//! is the kernel's loopback TCP path and the clients, which the node's figure shares; on a
//! VM whose speed changes from hour to hour, the node is read against this.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
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
    /// Connections to accept before taking commands.
    #[arg(long)]
    pub count: usize,
    /// Sender threads.
    #[arg(long)]
    pub threads: usize,
}

/// `tether bench-bare-node`: print `addr ADDR`, accept and upgrade `count` clients, then
/// for each `send VERSION` line on stdin write that change to all of them and answer
/// `sent`. Ends at the end of stdin.
pub fn bare_node(args: &BareNodeArgs) -> anyhow::Result<()> {
    super::raise_nofile(args.count as u64 + 1024);
    let listener = TcpListener::bind("127.0.0.1:0").context("listening")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "addr {}", listener.local_addr()?)?;
    out.flush()?;
    let mut conns = Vec::with_capacity(args.count);
    while conns.len() < args.count {
        let (mut s, _) = listener.accept().context("accept")?;
        // A client that stalls its upgrade fails the bench instead of holding it.
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        upgrade(&mut s).context("upgrading a client")?;
        conns.push(s);
    }
    let senders = Senders::start(&conns, args.threads)?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Some(version) = line.strip_prefix("send ") else {
            bail!("unknown command {line:?}");
        };
        let version: u64 = version.parse().context("version")?;
        senders.send(change(version)?)?;
        writeln!(out, "sent")?;
        out.flush()?;
    }
    Ok(())
}

/// Read the upgrade request and the hello frame; answer 101 and `synced`.
fn upgrade(s: &mut TcpStream) -> anyhow::Result<()> {
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

type Round = (Bytes, mpsc::Sender<()>);

/// Threads that each write a frame to their share of the connections, woken per frame as a
/// node's fan-out threads are.
struct Senders(Vec<mpsc::Sender<Round>>);

impl Senders {
    fn start(conns: &[TcpStream], threads: usize) -> anyhow::Result<Senders> {
        let threads = threads.max(1);
        let mut senders = Vec::new();
        for t in 0..threads {
            // The descriptors stay open: `conns` outlives the threads' work (the process
            // ends with it).
            let fds: Vec<RawFd> = conns
                .iter()
                .skip(t)
                .step_by(threads)
                .map(|c| c.as_raw_fd())
                .collect();
            let (tx, rx) = mpsc::channel::<Round>();
            std::thread::Builder::new()
                .name(format!("bare-send-{t}"))
                .spawn(move || {
                    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
                    while let Ok((frame, done)) = rx.recv() {
                        for &fd in &fds {
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

    fn send(&self, frame: Bytes) -> anyhow::Result<()> {
        let (done_tx, done) = mpsc::channel();
        for s in &self.0 {
            s.send((frame.clone(), done_tx.clone()))
                .map_err(|_| anyhow::anyhow!("a sender thread stopped"))?;
        }
        for _ in &self.0 {
            done.recv().context("a sender thread stopped")?;
        }
        Ok(())
    }
}

/// A bare node process; killed on drop.
struct BareNode {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for BareNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BareNode {
    fn start(exe: &Path, count: usize, threads: usize) -> anyhow::Result<(BareNode, String)> {
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
        };
        let line = node.line()?;
        let addr = line
            .strip_prefix("addr ")
            .with_context(|| format!("the bare node said {line:?}"))?
            .to_string();
        Ok((node, addr))
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the bare node exited");
        }
        Ok(line.trim_end().to_string())
    }
}

/// What the floor measured.
pub struct Floor {
    /// Write → last client read, sorted.
    pub times: Vec<Duration>,
    /// CPU per round, milliseconds: the bare node, the clients.
    pub sender_cpu: f64,
    pub clients_cpu: f64,
}

/// Time `rounds` bare fan-outs over `send_threads` threads to `count` clients read by
/// `client_threads` threads, the way the node's fan-out is timed.
pub fn measure(
    exe: &Path,
    count: usize,
    rounds: usize,
    send_threads: usize,
    client_threads: usize,
) -> anyhow::Result<Floor> {
    let (mut node, addr) = BareNode::start(exe, count, send_threads)?;
    let fleet = Fleet::open(&[addr], ENV, count, client_threads)?;
    std::thread::sleep(Duration::from_millis(500));
    let pid = node.child.id();
    let (node_before, own_before) = (super::cpu_ms(pid), super::cpu_ms(std::process::id()));
    let mut times = Vec::with_capacity(rounds);
    for v in 1..=rounds as u64 {
        let version = v + 2_000_000;
        fleet.expect(version);
        let t0 = Instant::now();
        writeln!(node.stdin, "send {version}")?;
        node.stdin.flush()?;
        let last = fleet
            .wait(Duration::from_secs(30))
            .with_context(|| format!("bare fan-out {v}"))?;
        times.push(last.saturating_duration_since(t0));
        let answer = node.line()?;
        if answer != "sent" {
            bail!("the bare node said {answer:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    times.sort();
    let per = |ms: f64| ms / rounds.max(1) as f64;
    Ok(Floor {
        times,
        sender_cpu: per(super::cpu_ms(pid) - node_before),
        clients_cpu: per(super::cpu_ms(std::process::id()) - own_before),
    })
}
