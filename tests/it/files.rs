//! Outputs and sources through the real binary: atomic writes under a concurrent reader,
//! file modes and owners, the `dir` symlink swap, invalid names, parse errors, source
//! precedence and the ways files get replaced (Kubernetes swap, delete/re-create, editor
//! saves), and the removal of outputs on a clean exit.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{DEADLINE, Tether, Work, alive};

/// `tether watch` over `--source file:SRC` (absolute) with no action and no debounce.
pub fn watch_none(w: &Work, src: &str, extra: &[&str]) -> Tether {
    let src = format!("file:{}", w.path(src).display());
    let mut args = vec![
        "watch",
        "--source",
        &src,
        "--on-change",
        "none",
        "--debounce",
        "0",
    ];
    args.extend_from_slice(extra);
    Tether::start(w.dir.path(), args, &[])
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat output").mode() & 0o7777
}

/// `KEY=VALUE` lines of a dotenv output (values are plain in these tests).
fn dotenv(p: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Entry names of a directory, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `check` on every successful read of `path` in a thread until stopped. Returns
/// (reads, missing) when joined; a torn read panics the thread.
fn reader(
    path: PathBuf,
    allow_missing: bool,
    check: impl Fn(&str) + Send + 'static,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<(usize, usize)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || {
        let (mut reads, mut missing) = (0, 0);
        while !stop2.load(Ordering::SeqCst) {
            match fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8(bytes).expect("utf-8 output");
                    check(&text);
                    reads += 1;
                }
                Err(e) if allow_missing && e.kind() == io::ErrorKind::NotFound => missing += 1,
                Err(e) => panic!("reading {}: {e}", path.display()),
            }
            std::thread::yield_now();
        }
        (reads, missing)
    });
    (stop, handle)
}

