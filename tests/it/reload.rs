//! tether reloading its own configuration: on SIGHUP (watch always; run when `sighup =
//! "reload"`, else HUP goes to the child), on an edit of its config file (also through a
//! ConfigMap's `..data` swap), a refused invalid config, the log level; the network source
//! and a rotated token file in `net`.
//!
//! To show that a SIGHUP alone reloads, a test rewrites the config in place and keeps it
//! open: the file watch waits for the writer to close it, so until then only the signal
//! can make tether read the new content.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal::SIGHUP;

use crate::support::{Tether, Work, strip_ansi};

fn logs(t: &Tether) -> String {
    strip_ansi(&t.stderr())
}

fn count(t: &Tether, needle: &str) -> usize {
    logs(t).lines().filter(|l| l.contains(needle)).count()
}

/// Lines that report an applied reload (not "nothing changed").
fn applied(t: &Tether) -> usize {
    logs(t)
        .lines()
        .filter(|l| l.contains("configuration reloaded") && !l.contains("nothing"))
        .count()
}

fn running(t: &mut Tether) -> bool {
    t.child
        .as_mut()
        .is_some_and(|c| c.try_wait().ok().flatten().is_none())
}

/// Rewrite `path` in place and keep it open (see the module doc). Closing it (drop) lets
/// the file watch see the edit.
fn edit_held(path: &Path, content: &str) -> fs::File {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open config");
    f.write_all(content.as_bytes()).expect("write config");
    f.flush().expect("flush config");
    f
}

/// A watch config: `app.env` into `out` in `format`; a change appends `run:NAMES` to `hooks`.
fn watch_cfg(w: &Work, out: &str, format: &str, hooks: &str) -> String {
    format!(
        "source = [\"file:{src}\"]\ndebounce = \"0\"\nmax_wait = \"0\"\n\
         [[output]]\npath = \"{out}\"\nformat = \"{format}\"\n\
         on_change = \"exec:sh -c 'echo run:$TETHER_CHANGED >> {hooks}'\"\n",
        src = w.path("app.env").display(),
        out = w.path(out).display(),
        hooks = w.path(hooks).display(),
    )
}

fn start_watch(w: &Work) -> Tether {
    let cfg = w.path("tether.toml").display().to_string();
    Tether::start(w.dir.path(), ["watch", "--config", &cfg], &[])
}

fn json_value(w: &Work, file: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&w.read(file)).ok()?;
    v[key].as_str().map(str::to_owned)
}

#[test]
fn watch_reloads_its_config_on_sighup_and_keeps_running() {
    let w = Work::new();
    w.write("app.env", "A=1\n");
    w.write(
        "tether.toml",
        &watch_cfg(&w, "out.env", "dotenv", "hooks-1"),
    );
    let mut t = start_watch(&w);
    t.wait_for("first render", || w.read("out.env").contains("A=1"));
    let pid = t.pid();

    // Nothing changed: said so, and the output stays.
    t.signal(SIGHUP);
    t.wait_for("an empty reload", || count(&t, "nothing changed") == 1);
    assert!(running(&mut t), "SIGHUP no longer kills watch");
    assert!(w.read("out.env").contains("A=1"), "the output stays");

    // A new path, format and action, read on SIGHUP alone.
    let held = edit_held(
        &w.path("tether.toml"),
        &watch_cfg(&w, "out.json", "json", "hooks-2"),
    );
    t.signal(SIGHUP);
    t.wait_for("the new output written, the old one removed", || {
        json_value(&w, "out.json", "A").as_deref() == Some("1") && !w.path("out.env").exists()
    });
    assert!(logs(&t).contains("SIGHUP"), "the trigger is logged");
    // The rewritten output's action ran (no value changed: no names).
    t.wait_for("the new action at the reload", || {
        w.read("hooks-2").lines().collect::<Vec<_>>() == ["run:"]
    });

    w.write("app.env", "A=2\n");
    t.wait_for(
        "a change goes to the new output and runs the new action",
        || {
            json_value(&w, "out.json", "A").as_deref() == Some("2")
                && w.read("hooks-2").lines().collect::<Vec<_>>() == ["run:", "run:A"]
        },
    );
    assert_eq!(w.read("hooks-1"), "", "the old action never ran");
    assert_eq!(t.pid(), pid);
    assert!(running(&mut t));
    drop(held);
}

