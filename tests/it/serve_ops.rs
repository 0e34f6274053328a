//! `tether serve` as systemd, Kubernetes and an operator's shell drive it: a reload on
//! SIGHUP and on edits of its config and TLS files (tokens, certificates, log level; a bad
//! config refused), the notifications a `Type=notify` unit gets (the test binds the
//! socket), and the latency histograms, Redis errors and build info of `/metrics`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use nix::sys::signal::Signal;
use serde_json::json;
use tether_node::auth::hash_token;
use tokio_tungstenite::tungstenite::Message;

use crate::support::ws::{hello_and_sync, wait_closed, ws_connect};
use crate::support::{
    Resp, Tether, Work, alive, http_request, listening_port, run_to_end, strip_ansi, tls,
};

// ---------------------------------------------------------------------------------------
// Harness.

const WRITER: &str = "writer-secret-0001";
const KEPT: &str = "kept-secret-0002";
const GONE: &str = "gone-secret-0003";
const NARROW: &str = "narrow-secret-0004";
const NEW: &str = "new-secret-0005";

/// A `[[token]]` entry.
fn token(name: &str, secret: &str, role: &str, envs: Option<&[&str]>) -> String {
    let envs = envs.map_or(String::new(), |e| format!("envs = {e:?}\n"));
    format!(
        "[[token]]\nname = \"{name}\"\nhash = \"{}\"\nrole = \"{role}\"\n{envs}\n",
        hash_token(secret)
    )
}

/// A node started with `--config serve.toml` (written first) and `--data data` in `w`,
/// with extra environment variables.
struct Node {
    proc: Tether,
    port: u16,
}