/// Like `Tether::wait_for`, polling finely: for loops that wait on every step.
fn until(t: &Tether, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            t.dump();
            panic!("timed out after {DEADLINE:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

// ---------------------------------------------------------------------------------------
// Atomic writes

/// Version `n` of the source: two keys that must agree and padding of varying length.
fn version(n: usize) -> String {
    format!("V={n}\nPAD={}\nEND={n}\n", "x".repeat(n * 7 % 301))
}

/// Parses one complete rendered version, or says what is wrong with it.
fn parse_version(text: &str) -> Result<usize, String> {
    if !text.ends_with('\n') {
        return Err(format!("no final newline: {text:?}"));
    }
    let map: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    if map.len() != 3 || text.lines().count() != 3 {
        return Err(format!("not three entries: {text:?}"));
    }
    let n: usize = map["V"].parse().map_err(|_| format!("bad V: {text:?}"))?;
    if map["END"] != map["V"] || map["PAD"].len() != n * 7 % 301 {
        return Err(format!("mixed versions: {text:?}"));
    }
    Ok(n)
}

#[test]
fn reader_never_sees_a_partial_file_over_1000_changes() {
    let w = Work::new();
    w.write("src.env", &version(0));
    let out = w.path("out.env");
    let t = watch_none(&w, "src.env", &["--output", &s(&out)]);
    t.wait_for("first render", || {
        fs::read_to_string(&out).is_ok_and(|t| parse_version(&t) == Ok(0))
    });

    let last = Arc::new(AtomicUsize::new(0));
    let versions = Arc::new(AtomicUsize::new(0));
    let (seen, counted) = (last.clone(), versions.clone());
    let (stop, handle) = reader(out.clone(), false, move |text| {
        let n = parse_version(text).unwrap_or_else(|e| panic!("torn read: {e}"));
        let before = seen.swap(n, Ordering::SeqCst);
        assert!(n >= before, "went back from version {before} to {n}");
        if n != before {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    // Each version is written through tether before the next edit, so the output file is
    // really replaced 1,000 times under the reader.
    for n in 1..=1000 {
        w.write("src.env", &version(n));
        until(&t, "the new version", || {
            handle.is_finished()
                || fs::read_to_string(&out).is_ok_and(|t| parse_version(&t) == Ok(n))
        });
    }
    stop.store(true, Ordering::SeqCst);
    let (reads, _) = handle.join().expect("reader saw a torn or missing file");
    eprintln!(
        "{reads} reads saw {} of 1000 versions",
        versions.load(Ordering::SeqCst)
    );
    assert!(reads > 0);
    // Only the output remains: no temp file left behind.
    assert_eq!(names_in(w.dir.path()), ["out.env", "src.env"]);
}

// ---------------------------------------------------------------------------------------
// Modes and owners

#[test]
fn output_modes_default_config_file_and_flag() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let (dflt, cfg, flag) = (w.path("default.env"), w.path("cfg.env"), w.path("flag.env"));
    let config = format!(
        "[[output]]\npath = \"{}\"\n\n[[output]]\npath = \"{}\"\nmode = \"0640\"\n",
        dflt.display(),
        cfg.display()
    );
    w.write("tether.toml", &config);
    let conf = s(&w.path("tether.toml"));
    let t1 = watch_none(&w, "a.env", &["--config", &conf]);
    let t2 = watch_none(&w, "a.env", &["--output", &s(&flag), "--mode", "0644"]);
    for (t, p) in [(&t1, &dflt), (&t1, &cfg), (&t2, &flag)] {
        t.wait_for("first render", || dotenv(p) == kv(&[("A", "1")]));
    }
    assert_eq!(mode(&dflt), 0o600);
    assert_eq!(mode(&cfg), 0o640);
    assert_eq!(mode(&flag), 0o644);

    // A rewrite (a new file renamed over the old) keeps the modes.
    let ino = fs::metadata(&cfg).unwrap().ino();
    w.write("a.env", "A=2\n");
    for (t, p) in [(&t1, &dflt), (&t1, &cfg), (&t2, &flag)] {
        t.wait_for("second render", || dotenv(p) == kv(&[("A", "2")]));
    }
    assert_ne!(
        fs::metadata(&cfg).unwrap().ino(),
        ino,
        "replaced, not edited"
    );
    assert_eq!(mode(&dflt), 0o600);
    assert_eq!(mode(&cfg), 0o640);
    assert_eq!(mode(&flag), 0o644);
}

#[test]
fn output_owner_is_applied() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: chown needs root");
        return;
    }
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let (file, dir) = (w.path("owned.env"), w.path("owned.d"));
    let t1 = watch_none(
        &w,
        "a.env",
        &["--output", &s(&file), "--owner", "65534:65534"],
    );
    let t2 = watch_none(
        &w,
        "a.env",
        &[
            "--output",
            &s(&dir),
            "--format",
            "dir",
            "--owner",
            "65534:65534",
        ],
    );
    t1.wait_for("file render", || dotenv(&file) == kv(&[("A", "1")]));
    t2.wait_for("dir render", || w.read("owned.d/A") == "1");
    for p in [&file, &dir.join("A"), &dir] {
        let md = fs::metadata(p).unwrap();
        assert_eq!((md.uid(), md.gid()), (65534, 65534), "{}", p.display());
    }
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&dir.join("A")), 0o600);
    w.write("a.env", "A=2\n");
    t1.wait_for("file update", || dotenv(&file) == kv(&[("A", "2")]));
    let md = fs::metadata(&file).unwrap();
    assert_eq!((md.uid(), md.gid(), mode(&file)), (65534, 65534, 0o600));
}

// ---------------------------------------------------------------------------------------
// The `dir` format

fn data_target(dir: &Path) -> String {
    fs::read_link(dir.join("..data"))
        .map(|t| t.display().to_string())
        .unwrap_or_default()
}

#[test]
fn dir_output_is_published_by_a_symlink_swap() {
    let w = Work::new();
    w.write("a.env", "A=one\nB=two\n");
    let out = w.path("out");
    let t = watch_none(&w, "a.env", &["--output", &s(&out), "--format", "dir"]);
    t.wait_for("first publish", || w.read("out/B") == "two");

    let first = data_target(&out);
    assert!(first.starts_with("..") && !first.contains('/'), "{first}");
    assert!(out.join(&first).is_dir());
    assert_eq!(names_in(&out), [first.as_str(), "..data", "A", "B"]);
    for k in ["A", "B"] {
        let link = fs::read_link(out.join(k)).expect("per-key symlink");
        assert_eq!(link, Path::new("..data").join(k));
        assert_eq!(mode(&out.join(k)), 0o600);
    }
    assert_eq!(w.read("out/A"), "one");
    assert_eq!(names_in(&out.join(&first)), ["A", "B"]);

    // A changes, B goes away, C arrives.
    w.write("a.env", "A=uno\nC=three\n");
    t.wait_for("second publish", || {
        w.read("out/C") == "three" && fs::symlink_metadata(out.join("B")).is_err()
    });
    let second = wait_published_layout(&t, &out, &["A", "C"]);
    assert_ne!(second, first);
    assert!(!out.join(&first).exists(), "old data dir removed");
    assert_eq!(w.read("out/A"), "uno");
    assert_eq!(names_in(&out.join(&second)), ["A", "C"]);
}

