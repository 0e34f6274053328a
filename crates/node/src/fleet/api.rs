//! The rollout routes of the HTTP API (`docs/api.md`): an environment's policy
//! (`GET`/`PUT`/`DELETE /v1/envs/{env}/policy`), its rollout (`GET /v1/envs/{env}/rollout`)
//! and lifting its halt (`POST /v1/envs/{env}/rollout/resume`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tether_core::protocol::Position;
use tether_core::rollout::Policy;

use super::{Fleet, read_record, status, unix_ms};
use crate::Node;
use crate::http::{ApiError, ApiPath, Authed, json_body, need_read, need_write};
use crate::rollout::Registry;

/// The fields a policy may have, for the error that names an unknown one.
const FIELDS: [&str; 5] = [
    "max_unavailable",
    "waves",
    "bake_ms",
    "max_failures",
    "signals",
];

/// A policy from a request body, every problem named by its field.
pub fn parse_policy(body: Value) -> Result<Policy, String> {
    let Value::Object(map) = &body else {
        return Err("a policy is a JSON object like {\"max_unavailable\": 5}".into());
    };
    for key in map.keys() {
        if !FIELDS.contains(&key.as_str()) {
            return Err(format!(
                "{key}: unknown field (a policy has {})",
                FIELDS.join(", ")
            ));
        }
    }
    if !map.contains_key("max_unavailable") {
        return Err(
            "max_unavailable: missing (a count like 5, or a percentage like \"10%\")".into(),
        );
    }
    // Each field alone first, so that the error names it.
    for key in FIELDS {
        let Some(v) = map.get(key) else { continue };
        let checked = match key {
            "max_unavailable" => {
                serde_json::from_value::<tether_core::rollout::Amount>(v.clone()).map(drop)
            }
            "waves" => {
                serde_json::from_value::<Vec<tether_core::rollout::Amount>>(v.clone()).map(drop)
            }
            "signals" => serde_json::from_value::<bool>(v.clone()).map(drop),
            "max_failures" => serde_json::from_value::<u32>(v.clone()).map(drop),
            _ => serde_json::from_value::<u64>(v.clone()).map(drop),
        };
        checked.map_err(|e| format!("{key}: {e}"))?;
    }
    let policy: Policy = serde_json::from_value(body).map_err(|e| e.to_string())?;
    policy.validate()?;
    Ok(policy)
}

fn envelope(env: &str, policy: Option<&Policy>) -> Json<Value> {
    Json(json!({"env": env, "policy": policy}))
}

/// `GET /v1/envs/{env}/policy`: `{"env", "policy"}`, the policy `null` when there is none.
pub async fn get_policy(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    need_read(&g, &env)?;
    let all = Fleet::read_policies(&node.store).await?;
    Ok(envelope(&env, all.get(&env)))
}

/// `PUT /v1/envs/{env}/policy` with a policy: set it; answers as `GET`.
pub async fn put_policy(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath(env): ApiPath<String>,
    request: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    need_write(&g, &env)?;
    let body: Value = json_body(&node, request).await?;
    let policy = parse_policy(body).map_err(|m| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("bad policy: {m}"),
        )
    })?;
    let json = serde_json::to_string(&policy)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.to_string()))?;
    node.store.set_policy(&env, Some(json)).await?;
    tracing::info!(env, token = %g.name, policy = %serde_json::to_string(&policy).unwrap_or_default(), "rollout policy set");
    node.fleet.policy_changed(&env, Some(policy.clone()));
    Ok(envelope(&env, Some(&policy)))
}

/// `DELETE /v1/envs/{env}/policy`: clear it (and its rollout); answers `"policy": null`.
pub async fn delete_policy(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    need_write(&g, &env)?;
    node.store.set_policy(&env, None).await?;
    tracing::info!(env, token = %g.name, "rollout policy cleared");
    node.fleet.policy_changed(&env, None);
    Ok(envelope(&env, None))
}

/// `GET /v1/envs/{env}/rollout`: the rollout object.
pub async fn get_rollout(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    need_read(&g, &env)?;
    let current = node.store.position(&env).await?;
    let registry = crate::rollout::registry(&node).await;
    Ok(Json(rollout(&node, &env, current, &registry).await?))
}

/// `POST /v1/envs/{env}/rollout/resume`: lift the halt, forget the failures; answers the
/// rollout object. 409 when the environment has no policy.
pub async fn resume(
    Authed(g): Authed,
    State(node): State<Arc<Node>>,
    ApiPath(env): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    need_write(&g, &env)?;
    if !Fleet::read_policies(&node.store).await?.contains_key(&env) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("environment {env:?} has no rollout policy: there is no rollout to resume"),
        ));
    }
    let was = node.fleet.resume(&node, &env).await?;
    tracing::info!(env, token = %g.name, halted = was, "rollout resume asked");
    let current = node.store.position(&env).await?;
    let registry = crate::rollout::registry(&node).await;
    Ok(Json(rollout(&node, &env, current, &registry).await?))
}

/// `env`'s rollout object at `current` over `registry` (policy and record read from the
/// store, so any node answers the same).
pub async fn rollout(
    node: &Node,
    env: &str,
    current: Position,
    registry: &Registry,
) -> Result<Value, ApiError> {
    let policy = Fleet::read_policies(&node.store).await?.remove(env);
    let record = match &policy {
        Some(_) => Some(read_record(env, node.store.rollout(env).await?.as_deref())),
        None => None,
    };
    let counts = status::count(current, status::acks(env, registry));
    Ok(status::object(
        current,
        counts,
        policy.as_ref(),
        record.as_ref(),
        unix_ms(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_policy_is_refused_naming_its_field() {
        let bad = |v: Value| parse_policy(v).unwrap_err();
        assert!(bad(json!({"max_unavailable": 0})).starts_with("max_unavailable:"));
        assert!(bad(json!({"max_unavailable": "150%"})).starts_with("max_unavailable:"));
        assert!(bad(json!({})).starts_with("max_unavailable:"));
        assert!(bad(json!({"max_unavailable": 1, "maxfailures": 2})).starts_with("maxfailures:"));
        assert!(bad(json!({"max_unavailable": 1, "waves": [5, 2]})).starts_with("waves:"));
        assert!(bad(json!({"max_unavailable": 1, "waves": ["x"]})).starts_with("waves:"));
        assert!(bad(json!({"max_unavailable": 1, "bake_ms": -1})).starts_with("bake_ms:"));
        assert!(bad(json!({"max_unavailable": 1, "max_failures": 0})).starts_with("max_failures:"));
        assert!(bad(json!([1])).contains("JSON object"));
        let p = parse_policy(json!({"max_unavailable": "10%", "waves": [1, "50%"]})).unwrap();
        assert_eq!(p.waves.len(), 2);
    }
}
