//! `tether run`, end to end: the first render before the child starts, signal and restart on
//! change, the grace period, env changes, no-op changes, debounce, signal forwarding, exit
//! codes, parent death, reaping as PID 1 and as a subreaper, and a change racing a restart.
//!
//! Counting actions is done with restarts where it must be exact: each start of the child is
//! one line in the record file, written in order because two children never run at once,
//! whereas two equal signals sent close together may be merged by the kernel.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::sys::signal::Signal::{
    self as Sig, SIGCONT, SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH,
};
use nix::unistd::Pid;

use crate::support::{BIN, DEADLINE, Tether, Work, alive, run_to_end};

/// The source every test edits.
const SOURCE: &str = "app.env";

/// `run --source file:app.env --log-level debug OPTS -- CHILD...`
fn run_args(work: &Work, opts: &[&str], child: &[String]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "run".into(),
        "--source".into(),
        format!("file:{}", work.path(SOURCE).display()),
        "--log-level".into(),
        "debug".into(),
    ];
    v.extend(opts.iter().map(|s| s.to_string()));
    v.push("--".into());
    v.extend(child.iter().cloned());
    v
}

fn start(work: &Work, opts: &[&str], child: &[String]) -> Tether {
    Tether::start(work.dir.path(), run_args(work, opts, child), &[])
}

fn out_path(work: &Work) -> String {
    work.path("out.env").display().to_string()
}

/// Run `script` with `sh` before exec'ing into `args` (`"$@"` in the script).
fn sh_then(script: &str, args: Vec<String>) -> Vec<String> {
    let mut v = vec!["sh".into(), "-c".into(), script.into(), "sh".into()];
    v.extend(args);
    v
}

/// The fixture behind a guard that runs at every start, before the fixture itself:
/// it records `overlap PID` if a previously started child still exists (even as a zombie),
/// then `value PID $KEY`, so the record shows which value each start saw, in start order.
fn guarded_child(work: &Work, extra: &[&str]) -> Vec<String> {
    let script = format!(
        r#"rec='{rec}'
for p in $(sed -n 's/^start //p' "$rec" 2>/dev/null); do
  if [ -e "/proc/$p" ]; then echo "overlap $p" >> "$rec"; fi
done
echo "value $$ ${{KEY-}}" >> "$rec"
exec "$@""#,
        rec = work.path("record").display()
    );
    sh_then(&script, work.child_args(extra))
}

/// `(pid, KEY)` as seen by each start of a guarded child, in order. A child stopped before
/// it became the fixture has this line but no `start` line.
fn seen_at_start(work: &Work) -> Vec<(i32, String)> {
    work.record()
        .iter()
        .filter_map(|l| {
            let (pid, v) = l.strip_prefix("value ")?.split_once(' ')?;
            Some((pid.parse().ok()?, v.to_string()))
        })
        .collect()
}

fn values(work: &Work) -> Vec<String> {
    seen_at_start(work).into_iter().map(|(_, v)| v).collect()
}

/// Whether the latest child saw `KEY=value` and has become the fixture.
fn running_with(work: &Work, value: &str) -> bool {
    seen_at_start(work)
        .last()
        .is_some_and(|(pid, v)| v == value && work.starts().contains(pid))
}

fn overlaps(work: &Work) -> Vec<String> {
    work.record()
        .into_iter()
        .filter(|l| l.starts_with("overlap"))
        .collect()
}

/// The record without the guard's lines: starts, signals and exits, in order.
fn events(work: &Work) -> Vec<String> {
    work.record()
        .into_iter()
        .filter(|l| !l.starts_with("value ") && !l.starts_with("overlap "))
        .collect()
}

/// Live (non-zombie) fixture processes writing to this test's record file (not tether,
/// whose command line holds the same words after `--`).
fn live_fixtures(work: &Work) -> Vec<i32> {
    let record = work.path("record").display().to_string();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).is_some_and(|a| a == "child") && args.contains(&record) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