/// Waits until `dir` has the layout of an idle published dir: exactly one data dir (the
/// target of `..data`), `..data`, and the symlinks `names`; returns the data dir's name. A
/// publish swaps `..data` (so readers see the new content) before it removes the old data dir
/// and vanished names, so right after a new value shows up that cleanup may still be running.
fn wait_published_layout(t: &Tether, dir: &Path, names: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let (listed, data) = (names_in(dir), data_target(dir));
        let mut expected = vec![data.clone(), "..data".to_string()];
        expected.extend(names.iter().map(|n| n.to_string()));
        if data.starts_with("..") && listed == expected {
            return data;
        }
        if start.elapsed() > DEADLINE {
            t.dump();
            panic!("timed out after {DEADLINE:?} waiting for {expected:?}, have {listed:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Value `n` of the key read through the per-key symlink: its ends must agree.
fn dir_value(n: usize) -> String {
    format!("{n}:{}:{n}", "y".repeat(n * 13 % 499))
}

#[test]
fn dir_output_reader_never_sees_partial_content() {
    let w = Work::new();
    w.write("a.env", &format!("K={}\n", dir_value(0)));
    let out = w.path("out");
    let t = watch_none(&w, "a.env", &["--output", &s(&out), "--format", "dir"]);
    t.wait_for("first publish", || w.read("out/K") == dir_value(0));

    // A reader that resolved `..data` just before the old data dir was removed may get
    // ENOENT (as with kubelet); it must never get partial content.
    let (stop, handle) = reader(out.join("K"), true, |text| {
        let parts: Vec<&str> = text.split(':').collect();
        assert_eq!(parts.len(), 3, "torn read: {text:?}");
        let n: usize = parts[0].parse().expect("number");
        assert_eq!(text, dir_value(n), "torn read");
    });
    for n in 1..=300 {
        w.write("a.env", &format!("K={}\n", dir_value(n)));
        until(&t, "the new value", || {
            handle.is_finished() || w.read("out/K") == dir_value(n)
        });
    }
    stop.store(true, Ordering::SeqCst);
    let (reads, missing) = handle.join().expect("reader saw partial content");
    eprintln!("{reads} reads, {missing} found no file");
    assert!(reads > 0);
    // Once the last publish has finished its cleanup, exactly one data dir is left (and no
    // temporary symlink).
    wait_published_layout(&t, &out, &["K"]);
}

// ---------------------------------------------------------------------------------------
// Invalid names

const SECRET: &str = "s3cr3t-value-xyz";

#[test]
fn invalid_names_are_skipped_and_named_without_their_values() {
    let w = Work::new();
    let doc = serde_json::json!({
        "GOOD": "g",
        "bad-name": SECRET,
        "a.b": SECRET,
        "x/y": SECRET,
        "..": SECRET,
        ".hidden": SECRET,
    });
    w.write("names.json", &doc.to_string());
    let (env_out, dir_out) = (w.path("n.env"), w.path("ndir"));
    let config = format!(
        "[[output]]\npath = \"{}\"\n\n[[output]]\npath = \"{}\"\nformat = \"dir\"\n",
        env_out.display(),
        dir_out.display()
    );
    w.write("tether.toml", &config);
    let t = watch_none(&w, "names.json", &["--config", &s(&w.path("tether.toml"))]);
    t.wait_for("first render", || {
        t.stderr().contains("first render complete")
    });

    assert_eq!(w.read("n.env"), "GOOD=g\n");
    let published: Vec<String> = names_in(&dir_out)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(published, ["GOOD", "a.b", "bad-name"]);
    assert_eq!(w.read("ndir/a.b"), SECRET);
    let data = dir_out.join(data_target(&dir_out));
    assert_eq!(names_in(&data), ["GOOD", "a.b", "bad-name"]);
    assert!(!dir_out.join("x").exists() && !w.path("x").exists());

    let err = t.stderr();
    let skipped = |key: &str, output: &Path| {
        err.lines().any(|l| {
            l.contains("entry skipped")
                && l.contains(&format!("key={key} "))
                && l.contains(&s(output))
        })
    };
    for key in ["bad-name", "a.b", "x/y", "..", ".hidden"] {
        assert!(
            skipped(key, &env_out),
            "{key} not reported for dotenv:\n{err}"
        );
    }
    for key in ["x/y", "..", ".hidden"] {
        assert!(skipped(key, &dir_out), "{key} not reported for dir:\n{err}");
    }
    for key in ["GOOD", "bad-name", "a.b"] {
        assert!(!skipped(key, &dir_out), "{key} wrongly skipped for dir");
    }
    assert!(!err.contains(SECRET), "a value reached the log:\n{err}");
    assert!(!t.stdout().contains(SECRET));
}

// ---------------------------------------------------------------------------------------
// Parse errors

#[test]
fn unparseable_source_keeps_last_good_values_and_triggers_nothing() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let out = w.path("out.env");
    let src = format!("file:{}", s(&w.path("a.env")));
    let mut args = vec![
        "run".to_string(),
        "--source".into(),
        src,
        "--output".into(),
        s(&out),
        "--no-env".into(),
        "--on-change".into(),
        "signal:HUP".into(),
        "--debounce".into(),
        "0".into(),
        "--".into(),
    ];
    args.extend(w.child_args(&[]));
    let t = Tether::start(w.dir.path(), &args, &[]);
    t.wait_for("child started", || w.starts().len() == 1);
    assert_eq!(dotenv(&out), kv(&[("A", "1")]));

    w.write("a.env", &format!("A=\"unterminated {SECRET}\nB=2\n"));
    t.wait_for("the parse error", || t.stderr().contains("cannot parse"));
    let err = t.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("cannot parse"))
        .unwrap()
        .to_string();
    assert!(
        line.contains(&s(&w.path("a.env"))),
        "names the file: {line}"
    );
    assert!(line.contains("line 1"), "names the line: {line}");
    assert!(line.contains("ERROR"), "{line}");
    assert!(!err.contains(SECRET), "{err}");
    assert_eq!(dotenv(&out), kv(&[("A", "1")]), "last good values kept");

    // A good change now gives exactly one signal: the broken file gave none.
    w.write("a.env", "A=2\n");
    t.wait_for("the fix applied", || dotenv(&out) == kv(&[("A", "2")]));
    assert_eq!(t.stderr().matches("configuration changed").count(), 1);
    t.wait_for("a signal", || !w.signals().is_empty());
    assert_eq!(w.signals(), ["SIGHUP"]);
    assert_eq!(w.starts().len(), 1, "not restarted");
    assert!(!t.stderr().contains(SECRET));
}

// ---------------------------------------------------------------------------------------
// Sources

#[test]
fn later_source_overrides_earlier_key_by_key() {
    let w = Work::new();
    w.write("a.env", "A=from-a\nB=from-a\n");
    w.write("b.json", r#"{"B": "from-b", "C": "from-b"}"#);
    let out = w.path("out.env");
    let b = format!("file:{}", s(&w.path("b.json")));
    let t = watch_none(&w, "a.env", &["--source", &b, "--output", &s(&out)]);
    // `--source` given twice: both apply, in order.
    t.wait_for("merged render", || {
        dotenv(&out) == kv(&[("A", "from-a"), ("B", "from-b"), ("C", "from-b")])
    });

    // B leaves the later source: the earlier one shows through again.
    w.write("b.json", r#"{"C": "c2"}"#);
    t.wait_for("B falls back", || {
        dotenv(&out) == kv(&[("A", "from-a"), ("B", "from-a"), ("C", "c2")])
    });
    // The later source still wins for C when the earlier one sets it too.
    w.write("a.env", "A=a2\nB=b2\nC=from-a\n");
    t.wait_for("earlier source update", || {
        dotenv(&out) == kv(&[("A", "a2"), ("B", "b2"), ("C", "c2")])
    });
}

/// Builds a Kubernetes-style data dir `..NAME` with `files` inside `dir`.
fn k8s_data_dir(dir: &Path, name: &str, files: &[(&str, &str)]) {
    let data = dir.join(name);
    fs::create_dir(&data).unwrap();
    for (k, v) in files {
        fs::write(data.join(k), v).unwrap();
    }
}

#[test]
fn dir_source_follows_the_kubernetes_atomic_swap() {
    let w = Work::new();
    let sec = w.path("secret");
    fs::create_dir(&sec).unwrap();
    k8s_data_dir(
        &sec,
        "..2026_01_01_00_00_00.000000001",
        &[("USER", "admin"), ("PASS", "p1")],
    );
    symlink("..2026_01_01_00_00_00.000000001", sec.join("..data")).unwrap();
    for k in ["USER", "PASS"] {
        symlink(Path::new("..data").join(k), sec.join(k)).unwrap();
    }
    let out = w.path("out.env");
    let src = format!("dir:{}", s(&sec));
    let t = Tether::start(
        w.dir.path(),
        [
            "watch",
            "--source",
            &src,
            "--output",
            &s(&out),
            "--on-change",
            "none",
            "--debounce",
            "0",
        ],
        &[],
    );
    t.wait_for("first render", || {
        dotenv(&out) == kv(&[("PASS", "p1"), ("USER", "admin")])
    });

    // kubelet's update: new data dir, `..data_tmp` renamed over `..data`, new key
    // symlinks added, vanished ones and the old data dir removed.
    k8s_data_dir(
        &sec,
        "..2026_01_02_00_00_00.000000002",
        &[("USER", "admin"), ("PASS", "p2"), ("TOKEN", "t2")],
    );
    symlink("..2026_01_02_00_00_00.000000002", sec.join("..data_tmp")).unwrap();
    fs::rename(sec.join("..data_tmp"), sec.join("..data")).unwrap();
    symlink("..data/TOKEN", sec.join("TOKEN")).unwrap();
    fs::remove_dir_all(sec.join("..2026_01_01_00_00_00.000000001")).unwrap();
    t.wait_for("swap picked up", || {
        dotenv(&out) == kv(&[("PASS", "p2"), ("TOKEN", "t2"), ("USER", "admin")])
    });

    // A key removed by the next swap disappears from the output.
    k8s_data_dir(
        &sec,
        "..2026_01_03_00_00_00.000000003",
        &[("USER", "admin"), ("PASS", "p3")],
    );
    symlink("..2026_01_03_00_00_00.000000003", sec.join("..data_tmp")).unwrap();
    fs::rename(sec.join("..data_tmp"), sec.join("..data")).unwrap();
    fs::remove_file(sec.join("TOKEN")).unwrap();
    fs::remove_dir_all(sec.join("..2026_01_02_00_00_00.000000002")).unwrap();
    t.wait_for("second swap picked up", || {
        dotenv(&out) == kv(&[("PASS", "p3"), ("USER", "admin")])
    });
}

#[test]
fn dir_source_of_plain_files_follows_edits() {
    let w = Work::new();
    let d = w.path("conf");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("HOST"), "db1").unwrap();
    fs::write(d.join("PORT"), "5432").unwrap();
    fs::write(d.join(".hidden"), "skipped").unwrap();
    fs::create_dir(d.join("subdir")).unwrap();
    let out = w.path("out.env");
    let src = format!("dir:{}", s(&d));
    let t = Tether::start(
        w.dir.path(),
        [
            "watch",
            "--source",
            &src,
            "--output",
            &s(&out),
            "--on-change",
            "none",
            "--debounce",
            "0",
        ],
        &[],
    );
    t.wait_for("first render", || {
        dotenv(&out) == kv(&[("HOST", "db1"), ("PORT", "5432")])
    });
    fs::write(d.join("HOST"), "db2").unwrap(); // in place
    fs::write(d.join("USER"), "app").unwrap(); // new key
    fs::remove_file(d.join("PORT")).unwrap(); // key removed
    t.wait_for("edits picked up", || {
        dotenv(&out) == kv(&[("HOST", "db2"), ("USER", "app")])
    });
}

#[test]
fn deleted_source_keeps_its_values_until_recreated() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let out = w.path("out.env");
    let t = watch_none(&w, "a.env", &["--output", &s(&out)]);
    t.wait_for("first render", || dotenv(&out) == kv(&[("A", "1")]));

    fs::remove_file(w.path("a.env")).unwrap();
    t.wait_for("the deletion noticed", || {
        t.stderr().contains("source is gone")
    });
    assert_eq!(dotenv(&out), kv(&[("A", "1")]), "values kept while deleted");

    // Re-created in place (not by rename).
    fs::write(w.path("a.env"), "A=2\n").unwrap();
    t.wait_for("re-creation picked up", || {
        dotenv(&out) == kv(&[("A", "2")])
    });
}

#[test]
fn editor_save_by_rename_is_picked_up() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let out = w.path("out.env");
    let t = watch_none(&w, "a.env", &["--output", &s(&out)]);
    t.wait_for("first render", || dotenv(&out) == kv(&[("A", "1")]));

    // vim with `backupcopy=no`: the original becomes the backup, the new text is written
    // to a swap file that is renamed into place.
    fs::rename(w.path("a.env"), w.path("a.env~")).unwrap();
    fs::write(w.path(".a.env.swp"), "A=2\n").unwrap();
    fs::rename(w.path(".a.env.swp"), w.path("a.env")).unwrap();
    fs::remove_file(w.path("a.env~")).unwrap();
    t.wait_for("save picked up", || dotenv(&out) == kv(&[("A", "2")]));

    // And a plain rewrite in place.
    fs::write(w.path("a.env"), "A=3\n").unwrap();
    t.wait_for("in-place write picked up", || {
        dotenv(&out) == kv(&[("A", "3")])
    });
}

