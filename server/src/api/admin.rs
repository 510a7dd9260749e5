//! `/admin/v1`: publications (used by `ota-repo publish`) and device listings.
//! Every route here sits behind [`crate::auth::require_admin`].

use crate::api::{body_rejection, path_rejection, ApiError};
use crate::paths::{MetadataName, TargetPath};
use crate::resign::ResignError;
use crate::storage::StorageError;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::Json;
use ota_common::wire::{
    is_valid_id, DeviceEvent, DeviceRecord, PublicationCommitted, PublicationCreated, StagedTarget,
};
use serde_json::Value;

/// Largest metadata file a publication may upload.
pub const MAX_METADATA_BYTES: usize = 16 * 1024 * 1024;

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::UnknownPublication(id) => ApiError::not_found(format!(
                "unknown publication {id:?} (never opened, already committed, or expired)"
            )),
            StorageError::Conflict(msg) => ApiError::new(StatusCode::CONFLICT, msg),
            StorageError::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("upload exceeds the limit of {limit} bytes (max_upload_bytes)"),
            ),
            StorageError::Body(msg) => ApiError::bad_request(format!("upload interrupted: {msg}")),
            e @ StorageError::Io { .. } => ApiError::internal("storage", e),
        }
    }
}

pub async fn create_publication(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<PublicationCreated>), ApiError> {
    let storage = state.storage.clone();
    let id = tokio::task::spawn_blocking(move || storage.create_publication())
        .await
        .map_err(|e| ApiError::internal("create publication", e))??;
    tracing::info!(publication = %id, "publication opened");
    Ok((StatusCode::CREATED, Json(PublicationCreated { id })))
}

pub async fn put_target(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<Json<StagedTarget>, ApiError> {
    let Path((id, decoded)) = params.map_err(path_rejection)?;
    // The raw (still percent-encoded) target path: everything after
    // /admin/v1/publications/{id}/targets/.
    let raw = uri.path().splitn(7, '/').nth(6).unwrap_or("");
    let target = TargetPath::parse(raw, &decoded).map_err(ApiError::bad_request)?;
    let limit = state.max_upload_bytes;
    // Refuse an announced oversize body before reading a byte of it.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(StorageError::TooLarge(limit).into());
    }
    // `?names=sha256`: the digest names for a file no metadata will list
    // (a delta release's chunks); see storage/listed.rs.
    let names = match uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "names")
            .map(|(_, v)| v.into_owned())
    }) {
        Some(q) => {
            Some(crate::storage::listed::parse_requested(&q).map_err(ApiError::bad_request)?)
        }
        None => None,
    };
    let staged = state
        .storage
        .stage_target(&id, &target, body.into_data_stream(), limit, names)
        .await?;
    tracing::info!(publication = %id, target = %staged.target, length = staged.length, "target staged");
    Ok(Json(staged))
}

pub async fn put_metadata(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let Path((id, name)) = params.map_err(path_rejection)?;
    let kind = MetadataName::parse(&name).map_err(ApiError::bad_request)?;
    let body = body.map_err(body_rejection)?;
    check_metadata(&name, &kind, &body).map_err(ApiError::bad_request)?;
    state.storage.stage_metadata(&id, &name, body).await?;
    tracing::info!(publication = %id, file = %name, "metadata staged");
    Ok(StatusCode::NO_CONTENT)
}

/// Structural checks only (the server holds no keys and verifies no
/// signatures): JSON, `signed._type` fitting the name, and `signed.version`
/// matching the version in the name. Catches a mixed-up upload early.
fn check_metadata(name: &str, kind: &MetadataName, body: &[u8]) -> Result<(), String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("{name} is not valid JSON: {e}"))?;
    let signed = doc
        .get("signed")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{name} has no \"signed\" object"))?;
    let ty = signed
        .get("_type")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{name} has no string signed._type"))?;
    let expected = match kind {
        MetadataName::Timestamp => "timestamp",
        MetadataName::Root => "root",
        MetadataName::Versioned { role, .. } => match role.as_str() {
            r @ ("root" | "snapshot" | "timestamp" | "targets") => r,
            // Delegated roles are targets metadata.
            _ => "targets",
        },
    };
    if ty != expected {
        return Err(format!(
            "{name} has signed._type {ty:?}, expected {expected:?}"
        ));
    }
    let version = signed
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{name} has no integer signed.version"))?;
    if let MetadataName::Versioned { version: named, .. } = kind {
        if version != *named {
            return Err(format!(
                "{name} has signed.version {version}, but its name says {named}"
            ));
        }
    }
    Ok(())
}

