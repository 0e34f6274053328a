//! `/metrics`: the node's counters and each environment's version as Prometheus text,
//! open or (with `metrics_require_token`) behind a token like the API.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{Extensions, HeaderMap, header};
use axum::response::{IntoResponse, Response};
use tether_core::prom::{Kind, head, sample};

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
    let mut metric = |name: &str, kind: Kind, help: &str, value: u64| {
        head(&mut out, name, kind, help);
        sample(&mut out, name, &[], value);
    };
    metric(
        "tether_agents_connected",
        Kind::Gauge,
        "Agent connections on this node.",
        node.hub.agent_count() as u64,
    );
    metric(
        "tether_connections_total",
        Kind::Counter,
        "Agent connections accepted.",
        c.connections.load(Ordering::Relaxed),
    );
    metric(
        "tether_commits_total",
        Kind::Counter,
        "Change sets committed through this node.",
        c.commits.load(Ordering::Relaxed),
    );
    metric(
        "tether_frames_sent_total",
        Kind::Counter,
        "Frames sent to agents: written to their connections, or queued behind what a connection has not taken yet.",
        c.frames_sent.load(Ordering::Relaxed),
    );
    metric(
        "tether_resyncs_total",
        Kind::Counter,
        "Resyncs requested by agents.",
        c.resyncs.load(Ordering::Relaxed),
    );
    metric(
        "tether_snapshots_total",
        Kind::Counter,
        "Snapshots sent to agents.",
        c.snapshots.load(Ordering::Relaxed),
    );
    metric(
        "tether_auth_rejected_total",
        Kind::Counter,
        "Requests refused for auth.",
        c.rejected.load(Ordering::Relaxed),
    );
    metric(
        "tether_http_unauthenticated_connections",
        Kind::Gauge,
        "Connections on which no request has passed the token check yet.",
        door.unauthenticated() as u64,
    );
    metric(
        "tether_http_connections_evicted_total",
        Kind::Counter,
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
        head(
            &mut out,
            "tether_redis_errors_total",
            Kind::Counter,
            "Redis errors, by what the node was doing.",
        );
        for op in super::store::redis::Op::ALL {
            sample(
                &mut out,
                "tether_redis_errors_total",
                &[("op", op.label())],
                r.errors.get(op),
            );
        }
    }
    head(
        &mut out,
        "tether_build_info",
        Kind::Gauge,
        "The running build: version, target architecture and OS.",
    );
    sample(
        &mut out,
        "tether_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("arch", std::env::consts::ARCH),
            ("os", std::env::consts::OS),
        ],
        1,
    );
    if let Ok(envs) = node.store.list().await {
        head(
            &mut out,
            "tether_env_version",
            Kind::Gauge,
            "Current version of each environment.",
        );
        for e in envs
            .into_iter()
            .filter(|e| grant.as_ref().is_none_or(|g| g.covers(&e.env)))
        {
            sample(
                &mut out,
                "tether_env_version",
                &[("env", &e.env)],
                e.position.version,
            );
        }
    }
    let covers = |env: &str| grant.as_ref().is_none_or(|g| g.covers(env));
    super::fleet::metrics::render(&node, &mut out, &covers).await;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
