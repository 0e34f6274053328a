//! The dry run's report: for each output its path, format, mode and owner, whether it would
//! be created, replaced or left alone, the action a change fires and at what, and the
//! content it would hold with secret values masked; in `run`, the child's environment.
//!
//! Masked (shown as `<masked>`): values the node marks secret, and every value of `file:`
//! and `dir:` sources, which cannot say which of theirs are secret; `--show-file-values`
//! shows the latter. Which entries are skipped, and whether an output changes, is judged on
//! the real values; only what is printed is masked.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::config::{Action, Config, Mode, WatchTarget};
use crate::output::render::{self, Format, Rendered, Skipped};
use crate::output::{Output, OutputSpec, TemplateSource};
use crate::state::{Entries, Entry};
use tether_core::protocol::Position;
use tether_core::secret::Value;

/// What stands in for a masked value.
pub const MASK: &str = "<masked>";

/// The network source's part of the state.
pub struct NetState<'a> {
    pub position: Position,
    pub degraded: bool,
    /// Names whose value came from the node (it is the last layer, so it wins).
    pub keys: &'a BTreeSet<String>,
}

/// The whole report, as printed on stdout.
/// `remote`: the names whose value came from a node or keyshade (those layers win over
/// files); their secrets stay masked even with `show_file`.
pub fn report(
    cfg: &Config,
    merged: &Entries,
    net: Option<NetState<'_>>,
    remote: &BTreeSet<String>,
    show_file: bool,
) -> String {
    let mut out = String::new();
    let verb = match cfg.mode {
        Mode::Run => "run",
        Mode::Watch => "watch",
    };
    let _ = writeln!(
        out,
        "dry run ({verb}): nothing is written, saved, signalled, started or acknowledged"
    );
    if let (Some(spec), Some(n)) = (&cfg.net, &net) {
        let how = if n.degraded {
            " (DEGRADED: no node answered; the saved state)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "node state: {} at {}{how}, {} entr(ies)",
            spec.env,
            n.position,
            n.keys.len()
        );
    }
    let _ = writeln!(
        out,
        "masked: {}",
        if show_file {
            "values the node or keyshade marks secret"
        } else {
            "values the node or keyshade marks secret and every value of file: and dir: sources (--show-file-values shows those)"
        }
    );
    let shown = masked(merged, remote, show_file);
    for spec in &cfg.outputs {
        output(&mut out, cfg, spec, merged, &shown);
    }
    if cfg.mode == Mode::Run {
        child(&mut out, cfg, merged, &shown);
    }
    out
}

/// The entries as printed: secret values replaced by [`MASK`].
fn masked(merged: &Entries, remote: &BTreeSet<String>, show_file: bool) -> Entries {
    merged
        .iter()
        .map(|(k, e)| {
            let mask = e.secret && (remote.contains(k) || !show_file);
            let value = if mask {
                Value::from(MASK)
            } else {
                e.value.clone()
            };
            let entry = Entry {
                value,
                secret: e.secret,
            };
            (k.clone(), entry)
        })
        .collect()
}

fn output(out: &mut String, cfg: &Config, spec: &OutputSpec, merged: &Entries, shown: &Entries) {
    if let Some(t) = &spec.template {
        return template_output(out, cfg, spec, t, merged, shown);
    }
    let (real, skipped) = render::render(spec.format, merged);
    let there = std::fs::symlink_metadata(&spec.path).is_ok();
    let same = there && Output::new(spec.clone()).holds(&real);
    let owner = spec
        .owner
        .map_or_else(|| "tether's user".to_string(), |o| o.to_string());
    let _ = writeln!(out, "\noutput {}", spec.path.display());
    let _ = writeln!(
        out,
        "  format {}, mode {:04o}, owner {owner}",
        spec.format, spec.mode
    );
    status_and_action(out, cfg, spec, there, same);
    list_skipped(out, &skipped);
    // Skipped entries are left out of the masked render too (a mask would always fit).
    let kept: Entries = shown
        .iter()
        .filter(|(k, _)| !skipped.iter().any(|s| &s.name == *k))
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect();
    match render::render(spec.format, &kept).0 {
        Rendered::File(bytes) => content(out, &bytes),
        Rendered::Dir(files) => {
            for (name, bytes) in files {
                let _ = writeln!(out, "  file {}:", escape(&name));
                content(out, &bytes);
            }
        }
    }
    if spec.format == Format::Dir && kept.is_empty() {
        let _ = writeln!(out, "  (no files)");
    }
}

fn status_and_action(out: &mut String, cfg: &Config, spec: &OutputSpec, there: bool, same: bool) {
    let (status, fires) = match (there, same) {
        (false, _) => ("would create it", "no (a first render fires nothing)"),
        (true, false) => (
            "would replace it (its content, mode or owner differ)",
            "yes, on a running agent (a starting agent's first render fires nothing)",
        ),
        (true, true) => (
            "unchanged (the same content, mode and owner are there)",
            "no",
        ),
    };
    let _ = writeln!(out, "  {status}");
    match &spec.on_change {
        Action::None => {
            let _ = writeln!(out, "  on change: none");
        }
        a => {
            let _ = writeln!(out, "  on change: {}; fires: {fires}", action(cfg, a));
        }
    }
}

