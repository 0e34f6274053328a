//! `/metrics`: the node's counters and each environment's version as Prometheus text,
//! open or (with `metrics_require_token`) behind a token like the API.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{Extensions, HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::Node;
use super::api_error::{ApiError, grant};
use super::front::Door;

/// Prometheus text. When the door says so (`metrics_require_token`), a token of any role
/// is needed, and only the environments it covers are shown.
pub async fn metrics(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    extensions: Extensions,
    door: Arc<Door>,
) -> Result<Response, ApiError> {
    let grant = if door.metrics_require_token() {
        Some(grant(&node, &headers, &extensions)?)
    } else {
        None
    };
    let c = &node.hub.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "tether_agents_connected",
        "gauge",
        "Agent connections on this node.",
        node.hub.agent_count() as u64,
    );
    metric(
        "tether_connections_total",
        "counter",
        "Agent connections accepted.",
        c.connections.load(Ordering::Relaxed),
    );
    metric(
        "tether_commits_total",
        "counter",
        "Change sets committed through this node.",
        c.commits.load(Ordering::Relaxed),
    );
    metric(
        "tether_frames_sent_total",
        "counter",
        "Frames sent to agents: written to their connections, or queued behind what a connection has not taken yet.",
        c.frames_sent.load(Ordering::Relaxed),
    );
    metric(
        "tether_resyncs_total",
        "counter",
        "Resyncs requested by agents.",
        c.resyncs.load(Ordering::Relaxed),
    );
    metric(
        "tether_snapshots_total",
        "counter",
        "Snapshots sent to agents.",
        c.snapshots.load(Ordering::Relaxed),
    );
    metric(
        "tether_auth_rejected_total",
        "counter",
        "Requests refused for auth.",
        c.rejected.load(Ordering::Relaxed),
    );
    metric(
        "tether_http_unauthenticated_connections",
        "gauge",
        "Connections on which no request has passed the token check yet.",
        door.unauthenticated() as u64,
    );
    metric(
        "tether_http_connections_evicted_total",
        "counter",
        "Unauthenticated connections closed to make room: max_unauthenticated were open.",
        door.evicted.load(Ordering::Relaxed),
    );
    c.commit_latency.render(
        &mut out,
        "tether_commit_duration_seconds",
        "Time from a write request (token checked) to its commit in the store.",
    );
    c.fanout_latency.render(
        &mut out,
        "tether_fanout_duration_seconds",
        "Time from a commit (or its arrival from another node on the bus) to its change set offered to every agent connection of this node.",
    );
    if let super::store::Store::Redis(r) = &node.store {
        let _ = writeln!(
            out,
            "# HELP tether_redis_errors_total Redis errors, by what the node was doing.\n# TYPE tether_redis_errors_total counter"
        );
        for op in super::store::redis::Op::ALL {
            let _ = writeln!(
                out,
                "tether_redis_errors_total{{op=\"{}\"}} {}",
                op.label(),
                r.errors.get(op)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP tether_build_info The running build: version, target architecture and OS.\n# TYPE tether_build_info gauge\ntether_build_info{{version=\"{}\",arch=\"{}\",os=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS,
    );
    if let Ok(envs) = node.store.list().await {
        let _ = writeln!(
            out,
            "# HELP tether_env_version Current version of each environment.\n# TYPE tether_env_version gauge"
        );
        for e in envs
            .into_iter()
            .filter(|e| grant.as_ref().is_none_or(|g| g.covers(&e.env)))
        {
            let _ = writeln!(
                out,
                "tether_env_version{{env=\"{}\"}} {}",
                label_value(&e.env),
                e.position.version
            );
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// A Prometheus label value, escaped as the text exposition format says: backslash,
/// double quote and line feed as `\\`, `\"` and `\n`; everything else as it is.
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
    #[test]
    fn label_values_are_escaped_as_the_text_format_says() {
        assert_eq!(super::label_value("prod"), "prod");
        assert_eq!(super::label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(super::label_value("a\nb"), "a\\nb");
        assert_eq!(super::label_value("é_ü"), "é_ü");
    }
}