#[test]
fn a_symlinked_source_is_followed_into_another_directory() {
    let w = Work::new();
    fs::create_dir_all(w.path("secrets/v1")).unwrap();
    fs::create_dir_all(w.path("secrets/v2")).unwrap();
    fs::create_dir_all(w.path("conf")).unwrap();
    fs::write(w.path("secrets/v1/app.env"), "A=1\n").unwrap();
    fs::write(w.path("secrets/v2/app.env"), "A=2\n").unwrap();
    symlink(w.path("secrets/v1/app.env"), w.path("conf/app.env")).unwrap();
    let out = w.path("out.env");
    let t = watch_none(&w, "conf/app.env", &["--output", &s(&out)]);
    t.wait_for("first render", || dotenv(&out) == kv(&[("A", "1")]));

    // Edited in place where the link points: nothing changes in the link's directory.
    fs::write(w.path("secrets/v1/app.env"), "A=11\n").unwrap();
    t.wait_for("edit behind the link", || {
        dotenv(&out) == kv(&[("A", "11")])
    });

    // The link re-pointed, then the new target edited in place.
    symlink(w.path("secrets/v2/app.env"), w.path("conf/.tmp")).unwrap();
    fs::rename(w.path("conf/.tmp"), w.path("conf/app.env")).unwrap();
    t.wait_for("re-pointed link", || dotenv(&out) == kv(&[("A", "2")]));
    fs::write(w.path("secrets/v2/app.env"), "A=22\n").unwrap();
    t.wait_for("edit behind the new target", || {
        dotenv(&out) == kv(&[("A", "22")])
    });
}