fn has_env(work: &Work, line: &str) -> bool {
    work.child_env().iter().any(|l| l == line)
}

/// Fields of /proc/PID/stat after the command name: `[state, ppid, ...]`.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn kill(pid: i32, sig: Sig) {
    nix::sys::signal::kill(Pid::from_raw(pid), sig).expect("kill");
}

#[test]
fn first_render_is_complete_before_the_child_starts() {
    let work = Work::new();
    work.write(SOURCE, "KEY=one\nOTHER=two\n");
    let out = out_path(&work);
    let seen = work.path("seen").display().to_string();
    // The child copies the output before anything else, then becomes the fixture.
    let child = sh_then(
        &format!("cat '{out}' > '{seen}'; exec \"$@\""),
        work.child_args(&[]),
    );
    let t = Tether::start(
        work.dir.path(),
        run_args(&work, &["--output", &out, "--debounce", "0"], &child),
        &[
            ("INHERITED", "yes"),
            ("KEY", "from-tether"),
            ("TETHER_TOKEN", "must-not-leak"),
        ],
    );
    t.wait_for("the child to start", || work.starts().len() == 1);

    assert_eq!(work.read("seen"), "KEY=one\nOTHER=two\n");
    let env = work.child_env();
    for want in ["KEY=one", "OTHER=two", "INHERITED=yes"] {
        assert!(env.iter().any(|l| l == want), "{want} missing from {env:?}");
    }
    assert!(
        !env.iter().any(|l| l.starts_with("TETHER_TOKEN=")),
        "the token reached the child: {env:?}"
    );
}

#[test]
fn a_change_signals_the_child_without_restarting_it() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let out = out_path(&work);
    let t = start(
        &work,
        &[
            "--no-env",
            "--output",
            &out,
            "--on-change",
            "signal:USR1",
            "--debounce",
            "0",
        ],
        &work.child_args(&[]),
    );
    t.wait_for("the child to start", || work.starts().len() == 1);
    let pid = work.starts()[0];

    work.write(SOURCE, "KEY=2\n");
    t.wait_for("SIGUSR1 at the child", || !work.signals().is_empty());

    assert_eq!(work.read("out.env"), "KEY=2\n");
    assert_eq!(
        events(&work),
        [format!("start {pid}"), format!("SIGUSR1 {pid}")]
    );
    assert!(alive(pid), "the child was not kept");
    assert!(
        work.child_env().iter().all(|l| !l.starts_with("KEY=")),
        "--no-env still injected KEY"
    );
}

#[test]
fn the_output_is_written_before_the_child_is_signalled() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let out = out_path(&work);
    // On USR1 the child reads the output, as a program reloading its config would.
    let script = format!(
        "trap 'cat \"{out}\" >> \"{seen}\"' USR1; touch '{ready}'; while :; do sleep 0.05; done",
        seen = work.path("seen").display(),
        ready = work.path("ready").display(),
    );
    let t = start(
        &work,
        &[
            "--no-env",
            "--output",
            &out,
            "--on-change",
            "signal:USR1",
            "--debounce",
            "0",
        ],
        &["sh".into(), "-c".into(), script],
    );
    t.wait_for("the child to be ready", || work.path("ready").exists());

    work.write(SOURCE, "KEY=2\n");
    t.wait_for("the child to read the output", || {
        !work.read("seen").is_empty()
    });
    assert_eq!(work.read("seen"), "KEY=2\n");
}

#[test]
fn a_restart_stops_the_old_child_before_starting_the_new_one() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let t = start(&work, &["--debounce", "0"], &guarded_child(&work, &[]));
    t.wait_for("the child to start", || work.starts().len() == 1);
    let old = work.starts()[0];

    work.write(SOURCE, "KEY=2\n");
    t.wait_for("a second start", || work.starts().len() == 2);
    let new = work.starts()[1];

    assert_eq!(
        events(&work),
        [
            format!("start {old}"),
            format!("SIGTERM {old}"),
            format!("start {new}"),
        ]
    );
    assert_eq!(
        overlaps(&work),
        Vec::<String>::new(),
        "two children at once"
    );
    assert_eq!(values(&work), ["1", "2"]);
    assert!(has_env(&work, "KEY=2"), "new env: {:?}", work.child_env());
    assert!(!alive(old));
}

