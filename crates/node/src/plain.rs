//! A plain-TCP agent socket that two parties write: the connection's own task (HTTP, then
//! WebSocket frames through tungstenite) and the node's fan-out threads, which write change
//! frames straight into the kernel without waking the task. Every write goes through one
//! backlog under one lock, so frames never interleave and order is kept: a write goes to
//! the kernel only when nothing is queued before it, and whatever the kernel does not take
//! is queued whole and drained by the connection's task when the socket is writable.
//! Once a frame has a byte on the wire its rest is always queued, however large: only the
//! bytes that waited before it count against the limit. Past the limit the socket is given
//! up and nothing more is written to it, so the agent never sees a frame cut short and
//! followed by another.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
// tokio's, so that tests can stop the clock; the same as std's when it runs.
use tokio::time::Instant;

/// The write side, shared by the connection and the fan-out.
pub struct PlainSocket {
    write: OwnedWriteHalf,
    /// `write`'s descriptor, kept here so that the fan-out's `send(2)` does not walk
    /// through tokio's layers (more memory to bring in per connection). Valid while
    /// `write` lives.
    fd: RawFd,
    backlog: Mutex<Backlog>,
    /// Most bytes a connection may have queued; past it the agent is not reading.
    limit: usize,
}

#[derive(Default)]
struct Backlog {
    /// Bytes the kernel has not taken yet, in order; the front may be partly written.
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// The limit was passed: nothing more is written, the connection is being dropped.
    overflow: bool,
    /// When the backlog last moved: bytes started waiting, or the kernel took some of them.
    since: Option<Instant>,
    /// When the kernel last took bytes that had waited: the agent read some.
    moved: Option<Instant>,
    /// The connection's task, to drain what was queued.
    drainer: Option<Waker>,
}

/// The backlog outgrew its limit: the agent stopped reading.
#[derive(Debug)]
pub struct Overflow;

impl PlainSocket {
    /// Split `stream`: the read half for hyper, the shared write side for everyone.
    pub fn new(stream: TcpStream, limit: usize) -> (PlainIo, Arc<PlainSocket>) {
        let (read, write) = stream.into_split();
        let socket = Arc::new(PlainSocket {
            fd: write.as_ref().as_raw_fd(),
            write,
            backlog: Mutex::default(),
            limit,
        });
        let io = PlainIo {
            read,
            socket: socket.clone(),
        };
        (io, socket)
    }

    /// Bring this socket's state into the cache ahead of a [`PlainSocket::send`].
    pub fn prefetch(&self) {
        super::prefetch_value(self);
    }