impl Node {
    fn start(w: &Work, config: &str, envs: &[(&str, &str)]) -> Node {
        w.write("serve.toml", config);
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "serve.toml",
            "--data",
            "data",
        ];
        let proc = Tether::start(w.dir.path(), args, envs);
        let mut port = None;
        proc.wait_for("the node listening", || {
            port = listening_port(&proc.stderr());
            port.is_some()
        });
        Node {
            port: port.unwrap_or_default(),
            proc,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    fn log(&self) -> String {
        strip_ansi(&self.proc.stderr())
    }

    fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Send SIGHUP and wait until the reload it asked for, and any the file watch started
    /// meanwhile, are done.
    fn sighup(&self) {
        let asked = self.log_count("trigger=\"signal\"");
        self.proc.signal(Signal::SIGHUP);
        self.proc.wait_for("the reload SIGHUP asked for", || {
            self.log_count("trigger=\"signal\"") > asked
                && self.reloads() == self.log_count("reloading the configuration")
        });
    }

    /// Reloads done so far, applied or refused.
    fn reloads(&self) -> usize {
        self.log_count("configuration reloaded") + self.log_count("config reload refused")
    }

    fn put(&self, token: Option<&str>, name: &str, value: &str) -> Resp {
        http_request(
            "PUT",
            &format!("{}/v1/envs/prod/entries/{name}", self.url()),
            token,
            Some(&json!({ "value": value })),
        )
    }

    fn metrics(&self) -> String {
        let r = http_request("GET", &format!("{}/metrics", self.url()), None, None);
        assert_eq!(r.status, 200, "{}", r.text);
        r.text
    }
}

/// The value of one series of a Prometheus text (`name` with its labels, if any).
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `tether run` following `prod` on `server` with `token`, in its own directory `name`
/// of `w` (output `name/out.env`), signalling the fixture child.
fn start_agent(w: &Work, name: &str, server: &str, token: &str, extra: &[&str]) -> Tether {
    let dir = w.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.env").display().to_string();
    let state = dir.join("state").display().to_string();
    let mut args: Vec<String> = [
        "run",
        "--server",
        server,
        "--env",
        "prod",
        "--state-dir",
        &state,
        "--output",
        &out,
        "--debounce",
        "0",
        "--no-env",
        "--on-change",
        "signal:USR1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(w.child_args(&[]));
    Tether::start(w.dir.path(), &args, &[("TETHER_TOKEN", token)])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------------
// Tokens.

/// SIGHUP with a new token table: the new token works at once, the removed one is refused
/// (401) and its agents are closed with 4401, a narrowed one's with 4403, and the agent
/// whose token stays keeps its connection (no reconnect, nothing counted again).
#[test]
fn sighup_swaps_tokens_and_closes_only_the_connections_they_no_longer_cover() {
    let w = Work::new();
    let before = [
        token("writer", WRITER, "write", None),
        token("kept", KEPT, "read", Some(&["prod"])),
        token("gone", GONE, "read", Some(&["prod"])),
        token("narrow", NARROW, "read", Some(&["prod", "dev"])),
    ]
    .concat();
    let node = Node::start(&w, &before, &[]);
    assert_eq!(node.put(Some(WRITER), "A", "1").status, 200);
    let kept = start_agent(&w, "kept", &node.url(), KEPT, &[]);
    let gone = start_agent(&w, "gone", &node.url(), GONE, &[]);
    for (agent, dir) in [(&kept, "kept"), (&gone, "gone")] {
        agent.wait_for("first render", || {
            std::fs::read_to_string(w.path(dir).join("out.env")).is_ok_and(|s| s.contains("A=1"))
        });
    }
    let rt = runtime();
    let (mut gone_ws, mut narrow_ws) = rt.block_on(async {
        let mut g = ws_connect(&node.ws(), Some(GONE))
            .await
            .expect("upgrade accepted");
        hello_and_sync(&mut g, "prod").await;
        let mut n = ws_connect(&node.ws(), Some(NARROW))
            .await
            .expect("upgrade accepted");
        hello_and_sync(&mut n, "prod").await;
        (g, n)
    });
    let connections = series(&node.metrics(), "tether_connections_total");
    assert_eq!(connections, Some(4.0));

    let after = [
        token("writer", WRITER, "write", None),
        token("kept", KEPT, "read", Some(&["prod"])),
        token("narrow", NARROW, "read", Some(&["dev"])),
        token("new", NEW, "write", None),
    ]
    .concat();
    // The file watch may see the write first; the signal's reload then finds nothing new.
    std::fs::write(w.path("serve.toml"), &after).unwrap();
    node.sighup();
    assert!(alive(node.proc.pid()), "SIGHUP does not end the node");

    // HTTP: the new token works, the removed one is refused.
    assert_eq!(node.put(Some(NEW), "A", "2").status, 200);
    let refused = node.put(Some(GONE), "A", "3");
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(
        http_request(
            "GET",
            &format!("{}/v1/envs/prod", node.url()),
            Some(GONE),
            None
        )
        .status,
        401
    );

    // WebSockets: the removed token's connection gets 4401, the narrowed one's 4403.
    let (gone_close, narrow_close) = rt.block_on(async {
        (
            wait_closed(&mut gone_ws).await,
            wait_closed(&mut narrow_ws).await,
        )
    });
    let (code, reason) = gone_close.expect("a close frame");
    assert_eq!(code, 4401, "{reason}");
    assert!(
        reason.contains("\"gone\"") && !reason.contains(GONE),
        "{reason}"
    );
    let (code, reason) = narrow_close.expect("a close frame");
    assert_eq!(code, 4403, "{reason}");
    assert!(reason.contains("prod"), "{reason}");
    gone.wait_for("the removed token's agent told why it was closed", || {
        strip_ansi(&gone.stderr()).contains("4401")
    });

    // The kept agent follows on the same connection: the change arrives, it never
    // reconnected, and the node counted no new connection.
    kept.wait_for("the change after the reload", || {
        std::fs::read_to_string(w.path("kept").join("out.env")).is_ok_and(|s| s.contains("A=2"))
    });
    assert_eq!(
        strip_ansi(&kept.stderr())
            .matches("connected to node")
            .count(),
        1
    );
    let m = node.metrics();
    assert_eq!(series(&m, "tether_connections_total"), connections, "{m}");
    assert_eq!(series(&m, "tether_agents_connected"), Some(1.0), "{m}");
    let log = node.log();
    assert!(
        log.contains("removed=gone") && log.contains("added=new"),
        "{log}"
    );
    for secret in [WRITER, KEPT, GONE, NARROW, NEW] {
        assert!(!log.contains(secret), "a token in the log");
    }
}

/// An edit of the config file, saved by rename and then in place, reloads it: no signal.
#[test]
fn an_edit_of_the_config_file_reloads_it_without_a_signal() {
    let w = Work::new();
    let node = Node::start(&w, &token("writer", WRITER, "write", None), &[]);
    assert_eq!(node.put(Some(WRITER), "A", "1").status, 200);

    // Saved as editors do: a temporary file renamed over it.
    w.write("serve.toml", &token("new", NEW, "write", None));
    node.proc.wait_for("the new token accepted", || {
        node.put(Some(NEW), "A", "2").status == 200
    });
    assert_eq!(node.put(Some(WRITER), "A", "3").status, 401);

    // Written in place.
    std::fs::write(w.path("serve.toml"), token("writer", WRITER, "write", None)).unwrap();
    node.proc.wait_for("the first token back", || {
        node.put(Some(WRITER), "A", "4").status == 200
    });
    assert_eq!(node.put(Some(NEW), "A", "5").status, 401);
    assert!(node.log().contains("trigger=\"file changed\""));
}

/// A config with problems is refused on reload, each problem logged with its key (and no
/// secret); the node runs on with its old tokens; a fixed file is taken.
#[test]
fn an_invalid_config_is_refused_and_the_running_one_stays() {
    let w = Work::new();
    let node = Node::start(&w, &token("writer", WRITER, "write", None), &[]);
    let bad = format!(
        "heartbeat = \"soon\"\nredis = \"redis://:hunter2@127.0.0.1:1/0\"\nbogus_key = 1\n{}",
        token("new", NEW, "write", None)
    );
    std::fs::write(w.path("serve.toml"), &bad).unwrap();
    node.sighup();
    let log = node.log();
    assert!(log.contains("config reload refused"), "{log}");
    assert!(
        log.contains("key=config") && log.contains("bogus_key"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "a password in the log");
    assert!(alive(node.proc.pid()));
    assert_eq!(node.put(Some(WRITER), "A", "1").status, 200);
    assert_eq!(node.put(Some(NEW), "A", "2").status, 401);

    // Known keys with bad values: every problem named by its key.
    let bad = format!(
        "heartbeat = \"soon\"\nmax_frame = 10\n{}[[token]]\nname = \"x\"\nhash = \"md5:1\"\nrole = \"read\"\n",
        token("new", NEW, "write", None)
    );
    std::fs::write(w.path("serve.toml"), &bad).unwrap();
    node.sighup();
    let log = node.log();
    for key in ["key=heartbeat", "key=max_frame", "key=token[1].hash"] {
        assert!(log.contains(key), "{key} in:\n{log}");
    }
    assert_eq!(node.put(Some(WRITER), "A", "3").status, 200);

    // Fixed: taken.
    std::fs::write(w.path("serve.toml"), token("new", NEW, "write", None)).unwrap();
    node.sighup();
    assert_eq!(node.put(Some(NEW), "A", "4").status, 200);
    assert_eq!(node.put(Some(WRITER), "A", "5").status, 401);
}

/// `log_level = "debug"` in the file, reloaded: debug lines appear from then on.
#[test]
fn a_log_level_change_takes_effect() {
    let w = Work::new();
    let node = Node::start(&w, "", &[]);
    // A frame that is not JSON: the node closes the connection, logging it at debug.
    let garbage = |node: &Node| {
        runtime().block_on(async {
            let mut ws = ws_connect(&node.ws(), Some("any"))
                .await
                .expect("upgrade accepted");
            ws.send(Message::text("not json")).await.unwrap();
            wait_closed(&mut ws).await
        })
    };
    assert_eq!(garbage(&node).map(|c| c.0), Some(1007));
    // The close is logged (at debug) before the frame is sent: by now it would be there.
    assert_eq!(node.log_count("closing agent connection"), 0);

    std::fs::write(w.path("serve.toml"), "log_level = \"debug\"\n").unwrap();
    node.sighup();
    assert!(node.log().contains("applied=log_level"), "{}", node.log());
    assert_eq!(garbage(&node).map(|c| c.0), Some(1007));
    node.proc.wait_for("a debug line", || {
        node.log_count("closing agent connection") == 1
    });
}

// ---------------------------------------------------------------------------------------
// TLS.

/// `tether get` over https trusting `ca`: whether it succeeded, and its stderr.
fn get_with_ca(w: &Work, port: u16, ca: &str) -> (bool, String) {
    let server = format!("https://127.0.0.1:{port}");
    let ca = w.path(ca).display().to_string();
    let (code, _, err) = run_to_end(
        w.dir.path(),
        &[
            "get",
            "--server",
            &server,
            "--ca-file",
            &ca,
            "--env",
            "prod",
        ],
    );
    (code == 0, err)
}

/// A renewed certificate written over the node's files is served to new connections
/// (followed through the file watch, no signal); an agent connected before keeps its
/// connection and goes on receiving changes.
#[test]
fn a_renewed_certificate_is_served_to_new_connections_and_open_ones_stay() {
    let w = Work::new();
    let (cert, key) = tls::issue(w.dir.path(), "old-");
    w.write("node.pem", &cert);
    w.write("node.key", &key);
    let config = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        w.path("node.pem").display(),
        w.path("node.key").display()
    );
    let node = Node::start(&w, &config, &[]);
    let https = format!("https://127.0.0.1:{}", node.port);
    let put = |ca: &str, pair: &str| {
        let ca = w.path(ca).display().to_string();
        run_to_end(
            w.dir.path(),
            &[
                "put",
                "--server",
                &https,
                "--ca-file",
                &ca,
                "--env",
                "prod",
                pair,
            ],
        )
    };
    let (code, _, err) = put("old-ca.pem", "A=1");
    assert_eq!(code, 0, "{err}");
    let wss = format!("wss://127.0.0.1:{}", node.port);
    let old_ca = w.path("old-ca.pem").display().to_string();
    let agent = start_agent(&w, "agent", &wss, "dev", &["--ca-file", &old_ca]);
    let out = w.path("agent").join("out.env");
    agent.wait_for("first render over wss", || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("A=1"))
    });

    let (cert, key) = tls::issue(w.dir.path(), "new-");
    w.write("node.key", &key);
    w.write("node.pem", &cert);
    node.proc.wait_for("the new certificate served", || {
        get_with_ca(&w, node.port, "new-ca.pem").0
    });
    let (ok, err) = get_with_ca(&w, node.port, "old-ca.pem");
    assert!(!ok, "the old certificate is no longer served");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    let (code, _, err) = put("new-ca.pem", "A=2");
    assert_eq!(code, 0, "{err}");
    agent.wait_for("the change over the connection opened before", || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("A=2"))
    });
    assert_eq!(
        strip_ansi(&agent.stderr())
            .matches("connected to node")
            .count(),
        1
    );
}

