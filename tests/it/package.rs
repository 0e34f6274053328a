//! What the packages ship besides the binary: `tether completions SHELL` and `tether man`,
//! generated from the clap definitions. Each script is run by its shell (bash always; zsh,
//! fish and man where installed, and required under CI, whose .ci/run installs them) and
//! must name every verb and every flag that `--help` shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{Work, run_to_end};

/// The verbs `tether --help` lists (`help` aside), checked to include the known ones so an
/// unparsed help cannot make every test below vacuous.
fn verbs() -> Vec<String> {
    let (code, out, err) = run_to_end(Path::new("."), &["--help"]);
    assert_eq!(code, 0, "{err}");
    let verbs: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .map(str::to_owned)
        .collect();
    for known in [
        "run",
        "watch",
        "check",
        "serve",
        "put",
        "get",
        "rm",
        "status",
        "completions",
        "man",
    ] {
        assert!(verbs.iter().any(|v| v == known), "{known} not in {verbs:?}");
    }
    verbs
}

/// The long flags `tether VERB --help` shows (e.g. `--config`, `--signal-pidfile`).
fn flags(verb: &[&str]) -> Vec<String> {
    let args: Vec<&str> = verb.iter().copied().chain(["--help"]).collect();
    let (code, out, err) = run_to_end(Path::new("."), &args);
    assert_eq!(code, 0, "{verb:?}: {err}");
    let flags: Vec<String> = out
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        // The flag part ends where the description starts (two spaces), if on the same line.
        .flat_map(|l| l.split("  ").next().unwrap_or_default().split_whitespace())
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(',').to_owned())
        .collect();
    assert!(flags.iter().any(|f| f == "--help"), "{verb:?}: {out}");
    flags
}

/// The shell's path; None when it is not installed, which fails the test under CI.
fn shell(name: &str) -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed: CI must check this (.ci/run installs it)"
        );
        eprintln!("{name} is not installed: its part of this test is not run");
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn completion_script(work: &Work, shell: &str) -> PathBuf {
    let (code, out, err) = run_to_end(Path::new("."), &["completions", shell]);
    assert_eq!(code, 0, "completions {shell}: {err}");
    assert!(err.is_empty(), "completions {shell}: {err}");
    let path = work.path(&format!("tether.{shell}"));
    std::fs::write(&path, out).expect("write script");
    path
}

