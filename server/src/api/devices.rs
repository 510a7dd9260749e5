//! `POST /api/v1/devices/{device_id}/reports`: what devices tell the server.
//!
//! Replays: a device may send `X-Ota-Report-Seq: N` (a decimal integer that
//! grows with every report it sends, e.g. a persisted counter or the Unix
//! time in milliseconds). With it, a report whose N is not above the highest
//! accepted from that device is refused with 409 and not recorded. Without
//! it, reports are accepted as before. The check is only meaningful with
//! device authentication: without, anyone can send any N.

use crate::api::{body_rejection, path_rejection, ApiError};
use crate::auth::{self, PeerDevice};
use crate::db::ReportOutcome;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;
use ota_common::wire::{is_valid_id, DeviceReport, MAX_REASON_CHARS};

/// Longest version string accepted (installed_version, target_version).
const MAX_VERSION_CHARS: usize = 128;
/// Longest target name accepted.
const MAX_TARGET_CHARS: usize = 1024;
/// Longest slot name accepted ("A", "B", ...).
const MAX_SLOT_CHARS: usize = 16;
/// The replay-guard header (see the module docs).
pub const SEQ_HEADER: &str = "x-ota-report-seq";

pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<PeerDevice>>,
    device_id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(device_id) = device_id.map_err(path_rejection)?;
    if !is_valid_id(&device_id) {
        return Err(ApiError::bad_request(format!(
            "invalid device id {device_id:?}: 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    let peer = peer.map(|Extension(p)| p);
    auth::authorize_device(
        state.device_auth,
        &state.db,
        &headers,
        peer.as_ref(),
        &device_id,
    )
    .await?;
    let seq = report_seq(&headers)?;
    let body = body.map_err(body_rejection)?;
    let mut report: DeviceReport = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid device report: {e}")))?;
    validate(&mut report)?;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let outcome = state
        .db
        .record_report_seq(&device_id, &report, &at, seq)
        .await
        .map_err(|e| ApiError::internal("record device report", e))?;
    if let ReportOutcome::Replayed { last } = outcome {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "replayed report: X-Ota-Report-Seq must be above {last}, the last accepted from device {device_id:?}"
            ),
        ));
    }
    state.metrics.device_report(report.status.as_str());
    // A failure may tip its wave over the limit: checked now, not at
    // the next periodic round.
    state
        .rollouts
        .after_report(report.target.as_deref(), report.status)
        .await;
    tracing::debug!(device_id, status = %report.status, "device report");
    Ok(StatusCode::NO_CONTENT)
}

/// The optional `X-Ota-Report-Seq`: a non-negative decimal integer.
fn report_seq(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(SEQ_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "X-Ota-Report-Seq must be a non-negative decimal integer below 2^63",
            )
        })
}

/// Checks the free-form fields and cuts the reason to its limit (a long
/// reason is still worth keeping; its start says what failed).
fn validate(report: &mut DeviceReport) -> Result<(), ApiError> {
    if !is_valid_id(&report.hardware_id) {
        return Err(ApiError::bad_request(format!(
            "invalid hardware_id {:?}: 1 to 128 characters of A-Z a-z 0-9 . _ : -",
            report.hardware_id
        )));
    }
    check_text(
        "installed_version",
        Some(&report.installed_version),
        MAX_VERSION_CHARS,
        false,
    )?;
    check_text(
        "target_version",
        report.target_version.as_deref(),
        MAX_VERSION_CHARS,
        false,
    )?;
    check_text("target", report.target.as_deref(), MAX_TARGET_CHARS, false)?;
    check_text(
        "booted_slot",
        report.booted_slot.as_deref(),
        MAX_SLOT_CHARS,
        false,
    )?;
    check_groups(&report.groups)?;
    if report.reason.as_deref() == Some("") {
        report.reason = None;
    }
    if let Some(reason) = report.reason.as_mut() {
        if let Some((cut, _)) = reason.char_indices().nth(MAX_REASON_CHARS) {
            reason.truncate(cut);
        }
        check_text("reason", Some(reason), MAX_REASON_CHARS, true)?;
    }
    Ok(())
}

/// Rollout groups: ids, as many as a wave may name.
fn check_groups(groups: &[String]) -> Result<(), ApiError> {
    if groups.len() > ota_common::rollout::MAX_GROUPS {
        return Err(ApiError::bad_request(format!(
            "groups: at most {} rollout groups",
            ota_common::rollout::MAX_GROUPS
        )));
    }
    if let Some(g) = groups.iter().find(|g| !is_valid_id(g)) {
        return Err(ApiError::bad_request(format!(
            "invalid group {g:?}: 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    Ok(())
}

fn check_text(
    field: &str,
    value: Option<&str>,
    max_chars: usize,
    allow_newlines: bool,
) -> Result<(), ApiError> {
    let Some(value) = value else { return Ok(()) };
    if value.is_empty() {
        return Err(ApiError::bad_request(format!("{field} is empty")));
    }
    if value.chars().count() > max_chars {
        return Err(ApiError::bad_request(format!(
            "{field} is longer than {max_chars} characters"
        )));
    }
    let bad_control = |c: char| c.is_control() && !(allow_newlines && matches!(c, '\n' | '\t'));
    if value.chars().any(bad_control) {
        return Err(ApiError::bad_request(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}
