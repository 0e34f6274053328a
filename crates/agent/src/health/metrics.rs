//! `/metrics`: the agent's [`Stats`] in Prometheus' text format (0.0.4). Labels are bounded
//! by the config (output paths, the followed environment) or by the kernel (signals); no
//! value and no token is ever written.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tether_core::prom::{Kind, head, sample};

use super::{NSIG, Stats, lock};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Render every metric.
pub fn render(s: &Stats, build: &str, now: Instant) -> String {
    let mut text = String::with_capacity(4096);
    let out = &mut text;

    head(
        out,
        "tether_build_info",
        Kind::Gauge,
        "The tether binary: its version and build (full or agent).",
    );
    sample(
        out,
        "tether_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("build", build)],
        1,
    );

    head(
        out,
        "tether_agent_ready",
        Kind::Gauge,
        "1 once the first render is done (and the child started, in run mode), as /readyz.",
    );
    sample(out, "tether_agent_ready", &[], u8::from(s.readiness().0));

    head(
        out,
        "tether_agent_changes_applied_total",
        Kind::Counter,
        "Changes rendered to every output and acted on.",
    );
    sample(
        out,
        "tether_agent_changes_applied_total",
        &[],
        s.changes.load(Relaxed),
    );

    if let Some(at) = *lock(&s.last_change) {
        head(
            out,
            "tether_agent_seconds_since_last_change",
            Kind::Gauge,
            "Seconds since the last change was applied (or since the first render).",
        );
        let since = now.saturating_duration_since(at).as_secs_f64();
        sample(
            out,
            "tether_agent_seconds_since_last_change",
            &[],
            format_args!("{since:.3}"),
        );
    }

    {
        let outputs = lock(&s.outputs);
        head(
            out,
            "tether_agent_renders_total",
            Kind::Counter,
            "Outputs written because their content changed, by output path.",
        );
        for o in outputs.iter() {
            let path = o.path.to_string_lossy();
            sample(
                out,
                "tether_agent_renders_total",
                &[("output", &path)],
                o.writes,
            );
        }
        head(
            out,
            "tether_agent_render_failures_total",
            Kind::Counter,
            "Outputs that could not be written (they keep their previous content), by output path.",
        );
        for o in outputs.iter() {
            let path = o.path.to_string_lossy();
            sample(
                out,
                "tether_agent_render_failures_total",
                &[("output", &path)],
                o.failures,
            );
        }
    }

    head(
        out,
        "tether_agent_signals_sent_total",
        Kind::Counter,
        "Signals sent to the child's process group (run) or to the watched processes (watch): reloads, forwarded signals, stops.",
    );
    for (n, c) in s.signals.iter().enumerate().skip(1).take(NSIG - 1) {
        let v = c.load(Relaxed);
        if v > 0 {
            let signal = signal_name(n);
            sample(
                out,
                "tether_agent_signals_sent_total",
                &[("signal", &signal)],
                v,
            );
        }
    }

    head(
        out,
        "tether_agent_child_restarts_total",
        Kind::Counter,
        "Restarts of the child, by reason: a change, or its exit under restart_on_exit.",
    );
    for (reason, n) in [("change", &s.restarts_change), ("exit", &s.restarts_exit)] {
        sample(
            out,
            "tether_agent_child_restarts_total",
            &[("reason", reason)],
            n.load(Relaxed),
        );
    }

    head(
        out,
        "tether_agent_child_exits_total",
        Kind::Counter,
        "Exits of the child: success (code 0), failure (another code), or killed by a signal.",
    );
    for (kind, n) in [("success", &s.exits_success), ("failure", &s.exits_failure)] {
        sample(
            out,
            "tether_agent_child_exits_total",
            &[("kind", kind)],
            n.load(Relaxed),
        );
    }
    for (n, c) in s.exits_signal.iter().enumerate().skip(1) {
        let v = c.load(Relaxed);
        if v > 0 {
            let signal = signal_name(n);
            sample(
                out,
                "tether_agent_child_exits_total",
                &[("kind", "signal"), ("signal", &signal)],
                v,
            );
        }
    }

    let env = lock(&s.env).clone();
    if let Some(env) = env {
        let env = [("env", env.as_str())];
        let connected = s.connected.load(Relaxed);
        head(
            out,
            "tether_agent_source_connected",
            Kind::Gauge,
            "1 while a node's session is open for the followed environment.",
        );
        sample(
            out,
            "tether_agent_source_connected",
            &env,
            u8::from(connected),
        );
        head(
            out,
            "tether_agent_source_degraded",
            Kind::Gauge,
            "1 while the agent runs without a node: on its saved state, or on what it applied before the connection was lost.",
        );
        let degraded = !connected && s.started.load(Relaxed);
        sample(
            out,
            "tether_agent_source_degraded",
            &env,
            u8::from(degraded),
        );
        head(
            out,
            "tether_agent_source_reconnects_total",
            Kind::Counter,
            "Sessions with a node opened after the first one.",
        );
        sample(
            out,
            "tether_agent_source_reconnects_total",
            &env,
            s.reconnects.load(Relaxed),
        );
        head(
            out,
            "tether_agent_health_reports_total",
            Kind::Counter,
            "Versions from the nodes reported healthy or failed after their bake.",
        );
        for (state, n) in [("healthy", &s.health_healthy), ("failed", &s.health_failed)] {
            sample(
                out,
                "tether_agent_health_reports_total",
                &[env[0], ("state", state)],
                n.load(Relaxed),
            );
        }
        head(
            out,
            "tether_agent_rollbacks_total",
            Kind::Counter,
            "Failed versions rolled back to the values of the last healthy one.",
        );
        sample(
            out,
            "tether_agent_rollbacks_total",
            &env,
            s.rollbacks.load(Relaxed),
        );
        if let Some(p) = *lock(&s.position) {
            head(
                out,
                "tether_agent_applied_version",
                Kind::Gauge,
                "Version of the followed environment the agent applied.",
            );
            sample(out, "tether_agent_applied_version", &env, p.version);
            head(
                out,
                "tether_agent_applied_epoch",
                Kind::Gauge,
                "Epoch (history) of the applied version, as an integer (the API shows it in hex).",
            );
            sample(out, "tether_agent_applied_epoch", &env, p.epoch.0);
        }
    }
    if lock(&s.env).is_some() {
        s.slot.render(out);
    }
    let keyshade = lock(&s.keyshade).clone();
    if let Some(ks) = keyshade {
        let ks = [("keyshade", ks.as_str())];
        head(
            out,
            "tether_agent_keyshade_connected",
            Kind::Gauge,
            "1 while the keyshade session is registered (keyshade=\"workspace/project/environment\").",
        );
        sample(
            out,
            "tether_agent_keyshade_connected",
            &ks,
            u8::from(s.ks_connected.load(Relaxed)),
        );
        head(
            out,
            "tether_agent_keyshade_reconnects_total",
            Kind::Counter,
            "keyshade sessions registered after the first one.",
        );
        sample(
            out,
            "tether_agent_keyshade_reconnects_total",
            &ks,
            s.ks_reconnects.load(Relaxed),
        );
    }
    text
}

/// `SIGHUP` for 1 and so on; realtime signals by number.
fn signal_name(n: usize) -> String {
    i32::try_from(n)
        .ok()
        .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
        .map_or_else(|| n.to_string(), |s| s.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(1), "SIGHUP");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "40");
    }
}
