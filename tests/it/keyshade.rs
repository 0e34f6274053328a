//! The keyshade source against a real Socket.IO server: `tests/keyshade-server` (Node.js,
//! socket.io 4.8 and eccrypto 1.1.6 from its lockfile), started per test on port 0 and
//! driven through its `/_test/` control API. The session (handshake, pings, registration)
//! is in `keyshade/session.rs`, the state tether ends with in `keyshade/state.rs`, errors
//! users must be able to act on in `keyshade/errors.rs`.
//!
//! The server's packages must be installed (`npm ci --prefix tests/keyshade-server`, which
//! `.ci/run` does); without them these tests fail and say so, they never skip.

mod errors;
mod session;
mod state;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::{Value, json};

use crate::support::{DEADLINE, Tether, Work, http_request, strip_ansi};

/// The test server's directory.
const SERVER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keyshade-server");
/// The one token the server accepts unless a test says otherwise, and its user.
pub const TOKEN: &str = "ks.pat.0123456789abcdef";
pub const WORKSPACE: &str = "tether";
pub const PROJECT: &str = "app";
pub const ENVIRONMENT: &str = "dev";
/// The project's private key (its public key encrypts the server's secrets).
pub const KEY: &str = "6f1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100aa";
/// Another valid key: secrets encrypted for `KEY` fail to decrypt with it.
pub const OTHER_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// A running `tests/keyshade-server/server.js`; killed on drop (it also exits when its
/// stdin, held here, closes).
pub struct KsServer {
    child: Option<Child>,
    pub port: u16,
    /// The control API's port: `port`, or a plain-http one beside a TLS server.
    control_port: u16,
    tls: bool,
    err: PathBuf,
    _logs: tempfile::TempDir,
}

impl KsServer {
    /// A server with the project `app` (environment `dev`, private key [`KEY`]) and the
    /// token [`TOKEN`], plus `args` (e.g. `--ping-interval 100`).
    pub fn start(args: &[&str]) -> KsServer {
        KsServer::start_with(args, false)
    }

    /// The same over https/wss, with a certificate for 127.0.0.1 from a test CA whose
    /// certificate is `ca.pem` in `w`.
    pub fn start_tls(w: &Work) -> KsServer {
        let (cert, key) = crate::support::tls::issue(w.dir.path(), "");
        std::fs::write(w.path("node.pem"), cert).unwrap();
        std::fs::write(w.path("node.key"), key).unwrap();
        let cert = w.path("node.pem").display().to_string();
        let key = w.path("node.key").display().to_string();
        KsServer::start_with(&["--cert", &cert, "--key", &key], true)
    }

    fn start_with(args: &[&str], tls: bool) -> KsServer {
        let modules = Path::new(SERVER_DIR).join("node_modules");
        for pkg in ["socket.io", "eccrypto"] {
            assert!(
                modules.join(pkg).join("package.json").is_file(),
                "the keyshade test server's packages are not installed ({} has no {pkg}): \
                 run `npm ci --prefix tests/keyshade-server` (needs Node.js and npm; \
                 .ci/run does it)",
                modules.display()
            );
        }
        let logs = tempfile::tempdir().expect("log dir");
        let err = logs.path().join("stderr");
        let project = format!("{PROJECT}:{KEY}:{ENVIRONMENT}");
        let token = format!("{TOKEN}=tester");
        let mut cmd = Command::new("node");
        cmd.arg(Path::new(SERVER_DIR).join("server.js"))
            .args(["--workspace", WORKSPACE, "--project", &project])
            .args(["--token", &token])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start the keyshade test server with `node`: {e} (install Node.js, \
                 e.g. `apt-get install nodejs npm`)"
            )
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let line = line.trim();
                let (control, port) = match line.strip_prefix("control ") {
                    Some(p) => (true, p),
                    None => (false, line),
                };
                if let Ok(port) = port.parse::<u16>() {
                    let _ = tx.send((control, port));
                }
            }
        });
        let mut server = KsServer {
            child: Some(child),
            port: 0,
            control_port: 0,
            tls,
            err,
            _logs: logs,
        };
        while server.port == 0 || server.control_port == 0 {
            match rx.recv_timeout(DEADLINE) {
                Ok((true, port)) => server.control_port = port,
                Ok((false, port)) => {
                    server.port = port;
                    if !tls {
                        server.control_port = port;
                    }
                }
                Err(_) => {
                    eprintln!("--- keyshade server stderr:\n{}", server.stderr());
                    panic!("the keyshade test server did not print its port within {DEADLINE:?}");
                }
            }
        }
        server
    }

    /// The base URL tether is given.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn control_url(&self, what: &str) -> String {
        format!("http://127.0.0.1:{}/_test/{what}", self.control_port)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// `POST /_test/{what}` with `body`; panics unless the server answers 200.
    pub fn control(&self, what: &str, body: Value) -> Value {
        let resp = http_request("POST", &self.control_url(what), None, Some(&body));
        assert_eq!(resp.status, 200, "{what} {body}: {}", resp.text);
        resp.json
    }

    /// Store a plaintext variable and, unless `emit` is false, send its event `times` times.
    pub fn variable(&self, name: &str, value: &str, emit: bool, times: u32) -> Value {
        self.control(
            "variable",
            json!({"project": PROJECT, "environment": ENVIRONMENT, "name": name,
                   "value": value, "emit": emit, "times": times}),
        )
    }

    /// Store a secret (encrypted for [`KEY`]) and, unless `emit` is false, send its event.
    pub fn secret(&self, name: &str, value: &str, emit: bool) -> Value {
        self.control(
            "secret",
            json!({"project": PROJECT, "environment": ENVIRONMENT, "name": name,
                   "value": value, "emit": emit}),
        )
    }

    /// Delete a name; like keyshade, the server sends no event.
    pub fn delete(&self, name: &str) {
        self.control(
            "delete",
            json!({"project": PROJECT, "environment": ENVIRONMENT, "name": name}),
        );
    }

    /// Send a raw `configuration-updated` payload to the registered sockets.
    pub fn emit(&self, payload: Value) -> u64 {
        let r = self.control(
            "emit",
            json!({"project": PROJECT, "environment": ENVIRONMENT, "payload": payload}),
        );
        r["sent"].as_u64().unwrap_or(0)
    }

    pub fn state(&self) -> Value {
        let resp = http_request("GET", &self.control_url("state"), None, None);
        assert_eq!(resp.status, 200, "state: {}", resp.text);
        resp.json
    }

    /// A counter of the state (`registrations`, `pongs`...).
    pub fn count(&self, key: &str) -> u64 {
        self.state()[key].as_u64().unwrap_or(0)
    }
}