pub async fn commit(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<PublicationCommitted>, ApiError> {
    let Path(id) = id.map_err(path_rejection)?;
    // This instance's lock first, then the one shared through PostgreSQL
    // with the other instances (a no-op on SQLite). The online roles are
    // issued under them too, so a re-signing never races a publication.
    let local = state.storage.lock_commits().await;
    let shared = state
        .db
        .lock_publications()
        .await
        .map_err(|e| ApiError::internal("lock publications", e))?;
    let result = async {
        let issue = match &state.resigner {
            Some(resigner) => resigner
                .issue_for_publication(&id)
                .await
                .map_err(|e| resign_error(&id, e))?,
            None => None,
        };
        let files = state
            .storage
            .commit_locked(&local, &id)
            .await
            .inspect_err(|e| {
                if let StorageError::Conflict(msg) = e {
                    tracing::warn!(publication = %id, "commit refused: {msg}");
                }
            })?;
        Ok::<_, ApiError>((files, issue))
    }
    .await;
    shared.release().await;
    drop(local);
    let (files, issue) = result?;
    if let Some(issue) = &issue {
        issue.log_committed(&id);
    }
    state.metrics.publication_committed();
    tracing::info!(publication = %id, files = files.len(), "publication committed");
    let issued = issue.map(|i| i.issued);
    Ok(Json(PublicationCommitted {
        id,
        files,
        online_timestamp_version: issued.map(|i| i.timestamp),
        online_snapshot_version: issued.and_then(|i| i.snapshot),
    }))
}

/// The answer when the online roles cannot be issued for a publication.
fn resign_error(id: &str, e: ResignError) -> ApiError {
    match e {
        ResignError::Malformed(msg) => {
            tracing::warn!(publication = %id, "commit refused: {msg}");
            ApiError::bad_request(msg)
        }
        ResignError::Refused(msg) => {
            tracing::warn!(publication = %id, "commit refused: {msg}");
            ApiError::new(StatusCode::CONFLICT, msg)
        }
        // Root (perhaps the one this publication uploads) does not list
        // the server's key: the publisher can fix that, so 409 naming it.
        e @ ResignError::NotListed { .. } => {
            tracing::warn!(publication = %id, "commit refused: {e}");
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        ResignError::Storage(e) => e.into(),
        e @ ResignError::Key { .. } => {
            tracing::error!(publication = %id, "{e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server cannot sign with its online key right now (see the server log); \
                 nothing was published, commit again later",
            )
        }
        e => ApiError::internal("online signing", e),
    }
}

pub async fn list_devices(
    State(state): State<AppState>,
) -> Result<Json<Vec<DeviceRecord>>, ApiError> {
    let devices = state
        .db
        .devices()
        .await
        .map_err(|e| ApiError::internal("list devices", e))?;
    Ok(Json(devices))
}

pub async fn device_events(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<DeviceEvent>>, ApiError> {
    let Path(id) = id.map_err(path_rejection)?;
    if !is_valid_id(&id) {
        return Err(ApiError::bad_request(format!("invalid device id {id:?}")));
    }
    let exists = state
        .db
        .device_exists(&id)
        .await
        .map_err(|e| ApiError::internal("look up device", e))?;
    if !exists {
        return Err(ApiError::not_found(format!("unknown device {id:?}")));
    }
    let events = state
        .db
        .events(&id)
        .await
        .map_err(|e| ApiError::internal("list device events", e))?;
    Ok(Json(events))
}

/// `GET /admin/v1/devices/{id}`: one device's latest state (its slot,
/// version and last status), for the dashboard's device page.
pub async fn device(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceRecord>, ApiError> {
    let Path(id) = id.map_err(path_rejection)?;
    if !is_valid_id(&id) {
        return Err(ApiError::bad_request(format!("invalid device id {id:?}")));
    }
    state
        .db
        .device(&id)
        .await
        .map_err(|e| ApiError::internal("look up device", e))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("unknown device {id:?}")))
}