#[test]
fn a_child_that_ignores_term_is_killed_after_the_grace_period() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let t = start(
        &work,
        &["--debounce", "0", "--stop-timeout", "300ms"],
        &guarded_child(&work, &["--ignore-term"]),
    );
    t.wait_for("the child to start", || work.starts().len() == 1);
    let old = work.starts()[0];

    work.write(SOURCE, "KEY=2\n");
    t.wait_for("a second start", || work.starts().len() == 2);
    let new = work.starts()[1];

    // The TERM was ignored (so not recorded); the old child was killed, not left running.
    assert_eq!(
        events(&work),
        [format!("start {old}"), format!("start {new}")]
    );
    assert_eq!(
        overlaps(&work),
        Vec::<String>::new(),
        "two children at once"
    );
    assert!(!alive(old));
    assert!(alive(new));
    assert!(has_env(&work, "KEY=2"), "new env: {:?}", work.child_env());
    assert!(
        t.stderr().contains("ignored the stop signal"),
        "no grace-period kill logged"
    );
}

#[test]
fn an_env_change_restarts_even_when_the_file_output_only_signals() {
    let work = Work::new();
    work.write(SOURCE, "APP_KEY=1\nFILE_ONLY=a\n");
    // Only APP_* reaches the environment; FILE_ONLY is seen through the file alone.
    work.write("tether.toml", "[env]\ninclude = [\"APP_*\"]\n");
    let out = out_path(&work);
    let config = work.path("tether.toml").display().to_string();
    let t = start(
        &work,
        &[
            "--config",
            &config,
            "--output",
            &out,
            "--on-change",
            "signal:HUP",
            "--debounce",
            "0",
        ],
        &work.child_args(&[]),
    );
    t.wait_for("the child to start", || work.starts().len() == 1);
    let first = work.starts()[0];
    assert!(has_env(&work, "APP_KEY=1"));
    assert!(!work.child_env().iter().any(|l| l.starts_with("FILE_ONLY=")));

    // A file-only change: the output's own action, a signal.
    work.write(SOURCE, "APP_KEY=1\nFILE_ONLY=b\n");
    t.wait_for("SIGHUP at the child", || !work.signals().is_empty());
    assert_eq!(work.starts(), [first]);

    // An env change: a restart, whatever the file output's action says.
    work.write(SOURCE, "APP_KEY=2\nFILE_ONLY=c\n");
    t.wait_for("a restart", || work.starts().len() == 2);
    let second = work.starts()[1];
    assert_eq!(
        events(&work),
        [
            format!("start {first}"),
            format!("SIGHUP {first}"),
            format!("SIGTERM {first}"),
            format!("start {second}"),
        ]
    );
    assert!(
        has_env(&work, "APP_KEY=2"),
        "new env: {:?}",
        work.child_env()
    );
    assert_eq!(work.read("out.env"), "APP_KEY=2\nFILE_ONLY=c\n");
}

#[test]
fn a_change_that_renders_the_same_does_nothing() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let out = out_path(&work);
    let t = start(
        &work,
        &["--output", &out, "--debounce", "0"],
        &guarded_child(&work, &[]),
    );
    t.wait_for("the child to start", || work.starts().len() == 1);

    // Same bytes; a comment; the same value spelled differently.
    work.write(SOURCE, "KEY=1\n");
    work.write(SOURCE, "# a comment\nKEY=1\n");
    work.write(SOURCE, "export KEY='1'\n");
    // A forwarded signal as a likely barrier: those events are queued before it is sent,
    // so tether has most probably handled them once the child records it. (A restart, the
    // bug this test is after, may swallow the signal: the assertion below reports it.)
    t.signal(SIGWINCH);
    t.wait_for("SIGWINCH at the child, or a restart", || {
        work.signals().iter().any(|s| s == "SIGWINCH") || work.starts().len() > 1
    });
    // Then a real change. Restarts happen one after the other, so when the start that saw
    // KEY=2 is recorded, any restart caused by the no-op changes is recorded before it.
    work.write(SOURCE, "KEY=2\n");
    t.wait_for("the start that sees KEY=2", || running_with(&work, "2"));

    assert_eq!(values(&work), ["1", "2"], "record: {:?}", work.record());
    assert_eq!(work.read("out.env"), "KEY=2\n");
}