/// A template output: rendered from the real values to judge it (an error is shown, with
/// no value in it), and from the masked ones to print it.
fn template_output(
    out: &mut String,
    cfg: &Config,
    spec: &OutputSpec,
    t: &TemplateSource,
    merged: &Entries,
    shown: &Entries,
) {
    let probe = Output::new(spec.clone());
    let _ = writeln!(out, "\noutput {}", spec.path.display());
    let owner = spec
        .owner
        .map_or_else(|| "tether's user".to_string(), |o| o.to_string());
    let _ = writeln!(
        out,
        "  template {}, mode {:04o}, owner {owner}",
        t.name(),
        spec.mode
    );
    if let Some(c) = &spec.check {
        let _ = writeln!(out, "  check: {} (not run)", c.argv.join(" "));
    }
    match probe.render(merged) {
        Err(e) => {
            let _ = writeln!(out, "  would NOT write it: {e}");
            return;
        }
        Ok(real) => {
            let there = std::fs::symlink_metadata(&spec.path).is_ok();
            let same = there && probe.holds(&real);
            status_and_action(out, cfg, spec, there, same);
        }
    }
    match probe.render(shown) {
        Ok(Rendered::File(bytes)) => content(out, &bytes),
        Ok(Rendered::Dir(_)) => {}
        Err(e) => {
            let _ = writeln!(
                out,
                "  (not shown: the render with masked values failed: {e})"
            );
        }
    }
}

fn child(out: &mut String, cfg: &Config, merged: &Entries, shown: &Entries) {
    let argv: Vec<String> = cfg
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let _ = writeln!(
        out,
        "\nchild: {} (not started)",
        if argv.is_empty() {
            "no command".to_string()
        } else {
            shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default()
        }
    );
    let Some(env) = &cfg.env else {
        let _ = writeln!(out, "  environment: nothing injected (--no-env)");
        return;
    };
    let (_, skipped) = env.render(merged);
    // Rendered from the masked entries, less what the real values cannot carry (a NUL).
    let vars: Vec<String> = env
        .render(shown)
        .0
        .into_iter()
        .filter(|(k, _)| {
            !skipped
                .iter()
                .any(|s| std::ffi::OsString::from(format!("{}{}", env.prefix, s.name)) == *k)
        })
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    let _ = writeln!(
        out,
        "  environment: {} variable(s) injected; a change to one restarts the child",
        vars.len()
    );
    list_skipped(out, &skipped);
    for line in vars {
        let _ = writeln!(out, "  | {}", escape(&line));
    }
}

fn list_skipped(out: &mut String, skipped: &[Skipped]) {
    for s in skipped {
        let _ = writeln!(
            out,
            "  skipped: {} ({})",
            tether_core::logname::name(&s.name),
            s.reason
        );
    }
}

/// Content lines behind `  | `, control characters (but tabs) escaped.
fn content(out: &mut String, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        let _ = writeln!(out, "  | {}", escape(line));
    }
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' => c.to_string(),
            c if c.is_control() => c.escape_debug().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// What `action` does, and to whom.
fn action(cfg: &Config, action: &Action) -> String {
    match (action, cfg.mode) {
        (Action::None, _) => "none".into(),
        (Action::Restart, _) => "restart the child".into(),
        (Action::Signal(s), Mode::Run) => format!("signal {s} to the child"),
        (Action::Signal(s), Mode::Watch) => format!("signal {s} to {}", targets(&cfg.target)),
        (Action::Exec(argv), _) => format!(
            "exec hook {}",
            shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default()
        ),
    }
}

/// The watch targets as they stand now: the pidfile's pid, the processes found by name.
fn targets(t: &WatchTarget) -> String {
    let mut parts = Vec::new();
    if let Some(pidfile) = &t.pidfile {
        let now = match crate::target::read_pidfile(pidfile) {
            Ok(pid) => format!("pid {pid} now"),
            Err(e) => format!("unreadable now: {e}"),
        };
        parts.push(format!("pidfile {} ({now})", pidfile.display()));
    }
    if let Some(name) = &t.process {
        let pids: Vec<String> = crate::target::find_by_name(name)
            .iter()
            .map(ToString::to_string)
            .collect();
        let now = match pids.is_empty() {
            true => "none running now".to_string(),
            false => format!("pid {} now", pids.join(", ")),
        };
        parts.push(format!("processes named {name:?} ({now})"));
    }
    parts.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: &str, secret: bool) -> Entry {
        Entry {
            value: Value::from(v),
            secret,
        }
    }

    #[test]
    fn masks_node_secrets_and_file_values_unless_shown() {
        let merged: Entries = [
            ("FILE".to_string(), entry("from-file", true)),
            ("PLAIN".to_string(), entry("public", false)),
            ("SECRET".to_string(), entry("hunter2", true)),
        ]
        .into();
        let net: BTreeSet<String> = ["PLAIN".to_string(), "SECRET".to_string()].into();
        let value = |e: &Entries, k: &str| e[k].value.expose_str().unwrap().to_string();

        let shown = masked(&merged, &net, false);
        assert_eq!(value(&shown, "FILE"), MASK);
        assert_eq!(value(&shown, "PLAIN"), "public");
        assert_eq!(value(&shown, "SECRET"), MASK);

        let shown = masked(&merged, &net, true);
        assert_eq!(value(&shown, "FILE"), "from-file");
        assert_eq!(
            value(&shown, "SECRET"),
            MASK,
            "node secrets are never shown"
        );
    }

    #[test]
    fn content_escapes_control_characters() {
        let mut out = String::new();
        content(&mut out, b"A=1\x1b[31m\tx\nB=2\n");
        assert_eq!(out, "  | A=1\\u{1b}[31m\tx\n  | B=2\n");
    }
}