impl Drop for KsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if std::thread::panicking() {
                eprintln!("--- keyshade server stderr:\n{}", self.stderr());
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What goes into the `[keyshade]` table besides the server's address and the slugs.
pub struct Ks<'a> {
    pub token: &'a str,
    pub environment: &'a str,
    pub private_key: Option<&'a str>,
    /// Extra `key = value` lines of the table.
    pub extra: &'a str,
}

impl Default for Ks<'_> {
    fn default() -> Self {
        Ks {
            token: TOKEN,
            environment: ENVIRONMENT,
            private_key: Some(KEY),
            extra: "",
        }
    }
}

/// Write `tether.toml` with a `[keyshade]` table following `base_url` (token and private
/// key in files of mode 0600, as users keep them).
pub fn write_config(w: &Work, base_url: &str, ks: &Ks<'_>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let secret_file = |name: &str, content: &str| {
        let path = w.path(name);
        std::fs::write(&path, content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path.display().to_string()
    };
    let mut table = format!(
        "[keyshade]\nbase_url = \"{base_url}\"\nworkspace = \"{WORKSPACE}\"\n\
         project = \"{PROJECT}\"\nenvironment = \"{}\"\ntoken_file = \"{}\"\n",
        ks.environment,
        secret_file("token", &format!("{}\n", ks.token)),
    );
    if let Some(key) = ks.private_key {
        let file = secret_file("key", &format!("{key}\n"));
        table.push_str(&format!("private_key_file = \"{file}\"\n"));
    }
    table.push_str(ks.extra);
    let config = w.path("tether.toml");
    std::fs::write(&config, table).expect("write config");
    config
}

/// `tether run -c tether.toml` writing the values to `out.json` (not the child's
/// environment) and sending SIGUSR1 to the test child on each change, with no debounce.
/// `HOME` is the work dir, so no real `~/.keyshade` is read.
pub fn start_agent(w: &Work, config: &Path, extra: &[&str]) -> Tether {
    let out = w.path("out.json").display().to_string();
    let config = config.display().to_string();
    let home = w.dir.path().display().to_string();
    let mut args: Vec<String> = ["run", "-c", &config, "--output", &out, "--format", "json"]
        .map(String::from)
        .into();
    args.extend(["--no-env", "--on-change", "signal:USR1", "--debounce", "0"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(w.child_args(&[]));
    Tether::start(w.dir.path(), &args, &[("HOME", &home)])
}

/// Follow `server` with the defaults of [`Ks`] plus `extra` table lines.
pub fn follow(w: &Work, server: &KsServer, extra: &str) -> Tether {
    let config = write_config(
        w,
        &server.url(),
        &Ks {
            extra,
            ..Ks::default()
        },
    );
    start_agent(w, &config, &[])
}

/// The values tether rendered (`out.json`), empty while it does not exist.
pub fn rendered(w: &Work) -> BTreeMap<String, String> {
    serde_json::from_str(&w.read("out.json")).unwrap_or_default()
}

/// `pairs` as the map [`rendered`] returns.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// tether's log without colours.
pub fn logs(agent: &Tether) -> String {
    strip_ansi(&agent.stderr())
}

/// Whether tether is still running.
pub fn running(agent: &mut Tether) -> bool {
    agent
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().ok().flatten().is_none())
}

/// Wait until tether renders exactly `want`.
pub fn wait_rendered(agent: &Tether, w: &Work, what: &str, want: &BTreeMap<String, String>) {
    agent.wait_for(what, || rendered(w) == *want);
}

/// Wait until the child is up (its start recorded) and the server has `n` registrations.
pub fn wait_registered(agent: &Tether, w: &Work, server: &KsServer, n: u64) {
    agent.wait_for("the child to start", || !w.starts().is_empty());
    agent.wait_for(&format!("{n} registration(s) on the server"), || {
        server.count("registrations") >= n && server.count("registered") == 1
    });
}
