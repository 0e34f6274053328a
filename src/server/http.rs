//! The HTTP API (JSON; `docs/api.md`): writes and reads of environments, rollout status,
//! health, readiness, metrics, and the WebSocket upgrade for agents. Every error is JSON.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Node;
use super::auth::{AuthError, Grant, Role};
use super::store::{StoreError, validate_name};
use crate::protocol::{Position, WireChange, WireEntry};
use crate::secret::Value;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/envs", get(list_envs))
        .route("/v1/envs/{env}", get(read_env))
        .route("/v1/envs/{env}/changes", post(commit))
        .route(
            "/v1/envs/{env}/entries/{name}",
            put(put_entry).delete(delete_entry),
        )
        .route("/v1/envs/{env}/status", get(status))
        .route("/v1/envs/{env}/reset", post(reset))
        .route("/v1/ws", get(upgrade))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(4 * 1024 * 1024))
        .with_state(node)
}

/// A JSON error: `{"error": {"code": "...", "message": "..."}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn forbidden(msg: String) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            StoreError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.to_string())
            }
            StoreError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::Missing { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            StoreError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(e.status(), "bad_request", e.body_text())
    }
}

fn grant(node: &Node, headers: &HeaderMap) -> Result<Grant, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    node.auth.check(header).map_err(|e| {
        super::hub::Counters::inc(&node.hub.counters.rejected);
        e.into()
    })
}

fn check_env(env: &str) -> Result<(), ApiError> {
    validate_name("environment", env).map_err(ApiError::from)
}

fn need_read(g: &Grant, env: &str) -> Result<(), ApiError> {
    check_env(env)?;
    if g.can_read(env) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "token {:?} may not read environment {env:?}",
            g.name
        )))
    }
}

fn need_write(g: &Grant, env: &str) -> Result<(), ApiError> {
    check_env(env)?;
    if g.can_write(env) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "token {:?} may not write environment {env:?}",
            g.name
        )))
    }
}

#[derive(Serialize)]
struct Committed {
    env: String,
    position: Position,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    pub changes: Vec<WireChange>,
    /// Commit only if the environment is at this version (optimistic concurrency).
    #[serde(default)]
    pub expect_version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    pub value: String,
    #[serde(default)]
    pub secret: bool,
}

async fn do_commit(
    node: &Node,
    env: &str,
    changes: Vec<WireChange>,
    expect: Option<u64>,
) -> Result<Json<Committed>, ApiError> {
    let set = node.store.commit(env, changes, expect).await?;
    super::hub::Counters::inc(&node.hub.counters.commits);
    let position = set.position;
    tracing::info!(env, %position, changes = set.changes.len(), "committed");
    node.publish(set).await;
    Ok(Json(Committed {
        env: env.to_string(),
        position,
    }))
}

async fn commit(
    State(node): State<Arc<Node>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ChangeRequest>, JsonRejection>,
) -> Result<Json<Committed>, ApiError> {
    let g = grant(&node, &headers)?;
    need_write(&g, &env)?;
    let Json(req) = body?;
    do_commit(&node, &env, req.changes, req.expect_version).await
}

