//! Staged rollouts over HTTP (see `crate::rollout` and docs/ROLLOUTS.md):
//!
//! * `GET /api/v1/rollouts/{target}` (devices, no auth): [`RolloutHold`].
//! * `GET /admin/v1/rollouts` (viewer): every published release.
//! * `GET /admin/v1/rollouts/{target}` (viewer): fleet status per wave.
//! * `POST /admin/v1/rollouts/{target}/pause|resume|abort` (operator).
//!
//! Target names may contain `/`, so the POST routes share the GET route's
//! catch-all and the action is its last segment (axum cannot match a suffix
//! after a catch-all).

use crate::api::{body_rejection, path_rejection, ApiError};
use crate::auth::AdminIdentity;
use crate::paths::TargetPath;
use crate::rollout::{Action, RolloutError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ota_common::wire::{RolloutChange, RolloutHold, RolloutStatus, RolloutSummary};

/// Largest body of a pause/resume/abort request.
pub const MAX_CHANGE_BYTES: usize = 16 * 1024;

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::NotFound(m) => ApiError::not_found(m),
            RolloutError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            RolloutError::Invalid(m) => ApiError::bad_request(m),
            e @ (RolloutError::Db(_) | RolloutError::Catalog(_)) => {
                ApiError::internal("rollout", e)
            }
        }
    }
}

/// The target name from a route's catch-all, checked like every target
/// path (`raw` still percent-encoded, to refuse encoded separators).
fn target_name(raw: &str, decoded: &str) -> Result<String, ApiError> {
    TargetPath::parse(raw, decoded)
        .map(|t| t.as_str().to_owned())
        .map_err(ApiError::bad_request)
}

/// The raw path after `prefix`.
fn raw_after<'a>(uri: &'a Uri, prefix: &str) -> &'a str {
    uri.path().strip_prefix(prefix).unwrap_or("")
}

/// `GET /api/v1/rollouts/{target}`: whether devices may start this release
/// (as its signed waves open). Every name gets an answer; one the server
/// never held is `active`.
pub async fn device_hold(
    State(state): State<AppState>,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(decoded) = path.map_err(path_rejection)?;
    let target = target_name(raw_after(&uri, "/api/v1/rollouts/"), &decoded)?;
    let hold: RolloutHold = state.rollouts.hold(&target).await?;
    // Always fresh: a pause must reach devices at their next question.
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(hold)).into_response())
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<RolloutSummary>>, ApiError> {
    Ok(Json(state.rollouts.list().await?))
}

pub async fn status(
    State(state): State<AppState>,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RolloutStatus>, ApiError> {
    let Path(decoded) = path.map_err(path_rejection)?;
    let target = target_name(raw_after(&uri, "/admin/v1/rollouts/"), &decoded)?;
    Ok(Json(state.rollouts.status(&target).await?))
}

/// `POST /admin/v1/rollouts/{target}/{action}`, recorded under the name of
/// the admin token the middleware authenticated.
pub async fn change(
    State(state): State<AppState>,
    Extension(by): Extension<AdminIdentity>,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RolloutHold>, ApiError> {
    let Path(decoded) = path.map_err(path_rejection)?;
    let raw = raw_after(&uri, "/admin/v1/rollouts/");
    let (Some((raw_target, raw_action)), Some((target, action))) =
        (raw.rsplit_once('/'), decoded.rsplit_once('/'))
    else {
        return Err(ApiError::not_found(
            "expected POST /admin/v1/rollouts/{target}/pause, /resume or /abort",
        ));
    };
    let action = Action::parse(action)
        .filter(|_| raw_action == action)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "unknown rollout action {raw_action:?}: expected pause, resume or abort"
            ))
        })?;
    let target = target_name(raw_target, target)?;
    let body = body.map_err(body_rejection)?;
    let change: RolloutChange = if body.iter().all(u8::is_ascii_whitespace) {
        RolloutChange::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid body: expected {{\"reason\": \"...\"}}: {e}"
            ))
        })?
    };
    let hold = state
        .rollouts
        .change(&target, action, change.reason.as_deref(), &by.name)
        .await?;
    Ok(Json(hold))
}