// ---------------------------------------------------------------------------------------
// Clean exit

fn two_outputs_config(w: &Work) -> String {
    let config = format!(
        "[[output]]\npath = \"{}\"\n\n[[output]]\npath = \"{}\"\nformat = \"dir\"\n",
        w.path("out.env").display(),
        w.path("out.d").display()
    );
    w.write("tether.toml", &config);
    s(&w.path("tether.toml"))
}

#[test]
fn outputs_are_removed_on_a_clean_exit() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let conf = two_outputs_config(&w);
    let mut t = watch_none(&w, "a.env", &["--config", &conf]);
    t.wait_for("render", || {
        w.read("out.env") == "A=1\n" && w.read("out.d/A") == "1"
    });
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait().code(), Some(0));
    assert!(!w.path("out.env").exists());
    assert!(
        !w.path("out.d").exists(),
        "{:?}",
        names_in(&w.path("out.d"))
    );
    assert_eq!(names_in(w.dir.path()), ["a.env", "tether.toml"]);
}

#[test]
fn keep_outputs_leaves_them_in_place() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let conf = two_outputs_config(&w);
    let mut t = watch_none(&w, "a.env", &["--config", &conf, "--keep-outputs"]);
    t.wait_for("render", || {
        w.read("out.env") == "A=1\n" && w.read("out.d/A") == "1"
    });
    t.signal(Signal::SIGINT);
    assert_eq!(t.wait().code(), Some(0));
    assert_eq!(w.read("out.env"), "A=1\n");
    assert_eq!(w.read("out.d/A"), "1");
}