/// How many times tether has read a changed source so far.
fn changes_read(t: &Tether) -> usize {
    t.stderr().matches("source changed").count()
}

#[test]
fn a_burst_inside_the_debounce_window_gives_one_action() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let t = start(
        &work,
        &["--debounce", "2s", "--max-wait", "20s"],
        &guarded_child(&work, &[]),
    );
    t.wait_for("the child to start", || work.starts().len() == 1);

    // Each change is read by tether before the next is made, so it is debouncing, not a
    // batch of queued events, that merges them into one action.
    for i in 2..=11 {
        work.write(SOURCE, &format!("KEY={i}\n"));
        t.wait_for(&format!("tether to read KEY={i}"), || {
            changes_read(&t) >= i - 1
        });
    }
    t.wait_for("the start that sees KEY=11", || running_with(&work, "11"));

    assert_eq!(values(&work), ["1", "11"], "record: {:?}", work.record());
    assert_eq!(overlaps(&work), Vec::<String>::new());
}

#[test]
fn max_wait_bounds_a_burst_that_never_goes_quiet() {
    let work = Work::new();
    work.write(SOURCE, "KEY=0\n");
    let t = start(
        &work,
        &["--debounce", "1s", "--max-wait", "1500ms"],
        &guarded_child(&work, &[]),
    );
    t.wait_for("the child to start", || work.starts().len() == 1);

    // Changes keep coming, well inside the quiet window (the pause only paces them): the
    // child is restarted anyway, once the max wait is reached.
    let mut i = 0;
    t.wait_for("a restart while changes keep coming", || {
        i += 1;
        work.write(SOURCE, &format!("KEY={i}\n"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        work.starts().len() >= 2
    });
}

#[test]
fn signals_are_forwarded_to_the_child() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let out = out_path(&work);
    let mut t = start(
        &work,
        &["--no-env", "--output", &out],
        &work.child_args(&[]),
    );
    t.wait_for("the child to start", || work.starts().len() == 1);
    let pid = work.starts()[0];

    // One at a time: equal pending signals would merge, and order is not kept between kinds.
    let sent = [SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT];
    for (i, sig) in sent.iter().enumerate() {
        t.signal(*sig);
        t.wait_for(&format!("{} at the child", sig.as_str()), || {
            work.signals().len() == i + 1
        });
    }
    let names: Vec<&str> = sent.iter().map(|s| s.as_str()).collect();
    assert_eq!(work.signals(), names);
    assert!(
        work.record()
            .iter()
            .skip(1)
            .all(|l| l.ends_with(&format!(" {pid}")))
    );

    // INT ends the fixture with 0, which tether passes through.
    t.signal(SIGINT);
    let status = t.wait();
    assert_eq!(status.code(), Some(0));
    assert_eq!(work.signals().last().map(String::as_str), Some("SIGINT"));
    assert_eq!(work.starts(), [pid], "the child was restarted");
}

#[test]
fn term_reaches_the_child_and_tether_exits_with_its_code() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let out = out_path(&work);
    let ready = work.path("ready").display().to_string();
    // Exits 7 on TERM, and only on TERM.
    let script = format!(
        "trap 'echo term >> \"{rec}\"; exit 7' TERM; touch '{ready}'; while :; do sleep 0.05; done",
        rec = work.path("record").display()
    );
    let mut t = start(
        &work,
        &["--no-env", "--output", &out],
        &["sh".into(), "-c".into(), script],
    );
    t.wait_for("the child to be ready", || work.path("ready").exists());

    t.signal(SIGTERM);
    let status = t.wait();
    assert_eq!(status.code(), Some(7));
    assert_eq!(work.record(), ["term"]);
}

