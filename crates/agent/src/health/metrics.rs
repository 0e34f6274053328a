//! `/metrics`: the agent's [`Stats`] in Prometheus' text format (0.0.4). Labels are bounded
//! by the config (output paths, the followed environment) or by the kernel (signals); no
//! value and no token is ever written.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{NSIG, Stats, lock};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Render every metric.
pub fn render(s: &Stats, build: &str, now: Instant) -> String {
    let mut out = String::with_capacity(4096);
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

    head(
        &mut out,
        "tether_build_info",
        "gauge",
        "The tether binary: its version and build (full or agent).",
    );
    let _ = writeln!(
        out,
        "tether_build_info{{version=\"{}\",build=\"{}\"}} 1",
        label_value(env!("CARGO_PKG_VERSION")),
        label_value(build)
    );

    head(
        &mut out,
        "tether_agent_ready",
        "gauge",
        "1 once the first render is done (and the child started, in run mode), as /readyz.",
    );
    let _ = writeln!(out, "tether_agent_ready {}", u8::from(s.readiness().0));

    head(
        &mut out,
        "tether_agent_changes_applied_total",
        "counter",
        "Changes rendered to every output and acted on.",
    );
    let _ = writeln!(
        out,
        "tether_agent_changes_applied_total {}",
        s.changes.load(Relaxed)
    );

    if let Some(at) = *lock(&s.last_change) {
        head(
            &mut out,
            "tether_agent_seconds_since_last_change",
            "gauge",
            "Seconds since the last change was applied (or since the first render).",
        );
        let _ = writeln!(
            out,
            "tether_agent_seconds_since_last_change {:.3}",
            now.saturating_duration_since(at).as_secs_f64()
        );
    }

    {
        let outputs = lock(&s.outputs);
        head(
            &mut out,
            "tether_agent_renders_total",
            "counter",
            "Outputs written because their content changed, by output path.",
        );
        for o in outputs.iter() {
            let _ = writeln!(
                out,
                "tether_agent_renders_total{{output=\"{}\"}} {}",
                label_value(&o.path.to_string_lossy()),
                o.writes
            );
        }
        head(
            &mut out,
            "tether_agent_render_failures_total",
            "counter",
            "Outputs that could not be written (they keep their previous content), by output path.",
        );
        for o in outputs.iter() {
            let _ = writeln!(
                out,
                "tether_agent_render_failures_total{{output=\"{}\"}} {}",
                label_value(&o.path.to_string_lossy()),
                o.failures
            );
        }
    }

    head(
        &mut out,
        "tether_agent_signals_sent_total",
        "counter",
        "Signals sent to the child's process group (run) or to the watched processes (watch): reloads, forwarded signals, stops.",
    );
    for (n, c) in s.signals.iter().enumerate().skip(1).take(NSIG - 1) {
        let v = c.load(Relaxed);
        if v > 0 {
            let _ = writeln!(
                out,
                "tether_agent_signals_sent_total{{signal=\"{}\"}} {v}",
                signal_name(n)
            );
        }
    }

    head(
        &mut out,
        "tether_agent_child_restarts_total",
        "counter",
        "Restarts of the child, by reason: a change, or its exit under restart_on_exit.",
    );
    let _ = writeln!(
        out,
        "tether_agent_child_restarts_total{{reason=\"change\"}} {}\ntether_agent_child_restarts_total{{reason=\"exit\"}} {}",
        s.restarts_change.load(Relaxed),
        s.restarts_exit.load(Relaxed)
    );

    head(
        &mut out,
        "tether_agent_child_exits_total",
        "counter",
        "Exits of the child: success (code 0), failure (another code), or killed by a signal.",
    );
    let _ = writeln!(
        out,
        "tether_agent_child_exits_total{{kind=\"success\"}} {}\ntether_agent_child_exits_total{{kind=\"failure\"}} {}",
        s.exits_success.load(Relaxed),
        s.exits_failure.load(Relaxed)
    );
    for (n, c) in s.exits_signal.iter().enumerate().skip(1) {
        let v = c.load(Relaxed);
        if v > 0 {
            let _ = writeln!(
                out,
                "tether_agent_child_exits_total{{kind=\"signal\",signal=\"{}\"}} {v}",
                signal_name(n)
            );
        }
    }

    let env = lock(&s.env).clone();
    if let Some(env) = env {
        let env = label_value(&env);
        let connected = s.connected.load(Relaxed);
        head(
            &mut out,
            "tether_agent_source_connected",
            "gauge",
            "1 while a node's session is open for the followed environment.",
        );
        let _ = writeln!(
            out,
            "tether_agent_source_connected{{env=\"{env}\"}} {}",
            u8::from(connected)
        );
        head(
            &mut out,
            "tether_agent_source_degraded",
            "gauge",
            "1 while the agent runs without a node: on its saved state, or on what it applied before the connection was lost.",
        );
        let degraded = !connected && s.started.load(Relaxed);
        let _ = writeln!(
            out,
            "tether_agent_source_degraded{{env=\"{env}\"}} {}",
            u8::from(degraded)
        );
        head(
            &mut out,
            "tether_agent_source_reconnects_total",
            "counter",
            "Sessions with a node opened after the first one.",
        );
        let _ = writeln!(
            out,
            "tether_agent_source_reconnects_total{{env=\"{env}\"}} {}",
            s.reconnects.load(Relaxed)
        );
        if let Some(p) = *lock(&s.position) {
            head(
                &mut out,
                "tether_agent_applied_version",
                "gauge",
                "Version of the followed environment the agent applied.",
            );
            let _ = writeln!(
                out,
                "tether_agent_applied_version{{env=\"{env}\"}} {}",
                p.version
            );
            head(
                &mut out,
                "tether_agent_applied_epoch",
                "gauge",
                "Epoch (history) of the applied version, as an integer (the API shows it in hex).",
            );
            let _ = writeln!(
                out,
                "tether_agent_applied_epoch{{env=\"{env}\"}} {}",
                p.epoch.0
            );
        }
    }
    let keyshade = lock(&s.keyshade).clone();
    if let Some(ks) = keyshade {
        let ks = label_value(&ks);
        head(
            &mut out,
            "tether_agent_keyshade_connected",
            "gauge",
            "1 while the keyshade session is registered (keyshade=\"workspace/project/environment\").",
        );
        let _ = writeln!(
            out,
            "tether_agent_keyshade_connected{{keyshade=\"{ks}\"}} {}",
            u8::from(s.ks_connected.load(Relaxed))
        );
        head(
            &mut out,
            "tether_agent_keyshade_reconnects_total",
            "counter",
            "keyshade sessions registered after the first one.",
        );
        let _ = writeln!(
            out,
            "tether_agent_keyshade_reconnects_total{{keyshade=\"{ks}\"}} {}",
            s.ks_reconnects.load(Relaxed)
        );
    }
    out
}

/// `SIGHUP` for 1 and so on; realtime signals by number.
fn signal_name(n: usize) -> String {
    i32::try_from(n)
        .ok()
        .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
        .map_or_else(|| n.to_string(), |s| s.as_str().to_string())
}

/// A label value escaped as the text format says: `\\`, `\"` and `\n`.
fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("prod"), "prod");
        assert_eq!(label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label_value("a\nb"), "a\\nb");
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(1), "SIGHUP");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "40");
    }
}
