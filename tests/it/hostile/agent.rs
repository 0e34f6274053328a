//! Hostile input: the agent — output names, dotenv escaping, directories it writes into.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{Tether, Work, run_to_end_env};

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Write `pairs` as a JSON source (JSON carries every character a value may hold).
fn json_source(w: &Work, name: &str, pairs: &[(String, String)]) {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    w.write(name, &serde_json::to_string(&map).expect("json"));
}

/// Issue 11, item 3: a default output directory that another user made (or that anyone may
/// write) is refused with an error naming it, and nothing is written there.
#[test]
fn a_default_output_dir_others_could_write_is_refused() {
    for case in ["owned by another uid", "mode 0777", "a symlink"] {
        if case == "owned by another uid" && !is_root() {
            eprintln!("skipped ({case}): needs root to chown");
            continue;
        }
        let w = Work::new();
        w.write("src.env", "A=s3cr3t\n");
        let xdg = w.path("xdg");
        fs::create_dir(&xdg).unwrap();
        let dir = xdg.join("tether");
        let written = match case {
            "owned by another uid" => {
                fs::create_dir(&dir).unwrap();
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
                std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
                dir.join("app.env")
            }
            "mode 0777" => {
                fs::create_dir(&dir).unwrap();
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
                dir.join("app.env")
            }
            _ => {
                let elsewhere = w.path("elsewhere");
                fs::create_dir(&elsewhere).unwrap();
                fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
                std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
                elsewhere.join("app.env")
            }
        };
        let src = format!("file:{}", s(&w.path("src.env")));
        let args = ["watch", "--source", &src, "--output", "app.env"];
        let env = [("XDG_RUNTIME_DIR", s(&xdg)), ("HOME", s(w.dir.path()))];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, _, err) = run_to_end_env(w.dir.path(), &args, &env);
        assert_ne!(code, 0, "{case}: accepted; stderr:\n{err}");
        assert!(
            err.contains(&s(&dir)) && err.contains("remove it"),
            "{case}: the error names the directory and what to do:\n{err}"
        );
        assert!(!written.exists(), "{case}: wrote into it");
        assert!(!err.contains("s3cr3t"));
    }

    // Missing, it is created private to tether's user and used.
    let w = Work::new();
    w.write("src.env", "A=1\n");
    let xdg = w.path("xdg");
    fs::create_dir(&xdg).unwrap();
    let src = format!("file:{}", s(&w.path("src.env")));
    let (xdg_s, home) = (s(&xdg), s(w.dir.path()));
    let t = Tether::start(
        w.dir.path(),
        ["watch", "--source", &src, "--output", "app.env"],
        &[("XDG_RUNTIME_DIR", &xdg_s), ("HOME", &home)],
    );
    let out = xdg.join("tether/app.env");
    t.wait_for("the output in the new default dir", || out.exists());
    let mode = fs::metadata(xdg.join("tether"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "created private: {mode:o}");
}

/// One value per character from U+0001 to U+00FF (alone and inside text) and the awkward
/// cases, with whether the dotenv format can carry it for both `sh` and python-dotenv.
fn hostile_values() -> Vec<(String, String, bool)> {
    let mut v = Vec::new();
    for c in (1u32..=255).filter_map(char::from_u32) {
        let n = c as u32;
        // No dotenv spelling gives a CR to python-dotenv; a trailing `\` it misreads.
        v.push((format!("C{n:03}"), c.to_string(), c != '\r' && c != '\\'));
        v.push((format!("M{n:03}"), format!("a{c}b"), c != '\r'));
    }
    let specials = [
        ("CMD_SUBST", "$(touch pwned)", true),
        ("BACKTICKS", "`touch pwned`", true),
        ("DOLLAR", "$HOME and $1", true),
        ("QUOTES", "it's \"quoted\"", true),
        ("BACKSLASHES", "a\\\\b\\'c\\\"d\\n", true),
        ("CONTROL", "\u{8}\u{1b}[31m\u{7f}\t", true),
        ("NON_ASCII", "é ü 日本 🦀 \u{2028}\u{85}", true),
        ("LINES", "one\ntwo\n", true),
        ("SPACES", "  lead and trail  ", true),
        ("COMMENT", "# not a comment", true),
        ("EMPTY", "", true),
        ("CR", "a\r\nb", false),
        ("TRAILING_BACKSLASH", "ends\\", false),
        ("EXPANDS", "${PWD}", false),
        ("QUOTE_AND_CMD", "it's $(touch pwned)", false),
        ("PAIR_AND_TICK", "a\\\\b `touch pwned`", false),
    ];
    v.extend(
        specials
            .iter()
            .map(|(k, val, ok)| (k.to_string(), val.to_string(), *ok)),
    );
    v
}

