//! Probes for supervisors and load balancers, and the metrics scrape:
//! `GET /healthz` (the process answers), `GET /readyz` (it can do its job:
//! database reachable, repository readable), `GET /metrics` (Prometheus).
//! Unauthenticated: they reveal no device or publication data.

use crate::api::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::time::Duration;

/// A readiness check slower than this counts as failed: a load balancer
/// must not wait on a hung database.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, state.db.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!("not ready: {e}");
            return not_ready("database unreachable");
        }
        Err(_) => {
            tracing::warn!("not ready: database did not answer within {READY_TIMEOUT:?}");
            return not_ready("database did not answer in time");
        }
    }
    let storage = state.storage.clone();
    match tokio::task::spawn_blocking(move || storage.check_readable()).await {
        Ok(Ok(())) => Json(json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => {
            tracing::warn!("not ready: {e}");
            not_ready("repository directory unreadable")
        }
        Err(e) => ApiError::internal("readiness check", e).into_response(),
    }
}

/// Names the failing part without internal paths or addresses (those are
/// in the log).
fn not_ready(what: &str) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {what}"),
    )
    .into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