#[test]
fn an_invalid_config_is_refused_with_every_problem_and_the_running_one_stays() {
    let w = Work::new();
    w.write("app.env", "A=s3cr3t-value-1\n");
    w.write("tether.toml", &watch_cfg(&w, "out.env", "dotenv", "hooks"));
    let mut t = start_watch(&w);
    t.wait_for("first render", || {
        w.read("out.env").contains("s3cr3t-value-1")
    });

    let bad = format!(
        "source = [\"ftp:/x\"]\ndebounce = \"soon\"\n[[output]]\npath = \"{}\"\nformat = \"yaml\"\n",
        w.path("bad.out").display()
    );
    let held = edit_held(&w.path("tether.toml"), &bad);
    t.signal(SIGHUP);
    t.wait_for("the reload refused", || {
        logs(&t).contains("configuration not reloaded")
    });
    let problems: Vec<String> = logs(&t)
        .lines()
        .filter(|l| l.contains("invalid configuration"))
        .map(str::to_owned)
        .collect();
    for key in ["source[0]", "debounce", "output[0].format"] {
        assert!(
            problems.iter().any(|l| l.contains(key)),
            "{key} reported in {problems:#?}"
        );
    }
    assert!(running(&mut t));

    // The running configuration goes on: same output, same action.
    w.write("app.env", "A=s3cr3t-value-2\n");
    t.wait_for("a change still applied the old way", || {
        w.read("out.env").contains("s3cr3t-value-2") && w.read("hooks").contains("run:A")
    });

    // Fixed (seen by the file watch): applied.
    drop(held);
    w.write("tether.toml", &watch_cfg(&w, "out.json", "json", "hooks"));
    t.wait_for("the fixed config applied", || {
        json_value(&w, "out.json", "A").as_deref() == Some("s3cr3t-value-2")
    });
    assert!(!logs(&t).contains("s3cr3t"), "no value in the logs");
}

#[test]
fn an_edit_of_the_config_file_is_reloaded_once_per_burst_without_a_signal() {
    let w = Work::new();
    w.write("app.env", "A=1\n");
    w.write("tether.toml", &watch_cfg(&w, "out.env", "dotenv", "hooks"));
    let t = start_watch(&w);
    t.wait_for("first render", || w.read("out.env").contains("A=1"));

    // Half-written versions (each invalid), then the final one, as a burst.
    let start = Instant::now();
    for i in 0..9 {
        w.write("tether.toml", &format!("debounce = \"{i}x\"\n"));
    }
    w.write("tether.toml", &watch_cfg(&w, "out.env", "json", "hooks"));
    let burst = start.elapsed();
    t.wait_for("the final version applied", || {
        json_value(&w, "out.env", "A").as_deref() == Some("1")
    });
    // A SIGHUP after it marks the end: everything the burst caused has been logged.
    t.signal(SIGHUP);
    t.wait_for("the marker reload", || count(&t, "nothing changed") == 1);
    assert_eq!(applied(&t), 1, "one applied reload");
    if burst < Duration::from_millis(150) {
        assert_eq!(
            count(&t, "reloading the configuration"),
            2,
            "the burst gave one reload (and the SIGHUP one)"
        );
        assert_eq!(count(&t, "configuration not reloaded"), 0);
    }
}

/// A run config: `app.env` into `out.env` (a change sends USR1) and the child's
/// environment (`APP_*` only, under `prefix`).
fn run_cfg(w: &Work, extra: &str, prefix: &str) -> String {
    format!(
        "source = [\"file:{src}\"]\ndebounce = \"0\"\nmax_wait = \"0\"\nreload_grace = \"0\"\n{extra}\n\
         [env]\ninclude = [\"APP_*\"]\nprefix = \"{prefix}\"\n\
         [[output]]\npath = \"{out}\"\non_change = \"signal:USR1\"\n",
        src = w.path("app.env").display(),
        out = w.path("out.env").display(),
    )
}

fn start_run(w: &Work) -> Tether {
    let cfg = w.path("tether.toml").display().to_string();
    let mut args = vec!["run".to_string(), "--config".into(), cfg, "--".into()];
    args.extend(w.child_args(&[]));
    Tether::start(w.dir.path(), &args, &[])
}

#[test]
fn run_forwards_sighup_to_the_child_by_default() {
    let w = Work::new();
    w.write("app.env", "APP_A=1\n");
    w.write("tether.toml", &run_cfg(&w, "", ""));
    let mut t = start_run(&w);
    t.wait_for("child started", || w.starts().len() == 1);
    t.signal(SIGHUP);
    t.wait_for("HUP at the child", || {
        w.signals().contains(&"SIGHUP".into())
    });
    assert!(running(&mut t));
    assert_eq!(w.starts().len(), 1);
    assert_eq!(count(&t, "reloading the configuration"), 0);
}

