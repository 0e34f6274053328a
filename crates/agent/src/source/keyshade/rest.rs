//! keyshade's REST snapshot: the environment's secrets (encrypted) and variables, fetched
//! with the `x-keyshade-token` header, and keyshade's errors turned into ones that name
//! the setting to fix.
//!
//! The HTTP client is a small HTTP/1.1 GET written here over tokio and tokio-rustls, not a
//! client crate: both are already linked into the agent (tokio-tungstenite's TLS), so the
//! agent build gains no crate, no second TLS setup and no blocking thread (`ureq`, the
//! admin client's, would need `spawn_blocking` and its own rustls wiring). It does one
//! request per connection (`Connection: close`), reads `Content-Length`, chunked or
//! until-close bodies, and bounds everything: headers to [`MAX_HEAD`], bodies to
//! [`MAX_BODY`], each request to [`TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::sio::error_message;

/// Largest response body accepted (a whole environment's secrets and variables).
pub const MAX_BODY: usize = 32 << 20;
/// Largest response head (status line and headers).
pub const MAX_HEAD: usize = 64 << 10;
/// How long one request may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("cannot reach keyshade at {base}: {why} (check base_url)")]
    Unreachable { base: String, why: String },
    #[error(
        "keyshade refused the token from {token_source}: HTTP {status}: {message} (fix the token, or the project's access for it)"
    )]
    Token {
        status: u16,
        message: String,
        token_source: String,
    },
    #[error("keyshade does not know {what}: HTTP 404: {message} (check {setting})")]
    NotFound {
        what: String,
        setting: &'static str,
        message: String,
    },
    #[error("keyshade answered {path} with HTTP {status}: {message}")]
    Http {
        path: String,
        status: u16,
        message: String,
    },
    #[error("bad answer from keyshade to {path}: {why}")]
    Malformed { path: String, why: String },
}

impl RestError {
    /// Only an operator can fix it (a token, a slug): retried, but slowly.
    pub fn is_settings(&self) -> bool {
        matches!(self, RestError::Token { .. } | RestError::NotFound { .. })
    }
}

/// What a snapshot is fetched with.
#[derive(Clone)]
pub struct Client {
    /// `http(s)://host[:port][/prefix]`, without the trailing slash.
    pub base: String,
    pub token: tether_core::secret::Value,
    /// Where the token came from, for messages (never the token).
    pub token_source: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A secret as listed: its value is eccrypto's JSON ciphertext. `Debug` shows its name only.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct WireSecret {
    pub name: String,
    pub value: String,
}

/// A variable as listed: its value in plain text. `Debug` shows its name only.
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct WireVariable {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireSecret({:?}, <redacted>)", self.name)
    }
}

impl std::fmt::Debug for WireVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireVariable({:?}, <redacted>)", self.name)
    }
}

/// The environment as keyshade has it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub secrets: Vec<WireSecret>,
    pub variables: Vec<WireVariable>,
}

impl Client {
    /// Both lists of `project`/`environment`, fetched side by side.
    pub async fn snapshot(&self, project: &str, environment: &str) -> Result<Snapshot, RestError> {
        let tail = format!("{}/{}", encode(project), encode(environment));
        let secrets = format!("/api/secret/{tail}");
        let variables = format!("/api/variable/{tail}");
        let (s, v) = tokio::join!(
            self.get_list(&secrets, project, environment),
            self.get_list(&variables, project, environment)
        );
        Ok(Snapshot {
            secrets: s?,
            variables: v?,
        })
    }

