//! The agent as operators run it: its endpoints (`--listen-metrics`: `/healthz`, `/readyz`,
//! `/metrics`, over TCP or a unix socket) here; what it tells systemd in `notify`; readiness
//! and status while following nodes in `net`.

mod net;
mod notify;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;

use nix::sys::signal::Signal;

use crate::support::{DEADLINE, Tether, Work, http_request, strip_ansi};

/// A value written to a source, that no endpoint, notification or log may show.
const SECRET: &str = "s3cr3t-value-never-shown";

/// The address of the "agent endpoints listening" log line.
pub(super) fn endpoint_addr(agent: &Tether) -> String {
    let mut addr = None;
    agent.wait_for("the endpoints' address in the log", || {
        let logs = strip_ansi(&agent.stderr());
        addr = logs
            .lines()
            .find(|l| l.contains("agent endpoints listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap_or_default().to_string());
        addr.is_some()
    });
    addr.unwrap_or_default()
}

pub(super) fn get(addr: &str, path: &str) -> (u16, String) {
    let r = http_request("GET", &format!("http://{addr}{path}"), None, None);
    (r.status, r.text)
}

/// One raw exchange: send `bytes`, read the answer until the server closes.
fn raw<S: Read + Write>(mut s: S, bytes: &[u8]) -> String {
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn tcp(addr: &str) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).expect("connect to the endpoints");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s
}

/// The value of `name` (a full series, labels included) in a metrics text.
pub(super) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `tether watch` of `src.env` into `out.env`, endpoints on `listen`, plus `extra`.
pub(super) fn watch(w: &Work, listen: &str, extra: &[&str], envs: &[(&str, &str)]) -> Tether {
    let (src, out) = (w.path("src.env"), w.path("out.env"));
    let mut args = vec![
        "watch".to_string(),
        "--source".into(),
        format!("file:{}", src.display()),
        "--output".into(),
        out.display().to_string(),
        "--debounce".into(),
        "0".into(),
        "--listen-metrics".into(),
        listen.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Tether::start(w.dir.path(), &args, envs)
}

/// `tether run` of `src.env` (written as `A=1`) into `out.env`, endpoints on a free loopback
/// port, plus `extra`, supervising the fixture child with `child`; and the endpoints' address.
fn run_child(w: &Work, extra: &[&str], child: &[&str]) -> (Tether, String) {
    w.write("src.env", "A=1\n");
    let mut args = vec![
        "run".to_string(),
        "--source".into(),
        format!("file:{}", w.path("src.env").display()),
        "--output".into(),
        w.path("out.env").display().to_string(),
        "--listen-metrics".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(w.child_args(child));
    let agent = Tether::start(w.dir.path(), &args, &[]);
    let addr = endpoint_addr(&agent);
    (agent, addr)
}

#[test]
fn watch_endpoints_answer_health_readiness_and_metrics_without_values() {
    let w = Work::new();
    w.write("src.env", &format!("A=1\nTOKEN={SECRET}\n"));
    let agent = watch(&w, "127.0.0.1:0", &[], &[]);
    let addr = endpoint_addr(&agent);
    agent.wait_for("first render", || w.read("out.env").contains("A=1"));

    assert_eq!(get(&addr, "/healthz"), (200, "alive\n".into()));
    agent.wait_for("ready", || get(&addr, "/readyz").0 == 200);
    assert_eq!(
        get(&addr, "/readyz").1,
        "ready: watching 1 source, 1 output\n"
    );

    w.write("src.env", &format!("A=2\nTOKEN={SECRET}\n"));
    agent.wait_for("the change rendered", || w.read("out.env").contains("A=2"));
    let out = w.path("out.env").display().to_string();
    let mut text = String::new();
    agent.wait_for("the change counted", || {
        text = get(&addr, "/metrics").1;
        sample(&text, "tether_agent_changes_applied_total") >= Some(1.0)
    });
    let renders = format!("tether_agent_renders_total{{output=\"{out}\"}}");
    assert_eq!(sample(&text, &renders), Some(2.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("tether_agent_render_failures_total{{output=\"{out}\"}}")
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tether_build_info{{version=\"{}\",build=\"full\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert_eq!(sample(&text, "tether_agent_ready"), Some(1.0), "{text}");
    assert!(
        sample(&text, "tether_agent_seconds_since_last_change").is_some(),
        "{text}"
    );
    assert!(
        !text.contains("tether_agent_source_"),
        "no network source: {text}"
    );

    // The rest of HTTP: HEAD, unknown paths, other methods; never a value anywhere.
    let head = http_request("HEAD", &format!("http://{addr}/metrics"), None, None);
    assert_eq!((head.status, head.text.as_str()), (200, ""));
    assert_eq!(get(&addr, "/nope").0, 404);
    let post = http_request("POST", &format!("http://{addr}/metrics"), None, None);
    assert_eq!(post.status, 405);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert!(!get(&addr, path).1.contains(SECRET), "{path}");
    }
    assert!(!agent.stderr().contains(SECRET));
}

#[test]
fn garbage_gets_400_oversized_heads_431_and_the_server_goes_on() {
    let w = Work::new();
    w.write("src.env", "A=1\n");
    let agent = watch(&w, "127.0.0.1:0", &[], &[]);
    let addr = endpoint_addr(&agent);

    let answer = raw(tcp(&addr), b"\x00\xff\xfe garbage \x01\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    assert!(answer.contains("Connection: close\r\n"), "{answer:?}");
    let answer = raw(tcp(&addr), b"GET /metrics HTTP/9\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    let answer = raw(tcp(&addr), &vec![b'a'; 20_000]);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    // A client that sends half a head and hangs up.
    let mut s = tcp(&addr);
    s.write_all(b"GET /healthz HTT").expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let answer = raw(s, b"");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");

    // Idle connections past the cap wait their turn: each silent one is answered 408 after
    // the read deadline, and a real request queued behind them is then served.
    let idle: Vec<_> = (0..16).map(|_| tcp(&addr)).collect();
    let late = tcp(&addr);
    let answer = raw(late, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\nalive\n"), "{answer:?}");
    for s in idle {
        let answer = raw(s, b"");
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    }
    assert_eq!(get(&addr, "/healthz").0, 200);
}

#[test]
fn endpoints_on_a_unix_socket_0660_replacing_a_stale_one_removed_at_exit() {
    let w = Work::new();
    w.write("src.env", "A=1\n");
    let sock = w.path("agent.sock");
    // A socket left by a tether that died.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    let mut agent = watch(&w, &format!("unix:{}", sock.display()), &[], &[]);
    assert_eq!(endpoint_addr(&agent), format!("unix:{}", sock.display()));
    let meta = std::fs::symlink_metadata(&sock).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let ask = |req: &[u8]| raw(UnixStream::connect(&sock).expect("connect"), req);
    agent.wait_for("ready over the socket", || {
        ask(b"GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 ")
    });
    let metrics = ask(b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(metrics.contains("tether_build_info{"), "{metrics}");
    assert!(ask(b"nonsense\n\n").starts_with("HTTP/1.1 400 "));

    agent.signal(Signal::SIGTERM);
    assert!(agent.wait().success());
    assert!(!sock.exists(), "the socket is removed at exit");

    // A path that is not a socket is refused, and left alone.
    std::fs::write(&sock, "mine").expect("write");
    let mut agent = watch(&w, &format!("unix:{}", sock.display()), &[], &[]);
    let st = agent.wait();
    assert!(!st.success());
    let logs = strip_ansi(&agent.stderr());
    assert!(logs.contains("is not a socket"), "{logs}");
    assert!(logs.contains("listen_metrics"), "{logs}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap_or_default(), "mine");
}
#[test]
fn run_mode_metrics_count_restarts_exits_and_signals() {
    let w = Work::new();
    let (mut agent, addr) = run_child(&w, &["--debounce", "0", "--on-change", "restart"], &[]);
    agent.wait_for("first start", || w.starts().len() == 1);

    // A change restarts the child: stopped by TERM (it exits 0), started again.
    w.write("src.env", "A=2\n");
    agent.wait_for("restarted", || w.starts().len() == 2);
    let mut text = String::new();
    agent.wait_for("the restart counted", || {
        text = get(&addr, "/metrics").1;
        sample(
            &text,
            "tether_agent_child_restarts_total{reason=\"change\"}",
        ) == Some(1.0)
    });
    for (series, want) in [
        ("tether_agent_child_exits_total{kind=\"success\"}", 1.0),
        ("tether_agent_child_restarts_total{reason=\"exit\"}", 0.0),
        ("tether_agent_signals_sent_total{signal=\"SIGTERM\"}", 1.0),
        ("tether_agent_changes_applied_total", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait().success());

    // A child that fails on its own, restarted by the policy.
    let w = Work::new();
    let (agent, addr) = run_child(
        &w,
        &["--restart-on-exit", "on-failure"],
        &["--exit-after", "50", "3"],
    );
    agent.wait_for("exits and restarts counted", || {
        let text = get(&addr, "/metrics").1;
        sample(&text, "tether_agent_child_exits_total{kind=\"failure\"}") >= Some(2.0)
            && sample(&text, "tether_agent_child_restarts_total{reason=\"exit\"}") >= Some(2.0)
    });
}