#[test]
fn run_removes_outputs_when_stopped() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let out = w.path("out.env");
    let mut args = vec![
        "run".to_string(),
        "--source".into(),
        format!("file:{}", s(&w.path("a.env"))),
        "--output".into(),
        s(&out),
        "--stop-timeout".into(),
        "10s".into(),
        "--".into(),
    ];
    args.extend(w.child_args(&[]));
    let mut t = Tether::start(w.dir.path(), &args, &[]);
    t.wait_for("child started", || w.starts().len() == 1);
    assert!(out.exists());
    let child = w.starts()[0];
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait().code(), Some(0));
    assert!(!alive(child));
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------
// Formats and locations

/// Dotenv syntax as users write it, and the values it must give.
const TRICKY_SOURCE: &str = r#"# a comment
export EXPORTED=yes
PLAIN=value  # inline comment
SINGLE='it has $HOME and \n literally'
DOUBLE="line1\nline2 \"quoted\" tab\tend"
MULTI="first
second"
EMPTY=
SPACES='  padded  '
HASH=a#b
DOLLAR="cost: \$5"
URL=postgres://u:p@h/db?x=1
QUOTES='say "hi"'
APOS="it's"
"#;

fn tricky_values() -> BTreeMap<String, String> {
    kv(&[
        ("EXPORTED", "yes"),
        ("PLAIN", "value"),
        ("SINGLE", r"it has $HOME and \n literally"),
        ("DOUBLE", "line1\nline2 \"quoted\" tab\tend"),
        ("MULTI", "first\nsecond"),
        ("EMPTY", ""),
        ("SPACES", "  padded  "),
        ("HASH", "a#b"),
        ("DOLLAR", "cost: $5"),
        ("URL", "postgres://u:p@h/db?x=1"),
        ("QUOTES", "say \"hi\""),
        ("APOS", "it's"),
    ])
}