    async fn get_list<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        project: &str,
        environment: &str,
    ) -> Result<Vec<T>, RestError> {
        let (status, body) = self.get(path).await?;
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| RestError::Malformed {
                path: path.into(),
                // serde's message may quote the value it choked on: say only where.
                why: format!(
                    "not the expected list (line {}, column {}, {:?})",
                    e.line(),
                    e.column(),
                    e.classify()
                ),
            }),
            401 | 403 => Err(RestError::Token {
                status,
                message: error_message(&body),
                token_source: self.token_source.clone(),
            }),
            404 => {
                let message = error_message(&body);
                let lower = message.to_lowercase();
                let (what, setting) = if lower.contains("environment") {
                    (format!("environment {environment:?}"), "environment")
                } else if lower.contains("project") {
                    (format!("project {project:?}"), "project")
                } else {
                    (
                        format!("project {project:?} with environment {environment:?}"),
                        "project and environment",
                    )
                };
                Err(RestError::NotFound {
                    what,
                    setting,
                    message,
                })
            }
            _ => Err(RestError::Http {
                path: path.into(),
                status,
                message: error_message(&body),
            }),
        }
    }

    /// One GET of `path` under the base: its status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, Vec<u8>), RestError> {
        let url = Url::parse(&self.base).map_err(|why| RestError::Unreachable {
            base: self.base.clone(),
            why,
        })?;
        let full = format!("{}{path}", url.prefix);
        let token = self.token.expose_str().unwrap_or_default();
        let request = format!(
            "GET {full} HTTP/1.1\r\nHost: {}\r\nx-keyshade-token: {token}\r\nAccept: application/json\r\nUser-Agent: tether/{}\r\nConnection: close\r\n\r\n",
            url.authority,
            env!("CARGO_PKG_VERSION")
        );
        let unreachable = |why: String| RestError::Unreachable {
            base: self.base.clone(),
            why,
        };
        let malformed = |why: String| RestError::Malformed {
            path: path.into(),
            why,
        };
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            if !url.tls {
                return exchange(tcp, &request).await.map_err(malformed);
            }
            let config = match &self.tls {
                Some(c) => c.clone(),
                None => return Err(unreachable("https needs TLS settings".into())),
            };
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| unreachable(format!("bad host name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            exchange(tls, &request).await.map_err(malformed)
        };
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(unreachable(format!(
                "no answer to {path} within {TIMEOUT:?}"
            ))),
        }
    }
}

/// The parts of a base URL a request needs.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    /// `host[:port]` as given, for the `Host` header.
    authority: String,
    /// The path before `/api`, without its trailing slash.
    prefix: String,
}

impl Url {
    fn parse(base: &str) -> Result<Url, String> {
        let (scheme, rest) = base
            .split_once("://")
            .ok_or_else(|| format!("{base:?} is not a URL like https://api.keyshade.xyz"))?;
        let tls = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(format!("{base:?}: the scheme must be http or https")),
        };
        if rest.contains(['?', '#', '@']) {
            return Err(format!(
                "{base:?}: a base URL has no query, fragment or credentials"
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        // `host`, `host:port`, `[v6]` or `[v6]:port`.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("{base:?}: unclosed '['"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{base:?}: bad port {p:?}"))?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(format!("{base:?} has no host"));
        }
        Ok(Url {
            tls,
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// A slug as one path segment: unreserved characters as they are, the rest %-encoded.
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Send `request` and read the response: status and body. Errors say what was wrong.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<(u16, Vec<u8>), String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    stream.flush().await.map_err(|e| e.to_string())?;
    read_response(BufReader::new(stream)).await
}

async fn read_response<R: AsyncRead + Unpin>(
    mut r: BufReader<R>,
) -> Result<(u16, Vec<u8>), String> {
    let mut head_len = 0usize;
    let status_line = read_line(&mut r, &mut head_len).await?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP/1.x response ({:?})",
            status_line.chars().take(40).collect::<String>()
        ));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| "bad status line".to_string())?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        let line = read_line(&mut r, &mut head_len).await?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err("bad header line".into());
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| "bad Content-Length".to_string())?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        read_chunked(&mut r, &mut head_len).await?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(format!("body of {n} bytes is over the limit of {MAX_BODY}"));
        }
        let mut body = vec![0; n];
        r.read_exact(&mut body)
            .await
            .map_err(|e| format!("body cut short: {e}"))?;
        body
    } else {
        let mut body = Vec::new();
        (&mut r)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        if body.len() > MAX_BODY {
            return Err(format!("body over the limit of {MAX_BODY} bytes"));
        }
        body
    };
    Ok((status, body))
}

/// One CRLF-terminated line, counted against [`MAX_HEAD`] (trailers included).
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    used: &mut usize,
) -> Result<String, String> {
    let mut line = Vec::new();
    let limit = MAX_HEAD.saturating_sub(*used) as u64;
    let n = (&mut *r)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the response: {e}"))?;
    *used += n;
    if n == 0 {
        return Err("the connection closed before a complete response".into());
    }
    if !line.ends_with(b"\n") {
        return Err(if *used >= MAX_HEAD {
            format!("response head over the limit of {MAX_HEAD} bytes")
        } else {
            "the connection closed in the middle of the response head".into()
        });
    }
    let line = String::from_utf8(line).map_err(|_| "response head is not UTF-8".to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

async fn read_chunked<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    used: &mut usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, used).await?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| "bad chunk size".to_string())?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(r, used).await?.is_empty() {}
            return Ok(body);
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(format!("body over the limit of {MAX_BODY} bytes"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])
            .await
            .map_err(|e| format!("body cut short: {e}"))?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)
            .await
            .map_err(|e| format!("body cut short: {e}"))?;
        if &crlf != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
    }
}

#[cfg(test)]
#[path = "rest_tests.rs"]
mod tests;
