//! The bake's rules on a paused clock (a scripted probe and child), and the checks against
//! real local listeners and commands.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::*;
use crate::config::Mode;
use crate::supervisor::Reaper;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn spec(check: bool, bake: u64) -> HealthSpec {
    HealthSpec {
        check: check.then(|| Check::Tcp("127.0.0.1:1".into())),
        bake: secs(bake),
        interval: secs(1),
        timeout: secs(60),
        rollback: true,
    }
}

type NoProbe = fn() -> std::future::Ready<Result<(), String>>;

/// A probe that fails until `passes_from` (on the paused clock), and from `fails_from` on.
fn scripted(
    start: Instant,
    passes_from: Duration,
    fails_from: Option<Duration>,
    calls: Arc<Mutex<u32>>,
) -> impl FnMut() -> std::future::Ready<Result<(), String>> {
    move || {
        *calls.lock().unwrap() += 1;
        let at = start.elapsed();
        let ok = at >= passes_from && fails_from.is_none_or(|f| at < f);
        std::future::ready(if ok { Ok(()) } else { Err("HTTP 503".into()) })
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_check_the_child_must_run_for_the_whole_bake() {
    let (tx, rx) = watch::channel(ChildExits::default());
    let start = Instant::now();
    assert_eq!(
        bake(&spec(false, 10), None::<NoProbe>, Some(rx)).await,
        Ok(())
    );
    assert_eq!(start.elapsed(), secs(10));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn the_child_exiting_within_the_bake_fails_it_at_once() {
    let (tx, rx) = watch::channel(ChildExits::default());
    let start = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(secs(3)).await;
        tx.send_modify(|e| {
            e.count += 1;
            e.last = Some(Exit::Code(3));
        });
        tokio::time::sleep(secs(3600)).await;
    });
    let r = bake(&spec(false, 10), None::<NoProbe>, Some(rx)).await;
    assert_eq!(
        r,
        Err(Failure {
            reason: "the child exited with status 3 within the bake time".into(),
            child_exited: true
        })
    );
    assert_eq!(start.elapsed(), secs(3));
}

#[test]
fn a_child_killed_by_a_signal_is_said_so() {
    let f = exited(Exit::Signaled(9));
    assert_eq!(
        f.reason,
        "the child was killed by SIGKILL within the bake time"
    );
    assert!(f.child_exited);
}

#[tokio::test(start_paused = true)]
async fn a_check_that_fails_first_then_passes_within_the_timeout_is_healthy() {
    let calls = Arc::new(Mutex::new(0));
    let start = Instant::now();
    let probe = scripted(start, secs(5), None, calls.clone());
    let (_tx, rx) = watch::channel(ChildExits::default());
    assert_eq!(bake(&spec(true, 10), Some(probe), Some(rx)).await, Ok(()));
    // Passed first at 5s, then baked 10s.
    assert_eq!(start.elapsed(), secs(15));
    // Attempts at 0..=5 (6), then one a second during the bake (10).
    assert_eq!(*calls.lock().unwrap(), 16);
}

#[tokio::test(start_paused = true)]
async fn a_check_that_never_passes_fails_at_the_health_timeout() {
    let calls = Arc::new(Mutex::new(0));
    let start = Instant::now();
    let probe = scripted(start, secs(1000), None, calls);
    let r = bake(&spec(true, 10), Some(probe), None).await;
    assert_eq!(
        r.map_err(|f| f.reason),
        Err("health check did not pass within 1m: HTTP 503".into())
    );
    assert_eq!(start.elapsed(), secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_check_failing_during_the_bake_fails_it() {
    let calls = Arc::new(Mutex::new(0));
    let start = Instant::now();
    let probe = scripted(start, Duration::ZERO, Some(secs(4)), calls);
    let r = bake(&spec(true, 10), Some(probe), None).await;
    assert_eq!(
        r,
        Err(Failure {
            reason: "health check failed: HTTP 503".into(),
            child_exited: false
        })
    );
    assert_eq!(start.elapsed(), secs(4));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_hangs_is_cut_at_the_attempt_limit() {
    let start = Instant::now();
    let mut s = spec(true, 0);
    s.timeout = secs(12);
    let probe = || std::future::pending::<Result<(), String>>();
    let r = bake(&s, Some(probe), None).await.map_err(|f| f.reason);
    assert_eq!(
        r,
        Err("health check did not pass within 12s: no answer within 5s".into())
    );
    // Attempts at 0, 6 and 12 (each cut after 5s, a second apart), the last at the timeout.
    assert!(start.elapsed() >= secs(12) && start.elapsed() <= secs(18));
}

#[test]
fn which_versions_need_a_bake() {
    let run_default = HealthSpec::defaults(Mode::Run);
    assert_eq!(run_default.bake, secs(10));
    assert!(run_default.needs_bake(Mode::Run, true));
    assert!(!run_default.needs_bake(Mode::Run, false), "nothing fired");
    let watch_default = HealthSpec::defaults(Mode::Watch);
    assert_eq!(watch_default.bake, Duration::ZERO);
    assert!(
        !watch_default.needs_bake(Mode::Watch, true),
        "watch without a check"
    );
    assert!(!spec(false, 10).needs_bake(Mode::Watch, true));
    assert!(spec(true, 0).needs_bake(Mode::Watch, true));
    assert!(!spec(false, 0).needs_bake(Mode::Run, true));
}

// ---- the checks, for real ----

fn ctx() -> ProbeContext {
    ProbeContext {
        reaper: Reaper::start().expect("reaper"),
        tls: None,
    }
}

#[tokio::test]
async fn tcp_check_passes_while_something_listens() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let check = Check::parse_tcp(&addr).unwrap();
    assert_eq!(check.probe(&ctx()).await, Ok(()));
    drop(listener);
    let err = check.probe(&ctx()).await.unwrap_err();
    assert!(
        err.starts_with(&format!("cannot connect to {addr}")),
        "{err}"
    );
}

/// A one-request-at-a-time HTTP server answering `status` to every GET.
async fn http_server(status: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&got).into_owned());
            let answer =
                format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    (format!("http://127.0.0.1:{port}/healthz?deep=1"), seen)
}

#[tokio::test]
async fn http_check_wants_a_2xx() {
    let (url, seen) = http_server("200 OK").await;
    let check = Check::parse_http(&url).unwrap();
    assert_eq!(check.probe(&ctx()).await, Ok(()));
    let req = seen.lock().unwrap()[0].clone();
    assert!(req.starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("\r\nHost: 127.0.0.1:"), "{req}");

    let (url, _) = http_server("503 Service Unavailable").await;
    let check = Check::parse_http(&url).unwrap();
    assert_eq!(check.probe(&ctx()).await, Err("HTTP 503".into()));
}

#[tokio::test]
async fn cmd_check_wants_exit_0() {
    let ok = Check::parse_cmd("sh -c true").unwrap();
    assert_eq!(ok.probe(&ctx()).await, Ok(()));
    let bad = Check::parse_cmd("sh -c 'exit 1'").unwrap();
    assert_eq!(
        bad.probe(&ctx()).await,
        Err("sh ended with exit code 1".into())
    );
    let missing = Check::parse_cmd("/nonexistent/check").unwrap();
    assert!(
        missing
            .probe(&ctx())
            .await
            .unwrap_err()
            .starts_with("cannot start /nonexistent/check")
    );
}

#[tokio::test]
async fn a_cmd_attempt_cut_short_kills_its_process_group() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
    let check = Check::parse_cmd(&shlex::try_join(["sh", "-c", &script]).unwrap()).unwrap();
    let c = ctx();
    let r = tokio::time::timeout(secs(1), check.probe(&c)).await;
    assert!(r.is_err(), "the attempt was cut");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + secs(10);
    while crate::supervisor::child::group_alive(nix::unistd::Pid::from_raw(pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the check's group outlived its attempt"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn checks_parse_and_refuse_what_they_cannot_use() {
    let Check::Http(t) = Check::parse_http("https://[::1]:8443/h").unwrap() else {
        panic!("not http")
    };
    assert_eq!(
        (t.tls, t.host.as_str(), t.port, t.path.as_str()),
        (true, "::1", 8443, "/h")
    );
    let Check::Http(t) = Check::parse_http("http://app").unwrap() else {
        panic!("not http")
    };
    assert_eq!((t.port, t.path.as_str()), (80, "/"));
    assert!(Check::parse_http("ftp://x/").is_err());
    assert!(
        Check::parse_http("http://user:pw@x/")
            .unwrap_err()
            .contains("credentials")
    );
    assert!(Check::parse_http("http://x:0/").is_err());
    assert!(Check::parse_tcp("localhost:5432").is_ok());
    assert!(Check::parse_tcp("localhost").is_err());
    assert!(Check::parse_tcp(":80").is_err());
    assert!(Check::parse_cmd("  ").is_err());
}

/// A restart's bake starts with the new child: no probe before the supervisor started it,
/// the bake time counts from then, and the old child's exit meanwhile is not a failure.
#[tokio::test(start_paused = true)]
async fn a_restarts_bake_waits_for_the_new_child_before_its_first_probe() {
    let calls = Arc::new(Mutex::new(0));
    let start = Instant::now();
    let probe = scripted(start, Duration::ZERO, None, calls.clone());
    let (spawns_tx, spawns) = watch::channel(Spawns {
        generation: 7,
        exits_before: 0,
    });
    let (exits_tx, mut exits) = watch::channel(ChildExits::default());
    exits.borrow_and_update();
    let seen = calls.clone();
    tokio::spawn(async move {
        tokio::time::sleep(secs(4)).await;
        // The old child goes (its own exit, just before the stop), then the new one starts.
        exits_tx.send_modify(|e| {
            e.count += 1;
            e.last = Some(Exit::Code(0));
        });
        assert_eq!(*seen.lock().unwrap(), 0, "the old child was probed");
        spawns_tx.send_modify(|s| {
            s.generation += 1;
            s.exits_before = 1;
        });
        tokio::time::sleep(secs(3600)).await;
        drop(exits_tx);
    });
    let r = bake_after_spawn(&spec(true, 10), Some(probe), Some(exits), Some((spawns, 7))).await;
    assert_eq!(r, Ok(()));
    assert_eq!(
        start.elapsed(),
        secs(14),
        "baked 10s from the new child's start"
    );
    assert_eq!(*calls.lock().unwrap(), 11);
}

/// A bake time too large for the clock is never over, not a panic.
#[tokio::test(start_paused = true)]
async fn a_huge_bake_time_does_not_overflow_the_clock() {
    let mut s = spec(false, 0);
    s.bake = Duration::MAX;
    s.timeout = Duration::MAX;
    let r = timeout(secs(3600), bake(&s, None::<NoProbe>, None)).await;
    assert!(r.is_err(), "still baking after an hour");
    let probe = || std::future::ready(Err::<(), String>("HTTP 503".into()));
    let r = timeout(secs(3600), bake(&s, Some(probe), None)).await;
    assert!(r.is_err(), "still waiting for the first pass after an hour");
}

/// The new child exiting before the bake saw it start is still this bake's failure.
#[tokio::test(start_paused = true)]
async fn a_new_child_that_exits_at_once_fails_the_bake_even_before_it_is_watched() {
    let (_spawns_tx, spawns) = watch::channel(Spawns {
        generation: 3,
        exits_before: 5,
    });
    let (_exits_tx, exits) = watch::channel(ChildExits {
        count: 6,
        last: Some(Exit::Code(3)),
    });
    let r = bake_after_spawn(
        &spec(false, 10),
        None::<NoProbe>,
        Some(exits),
        Some((spawns, 2)),
    )
    .await;
    assert_eq!(
        r.map_err(|f| f.reason),
        Err("the child exited with status 3 within the bake time".into())
    );
}