/// `env -0` of `sh -c 'set -a; . FILE'` run in `cwd` with an empty environment: what a shell
/// that sources the file holds, byte for byte.
fn sourced_by_sh(cwd: &Path, file: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = Command::new("sh")
        .args(["-c", "set -a; . \"$1\"; exec env -0", "sh"])
        .arg(file)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stderr(Stdio::inherit())
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "sh failed to source {}",
        file.display()
    );
    out.stdout
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=')?;
            Some((
                String::from_utf8_lossy(&kv[..eq]).into_owned(),
                kv[eq + 1..].to_vec(),
            ))
        })
        .collect()
}

/// What python-dotenv's `dotenv_values` (defaults: interpolation on) reads from `file`.
fn read_by_python_dotenv(cwd: &Path, file: &Path) -> BTreeMap<String, Option<String>> {
    let script = "import json, sys\n\
                  from dotenv import dotenv_values\n\
                  print(json.dumps(dotenv_values(sys.argv[1])))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(file)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("python3 (CI installs it, with python-dotenv: see .ci/run)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python-dotenv (pip install python-dotenv; .ci/run does) failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("could not parse"),
        "python-dotenv: {stderr}"
    );
    serde_json::from_slice(&out.stdout).expect("python's json")
}

/// Issue 11, item 5: the dotenv output is inert when sourced by `sh` and read back exactly
/// by `sh` and python-dotenv, for every character; a value no spelling carries is skipped
/// by name. The shell output is inert and exact under `sh` for everything but NUL.
#[test]
fn dotenv_and_shell_outputs_are_inert_and_exact() {
    let w = Work::new();
    let values = hostile_values();
    let pairs: Vec<(String, String)> = values
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    json_source(&w, "src.json", &pairs);
    // Values that are bytes, not text, come from a dir source.
    fs::create_dir(w.path("bytes")).unwrap();
    fs::write(w.path("bytes/NUL"), b"a\0b").unwrap();
    fs::write(w.path("bytes/NOT_UTF8"), b"\xff\xfe$(touch pwned)").unwrap();
    let (env_out, sh_out) = (w.path("app.env"), w.path("app.sh"));
    w.write(
        "tether.toml",
        &format!(
            "source = [\"file:{}\", \"dir:{}\"]\non_change = \"none\"\n\
             [[output]]\npath = \"{}\"\nformat = \"dotenv\"\n\
             [[output]]\npath = \"{}\"\nformat = \"shell\"\n",
            s(&w.path("src.json")),
            s(&w.path("bytes")),
            s(&env_out),
            s(&sh_out),
        ),
    );
    let cfg = s(&w.path("tether.toml"));
    let t = Tether::start(w.dir.path(), ["watch", "--config", &cfg], &[]);
    t.wait_for("both outputs", || env_out.exists() && sh_out.exists());
    let refused: Vec<&str> = values
        .iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(k, _, _)| k.as_str())
        .chain(["NUL", "NOT_UTF8"])
        .collect();
    t.wait_for("every refused key named in the log", || {
        let err = t.stderr();
        refused.iter().all(|k| err.contains(&format!("key={k} ")))
    });

    let want = |dotenv: bool| -> BTreeMap<String, String> {
        values
            .iter()
            .filter(|(_, _, ok)| *ok || !dotenv)
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect()
    };
    let ours = |m: BTreeMap<String, Vec<u8>>| -> BTreeMap<String, String> {
        m.into_iter()
            .filter(|(k, _)| values.iter().any(|(n, _, _)| n == k) || k == "NUL" || k == "NOT_UTF8")
            .map(|(k, v)| (k, String::from_utf8(v).expect("utf-8 value")))
            .collect()
    };

    let by_sh = ours(sourced_by_sh(w.dir.path(), &env_out));
    assert!(by_sh == want(true), "sh read the dotenv file differently");
    let by_python: BTreeMap<String, String> = read_by_python_dotenv(w.dir.path(), &env_out)
        .into_iter()
        .map(|(k, v)| (k, v.expect("a value")))
        .collect();
    for (k, v) in want(true) {
        assert_eq!(
            by_python.get(&k),
            Some(&v),
            "python-dotenv read {k} differently"
        );
    }
    assert_eq!(
        by_python.len(),
        want(true).len(),
        "python-dotenv read extra keys"
    );

    let by_sh = ours(sourced_by_sh(w.dir.path(), &sh_out));
    assert!(by_sh == want(false), "sh read the shell file differently");
    assert!(
        !w.path("pwned").exists(),
        "sourcing an output ran a command"
    );
    assert!(
        !t.stderr().contains("touch pwned"),
        "a value reached the log"
    );
}