#[test]
fn a_child_that_ignores_term_on_shutdown_is_killed_after_the_grace_period() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let mut t = start(
        &work,
        &["--stop-timeout", "300ms"],
        &work.child_args(&["--ignore-term"]),
    );
    t.wait_for("the child to start", || work.starts().len() == 1);
    let pid = work.starts()[0];

    t.signal(SIGTERM);
    let status = t.wait();
    assert_eq!(status.code(), Some(128 + SIGKILL as i32));
    assert!(!alive(pid));
}

#[test]
fn the_childs_exit_code_passes_through() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let mut t = start(&work, &[], &work.child_args(&["--exit-after", "0", "3"]));
    assert_eq!(t.wait().code(), Some(3));
    assert_eq!(work.starts().len(), 1);
}

#[test]
fn death_by_a_signal_passes_through_as_128_plus_n() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let mut t = start(&work, &[], &work.child_args(&[]));
    t.wait_for("the child to start", || work.starts().len() == 1);

    kill(work.starts()[0], SIGKILL);
    assert_eq!(t.wait().code(), Some(137));
}

#[test]
fn a_command_that_cannot_start_is_an_error_not_a_crash() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let source = format!("file:{}", work.path(SOURCE).display());
    let missing = work.path("no-such-program").display().to_string();
    // When exec fails, std waits for the child itself; a reaper that took it first turned
    // that into a panic about one time in three, hence the repetitions.
    for _ in 0..20 {
        let (code, _, err) = run_to_end(
            work.dir.path(),
            &["run", "--source", &source, "--", &missing],
        );
        assert_eq!(code, 1, "stderr:\n{err}");
        assert!(err.contains("cannot start"), "stderr:\n{err}");
    }
}

/// A child that exits with `code` after its first start and keeps running after the next.
fn exits_once(work: &Work, code: &str) -> Vec<String> {
    let marker = work.path("ran-once").display().to_string();
    let mut v = vec![
        "sh".into(),
        "-c".into(),
        r#"if [ -e "$0" ]; then exec "$@"; fi; touch "$0"; exec "$@" --exit-after 50 "$EXIT_CODE""#
            .into(),
        marker,
    ];
    v.extend(work.child_args(&[]));
    // The code travels in the environment the child is given.
    work.write(SOURCE, &format!("EXIT_CODE={code}\n"));
    v
}

#[test]
fn on_failure_restarts_a_failing_child() {
    let work = Work::new();
    let child = exits_once(&work, "1");
    let mut t = start(&work, &["--restart-on-exit", "on-failure"], &child);
    t.wait_for("a second start", || work.starts().len() == 2);
    let s = work.starts();
    assert_eq!(
        events(&work),
        [
            format!("start {}", s[0]),
            format!("exit {} 1", s[0]),
            format!("start {}", s[1]),
        ]
    );

    // Stopped by TERM, the child is not restarted: tether exits with its code.
    t.signal(SIGTERM);
    assert_eq!(t.wait().code(), Some(0));
    assert_eq!(work.starts().len(), 2);
}

#[test]
fn on_failure_does_not_restart_after_success() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let mut t = start(
        &work,
        &["--restart-on-exit", "on-failure"],
        &work.child_args(&["--exit-after", "0", "0"]),
    );
    assert_eq!(t.wait().code(), Some(0));
    assert_eq!(work.starts().len(), 1);
}

