//! The health checks a bake runs: a command that exits 0, an HTTP GET that answers 2xx
//! (`http://`, or `https://` with the nodes' TLS settings), a TCP connect. Each attempt is
//! one call of [`Check::probe`]; its caller bounds it in time. A failure's reason names what
//! failed (`HTTP 503`, `exit code 1`, `connection refused`), never a value: a command's
//! output is not read, a response's body is not kept.

use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::sys::signal::{Signal as NixSignal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::supervisor::Reaper;

/// The most of a response read to find its status line.
const MAX_HEAD: usize = 8 * 1024;

/// One kind of health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A command, split shell-style, executed without a shell.
    Cmd(Vec<String>),
    Http(HttpTarget),
    /// `HOST:PORT`.
    Tcp(String),
}

/// An HTTP(S) URL taken apart for a hand-written GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTarget {
    pub url: String,
    pub tls: bool,
    /// The host as written (brackets around an IPv6 address removed).
    pub host: String,
    pub port: u16,
    /// The path and query (`/` at least).
    pub path: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Cmd(argv) => {
                f.write_str(&shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default())
            }
            Check::Http(t) => f.write_str(&t.url),
            Check::Tcp(addr) => f.write_str(addr),
        }
    }
}

impl Check {
    /// The key it is configured by (`health_cmd`, `health_http`, `health_tcp`).
    pub fn key(&self) -> &'static str {
        match self {
            Check::Cmd(_) => "health_cmd",
            Check::Http(_) => "health_http",
            Check::Tcp(_) => "health_tcp",
        }
    }

    pub fn parse_cmd(s: &str) -> Result<Check, String> {
        match shlex::split(s) {
            Some(argv) if !argv.is_empty() => Ok(Check::Cmd(argv)),
            _ => Err("needs a command (split like a shell would, run without one)".into()),
        }
    }

    pub fn parse_tcp(s: &str) -> Result<Check, String> {
        let s = s.trim();
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok(Check::Tcp(s.to_string()))
            }
            _ => Err(format!("{s:?} is not HOST:PORT")),
        }
    }

    pub fn parse_http(s: &str) -> Result<Check, String> {
        let url = s.trim();
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = path.split('#').next().unwrap_or("/");
        if authority.contains('@') {
            return Err("credentials do not go in a health check URL".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: an IPv6 address needs its closing ]"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{url:?}: {p:?} is not a port"))?,
        };
        if host.is_empty()
            || host.contains(char::is_whitespace)
            || path.contains(char::is_whitespace)
        {
            return Err(format!("{url:?} is not a URL tether can GET"));
        }
        Ok(Check::Http(HttpTarget {
            url: url.to_string(),
            tls,
            host: host.to_string(),
            port,
            path: if path.is_empty() { "/" } else { path }.to_string(),
        }))
    }

    /// One attempt: `Ok` when healthy, else why not (no value in it). Dropping the future
    /// midway stops the attempt (a command's process group is killed).
    pub async fn probe(&self, ctx: &ProbeContext) -> Result<(), String> {
        match self {
            Check::Cmd(argv) => run_cmd(&ctx.reaper, argv).await,
            Check::Tcp(addr) => TcpStream::connect(addr.as_str())
                .await
                .map(drop)
                .map_err(|e| format!("cannot connect to {addr}: {e}")),
            Check::Http(t) => http_get(t, ctx.tls.as_ref()).await,
        }
    }
}

/// What a probe needs besides its check: the reaper (commands) and the TLS settings
/// (`https://`, built once per bake).
#[derive(Clone)]
pub struct ProbeContext {
    pub reaper: Reaper,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Kills a command's process group unless it was reaped first.
struct KillOnDrop(Option<Pid>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(pid, NixSignal::SIGKILL);
        }
    }
}

async fn run_cmd(reaper: &Reaper, argv: &[String]) -> Result<(), String> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // `spawn` keeps tether's credentials out of its environment (`isolate`).
    let (pid, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let mut guard = KillOnDrop(Some(pid));
    let exit = exit.await;
    guard.0 = None;
    // What it left in its group goes with it.
    let _ = killpg(pid, NixSignal::SIGKILL);
    match exit {
        Ok(e) if e.success() => Ok(()),
        Ok(e) => Err(format!("{} ended with {e}", argv[0])),
        Err(_) => Err(format!("{} was lost", argv[0])),
    }
}

async fn http_get(t: &HttpTarget, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<(), String> {
    let tcp = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", t.host, t.port))?;
    if !t.tls {
        return exchange(tcp, t).await;
    }
    let cfg = tls.ok_or("no TLS settings for an https:// check")?;
    let name = rustls::pki_types::ServerName::try_from(t.host.clone())
        .map_err(|e| format!("{}: {e}", t.host))?;
    let stream = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {}: {e}", t.host))?;
    exchange(stream, t).await
}

/// Send the GET and read the status line.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    t: &HttpTarget,
) -> Result<(), String> {
    let host = if t.host.contains(':') {
        format!("[{}]:{}", t.host, t.port)
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tether-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        t.path
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            return Err("the connection closed without an answer".into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Err("no HTTP status line in the answer".into());
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let code = match (parts.next(), parts.next()) {
        (Some(v), Some(c)) if v.starts_with("HTTP/") => c.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or("no HTTP status line in the answer")?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP {code}"))
    }
}