fn json_map(p: &Path) -> BTreeMap<String, String> {
    serde_json::from_str(&fs::read_to_string(p).unwrap_or_default()).unwrap_or_default()
}

#[test]
fn dotenv_syntax_reaches_every_format_exactly() {
    let w = Work::new();
    w.write("a.env", TRICKY_SOURCE);
    let outputs: String = [
        ("out.json", "json"),
        ("out.sh", "shell"),
        ("out.env", "dotenv"),
    ]
    .iter()
    .map(|(name, format)| {
        format!(
            "[[output]]\npath = \"{}\"\nformat = \"{format}\"\n",
            w.path(name).display()
        )
    })
    .collect();
    w.write("tether.toml", &outputs);
    let t = watch_none(&w, "a.env", &["--config", &s(&w.path("tether.toml"))]);
    let want = tricky_values();
    t.wait_for("json output", || json_map(&w.path("out.json")) == want);

    // The shell output, sourced by sh, gives the same values.
    t.wait_for("shell output", || w.path("out.sh").exists());
    let script: String = want
        .keys()
        .map(|k| format!("printf '%s\\0' \"${k}\";"))
        .collect();
    let got = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(". \"$1\"; {script}"))
        .arg("sh")
        .arg(w.path("out.sh"))
        .env_clear()
        .output()
        .expect("run sh");
    assert!(got.status.success(), "{got:?}");
    let values: Vec<String> = String::from_utf8(got.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(str::to_owned)
        .collect();
    assert_eq!(values, want.values().cloned().collect::<Vec<_>>());

    // The dotenv output reads back through tether's own dotenv source unchanged.
    t.wait_for("dotenv output", || w.path("out.env").exists());
    let back = w.path("back.json");
    let t2 = Tether::start(
        w.dir.path(),
        [
            "watch",
            "--source",
            &format!("dotenv:{}", s(&w.path("out.env"))),
            "--output",
            &s(&back),
            "--format",
            "json",
            "--on-change",
            "none",
        ],
        &[],
    );
    t2.wait_for("round trip", || json_map(&back) == want);
}

