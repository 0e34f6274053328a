//! The load generator's light protocol clients: plain sockets, one WebSocket handshake and
//! one `hello` each, then read by a few threads through level-triggered epoll, one `read` per
//! readiness event. They do not pay for a runtime, a task per client or a full frame decoder,
//! so that on a machine shared with the node they take as little CPU as a client can; every
//! frame is still decoded from the WebSocket framing and checked for the awaited value.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use tether_core::protocol::{ClientMsg, Subscription};

/// How long one client may take to connect, upgrade and get its `synced`.
const SETUP_DEADLINE: Duration = Duration::from_secs(30);
/// How often an idle reader thread looks at the stop flag.
const POLL_MS: u16 = 50;
/// How long a reader polls for an awaited change before it goes back to sleeping.
const AWAIT_LIMIT: Duration = Duration::from_secs(2);
/// The nap between two polls while a change is awaited: at most this late in the figures.
const AWAIT_NAP: Duration = Duration::from_micros(250);

/// What the client threads share with the bench.
struct Shared {
    count: usize,
    /// Clients connected and synced.
    ready: AtomicUsize,
    /// Clients that got the awaited value.
    received: AtomicUsize,
    /// The awaited value of `V` (0: none).
    target: AtomicU64,
    /// Clients whose connection closed or broke after set-up.
    lost: AtomicUsize,
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// N protocol clients spread over some nodes; closed on drop.
pub struct Fleet {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The instant the last client got the awaited value.
    done: mpsc::Receiver<Instant>,
}

impl Fleet {
    /// Open `count` clients round-robin over `addrs` on `threads` threads; returns once every
    /// one is synced with environment `env`.
    pub fn open(
        addrs: &[String],
        env: &str,
        count: usize,
        threads: usize,
    ) -> anyhow::Result<Fleet> {
        let shared = Arc::new(Shared {
            count,
            ready: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            target: AtomicU64::new(0),
            lost: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
        });
        let (done_tx, done) = mpsc::channel();
        let threads = threads.clamp(1, count.max(1));
        let mut handles = Vec::new();
        for t in 0..threads {
            let mine: Vec<String> = (t..count)
                .step_by(threads)
                .map(|i| addrs[i % addrs.len()].clone())
                .collect();
            let (shared, done_tx, env) = (shared.clone(), done_tx.clone(), env.to_string());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("bench-clients-{t}"))
                    .spawn(move || {
                        if let Err(e) = reader(&mine, &env, &shared, &done_tx) {
                            shared.fail(format!("{e:#}"));
                        }
                    })
                    .context("starting a client thread")?,
            );
        }
        let fleet = Fleet {
            shared,
            threads: handles,
            done,
        };
        let deadline = Instant::now() + SETUP_DEADLINE + Duration::from_millis(count as u64);
        while fleet.shared.ready.load(Ordering::Acquire) < count {
            fleet.check()?;
            if Instant::now() > deadline {
                bail!(
                    "only {} of {count} clients synced",
                    fleet.shared.ready.load(Ordering::Acquire)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(fleet)
    }

    /// Await `value` for `V`: the next [`Fleet::wait`] returns when every client has it.
    pub fn expect(&self, value: u64) {
        while self.done.try_recv().is_ok() {}
        self.shared.received.store(0, Ordering::SeqCst);
        self.shared.target.store(value, Ordering::SeqCst);
    }

    /// The instant the last client received the awaited value.
    pub fn wait(&self, limit: Duration) -> anyhow::Result<Instant> {
        match self.done.recv_timeout(limit) {
            Ok(at) => Ok(at),
            Err(_) => {
                self.check()?;
                bail!(
                    "the change reached only {} of {} clients ({} connections lost)",
                    self.shared.received.load(Ordering::SeqCst),
                    self.shared.count,
                    self.shared.lost.load(Ordering::SeqCst)
                )
            }
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if let Some(e) = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            bail!("bench client failed: {e}");
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn fail(&self, e: String) {
        let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(e);
    }
}

/// One client: its socket and the bytes of a frame that has not fully arrived.
struct Client {
    stream: TcpStream,
    partial: Vec<u8>,
    open: bool,
}

/// Connect this thread's clients, then read them until told to stop.
fn reader(
    addrs: &[String],
    env: &str,
    shared: &Shared,
    done: &mpsc::Sender<Instant>,
) -> anyhow::Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
    let mut clients = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (stream, partial) =
            connect(addr, env, &shared.stop).with_context(|| format!("client of {addr}"))?;
        stream.set_nonblocking(true)?;
        epoll.add(
            stream.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
        )?;
        clients.push(Client {
            stream,
            partial,
            open: true,
        });
        shared.ready.fetch_add(1, Ordering::AcqRel);
    }

    let mut events = vec![EpollEvent::empty(); 1024];
    let mut buf = vec![0u8; 64 * 1024];
    // The awaited value, its needle, how many of this thread's clients have it, and since when.
    let mut awaited = (0u64, String::new(), 0usize, Instant::now());
    while !shared.stop.load(Ordering::Relaxed) {
        let target = awaited.0;
        // While a change is awaited, poll every AWAIT_NAP instead of sleeping in epoll_wait:
        // a reader asleep there must be woken for its first frames, and on a small VM the
        // node pays for that wake-up (an inter-processor interrupt) inside its send. A nap,
        // not a spin: spinning readers take half the cores from the node's fan-out threads.
        let busy = target != 0 && awaited.2 < clients.len() && awaited.3.elapsed() < AWAIT_LIMIT;
        let timeout = if busy {
            EpollTimeout::ZERO
        } else {
            EpollTimeout::from(POLL_MS)
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        if n == 0 && busy {
            std::thread::sleep(AWAIT_NAP);
        }
        // Read after the wait: frames that woke this thread may carry a newly awaited value.
        let target = shared.target.load(Ordering::SeqCst);
        if awaited.0 != target {
            awaited = (target, format!(r#""value":"{target}""#), 0, Instant::now());
        }
        for ev in &events[..n] {
            let c = &mut clients[ev.data() as usize];
            if !c.open {
                continue;
            }
            let got = match c.stream.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // A node closing or breaking a connection mid-bench is a finding.
                    c.open = false;
                    let _ = epoll.delete(c.stream.as_fd());
                    shared.lost.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                Ok(got) => got,
            };
            let hits = if c.partial.is_empty() {
                let (hits, used) = scan(&buf[..got], &awaited.1);
                c.partial.extend_from_slice(&buf[used..got]);
                hits
            } else {
                c.partial.extend_from_slice(&buf[..got]);
                let (hits, used) = scan(&c.partial, &awaited.1);
                c.partial.drain(..used);
                hits
            };
            if target != 0 && hits > 0 {
                awaited.2 += 1;
                let n = shared.received.fetch_add(1, Ordering::SeqCst) + 1;
                if n == shared.count {
                    let _ = done.send(Instant::now());
                }
            }
        }
    }
    Ok(())
}

/// Count the complete frames in `bytes` that are change sets carrying `needle`; returns that
/// count and how many bytes the complete frames took.
fn scan(bytes: &[u8], needle: &str) -> (usize, usize) {
    let mut at = 0;
    let mut hits = 0;
    while let Some((opcode, payload, len)) = frame(&bytes[at..]) {
        if opcode == 1 {
            let text = &bytes[at + payload.start..at + payload.end];
            if text.starts_with(br#"{"type":"change""#) && contains(text, needle.as_bytes()) {
                hits += 1;
            }
        }
        at += len;
    }
    (hits, at)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

/// One complete unmasked server frame at the start of `b`: opcode, payload range, total length.
fn frame(b: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    let (len, head) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let end = len.checked_add(head)?;
    (b.len() >= end).then_some((opcode, head..end, end))
}

/// Connect, upgrade to WebSocket, say hello for `env` and read until `synced`. Returns the
/// socket and any bytes read past `synced`. Gives up at the set-up deadline or once `stop`
/// is set.
fn connect(addr: &str, env: &str, stop: &AtomicBool) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let deadline = Instant::now() + SETUP_DEADLINE;
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e).context("connect"),
            Err(_) if stop.load(Ordering::Relaxed) => bail!("stopped"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    stream.set_nodelay(true)?;
    // Short, so that a stalled node does not hold the bench past its stop flag.
    stream.set_read_timeout(Some(Duration::from_millis(250)))?;
    let read = |stream: &mut TcpStream, buf: &mut [u8]| -> anyhow::Result<usize> {
        loop {
            match stream.read(buf) {
                Ok(n) => return Ok(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        bail!("stopped");
                    }
                    if Instant::now() > deadline {
                        bail!("no answer from the node within {SETUP_DEADLINE:?}");
                    }
                }
                Err(e) => return Err(e).context("read"),
            }
        }
    };
    write!(
        stream,
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = read(&mut stream, &mut buf)?;
        if n == 0 {
            bail!("the node closed the connection during the upgrade");
        }
        data.extend_from_slice(&buf[..n]);
    };
    if !data.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&data[..head_end]);
        bail!("upgrade refused: {}", line.lines().next().unwrap_or(""));
    }
    data.drain(..head_end);

    let hello = serde_json::to_vec(&ClientMsg::Hello {
        agent: "bench".into(),
        subscribe: vec![Subscription {
            env: env.to_string(),
            position: None,
        }],
    })?;
    stream.write_all(&masked_text_frame(&hello))?;

    loop {
        while let Some((opcode, payload, len)) = frame(&data) {
            let synced = opcode == 1 && data[payload].starts_with(br#"{"type":"synced""#);
            if opcode == 8 {
                bail!("the node closed the connection after hello");
            }
            data.drain(..len);
            if synced {
                return Ok((stream, data));
            }
        }
        let n = read(&mut stream, &mut buf)?;
        if n == 0 {
            bail!("the node closed the connection before synced");
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// A client's text frame (clients must mask; a fixed key is as good as any for a bench).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= u16::MAX as usize => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn scan_counts_matching_change_frames_and_keeps_a_partial_one() {
        let change = br#"{"type":"change","env":"bench","changes":[{"name":"V","value":"7"}]}"#;
        let mut bytes = server_frame(1, br#"{"type":"heartbeat","positions":[]}"#);
        bytes.extend(server_frame(1, change));
        let long = format!(
            r#"{{"type":"change","pad":"{}","value":"7"}}"#,
            "x".repeat(300)
        );
        bytes.extend(server_frame(1, long.as_bytes()));
        let whole = bytes.len();
        let next = server_frame(1, change);
        bytes.extend_from_slice(&next[..5]);

        let (hits, used) = scan(&bytes, r#""value":"7""#);
        assert_eq!((hits, used), (2, whole));
        assert_eq!(scan(&bytes, r#""value":"8""#).0, 0);
    }

    #[test]
    fn frame_lengths_of_every_size_class_decode() {
        for n in [0, 125, 126, 65_535, 65_536] {
            let f = server_frame(1, &vec![b'a'; n]);
            let (op, payload, len) = frame(&f).expect("complete frame");
            assert_eq!((op, payload.len(), len), (1, n, f.len()));
            assert!(frame(&f[..f.len() - 1]).is_none());
        }
    }

    #[test]
    fn masked_frames_unmask_to_the_payload() {
        let f = masked_text_frame(b"hello");
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1], 0x80 | 5);
        let key = &f[2..6];
        let plain: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(plain, b"hello");
    }
}