async fn put_entry(
    State(node): State<Arc<Node>>,
    Path((env, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<PutRequest>, JsonRejection>,
) -> Result<Json<Committed>, ApiError> {
    let g = grant(&node, &headers)?;
    need_write(&g, &env)?;
    let Json(req) = body?;
    let change = WireChange {
        name,
        value: Some(Value::from(req.value)),
        secret: req.secret,
        delete: false,
    };
    do_commit(&node, &env, vec![change], None).await
}

async fn delete_entry(
    State(node): State<Arc<Node>>,
    Path((env, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Committed>, ApiError> {
    let g = grant(&node, &headers)?;
    need_write(&g, &env)?;
    // The store refuses to delete what is not there (404), atomically with the commit.
    let change = WireChange {
        name,
        value: None,
        secret: false,
        delete: true,
    };
    do_commit(&node, &env, vec![change], None).await
}

#[derive(Serialize)]
struct EnvView {
    env: String,
    position: Position,
    entries: Vec<WireEntry>,
}

/// Start a new history (after restoring a backup of the store): admin only.
async fn reset(
    State(node): State<Arc<Node>>,
    Path(env): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Committed>, ApiError> {
    let g = grant(&node, &headers)?;
    check_env(&env)?;
    if g.role < Role::Admin || !g.covers(&env) {
        return Err(ApiError::forbidden(format!(
            "token {:?} may not reset environment {env:?} (admin role needed)",
            g.name
        )));
    }
    let position = node.store.reset(&env, None).await?;
    tracing::warn!(env, %position, token = %g.name, "history reset: every agent takes a snapshot");
    node.announce_reset(&env, position).await;
    Ok(Json(Committed { env, position }))
}

async fn read_env(
    State(node): State<Arc<Node>>,
    Path(env): Path<String>,
    headers: HeaderMap,
) -> Result<Json<EnvView>, ApiError> {
    let g = grant(&node, &headers)?;
    need_read(&g, &env)?;
    let snap = node.store.snapshot(&env).await?;
    let entries = snap
        .entries
        .into_iter()
        .map(|e| WireEntry {
            value: if e.secret && !g.secrets {
                None
            } else {
                e.value
            },
            ..e
        })
        .collect();
    Ok(Json(EnvView {
        env,
        position: snap.position,
        entries,
    }))
}

async fn list_envs(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let g = grant(&node, &headers)?;
    let envs: Vec<_> = node
        .store
        .list()
        .await?
        .into_iter()
        .filter(|e| g.covers(&e.env))
        .collect();
    Ok(Json(json!({ "envs": envs })).into_response())
}

#[derive(Deserialize)]
struct StatusQuery {
    /// `node`: only the agents connected to this node, even in a cluster.
    scope: Option<String>,
}

async fn status(
    State(node): State<Arc<Node>>,
    Path(env): Path<String>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let g = grant(&node, &headers)?;
    need_read(&g, &env)?;
    let current = node.store.position(&env).await?;
    let registry = match q.scope.as_deref() {
        None | Some("cluster") => super::rollout::registry(&node).await,
        Some("node") => super::rollout::this_node(&node),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("scope must be node or cluster, not {other:?}"),
            ));
        }
    };
    let mut by_version = std::collections::BTreeMap::<String, usize>::new();
    let mut agents = Vec::new();
    let mut current_count = 0;
    for (on, a) in registry
        .agents
        .into_iter()
        .filter(|(_, a)| a.envs.contains_key(&env))
    {
        let ack = a.envs.get(&env).cloned().flatten();
        let key = match &ack {
            Some(s) if s.position == current => {
                current_count += 1;
                s.position.version.to_string()
            }
            Some(s) if !s.ok => format!("{} (failed)", s.position.version),
            Some(s) => s.position.version.to_string(),
            None => "none".into(),
        };
        *by_version.entry(key).or_default() += 1;
        agents.push(json!({"agent": a.agent, "token": a.token, "node": on, "ack": ack}));
    }
    let nodes: Vec<serde_json::Value> = registry
        .nodes
        .iter()
        .map(|(id, n)| json!({"node": id, "agents": n}))
        .collect();
    let mut body = json!({
        "env": env,
        "position": current,
        "scope": registry.scope,
        "agents": agents.len(),
        "current": current_count,
        "by_version": by_version,
        "connected": agents,
        "node_registries": nodes,
    });
    if let Some(w) = registry.warning {
        body["warning"] = json!(w);
    }
    Ok(Json(body).into_response())
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    match node.ready().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
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
    if let Ok(envs) = node.store.list().await {
        let _ = writeln!(
            out,
            "# HELP tether_env_version Current version of each environment.\n# TYPE tether_env_version gauge"
        );
        for e in envs {
            let _ = writeln!(
                out,
                "tether_env_version{{env=\"{}\"}} {}",
                e.env.replace(['"', '\\', '\n'], "_"),
                e.position.version
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn upgrade(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let g = match grant(&node, &headers) {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return ApiError::new(e.status(), "bad_request", e.body_text()).into_response(),
    };
    let shutdown = node.shutdown.clone();
    let plain = extensions.get::<super::PlainConn>().map(|p| p.0.clone());
    ws.max_message_size(node.max_frame)
        .max_frame_size(node.max_frame)
        .read_buffer_size(super::WS_READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| super::ws::serve(socket, plain, node, g, shutdown))
}