#[test]
fn run_with_sighup_reload_keeps_the_child_unless_its_environment_changes() {
    let w = Work::new();
    w.write("app.env", "APP_A=1\nB=2\n");
    let v1 = "sighup = \"reload\"\nforward_signals = [\"TERM\", \"INT\"]";
    w.write("tether.toml", &run_cfg(&w, v1, ""));
    let mut t = start_run(&w);
    t.wait_for("child started with APP_A", || {
        w.starts().len() == 1 && w.child_env().contains(&"APP_A=1".into())
    });
    let child = w.starts()[0];

    // Timings, forwarded signals and the output's format change: applied, the child stays
    // (the rewritten file's action, USR1, tells it), and HUP is tether's, not the child's.
    let v2 = "sighup = \"reload\"\nforward_signals = [\"TERM\", \"INT\", \"USR2\"]\n\
              stop_timeout = \"3s\"\nrestart_on_exit = \"on-failure\"";
    let held = edit_held(
        &w.path("tether.toml"),
        &run_cfg(&w, v2, "").replace(
            "on_change = \"signal:USR1\"",
            "format = \"json\"\non_change = \"signal:USR1\"",
        ),
    );
    t.signal(SIGHUP);
    t.wait_for("reloaded, the output now JSON, the child told", || {
        applied(&t) == 1
            && json_value(&w, "out.env", "B").as_deref() == Some("2")
            && w.signals().contains(&"SIGUSR1".into())
    });
    drop(held);
    t.wait_for("the close seen by the file watch", || {
        count(&t, "nothing changed") == 1
    });
    assert_eq!(w.starts(), [child], "not restarted");
    assert!(!w.signals().contains(&"SIGHUP".into()), "{:?}", w.record());
    // USR2, not handled before (it would have killed tether), is forwarded now.
    t.signal(nix::sys::signal::Signal::SIGUSR2);
    t.wait_for("USR2 at the child", || {
        w.signals().contains(&"SIGUSR2".into())
    });
    assert!(running(&mut t));

    // The environment's rules change: one restart, with the new names.
    w.write("tether.toml", &run_cfg(&w, "sighup = \"reload\"", "X_"));
    t.wait_for("restarted once with the new environment", || {
        w.starts().len() == 2 && w.child_env().contains(&"X_APP_A=1".into())
    });
    t.signal(SIGHUP);
    t.wait_for("another reload", || count(&t, "nothing changed") == 2);
    assert_eq!(w.starts().len(), 2);
    assert!(!w.signals().contains(&"SIGHUP".into()), "{:?}", w.record());
    assert!(running(&mut t));
}
#[test]
fn a_config_mounted_from_a_configmap_is_followed_through_its_swap() {
    let w = Work::new();
    w.write("app.env", "A=1\n");
    publish_in(
        &w,
        "cm",
        1,
        "tether.toml",
        Some(&watch_cfg(&w, "out.env", "dotenv", "hooks")),
    );
    let cfg = w.path("cm/tether.toml").display().to_string();
    let t = Tether::start(w.dir.path(), ["watch", "--config", &cfg], &[]);
    t.wait_for("first render", || w.read("out.env").contains("A=1"));
    publish_in(
        &w,
        "cm",
        2,
        "tether.toml",
        Some(&watch_cfg(&w, "out.json", "json", "hooks")),
    );
    t.wait_for("the new generation applied", || {
        json_value(&w, "out.json", "A").as_deref() == Some("1") && !w.path("out.env").exists()
    });
    publish_in(
        &w,
        "cm",
        3,
        "tether.toml",
        Some(&watch_cfg(&w, "out.env", "dotenv", "hooks")),
    );
    t.wait_for("and the next", || {
        w.read("out.env").contains("A=1") && !w.path("out.json").exists()
    });
    assert_eq!(applied(&t), 2);
}

pub(super) fn publish_in(w: &Work, dir: &str, generation: u32, file: &str, content: Option<&str>) {
    let dir = w.path(dir);
    let gen_dir = dir.join(format!("..gen_{generation}"));
    fs::create_dir_all(&gen_dir).expect("generation dir");
    if let Some(c) = content {
        fs::write(gen_dir.join(file), c).expect("write file");
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp).expect("link");
    fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    if fs::symlink_metadata(dir.join(file)).is_err() {
        std::os::unix::fs::symlink(format!("..data/{file}"), dir.join(file)).expect("file link");
    }
}

#[test]
fn the_log_level_follows_a_reload() {
    let w = Work::new();
    w.write("app.env", "A=1\n");
    let base = watch_cfg(&w, "out.env", "dotenv", "hooks");
    w.write("tether.toml", &format!("log_level = \"info\"\n{base}"));
    let t = start_watch(&w);
    t.wait_for("first render", || w.read("out.env").contains("A=1"));
    w.write("app.env", "A=2\n");
    t.wait_for("A=2", || w.read("out.env").contains("A=2"));
    assert!(!logs(&t).contains("source changed"), "no debug lines yet");

    // A level that does not parse is refused like any other problem.
    w.write(
        "tether.toml",
        &format!("log_level = \"tether_agent=loud\"\n{base}"),
    );
    t.wait_for("refused", || {
        logs(&t)
            .lines()
            .any(|l| l.contains("invalid configuration") && l.contains("log_level"))
    });
    w.write("tether.toml", &format!("log_level = \"debug\"\n{base}"));
    t.wait_for("reloaded", || applied(&t) == 1);
    w.write("app.env", "A=3\n");
    t.wait_for("A=3 and a debug line", || {
        w.read("out.env").contains("A=3") && logs(&t).contains("source changed")
    });
}

mod net;
