//! `tether run` in the foreground of a terminal: a pseudo-terminal the test owns, with a real
//! interactive bash (job control on) as the session leader, or tether itself. The child
//! reads the terminal; Ctrl-Z stops the child and then tether, and bash reports the job
//! stopped; `fg` hands the terminal back to the child; Ctrl-C ends the child and is not taken
//! for a crash to restart from.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::unistd::{Pid, tcgetpgrp};

use crate::support::{BIN, Work, wait_for};

struct Terminal {
    master: File,
    tether: Child,
    /// Everything written to the terminal (the child's output and the terminal's echo).
    screen: Arc<Mutex<String>>,
    work: Work,
}

impl Terminal {
    /// `program` as the leader of a new session whose controlling terminal is a new pty.
    fn start(program: &str, args: &[&str]) -> Terminal {
        // A shell writes its prompt to stderr; tether's log goes to a file either way.
        let shell = program == "bash";
        let work = Work::new();
        work.write("a.env", "A=1\n");
        work.write("child.sh", "while read line; do echo \"got:$line\"; done\n");
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(work.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TETHER_LOG", "debug")
            .env("PS1", "$ ")
            .env("TERM", "dumb")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(if shell {
                Stdio::from(slave.try_clone().unwrap())
            } else {
                Stdio::from(File::create(work.path("tether.log")).unwrap())
            });
        // SAFETY: setsid and ioctl are async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let tether = cmd.spawn().expect("start tether");
        drop(slave);
        let master = File::from(pty.master);
        let screen = Arc::new(Mutex::new(String::new()));
        let (mut reader, shown) = (master.try_clone().unwrap(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every holder of the terminal is gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shown
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            master,
            tether,
            screen,
            work,
        }
    }

    fn pid(&self) -> i32 {
        self.tether.id() as i32
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }

    fn wait_for_screen(&self, text: &str) {
        self.wait_for(&format!("{text:?} on the terminal"), || {
            self.screen.lock().unwrap().contains(text)
        });
    }

    fn foreground(&self) -> Option<i32> {
        tcgetpgrp(self.master.as_fd()).ok().map(Pid::as_raw)
    }

    fn wait_for(&self, what: &str, cond: impl FnMut() -> bool) {
        let mut cond = cond;
        let ok =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_for(what, &mut cond)));
        if let Err(e) = ok {
            eprintln!("--- terminal ---\n{}", self.screen.lock().unwrap());
            eprintln!("--- tether log ---\n{}", self.work.read("tether.log"));
            std::panic::resume_unwind(e);
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // Everything in the session the test made (bash, tether, the child), even when a
        // failed assertion left them stopped or running.
        for pid in session_members(self.pid()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.tether.kill();
        let _ = self.tether.wait();
    }
}

/// The processes of session `sid`.
fn session_members(sid: i32) -> Vec<i32> {
    proc_stats()
        .filter(|(_, fields)| fields.get(3).and_then(|v| v.parse::<i32>().ok()) == Some(sid))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process with the fields of its `/proc/PID/stat` after the command name.
fn proc_stats() -> impl Iterator<Item = (i32, Vec<String>)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            Some((pid, stat_fields(pid)?))
        })
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, pgrp, session...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split(' ').map(str::to_owned).collect())
}

/// The state letter of a process (`S`, `R`, `T` for stopped...).
fn state(pid: i32) -> char {
    stat_fields(pid)
        .and_then(|f| f.first().and_then(|s| s.chars().next()))
        .unwrap_or('?')
}

const RUN_ARGS: &[&str] = &[
    "run",
    "--source",
    "file:a.env",
    "--output",
    "out.env",
    "--no-env",
    "--on-change",
    "none",
    "--restart-on-exit",
    "always",
    "--",
    "sh",
    "child.sh",
];

/// The processes whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    proc_stats()
        .filter(|(_, fields)| fields.get(1).and_then(|v| v.parse::<i32>().ok()) == Some(pid))
        .map(|(p, _)| p)
        .collect()
}

#[test]
fn job_control_of_an_interactive_shell_works_through_tether() {
    let mut t = Terminal::start("bash", &["--norc", "--noprofile", "-i"]);
    let bash = t.pid();
    t.wait_for_screen("$ ");
    let line = format!("{BIN} {} 2>tether.log\n", RUN_ARGS.join(" "));
    t.type_keys(line.as_bytes());
    let mut tether = 0;
    t.wait_for("tether started by bash", || {
        tether = children(bash).first().copied().unwrap_or(0);
        tether != 0
            && std::fs::read_link(format!("/proc/{tether}/exe"))
                .is_ok_and(|e| e.ends_with("tether"))
    });

    // The child reads the terminal: in a background group it would be stopped instead.
    t.type_keys(b"hello\n");
    t.wait_for_screen("got:hello");
    let child = t.foreground().expect("a foreground group");
    assert!(
        child != tether && child != bash,
        "the child's own group has the terminal"
    );

    // Ctrl-Z: the child stops, tether takes the terminal back and stops as well; bash sees
    // its job stopped and takes the terminal.
    t.type_keys(&[0x1a]);
    t.wait_for("child and tether stopped", || {
        state(child) == 'T' && state(tether) == 'T'
    });
    t.wait_for_screen("Stopped");
    t.wait_for("bash back in the foreground", || {
        t.foreground() == Some(bash)
    });

    // `fg`: bash continues tether's group in the foreground; the child gets the terminal
    // back and runs again.
    t.type_keys(b"fg\n");
    t.wait_for("the terminal handed back to the child", || {
        t.foreground() == Some(child) && state(child) != 'T' && state(tether) != 'T'
    });
    t.type_keys(b"again\n");
    t.wait_for_screen("got:again");

    // Ctrl-C ends the child (not restarted despite --restart-on-exit always) and tether
    // passes its status through.
    t.type_keys(&[0x03]);
    t.wait_for("tether gone", || !children(bash).contains(&tether));
    t.type_keys(b"echo \"status:$?\"\n");
    t.wait_for_screen("status:130");
    let log = t.work.read("tether.log");
    assert!(!log.contains("restarting child"), "{log}");
}

#[test]
fn without_a_shell_ctrl_z_is_undone_and_ctrl_c_ends_the_child_unrestarted() {
    // tether itself leads the session: no shell, as PID 1 of `docker run -it` would.
    let mut t = Terminal::start(BIN, RUN_ARGS);
    t.type_keys(b"ready\n");
    t.wait_for_screen("got:ready");

    // Ctrl-Z with no job-control shell above tether: nothing could continue a stopped job,
    // so the child is continued and keeps the terminal.
    t.type_keys(&[0x1a]);
    t.type_keys(b"after\n");
    t.wait_for_screen("got:after");

    t.type_keys(&[0x03]);
    let mut code = None;
    let tether = &mut t.tether;
    wait_for("tether to exit", || {
        code = tether.try_wait().unwrap().and_then(|s| s.code());
        code.is_some()
    });
    assert_eq!(code, Some(130), "128 + SIGINT, passed through");
    let log = t.work.read("tether.log");
    assert!(!log.contains("restarting child"), "{log}");
}