#[test]
fn always_restarts_after_success() {
    let work = Work::new();
    let child = exits_once(&work, "0");
    let mut t = start(&work, &["--restart-on-exit", "always"], &child);
    t.wait_for("a second start", || work.starts().len() == 2);
    let s = work.starts();
    assert_eq!(
        events(&work),
        [
            format!("start {}", s[0]),
            format!("exit {} 0", s[0]),
            format!("start {}", s[1]),
        ]
    );
    t.signal(SIGTERM);
    assert_eq!(t.wait().code(), Some(0));
}

#[test]
fn the_child_dies_when_tether_is_killed() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let mut t = start(&work, &[], &work.child_args(&["--ignore-term"]));
    t.wait_for("the child to start", || work.starts().len() == 1);
    let pid = work.starts()[0];

    // Should the test fail, the child must not outlive it either.
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if alive(self.0) {
                let _ = nix::sys::signal::kill(Pid::from_raw(self.0), SIGKILL);
            }
        }
    }
    let _guard = KillOnDrop(pid);

    t.signal(SIGKILL);
    t.wait();
    t.wait_for("the child to die with tether", || !alive(pid));
}

/// Inside a new PID namespace tether is PID 1: orphans of the child are re-parented to it,
/// and nobody else can reap them. The child leaves five orphans that exit at once, waits
/// (bounded) until each has vanished from /proc (a zombie would stay there), and reports.
const PID1_CHILD: &str = r#"
dir=$1
echo "ppid $PPID" > "$dir/result"
for i in 1 2 3 4 5; do
  (sh -c 'echo $$ >> "$1"' orphan "$dir/orphans" &)
done
n=0
while [ "$(cat "$dir/orphans" 2>/dev/null | wc -l)" -lt 5 ]; do
  n=$((n + 1))
  if [ $n -gt 1000 ]; then echo "orphans never ran" >> "$dir/result"; exit 1; fi
  sleep 0.01
done
for p in $(cat "$dir/orphans"); do
  n=0
  while [ -e "/proc/$p" ]; do
    n=$((n + 1))
    if [ $n -gt 1000 ]; then echo "not reaped: $(cat /proc/$p/stat)" >> "$dir/result"; exit 1; fi
    sleep 0.01
  done
done
echo reaped >> "$dir/result"
exit 5
"#;

#[test]
fn reaps_orphans_as_pid_1_of_a_pid_namespace() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    work.write("child.sh", PID1_CHILD);
    let dir = work.dir.path().display().to_string();
    let out = out_path(&work);
    let source = format!("file:{}", work.path(SOURCE).display());
    let script = work.path("child.sh").display().to_string();
    let args = [
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        BIN,
        "run",
        "--no-env",
        "--output",
        &out,
        "--source",
        &source,
        "--log-level",
        "debug",
        "--",
        "sh",
        &script,
        &dir,
    ];
    let (code, stderr) = run_with_deadline(work.dir.path(), "unshare", &args);
    let result = work.read("result");
    let context = format!("exit {code:?}; result:\n{result}\nstderr:\n{stderr}");
    assert_eq!(
        result.lines().next(),
        Some("ppid 1"),
        "tether was not PID 1: {context}"
    );
    assert!(
        result.lines().any(|l| l == "reaped"),
        "orphans left as zombies: {context}"
    );
    // The child's code came back through tether (PID 1) and unshare.
    assert_eq!(code, Some(5), "{context}");
}

/// Run a command to its end (killed at the deadline); returns its code and stderr.
fn run_with_deadline(cwd: &Path, program: &str, args: &[&str]) -> (Option<i32>, String) {
    let logs = tempfile::tempdir().expect("log dir");
    let err = logs.path().join("stderr");
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{program} {args:?} did not exit within {DEADLINE:?}; stderr:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    (status.code(), fs::read_to_string(&err).unwrap_or_default())
}