/// Issue 11, item 9: an entry whose name no file can have (256 bytes) is skipped by name;
/// the child starts and every other key keeps flowing into the `dir` output.
#[test]
fn a_name_too_long_for_a_file_is_skipped_and_the_rest_flows() {
    let w = Work::new();
    let (n255, n256, n300) = ("m".repeat(255), "n".repeat(256), "o".repeat(300));
    let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    json_source(
        &w,
        "src.json",
        &kv(&[("GOOD", "1"), (&n255, "a"), (&n256, "b")]),
    );
    let (src, out) = (
        format!("file:{}", s(&w.path("src.json"))),
        w.path("secrets"),
    );
    let out_s = s(&out);
    let mut args = vec![
        "run",
        "--source",
        &src,
        "--output",
        &out_s,
        "--format",
        "dir",
        "--on-change",
        "none",
        "--debounce",
        "0",
        "--no-env",
        "--",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(w.child_args(&[]));
    let t = Tether::start(w.dir.path(), &args, &[]);
    t.wait_for("the child to start", || w.starts().len() == 1);
    assert_eq!(fs::read_to_string(out.join("GOOD")).unwrap(), "1");
    assert_eq!(fs::read_to_string(out.join(&n255)).unwrap(), "a");
    t.wait_for("the long name named in the log", || {
        t.stderr()
            .contains(&format!("{}...(256 bytes)", "n".repeat(64)))
    });

    json_source(
        &w,
        "src.json",
        &kv(&[("GOOD", "2"), (&n256, "b"), (&n300, "c")]),
    );
    t.wait_for("the update to flow", || {
        fs::read_to_string(out.join("GOOD")).is_ok_and(|v| v == "2")
    });
    assert!(!out.join(&n255).exists(), "a removed entry is removed");
    assert_eq!(w.starts().len(), 1, "the child kept running");
}

/// Issue 11, item 12: a name with control characters is escaped in text logs, so it cannot
/// forge a log line or send escape sequences to a terminal.
#[test]
fn names_with_control_characters_are_escaped_in_logs() {
    let w = Work::new();
    let evil = "EVIL\nINFO forged: all is well\u{1b}[2J";
    json_source(&w, "src.json", &[(evil.to_string(), "v".to_string())]);
    let src = format!("file:{}", s(&w.path("src.json")));
    let out = s(&w.path("app.env"));
    let t = Tether::start(
        w.dir.path(),
        [
            "watch",
            "--source",
            &src,
            "--output",
            &out,
            "--on-change",
            "none",
        ],
        &[],
    );
    t.wait_for("the skipped name in the log", || {
        t.stderr()
            .contains("EVIL\\nINFO forged: all is well\\u{1b}[2J")
    });
    let err = t.stderr();
    assert!(!err.lines().any(|l| l.starts_with("INFO forged")), "{err}");
    assert!(!err.contains('\u{1b}'), "raw escape sequence in the log");
}
