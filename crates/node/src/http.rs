//! The HTTP API (JSON; `docs/api.md`): writes and reads of environments, rollout status,
//! health, readiness, metrics, and the WebSocket upgrade for agents. Every error is JSON.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Node;
pub(crate) use super::api_error::{ApiError, grant};
use super::auth::{Grant, Role};
use super::fleet::api as fleet;
use super::front::Door;
use super::store::{MAX_CHANGE_SET, validate_name};
use tether_core::protocol::{Position, WireChange, WireEntry};
use tether_core::secret::Value;

/// Largest request body: the largest change set the store takes ([`MAX_CHANGE_SET`],
/// counted as the node sends it) as any common JSON encoder writes it, which is at most three
/// times as many bytes (Python's `json.dumps` writes each 2-byte character as a 6-byte
/// `\uXXXX`; control characters already count their 6 bytes, base64 is 4 bytes for 3), plus
/// room for the request's own fields and layout. Only read once the token allows a write.
pub const MAX_BODY: usize = 3 * MAX_CHANGE_SET + 64 * 1024;

/// The API; `door` says whether `/metrics` asks for a token, and has the counts of the
/// front door that `/metrics` shows.
pub fn router(node: Arc<Node>, door: Arc<Door>) -> Router {
    let api = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move |node, headers, extensions| {
                super::metrics::metrics(node, headers, extensions, door.clone())
            }),
        )
        .route("/v1/envs", get(list_envs))
        .route("/v1/envs/{env}", get(read_env))
        .route("/v1/envs/{env}/changes", post(commit))
        .route(
            "/v1/envs/{env}/entries/{name}",
            put(put_entry).delete(delete_entry),
        )
        .route("/v1/envs/{env}/status", get(status))
        .route("/v1/envs/{env}/reset", post(reset))
        .route(
            "/v1/envs/{env}/policy",
            get(fleet::get_policy)
                .put(fleet::put_policy)
                .delete(fleet::delete_policy),
        )
        .route("/v1/envs/{env}/rollout", get(fleet::get_rollout))
        .route("/v1/envs/{env}/rollout/resume", post(fleet::resume))
        .route("/v1/ws", get(upgrade))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here (the Allow header lists what is)"),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY));
    #[cfg(test)]
    let api = api.route("/test/panic", get(panic_for_test));
    // Outermost: every route and both fallbacks.
    api.layer(axum::middleware::from_fn(super::panics::catch_request))
        .with_state(node)
}

/// A route of the tests' builds only (the shipped binary has none that panics on request).
#[cfg(test)]
async fn panic_for_test() -> Response {
    panic!("a test asked this route to panic")
}

/// The caller's grant. First among a handler's arguments, so the token is checked before
/// anything else of the request is looked at, and a body is never read without one.
pub(crate) struct Authed(pub(crate) Grant);

impl FromRequestParts<Arc<Node>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        grant(node, &parts.headers, &parts.extensions).map(Authed)
    }
}

/// A path's parameters, refused with the JSON error when they do not parse.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<T> FromRequestParts<Arc<Node>> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let Path(t) = Path::<T>::from_request_parts(parts, node).await?;
        Ok(ApiPath(t))
    }
}

/// Read a JSON body, once the token and its scope have been checked.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    node: &Arc<Node>,
    request: Request,
) -> Result<T, ApiError> {
    let Json(t) = Json::<T>::from_request(request, node).await?;
    Ok(t)
}

fn check_env(env: &str) -> Result<(), ApiError> {
    validate_name("environment", env).map_err(ApiError::from)
}

pub(crate) fn need_read(g: &Grant, env: &str) -> Result<(), ApiError> {
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

pub(crate) fn need_write(g: &Grant, env: &str) -> Result<(), ApiError> {
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

/// Commit and publish; `started` is when the write's handler began (its token checked), where
/// the commit latency counts from.
async fn do_commit(
    node: &Node,
    env: &str,
    changes: Vec<WireChange>,
    expect: Option<u64>,
    started: Instant,
) -> Result<Json<Committed>, ApiError> {
    let set = node.store.commit(env, changes, expect).await?;
    let committed = Instant::now();
    let counters = &node.hub.counters;
    counters.commit_latency.observe(committed - started);
    super::hub::Counters::inc(&counters.commits);
    let position = set.position;
    tracing::info!(env, %position, changes = set.changes.len(), "committed");
    node.publish(set, committed).await;
    Ok(Json(Committed {
        env: env.to_string(),
        position,
    }))
}

async fn commit(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath(env): ApiPath<String>,
    request: Request,
) -> Result<Json<Committed>, ApiError> {
    let started = Instant::now();
    need_write(&g, &env)?;
    let req: ChangeRequest = json_body(&node, request).await?;
    do_commit(&node, &env, req.changes, req.expect_version, started).await
}

async fn put_entry(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath((env, name)): ApiPath<(String, String)>,
    request: Request,
) -> Result<Json<Committed>, ApiError> {
    let started = Instant::now();
    need_write(&g, &env)?;
    let req: PutRequest = json_body(&node, request).await?;
    let change = WireChange {
        name,
        value: Some(Value::from(req.value)),
        secret: req.secret,
        delete: false,
    };
    do_commit(&node, &env, vec![change], None, started).await
}

async fn delete_entry(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath((env, name)): ApiPath<(String, String)>,
) -> Result<Json<Committed>, ApiError> {
    let started = Instant::now();
    need_write(&g, &env)?;
    // The store refuses to delete what is not there (404), atomically with the commit.
    let change = WireChange {
        name,
        value: None,
        secret: false,
        delete: true,
    };
    do_commit(&node, &env, vec![change], None, started).await
}

#[derive(Serialize)]
struct EnvView {
    env: String,
    position: Position,
    entries: Vec<WireEntry>,
}

/// Start a new history (after restoring a backup of the store): admin only.
async fn reset(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<Committed>, ApiError> {
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
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<EnvView>, ApiError> {
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

async fn list_envs(Authed(g): Authed, State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
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
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath(env): ApiPath<String>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    need_read(&g, &env)?;
    let Query(q) = query?;
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
    let rollout = fleet::rollout(&node, &env, current, &registry).await?;
    let mut body = super::rollout::summary(&env, current, registry);
    body["rollout"] = rollout;
    Ok(Json(body).into_response())
}

/// 200 when ready; 503 with `"damaged"` (the store needs an operator) or `"degraded"`
/// (something does not answer), and the reason. No token needed: a damage reason is a fixed
/// sentence (`store::damage`) that names no environment and quotes nothing stored.
async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let (status, reason) = match node.ready().await {
        Ok(()) => return Json(json!({"status": "ready"})).into_response(),
        Err(super::NotReady::Damaged(r)) => ("damaged", r),
        Err(super::NotReady::Degraded(r)) => ("degraded", r),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": status, "reason": reason})),
    )
        .into_response()
}

async fn upgrade(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    extensions: Extensions,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return ApiError::new(e.status(), "bad_request", e.body_text()).into_response(),
    };
    let shutdown = node.shutdown.clone();
    let plain = extensions.get::<super::PlainConn>().map(|p| p.0.clone());
    // axum spawns the connection's task; the token makes it one of the node's tasks.
    let task = node.tasks.token();
    let max_frame = node.live.max_frame();
    ws.max_message_size(max_frame)
        .max_frame_size(max_frame)
        .read_buffer_size(super::WS_READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            super::ws::serve(socket, plain, node, g, shutdown).await;
            drop(task);
        })
}