#[test]
fn orphans_of_the_child_are_reaped_by_tether_as_a_subreaper() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let orphans = work.path("orphans").display().to_string();
    let go = work.path("go").display().to_string();
    // Three orphans that record their pid and exit once `go` exists (bounded, so that a
    // failed test leaves nothing behind); then the child becomes the fixture.
    let script = format!(
        r#"for i in 1 2 3; do
  (sh -c 'echo $$ >> "$1"; n=0; while [ ! -e "$2" ] && [ $n -lt 3000 ]; do n=$((n + 1)); sleep 0.01; done' orphan '{orphans}' '{go}' &)
done
exec "$@""#
    );
    let t = start(&work, &[], &sh_then(&script, work.child_args(&[])));
    t.wait_for("the orphans to run", || {
        work.read("orphans").lines().count() == 3
    });
    let pids: Vec<i32> = work
        .read("orphans")
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect();

    // Their parent is gone: they belong to tether now, not to init.
    let mut started_at = Vec::new();
    for &p in &pids {
        t.wait_for(&format!("orphan {p} to be re-parented to tether"), || {
            stat_fields(p).is_some_and(|f| f[1] == t.pid().to_string())
        });
        started_at.push(stat_fields(p).expect("orphan alive")[19].clone());
    }

    work.write("go", "");
    for (&p, start) in pids.iter().zip(&started_at) {
        // Gone from /proc, or the pid already reused by another process.
        t.wait_for(&format!("orphan {p} to be reaped"), || {
            stat_fields(p).is_none_or(|f| &f[19] != start)
        });
    }
    assert!(alive(t.pid()));
}

#[test]
fn a_change_during_a_restart_is_not_lost() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let t = start(
        &work,
        &["--debounce", "0", "--stop-timeout", "500ms"],
        &guarded_child(&work, &["--ignore-term"]),
    );
    t.wait_for("the child to start", || work.starts().len() == 1);

    work.write(SOURCE, "KEY=2\n");
    // The old child ignores TERM: tether is now inside the grace period.
    t.wait_for("the restart to begin", || {
        t.stderr().contains("stopping child")
    });
    work.write(SOURCE, "KEY=3\n");

    t.wait_for("a child that sees KEY=3 to start", || {
        running_with(&work, "3")
    });
    let seen = values(&work);
    assert_eq!(
        overlaps(&work),
        Vec::<String>::new(),
        "two children at once"
    );
    assert!(
        seen == ["1", "3"] || seen == ["1", "2", "3"],
        "starts saw {seen:?}"
    );
    let live = live_fixtures(&work);
    assert_eq!(
        live,
        [*work.starts().last().expect("a start")],
        "live children"
    );
    assert!(has_env(&work, "KEY=3"));
}

/// A change right after the child starts does not kill it with the reload signal's default
/// action: the signal is held until the child is past its reload grace, then delivered.
#[test]
fn a_reload_signal_waits_for_a_child_that_just_started() {
    let work = Work::new();
    work.write(SOURCE, "KEY=1\n");
    let out = out_path(&work);
    // The child installs its HUP handler only after a moment, as slow starters do.
    let script = format!(
        "echo start >> {rec}; sleep 0.5; trap 'echo HUP >> {rec}' HUP; echo ready >> {rec}; while :; do sleep 0.05 & wait $!; done",
        rec = work.path("rec").display()
    );
    let t = start(
        &work,
        &[
            "--no-env",
            "--output",
            &out,
            "--on-change",
            "signal:HUP",
            "--debounce",
            "0",
            "--reload-grace",
            "2s",
        ],
        &["sh".to_string(), "-c".to_string(), script],
    );
    t.wait_for("the child to start", || work.read("rec").contains("start"));
    work.write(SOURCE, "KEY=2\n");
    t.wait_for("the change to be rendered", || {
        work.read("out.env") == "KEY=2\n"
    });
    t.wait_for("the held HUP after the child is ready", || {
        work.read("rec").contains("HUP")
    });
    let rec = work.read("rec");
    assert_eq!(
        rec.lines().collect::<Vec<_>>(),
        ["start", "ready", "HUP"],
        "{rec}"
    );
    assert!(!t.stderr().contains("child exited"), "{}", t.stderr());
}