#[test]
fn file_source_in_a_kubernetes_volume_follows_the_swap() {
    let w = Work::new();
    let vol = w.path("vol");
    fs::create_dir(&vol).unwrap();
    k8s_data_dir(&vol, "..2026_01_01_00_00_00.1", &[("app.env", "A=1\n")]);
    symlink("..2026_01_01_00_00_00.1", vol.join("..data")).unwrap();
    symlink("..data/app.env", vol.join("app.env")).unwrap();
    let out = w.path("out.env");
    let t = watch_none(&w, "vol/app.env", &["--output", &s(&out)]);
    t.wait_for("first render", || dotenv(&out) == kv(&[("A", "1")]));

    // Only `..data` changes; the `app.env` symlink itself is never touched.
    k8s_data_dir(&vol, "..2026_01_02_00_00_00.2", &[("app.env", "A=2\n")]);
    symlink("..2026_01_02_00_00_00.2", vol.join("..data_tmp")).unwrap();
    fs::rename(vol.join("..data_tmp"), vol.join("..data")).unwrap();
    fs::remove_dir_all(vol.join("..2026_01_01_00_00_00.1")).unwrap();
    t.wait_for("swap picked up", || dotenv(&out) == kv(&[("A", "2")]));
}

#[test]
fn a_bare_output_name_goes_to_the_runtime_dir() {
    let w = Work::new();
    w.write("a.env", "A=1\n");
    // The harness points XDG_RUNTIME_DIR at the work dir.
    let t = watch_none(&w, "a.env", &["--output", "app.env"]);
    let out = w.path("tether/app.env");
    t.wait_for("render", || dotenv(&out) == kv(&[("A", "1")]));
    assert_eq!(mode(&w.path("tether")), 0o700);
    assert_eq!(mode(&out), 0o600);
    assert!(!t.stderr().contains("not on tmpfs"), "{}", t.stderr());
}

#[test]
fn an_output_off_tmpfs_is_warned_about() {
    let disk = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let on_tmpfs = nix::sys::statfs::statfs(disk)
        .map(|st| st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(true);
    if on_tmpfs {
        eprintln!("skipped: {} is on tmpfs", disk.display());
        return;
    }
    let w = Work::new();
    w.write("a.env", "A=1\n");
    let dir = tempfile::tempdir_in(disk).unwrap();
    let out = dir.path().join("app.env");
    let t = watch_none(&w, "a.env", &["--output", &s(&out)]);
    t.wait_for("render", || dotenv(&out) == kv(&[("A", "1")]));
    t.wait_for("the warning", || t.stderr().contains("not on tmpfs"));
    let err = t.stderr();
    let line = err.lines().find(|l| l.contains("not on tmpfs")).unwrap();
    assert!(line.contains("WARN") && line.contains(&s(&out)), "{line}");
}

/// An output that cannot be written keeps its old content, and is written (and acted on)
/// once it can be, without another change.
#[test]
fn a_failed_output_is_retried_until_it_succeeds() {
    let w = Work::new();
    w.write("app.env", "A=1\n");
    fs::create_dir(w.path("out")).unwrap();
    let out = w.path("out/app.env").display().to_string();
    let mut args = vec![
        "run".to_string(),
        "--source".into(),
        "file:app.env".into(),
        "--output".into(),
        out.clone(),
        "--no-env".into(),
        "--on-change".into(),
        "signal:HUP".into(),
        "--debounce".into(),
        "0".into(),
        "--".into(),
    ];
    args.extend(w.child_args(&[]));
    let t = Tether::start(w.dir.path(), &args, &[]);
    t.wait_for("first start", || w.starts().len() == 1);

    // The output's directory turns into a file: writes fail.
    fs::rename(w.path("out"), w.path("out.away")).unwrap();
    fs::write(w.path("out"), "not a dir").unwrap();
    w.write("app.env", "A=2\n");
    t.wait_for("the write failure to be logged", || {
        t.stderr().contains("output not updated")
    });
    assert!(
        w.signals().is_empty(),
        "no action for an output that was not written"
    );

    // The directory comes back: the retry writes the new content and signals.
    fs::remove_file(w.path("out")).unwrap();
    fs::rename(w.path("out.away"), w.path("out")).unwrap();
    t.wait_for("the retry to write A=2", || {
        dotenv(&w.path("out/app.env")).get("A").map(String::as_str) == Some("2")
    });
    t.wait_for("one HUP after the retry", || w.signals() == ["SIGHUP"]);
}