// ---------------------------------------------------------------------------------------
// systemd notifications.

/// Datagrams received on a notification socket the test bound, kept in order.
struct NotifySocket {
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    g.lock().unwrap().push(text);
                }
            }
        });
        NotifySocket { got, stop }
    }

    fn all(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    /// Index of the first message at or after `from` with a line `line` (or starting with
    /// it, for `KEY=`).
    fn find(&self, from: usize, line: &str) -> Option<usize> {
        self.all()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, m)| m.lines().any(|l| l.starts_with(line)))
            .map(|(i, _)| i)
    }

    fn wait(&self, node: &Node, from: usize, line: &str) -> usize {
        let mut at = None;
        node.proc.wait_for(&format!("{line:?} notified"), || {
            at = self.find(from, line);
            at.is_some()
        });
        at.unwrap_or_default()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

/// READY=1 once listening, STATUS lines that follow the agents, WATCHDOG=1 while
/// WATCHDOG_USEC is set, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP,
/// STOPPING=1 on TERM.
#[test]
fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    let w = Work::new();
    let path = w.path("notify.sock");
    let sd = NotifySocket::bind(&path);
    let socket = path.display().to_string();
    let node = Node::start(
        &w,
        "",
        &[
            ("NOTIFY_SOCKET", socket.as_str()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let ready = sd.wait(&node, 0, "READY=1");
    assert!(node.log().contains("node listening"));
    let first = &sd.all()[ready];
    assert!(
        first.contains("STATUS=serving 0 agents, 0 environments, store sqlite"),
        "{first}"
    );
    // Fed every 200 ms (half of WATCHDOG_USEC): a few within the deadline.
    node.proc.wait_for("WATCHDOG=1 again and again", || {
        sd.all().iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
    });

    // An agent and a commit: the status follows.
    assert_eq!(node.put(None, "A", "1").status, 200);
    let rt = runtime();
    let _agent = rt.block_on(async {
        let mut ws = ws_connect(&node.ws(), Some("any"))
            .await
            .expect("upgrade accepted");
        hello_and_sync(&mut ws, "prod").await;
        ws
    });
    sd.wait(
        &node,
        ready,
        "STATUS=serving 1 agent, 1 environment, store sqlite",
    );

    // A reload: RELOADING=1 with the monotonic clock, then READY=1.
    let at = sd.all().len();
    let before = monotonic_usec();
    node.proc.signal(Signal::SIGHUP);
    let reloading = sd.wait(&node, at, "RELOADING=1");
    let msg = &sd.all()[reloading];
    let usec: u64 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {msg:?}"))
        .parse()
        .unwrap();
    assert!(before <= usec && usec <= monotonic_usec(), "{usec}");
    sd.wait(&node, reloading + 1, "READY=1");

    // TERM: STOPPING=1, and a clean exit.
    let at = sd.all().len();
    node.proc.signal(Signal::SIGTERM);
    sd.wait(&node, at, "STOPPING=1");
    let mut node = node;
    assert_eq!(node.proc.wait().code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// Metrics.

/// A histogram's buckets (in order), `_count` and `_sum`.
fn histogram(text: &str, name: &str) -> (Vec<(String, f64)>, f64, f64) {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    let count = series(text, &format!("{name}_count")).expect("_count");
    let sum = series(text, &format!("{name}_sum")).expect("_sum");
    (buckets, count, sum)
}

/// After writes, the commit and fan-out histograms have observations in consistent
/// buckets (cumulative, `+Inf` equal to `_count`), and build info is there.
#[test]
fn metrics_have_latency_histograms_and_build_info() {
    let w = Work::new();
    let node = Node::start(&w, "", &[]);
    let rt = runtime();
    let _agent = rt.block_on(async {
        let mut ws = ws_connect(&node.ws(), Some("any"))
            .await
            .expect("upgrade accepted");
        hello_and_sync(&mut ws, "prod").await;
        ws
    });
    for v in ["1", "2", "3"] {
        assert_eq!(node.put(None, "A", v).status, 200);
    }
    let text = node.metrics();
    let (buckets, count, sum) = histogram(&text, "tether_commit_duration_seconds");
    assert_eq!(count, 3.0, "{text}");
    assert!(sum > 0.0);
    let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
    assert_eq!(les.first(), Some(&"0.0001"));
    assert_eq!(les[les.len() - 2], "10");
    assert_eq!(les.last(), Some(&"+Inf"));
    assert!(buckets.windows(2).all(|b| b[0].1 <= b[1].1), "{buckets:?}");
    assert_eq!(buckets.last().map(|b| b.1), Some(count));

    // The fan-out is timed once its change set was offered to every connection: it may
    // land just after the write's answer.
    let mut fanout = (Vec::new(), 0.0, 0.0);
    node.proc.wait_for("three fan-outs timed", || {
        fanout = histogram(&node.metrics(), "tether_fanout_duration_seconds");
        fanout.1 >= 3.0
    });
    let (buckets, count, _) = fanout;
    assert!(buckets.windows(2).all(|b| b[0].1 <= b[1].1), "{buckets:?}");
    assert_eq!(buckets.last().map(|b| b.1), Some(count));

    let info = format!(
        "tether_build_info{{version=\"{}\",arch=\"{}\",os=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    assert_eq!(series(&text, &info), Some(1.0), "{text}");
    assert!(text.contains("# TYPE tether_commit_duration_seconds histogram"));
    // Embedded store: no Redis series.
    assert!(!text.contains("tether_redis_errors_total"));
}

/// A cluster node whose Redis does not answer counts the errors by operation.
#[test]
fn redis_errors_are_counted_by_operation() {
    let w = Work::new();
    // A port nothing listens on: every call to Redis fails.
    let port = crate::support::free_port();
    let node = Node::start(
        &w,
        &format!("redis = \"redis://127.0.0.1:{port}/0\"\n"),
        &[],
    );
    assert_eq!(node.put(None, "A", "1").status, 503);
    let mut text = String::new();
    node.proc
        .wait_for("connect and subscribe errors counted", || {
            text = node.metrics();
            series(&text, "tether_redis_errors_total{op=\"connect\"}").is_some_and(|n| n >= 1.0)
                && series(&text, "tether_redis_errors_total{op=\"subscribe\"}")
                    .is_some_and(|n| n >= 1.0)
        });
    for op in ["commit", "read", "reset", "registry"] {
        let name = format!("tether_redis_errors_total{{op=\"{op}\"}}");
        assert!(series(&text, &name).is_some(), "{name} in:\n{text}");
    }
}
