//! systemd's notifications: `READY=1` only once the first render is done (and the child
//! started, in run mode), `STATUS=`, `WATCHDOG=1` from the loop, `STOPPING=1`; the programs
//! tether starts see neither the notification variables nor its raised open-file limit.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{BIN, Tether, Work, wait_for};

/// A unix datagram socket standing in for systemd's: collects every notification, and
/// evaluates `at_ready` the moment `READY=1` arrives.
pub(super) struct Notify {
    path: PathBuf,
    got: Arc<Mutex<Vec<String>>>,
    ready_check: Arc<Mutex<Option<bool>>>,
}

impl Notify {
    pub(super) fn bind(w: &Work, at_ready: impl Fn() -> bool + Send + 'static) -> Notify {
        let path = w.path("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let ready_check = Arc::new(Mutex::new(None));
        let (g, r) = (got.clone(), ready_check.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends once the Notify is dropped (it holds the only other count of `got`).
            while Arc::strong_count(&g) > 1 {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if msg.lines().any(|l| l == "READY=1") {
                        r.lock().unwrap().get_or_insert_with(&at_ready);
                    }
                    g.lock().unwrap().push(msg);
                }
            }
        });
        Notify {
            path,
            got,
            ready_check,
        }
    }

    pub(super) fn env(&self) -> String {
        self.path.display().to_string()
    }

    pub(super) fn all(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    pub(super) fn has_line(&self, line: &str) -> bool {
        self.all().iter().any(|m| m.lines().any(|l| l == line))
    }

    pub(super) fn statuses(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|m| m.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_owned))
            .collect()
    }

    pub(super) fn ready_check(&self) -> Option<bool> {
        *self.ready_check.lock().unwrap()
    }
}
#[test]
fn watch_notifies_ready_after_the_render_feeds_the_watchdog_and_says_stopping() {
    let w = Work::new();
    w.write("src.env", "A=1\n");
    let out = w.path("out.env");
    let notify = Notify::bind(&w, {
        let out = out.clone();
        move || out.exists()
    });
    let hook_env = w.path("hook.env");
    let hook = format!("exec:sh -c 'env > {}'", hook_env.display());
    let (src, outs) = (
        format!("file:{}", w.path("src.env").display()),
        out.display().to_string(),
    );
    let args = [
        "watch",
        "--source",
        &src,
        "--output",
        &outs,
        "--debounce",
        "0",
        "--on-change",
        &hook,
    ];
    let mut agent = Tether::start(
        w.dir.path(),
        args,
        &[
            ("NOTIFY_SOCKET", &notify.env()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    agent.wait_for("READY=1", || notify.has_line("READY=1"));
    assert_eq!(
        notify.ready_check(),
        Some(true),
        "READY=1 before the output existed"
    );
    assert!(
        notify
            .all()
            .contains(&"READY=1\nSTATUS=watching 1 source, 1 output".to_string()),
        "{:?}",
        notify.all()
    );
    agent.wait_for("WATCHDOG=1 fed by the loop", || {
        notify.has_line("WATCHDOG=1")
    });

    // The hook (a program tether starts) sees none of systemd's variables.
    w.write("src.env", "A=2\n");
    agent.wait_for("the hook ran", || {
        std::fs::read_to_string(&hook_env).is_ok_and(|e| e.contains("TETHER_CHANGED=A"))
    });
    let env = std::fs::read_to_string(&hook_env).unwrap_or_default();
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(
            !env.contains(&format!("{var}=")),
            "{var} in the hook's env:\n{env}"
        );
    }

    assert!(!notify.has_line("STOPPING=1"));
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait().success());
    wait_for("STOPPING=1", || notify.has_line("STOPPING=1"));
}

/// `tether ARGS` started with a soft open-file limit of `soft` (tether raises its own).
struct Limited {
    child: Child,
}

impl Limited {
    fn start(cwd: &Path, soft: u64, args: &[String], envs: &[(&str, &str)]) -> Limited {
        // WATCHDOG_PID names tether itself: `exec` keeps the shell's pid.
        let script = format!("ulimit -S -n {soft} && export WATCHDOG_PID=$$ && exec \"$0\" \"$@\"");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg(BIN)
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Limited {
            child: cmd.spawn().expect("spawn tether"),
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Children of `pid` (all its threads') whose command line names `what`.
fn children_running(pid: u32, what: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("children"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| {
                std::fs::read(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(what))
            })
    })
}

fn soft_nofile(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn run_notifies_ready_after_the_child_started_which_sees_no_notify_socket_nor_raised_limit() {
    let w = Work::new();
    w.write("src.env", "A=1\n");
    let out = w.path("out.env");
    let tether_pid = Arc::new(Mutex::new(0u32));
    let notify = Notify::bind(&w, {
        let (out, pid) = (out.clone(), tether_pid.clone());
        move || {
            // READY=1 may come before the test thread has stored tether's pid (it does so
            // right after the spawn returns): wait for it. What READY=1 promised holds on.
            let mut tether = 0;
            wait_for("the test to know tether's pid", || {
                tether = *pid.lock().unwrap();
                tether != 0
            });
            out.exists() && children_running(tether, "child")
        }
    });
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit")
        .1;
    let soft = 200.min(hard);
    let mut args: Vec<String> = [
        "run",
        "--source",
        &format!("file:{}", w.path("src.env").display()),
        "--output",
        &out.display().to_string(),
        "--no-env",
        "--listen-metrics",
        "127.0.0.1:0",
        "--",
    ]
    .map(String::from)
    .to_vec();
    // The child records its environment and its soft limit.
    let nofile = w.path("nofile");
    let child = w.child_args(&[]).join(" ");
    args.extend([
        "sh".into(),
        "-c".into(),
        format!("ulimit -S -n > {} && exec {child}", nofile.display()),
    ]);
    let agent = Limited::start(
        w.dir.path(),
        soft,
        &args,
        &[
            ("NOTIFY_SOCKET", &notify.env()),
            ("WATCHDOG_USEC", "10000000"),
        ],
    );
    *tether_pid.lock().unwrap() = agent.child.id();
    wait_for("READY=1", || notify.has_line("READY=1"));
    assert_eq!(
        notify.ready_check(),
        Some(true),
        "READY=1 before the output existed or the child started"
    );
    wait_for("the child's environment", || !w.child_env().is_empty());
    let env = w.child_env();
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(
            !env.iter().any(|l| l.starts_with(&format!("{var}="))),
            "{var} in the child's env: {env:?}"
        );
    }
    // tether runs with the hard limit; its child got the soft one tether was given.
    assert_eq!(soft_nofile(agent.child.id()), Some(hard));
    wait_for("the child's limit", || !w.read("nofile").is_empty());
    assert_eq!(w.read("nofile").trim(), soft.to_string());
}