/// What bash offers after `tether WORDS... ` (the last word is the one being completed).
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = format!(
        "source '{}' && complete -p tether >/dev/null && COMP_WORDS=(tether {}) && \
         COMP_CWORD={} && _tether tether '{}' '{}' && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len(),
        words.last().copied().unwrap_or_default(),
        if words.len() > 1 {
            words[words.len() - 2]
        } else {
            "tether"
        },
    );
    let out = run(Command::new("bash").args(["--norc", "-c", &line]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_is_valid_and_completes_every_verb_and_flag() {
    let work = Work::new();
    let script = completion_script(&work, "bash");
    run(Command::new("bash").arg("-n").arg(&script));
    let offered = bash_complete(&script, &[""]);
    for verb in verbs() {
        assert!(
            offered.contains(&verb),
            "bash offers no {verb}: {offered:?}"
        );
    }
    for verb in verbs() {
        let offered = bash_complete(&script, &[&verb, "--"]);
        for flag in flags(&[&verb]) {
            assert!(
                offered.contains(&flag),
                "bash offers no {flag} after `tether {verb}`: {offered:?}"
            );
        }
    }
    // A shell clap_complete does not know is a usage error that names the ones it does.
    let (code, _, err) = run_to_end(Path::new("."), &["completions", "tcsh"]);
    assert_ne!(code, 0);
    assert!(err.contains("bash") && err.contains("fish"), "{err}");
}

#[test]
fn fish_completion_is_valid_and_completes_every_verb_and_flag() {
    let work = Work::new();
    let script = completion_script(&work, "fish");
    let text = std::fs::read_to_string(&script).expect("script");
    for verb in verbs() {
        assert!(
            text.contains(&format!("-a \"{verb}\"")),
            "no {verb} in the fish script"
        );
    }
    let Some(fish) = shell("fish") else { return };
    run(Command::new(&fish).arg("-n").arg(&script));
    let complete = |line: &str| -> Vec<String> {
        let cmd = format!("source '{}'; complete -C '{line}'", script.display());
        let out = run(Command::new(&fish).args(["--no-config", "-c", &cmd]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('\t').next())
            .map(str::to_owned)
            .collect()
    };
    let offered = complete("tether ");
    for verb in verbs() {
        assert!(
            offered.contains(&verb),
            "fish offers no {verb}: {offered:?}"
        );
    }
    for verb in verbs() {
        let offered = complete(&format!("tether {verb} --"));
        for flag in flags(&[&verb]) {
            assert!(
                offered.contains(&flag),
                "fish offers no {flag} after `tether {verb}`: {offered:?}"
            );
        }
    }
}

#[test]
fn zsh_completion_is_valid_and_registers_for_tether() {
    let work = Work::new();
    let script = completion_script(&work, "zsh");
    let text = std::fs::read_to_string(&script).expect("script");
    assert!(
        text.starts_with("#compdef tether"),
        "{}",
        &text[..80.min(text.len())]
    );
    for verb in verbs() {
        assert!(
            text.contains(&format!("'{verb}:")),
            "no {verb} in the zsh script"
        );
        for flag in flags(&[&verb]) {
            // `'--config=[...]'`, or `'*--source=[...]'` for a repeatable flag.
            assert!(
                text.contains(&format!("'{flag}")) || text.contains(&format!("'*{flag}")),
                "no {flag} in the zsh script"
            );
        }
    }
    let Some(zsh) = shell("zsh") else { return };
    run(Command::new(&zsh).arg("-n").arg(&script));
    // Loaded the way compinit loads it from $fpath: the function is defined and bound.
    let line = format!(
        "autoload -U compinit && compinit -u -D && source '{}' && whence -w _tether && \
         print -r -- \"bound:$_comps[tether]\"",
        script.display()
    );
    let out = run(Command::new(&zsh).args(["-f", "-c", &line]));
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("_tether: function") && out.contains("bound:_tether"),
        "{out}"
    );
}

/// The page's sections by heading (`NAME`, `TETHER RUN`...), their roff with `\-` as `-`.
fn sections(roff: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut current = String::new();
    for line in roff.lines() {
        if let Some(heading) = line.strip_prefix(".SH ") {
            current = heading.trim_matches('"').to_owned();
            continue;
        }
        let body: &mut String = map.entry(current.clone()).or_default();
        body.push_str(&line.replace("\\-", "-"));
        body.push('\n');
    }
    map
}

#[test]
fn man_page_has_every_verb_with_its_flags_and_renders_cleanly() {
    let (code, page, err) = run_to_end(Path::new("."), &["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        page.contains(".TH TETHER 1"),
        "{}",
        &page[..200.min(page.len())]
    );
    let sections = sections(&page);
    for name in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "EXIT STATUS",
        "FILES",
    ] {
        assert!(
            sections.contains_key(name),
            "no {name} section: {:?}",
            sections.keys()
        );
    }
    for verb in verbs() {
        let heading = format!("TETHER {}", verb.to_uppercase());
        let body = sections
            .get(&heading)
            .unwrap_or_else(|| panic!("no {heading} section: {:?}", sections.keys()));
        for flag in flags(&[&verb]) {
            assert!(body.contains(&flag), "{heading} does not document {flag}");
        }
        assert!(
            sections["COMMANDS"].contains(&format!("tether {verb}")),
            "COMMANDS does not list {verb}"
        );
    }
    // A verb of a verb has its own section too.
    let body = &sections["TETHER SERVE HASH-TOKEN"];
    for flag in flags(&["serve", "hash-token"]) {
        assert!(
            body.contains(&flag),
            "serve hash-token does not document {flag}"
        );
    }

    let Some(man) = shell("man") else { return };
    let work = Work::new();
    let file = work.path("tether.1");
    std::fs::write(&file, &page).expect("write page");
    let out = run(Command::new(man)
        .args(["--warnings", "-l"])
        .arg(&file)
        .env("MANWIDTH", "200")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().is_empty(), "man warns: {err}");
    let text = String::from_utf8_lossy(&out.stdout);
    for verb in verbs() {
        let heading = format!("TETHER {}", verb.to_uppercase());
        assert!(
            text.contains(&heading),
            "the rendered page has no {heading}"
        );
    }
    for flag in flags(&["watch"]) {
        assert!(text.contains(&flag), "the rendered page has no {flag}");
    }
}
