//! An output's `check` command: run on the rendered temporary file before it replaces the
//! output (`{path}` in its arguments and `$TETHER_RENDERED` name that file). Its output is
//! logged bounded, with every value of the current entries replaced by `***`.

use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::state::Entries;
use crate::supervisor::Reaper;

/// A check as configured: its argv (split like a shell would, no shell run) and its limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

impl CheckSpec {
    pub fn parse(s: &str) -> Result<CheckSpec, String> {
        match shlex::split(s) {
            Some(argv) if !argv.is_empty() => Ok(CheckSpec {
                argv,
                timeout: Duration::from_secs(30),
            }),
            _ => Err(format!(
                "{s:?} is not a command (empty, or unbalanced quotes)"
            )),
        }
    }
}

/// How much of a failing check's output is logged.
const SHOWN: usize = 4096;

/// Replace every value of `entries` (longest first, so a value holding another is gone
/// whole) by `***`, then keep at most [`SHOWN`] bytes.
pub fn scrub(text: &str, entries: &Entries) -> String {
    let values: Vec<&str> = entries
        .values()
        .filter_map(|e| e.value.expose_str())
        .filter(|v| !v.is_empty())
        .collect();
    // Each value as the templates' filters may have written it too: JSON- or YAML-escaped,
    // shell-quoted, base64.
    let mut forms: Vec<String> = Vec::new();
    for v in values {
        forms.push(v.to_string());
        if let Ok(json) = serde_json::to_string(v) {
            forms.push(json[1..json.len() - 1].to_string());
        }
        forms.push(v.replace('\'', r"'\''"));
        forms.push(super::template::b64::encode(v.as_bytes()));
    }
    forms.sort_by_key(|v| std::cmp::Reverse(v.len()));
    forms.dedup();
    let mut out = text.to_string();
    for v in &forms {
        out = out.replace(v.as_str(), "***");
        for line in v.lines().filter(|l| l.trim().len() >= 4) {
            out = out.replace(line, "***");
        }
    }
    if out.len() > SHOWN {
        let mut cut = SHOWN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("… (cut)");
    }
    out
}

/// Run `spec` on `rendered`. `Err` says why it failed (no value in it); the command's own
/// output is logged, scrubbed, under `output`.
pub async fn run(
    spec: &CheckSpec,
    rendered: &Path,
    output: &Path,
    entries: &Entries,
) -> Result<(), String> {
    let path = rendered.to_string_lossy();
    let argv: Vec<String> = spec
        .argv
        .iter()
        .map(|a| a.replace("{path}", &path))
        .collect();
    let capture = capture_file(rendered).map_err(|e| format!("cannot capture its output: {e}"))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("TETHER_RENDERED", rendered)
        .stdin(Stdio::null())
        .stdout(capture.try_clone().map_err(|e| e.to_string())?)
        .stderr(capture.try_clone().map_err(|e| e.to_string())?);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let reaper = Reaper::start().map_err(|e| format!("cannot start it: {e}"))?;
    let (pid, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let result = match tokio::time::timeout(spec.timeout, exit).await {
        Ok(Ok(exit)) if exit.success() => Ok(()),
        Ok(Ok(exit)) => Err(format!("check {} failed: {exit}", argv[0])),
        Ok(Err(_)) => Err(format!("check {}: its exit was lost", argv[0])),
        Err(_) => {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            Err(format!(
                "check {} timed out after {:?}; killed",
                argv[0], spec.timeout
            ))
        }
    };
    if result.is_err() {
        let mut text = String::new();
        let mut f = capture;
        let _ = f.rewind();
        let _ = f.take(64 * 1024).read_to_string(&mut text);
        tracing::error!(
            output = %output.display(),
            check_output = %scrub(&text, entries),
            "check failed; the output keeps its previous content"
        );
    }
    result
}

/// An unlinked file beside `rendered` that collects the check's stdout and stderr.
fn capture_file(rendered: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = rendered.parent().unwrap_or(Path::new("."));
    let p = dir.join(format!(".check-{:016x}", rand::random::<u64>()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)?;
    std::fs::remove_file(&p)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::entries;

    #[test]
    fn scrub_hides_values_and_bounds_length() {
        let e = entries(&[("A", "s3cr3t"), ("B", "line-one\nline-two")]);
        let s = scrub("got s3cr3t and line-two here", &e);
        assert_eq!(s, "got *** and *** here");
        // As the filters write them: JSON-escaped, shell-quoted, base64.
        let e = entries(&[("Q", "it's \"x\"\nend")]);
        let s = scrub("json: it's \\\"x\\\"\\nend", &e);
        assert_eq!(s, "json: ***", "{s}");
        let s = scrub("sh: it'\\''s", &entries(&[("Q", "it's")]));
        assert_eq!(s, "sh: ***", "{s}");
        let s = scrub("b64: czNjcjN0", &entries(&[("A", "s3cr3t")]));
        assert_eq!(s, "b64: ***", "{s}");
        let long = "x".repeat(10_000);
        assert!(scrub(&long, &e).len() < 5000);
    }

    #[tokio::test]
    async fn a_check_sees_the_file_and_its_status_counts() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r");
        std::fs::write(&f, "good\n").unwrap();
        let e = entries(&[]);
        let ok = CheckSpec::parse("grep -q good {path}").unwrap();
        assert_eq!(run(&ok, &f, &f, &e).await, Ok(()));
        let env = CheckSpec::parse(r#"sh -c 'grep -q good "$TETHER_RENDERED"'"#).unwrap();
        assert_eq!(run(&env, &f, &f, &e).await, Ok(()));
        let bad = CheckSpec::parse("grep -q bad {path}").unwrap();
        assert!(
            run(&bad, &f, &f, &e)
                .await
                .unwrap_err()
                .contains("exit code 1")
        );
        let mut slow = CheckSpec::parse("sleep 30").unwrap();
        slow.timeout = Duration::from_millis(200);
        assert!(
            run(&slow, &f, &f, &e)
                .await
                .unwrap_err()
                .contains("timed out")
        );
        assert!(CheckSpec::parse("  ").is_err());
    }
}