    fn lock(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write `bytes` after everything written before, without waiting: what the kernel
    /// does not take now is queued for the connection's task. Called by the fan-out.
    pub fn send(&self, bytes: &Bytes) -> Result<(), Overflow> {
        let mut b = self.lock();
        if b.overflow {
            return Err(Overflow);
        }
        let mut rest = bytes.clone();
        if b.queue.is_empty() {
            // A plain send(2), not tokio's try_write: that would first read the socket's
            // readiness, one more cache miss per connection in a fan-out. When this finds
            // the buffer full, the drainer's own try_write learns it the same way.
            let fd = self.fd;
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match nix::sys::socket::send(fd, &rest, flags) {
                Ok(n) if n == rest.len() => return Ok(()),
                // Its start is on the wire: the rest is queued whole, whatever its size.
                Ok(n) => rest.advance(n),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                // A broken socket: the connection's task finds out from its own read or write.
                Err(_) => return Ok(()),
            }
        } else if b.bytes + rest.len() > self.limit {
            // Give the socket up: nothing more is written, the queue is not drained. The
            // agent may get the start of the frame at the front and then the end of the
            // stream, never a later frame inside it.
            b.overflow = true;
            b.queue.clear();
            b.bytes = 0;
            let waker = b.drainer.take();
            drop(b);
            if let Some(w) = waker {
                w.wake();
            }
            return Err(Overflow);
        }
        let waker = push(&mut b, rest);
        drop(b);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// The backlog passed its limit: the socket takes no more writes.
    pub fn overflowed(&self) -> bool {
        self.lock().overflow
    }

    /// How long bytes have been waiting without the agent taking any of them. Progress
    /// restarts the clock: an agent that reads steadily on a slow link, while changes keep
    /// coming, never lets the backlog empty, but it is not stalled.
    pub fn stalled_for(&self) -> Option<Duration> {
        self.lock().since.map(|t| t.elapsed())
    }

    /// When the kernel last took bytes that had waited for room, which only the agent
    /// reading makes: a sign of life while a large frame keeps its answers behind it.
    pub fn last_moved(&self) -> Option<Instant> {
        self.lock().moved
    }

    /// Drain the backlog; ready when it is empty. A waker registered while the kernel's
    /// buffer is full is woken when it has room.
    fn poll_drain(&self, b: &mut Backlog, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if b.overflow {
            return Poll::Ready(Err(overflow_error()));
        }
        while let Some(front) = b.queue.front_mut() {
            match self.write.try_write(front) {
                Ok(n) => {
                    b.bytes -= n;
                    front.advance(n);
                    if front.is_empty() {
                        b.queue.pop_front();
                    }
                    if n > 0 {
                        b.since = Some(Instant::now());
                        b.moved = b.since;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.write.as_ref().poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        b.since = None;
        Poll::Ready(Ok(()))
    }

    /// For the connection's task: drain whatever the fan-out queued. Ready only with the
    /// error that broke the socket; pending with the backlog empty means "wake me when
    /// bytes are queued".
    pub fn poll_backlog(&self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let mut b = self.lock();
        match self.poll_drain(&mut b, cx) {
            Poll::Ready(Ok(())) => {
                if !b.drainer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    b.drainer = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(e),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn overflow_error() -> io::Error {
    io::Error::other("send backlog over its limit: the agent stopped reading")
}

/// Queue `bytes`; returns the drainer to wake when the backlog was empty.
fn push(b: &mut Backlog, bytes: Bytes) -> Option<Waker> {
    let was_empty = b.queue.is_empty();
    b.bytes += bytes.len();
    b.queue.push_back(bytes);
    if was_empty {
        b.since = Some(Instant::now());
        b.drainer.take()
    } else {
        None
    }
}

/// The connection's I/O as hyper and tungstenite see it.
pub struct PlainIo {
    read: OwnedReadHalf,
    socket: Arc<PlainSocket>,
}

impl AsyncRead for PlainIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlainIo {
    /// Takes the whole buffer or nothing, so that what the caller writes as one frame stays
    /// one piece in the byte stream; waits only when the backlog is over its limit.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let s = &*self.socket;
        let mut b = s.lock();
        if b.overflow {
            return Poll::Ready(Err(overflow_error()));
        }
        if !b.queue.is_empty() {
            if let Poll::Ready(Err(e)) = s.poll_drain(&mut b, cx) {
                return Poll::Ready(Err(e));
            }
            if !b.queue.is_empty() {
                if b.bytes + buf.len() > s.limit {
                    // Woken by poll_drain's write-readiness registration above.
                    return Poll::Pending;
                }
                let waker = push(&mut b, Bytes::copy_from_slice(buf));
                drop(b);
                if let Some(w) = waker {
                    w.wake();
                }
                return Poll::Ready(Ok(buf.len()));
            }
        }
        let n = match s.write.try_write(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if n < buf.len() {
            let waker = push(&mut b, Bytes::copy_from_slice(&buf[n..]));
            drop(b);
            if let Some(w) = waker {
                w.wake();
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    /// Flushed means the kernel has every byte, the fan-out's included.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &*self.socket;
        let mut b = s.lock();
        s.poll_drain(&mut b, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let fd = self.socket.write.as_ref().as_raw_fd();
        match nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write) {
            Ok(()) | Err(Errno::ENOTCONN) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair(limit: usize) -> (PlainIo, Arc<PlainSocket>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let (io, socket) = PlainSocket::new(s, limit);
        (io, socket, peer)
    }

    const BLOCK: usize = 16 * 1024;

    /// A block of `writer`'s bytes carrying its sequence number.
    fn block(writer: u8, seq: u32) -> Vec<u8> {
        let mut b = vec![writer; BLOCK];
        b[1..5].copy_from_slice(&seq.to_be_bytes());
        b
    }

    /// A fan-out thread and the connection's task write at once, many times what the kernel
    /// buffers, to a peer that reads in fits: every block arrives whole, and each writer's
    /// blocks in the order it wrote them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_from_both_sides_stay_whole_and_ordered() {
        const EACH: u32 = 400;
        let (mut io, socket, mut peer) = pair(256 << 20).await;
        let total = 2 * EACH as usize * BLOCK;
        let reader = tokio::spawn(async move {
            let mut all = Vec::with_capacity(total);
            let mut buf = vec![0u8; 32 * 1024];
            while all.len() < total {
                let n = peer.read(&mut buf).await.unwrap();
                assert!(n > 0, "socket closed early");
                all.extend_from_slice(&buf[..n]);
                // Reading in fits fills and empties the buffers again and again.
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            all
        });
        let drainer = {
            let socket = socket.clone();
            // Stands in for the connection task's drain arm.
            tokio::spawn(async move { std::future::poll_fn(|cx| socket.poll_backlog(cx)).await })
        };
        let fan_out = {
            let socket = socket.clone();
            std::thread::spawn(move || {
                for seq in 0..EACH {
                    socket.send(&Bytes::from(block(1, seq))).unwrap();
                    // Paced, so that its writes meet every state of the backlog.
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        };
        for seq in 0..EACH {
            io.write_all(&block(2, seq)).await.unwrap();
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        tokio::task::spawn_blocking(move || fan_out.join().unwrap())
            .await
            .unwrap();
        io.flush().await.unwrap();
        let all = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("the peer reads everything within the deadline")
            .unwrap();
        drainer.abort();
        let mut next = [0u32; 3];
        for (i, b) in all.chunks(BLOCK).enumerate() {
            let w = b[0];
            assert!(w == 1 || w == 2, "block {i} starts mid-block");
            assert!(b[5..].iter().all(|&x| x == w), "block {i} is not whole");
            let seq = u32::from_be_bytes(b[1..5].try_into().unwrap());
            assert_eq!(seq, next[w as usize], "writer {w}'s blocks out of order");
            next[w as usize] += 1;
        }
        assert_eq!(next, [0, EACH, EACH]);
        assert_eq!(socket.stalled_for(), None);
    }

    /// Once bytes wait in the backlog, a later write waits behind them even when the
    /// kernel has room again before the backlog was drained.
    #[tokio::test]
    async fn a_write_never_overtakes_the_backlog() {
        let (_io, socket, mut peer) = pair(256 << 20).await;
        let mut seq = 0u32;
        // Fill the kernel's buffers until a block has to wait.
        while socket.stalled_for().is_none() {
            socket.send(&Bytes::from(block(1, seq))).unwrap();
            seq += 1;
        }
        // The peer takes everything the kernel holds; the socket is writable again.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < (seq as usize - 1) * BLOCK {
            let n = peer.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        tokio::time::timeout(Duration::from_secs(10), socket.write.as_ref().writable())
            .await
            .expect("writable within the deadline")
            .unwrap();
        socket.send(&Bytes::from(block(1, seq))).unwrap();
        let drainer = {
            let socket = socket.clone();
            tokio::spawn(async move { std::future::poll_fn(|cx| socket.poll_backlog(cx)).await })
        };
        while got.len() < (seq as usize + 1) * BLOCK {
            let n = tokio::time::timeout(Duration::from_secs(10), peer.read(&mut buf))
                .await
                .expect("the rest within the deadline")
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        drainer.abort();
        for (i, b) in got.chunks(BLOCK).enumerate() {
            assert_eq!(b[1..5], (i as u32).to_be_bytes(), "block {i} out of order");
        }
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_overflows_the_limit() {
        let (_io, socket, _peer) = pair(1 << 20).await;
        let block = Bytes::from(vec![7u8; 256 * 1024]);
        let mut overflowed = false;
        // Kernel buffers on loopback take a few MiB; the backlog then fills to its limit.
        for _ in 0..400 {
            if socket.send(&block).is_err() {
                overflowed = true;
                break;
            }
        }
        assert!(overflowed, "a stuck peer must overflow the backlog");
        assert!(socket.stalled_for().is_some());
    }

    /// A pair whose node side has a small send buffer, so the kernel takes little at once.
    async fn narrow_pair(limit: usize) -> (PlainIo, Arc<PlainSocket>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBuf, &(16 * 1024)).unwrap();
        let (io, socket) = PlainSocket::new(s, limit);
        (io, socket, peer)
    }

    /// A frame far over the limit that the kernel takes only part of is queued whole: its
    /// start is on the wire, and cutting it short would leave the next frame inside it. The
    /// limit counts only what waited before. A reader gets it whole, then what follows.
    #[tokio::test]
    async fn a_frame_partly_written_is_queued_whole_whatever_its_size() {
        let (_io, socket, mut peer) = narrow_pair(64 * 1024).await;
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        socket
            .send(&Bytes::from(big.clone()))
            .expect("the rest of a frame begun is queued, whatever its size");
        assert!(
            socket.stalled_for().is_some(),
            "more than the kernel takes at once"
        );
        let drainer = {
            let socket = socket.clone();
            tokio::spawn(async move { std::future::poll_fn(|cx| socket.poll_backlog(cx)).await })
        };
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < big.len() {
            let n = tokio::time::timeout(Duration::from_secs(10), peer.read(&mut buf))
                .await
                .expect("the frame within the deadline")
                .unwrap();
            assert!(n > 0, "socket closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == big, "the frame arrived whole");
        socket.send(&Bytes::from_static(b"next")).unwrap();
        let mut next = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut next))
            .await
            .expect("the next frame within the deadline")
            .unwrap();
        assert_eq!(&next, b"next");
        drainer.abort();
    }

    /// Once the backlog overflowed, the socket is given up: neither the fan-out nor the
    /// connection's task writes anything more, and the drainer stops, so the peer sees part
    /// of what was queued before and then the end, never a later frame.
    #[tokio::test]
    async fn after_an_overflow_nothing_more_is_written() {
        let (mut io, socket, mut peer) = narrow_pair(64 * 1024).await;
        let first = Bytes::from(vec![1u8; 1 << 20]);
        socket.send(&first).unwrap();
        assert!(socket.send(&Bytes::from(vec![2u8; 128 * 1024])).is_err());
        assert!(
            socket.send(&Bytes::from_static(&[3])).is_err(),
            "refused after"
        );
        let write = tokio::time::timeout(Duration::from_secs(5), io.write_all(&[4u8; 16])).await;
        assert!(
            matches!(write, Ok(Err(_))),
            "the task's writes fail at once"
        );
        let drained = std::future::poll_fn(|cx| Poll::Ready(socket.poll_backlog(cx))).await;
        assert!(drained.is_ready(), "the drainer learns it is over");
        drop((io, socket));
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut got))
            .await
            .expect("the end within the deadline")
            .unwrap();
        assert!(
            got.len() < first.len(),
            "the queue is not drained after the overflow"
        );
        assert!(
            got.iter().all(|&b| b == 1),
            "nothing written after the overflow"
        );
    }

    /// The stall clock measures how long the backlog has not moved, not how long it has not
    /// been empty: an agent that reads steadily while more keeps coming is not stalled.
    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_stall_clock() {
        let (_io, socket, mut peer) = narrow_pair(256 << 20).await;
        let frame = Bytes::from(vec![5u8; 4 << 20]);
        socket.send(&frame).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(socket.stalled_for(), Some(Duration::from_secs(60)));
        let drainer = {
            let socket = socket.clone();
            tokio::spawn(async move { std::future::poll_fn(|cx| socket.poll_backlog(cx)).await })
        };
        // The peer reads a little at a time; the drainer passes more on as it does.
        let (mut got, mut buf) = (0, vec![0u8; 16 * 1024]);
        while socket.stalled_for() == Some(Duration::from_secs(60)) {
            let n = peer.read(&mut buf).await.unwrap();
            assert!(n > 0, "socket closed early");
            got += n;
            tokio::task::yield_now().await;
        }
        assert_eq!(
            socket.stalled_for(),
            Some(Duration::ZERO),
            "the clock restarts while bytes still wait ({got} read)"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(socket.stalled_for(), Some(Duration::from_secs(3)));
        drainer.abort();
    }
}
