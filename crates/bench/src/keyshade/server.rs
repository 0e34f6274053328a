//! The keyshade test server (`tests/keyshade-server/server.js`, Node.js) as the bench runs
//! it: started on a loopback port, driven through its `/_test/` control API over plain
//! HTTP/1.1, stopped on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// The server's directory in the source tree (the bench is never installed elsewhere).
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/keyshade-server")
}

pub struct Server {
    proc: Child,
    pub port: u16,
}

impl Server {
    /// `node DIR/server.js ARGS` on 127.0.0.1:0; fails with the command to run when the
    /// server's packages are not installed.
    pub fn start(dir: &Path, args: &[String]) -> anyhow::Result<Server> {
        if !dir.join("node_modules/socket.io/package.json").is_file() {
            bail!(
                "the keyshade test server's packages are not installed: run `npm ci --prefix {}`",
                dir.display()
            );
        }
        let mut proc = Command::new("node")
            .arg(dir.join("server.js"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the keyshade test server with `node` (install Node.js)")?;
        let stdout = proc.stdout.take().context("the server's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(port) = line.trim().parse::<u16>() {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .context("the keyshade test server did not print its port")?;
        Ok(Server { proc, port })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An open connection for one control call, so that timing can start after the connect.
    pub fn connect(&self) -> anyhow::Result<Call> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_nodelay(true)?;
        Ok(Call {
            stream,
            port: self.port,
        })
    }

    /// `POST /_test/{what}` with `body`; the answer's JSON.
    pub fn control(&self, what: &str, body: &Value) -> anyhow::Result<Value> {
        self.connect()?.post(what, body)
    }

    /// `GET /_test/state`.
    pub fn state(&self) -> anyhow::Result<Value> {
        self.connect()?.request("GET", "state", None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// One HTTP/1.1 exchange on its own connection (`Connection: close`).
pub struct Call {
    stream: TcpStream,
    port: u16,
}

impl Call {
    pub fn post(self, what: &str, body: &Value) -> anyhow::Result<Value> {
        self.request("POST", what, Some(body))
    }

    fn request(mut self, method: &str, what: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let req = format!(
            "{method} /_test/{what} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.stream.write_all(req.as_bytes())?;
        let mut resp = String::new();
        self.stream.read_to_string(&mut resp)?;
        let (head, text) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        if !head.starts_with("HTTP/1.1 200") {
            bail!(
                "{what}: {} {text}",
                head.lines().next().unwrap_or("no answer")
            );
        }
        serde_json::from_str(text).with_context(|| format!("{what}: not JSON: {text}"))
    }
}
