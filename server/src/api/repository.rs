//! The public, read-only repository: `GET|HEAD /metadata/{file}` and
//! `GET|HEAD /targets/{path..}`, the endpoints every device polls.

use crate::api::{path_rejection, ApiError};
use crate::files::{self, EtagKind, RepoFile, ServeOptions, What};
use crate::paths::{MetadataName, TargetPath};
use crate::storage::Lookup;
use crate::AppState;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};

/// The route template metadata requests are counted under.
pub const METADATA_ROUTE: &str = "/metadata/{file}";

/// The idle poll without the router: a `GET`/`HEAD` of a metadata name held
/// in memory (present, or a root version known to be missing) is answered
/// here, before routing, exactly as [`metadata`] would answer it. Anything
/// else (`None`) takes the normal path.
pub fn answer_from_memory(
    storage: &crate::storage::Storage,
    metrics: &crate::metrics::Metrics,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let name = uri.path().strip_prefix("/metadata/")?;
    // Escaped names are decoded (and judged) by the router's path extractor.
    if name.contains('%') {
        return None;
    }
    // Only names the handler below validated are ever in memory, so the
    // poll need not parse the name again (which would allocate the role).
    let cache_control = if crate::storage::published::is_mutable(name) {
        files::NO_CACHE
    } else {
        files::IMMUTABLE
    };
    let what = What("metadata file ", name);
    let response = match storage.cached_metadata(name) {
        crate::storage::published::Cached::Present(file) => {
            files::serve_prepared(&file, what, method, headers, cache_control)
        }
        crate::storage::published::Cached::Absent => {
            ApiError::not_found(format!("{what} not found")).into_response()
        }
        crate::storage::published::Cached::Unknown => return None,
    };
    metrics.request(METADATA_ROUTE, response.status().as_u16());
    if let Some(len) = axum::body::HttpBody::size_hint(response.body()).exact() {
        metrics.body_bytes_sent(len);
    }
    tracing::debug!(%method, path = uri.path(), status = response.status().as_u16(), "request");
    Some(response)
}

pub async fn metadata(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    file: Result<Path<String>, PathRejection>,
) -> Response {
    let name = match file {
        Ok(Path(name)) => name,
        Err(e) => return path_rejection(e).into_response(),
    };
    let kind = match MetadataName::parse(&name) {
        Ok(k) => k,
        Err(msg) => return ApiError::bad_request(msg).into_response(),
    };
    let cache_control = if kind.is_immutable() {
        files::IMMUTABLE
    } else {
        files::NO_CACHE
    };
    let what = What("metadata file ", &name);
    match state.storage.published_metadata(&name).await {
        Ok(Lookup::Found(file)) => {
            files::serve_prepared(&file, what, &method, &headers, cache_control)
        }
        Ok(Lookup::Missing) => ApiError::not_found(format!("{what} not found")).into_response(),
        // Larger than metadata is held in memory (local disk only; a bucket
        // refuses such objects): streamed as an image would be.
        Ok(Lookup::TooLarge) => {
            files::serve_repository(
                &state.storage,
                RepoFile::Metadata(&name),
                &what.to_string(),
                &method,
                &headers,
                ServeOptions {
                    etag: EtagKind::ContentHash,
                    cache_control,
                    etag_cache: Some(&state.etags),
                },
            )
            .await
        }
        Err(e) => ApiError::internal(&format!("read metadata/{name}"), e).into_response(),
    }
}

pub async fn target(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let decoded = match path {
        Ok(Path(p)) => p,
        Err(e) => return path_rejection(e).into_response(),
    };
    let raw = uri.path().strip_prefix("/targets/").unwrap_or(uri.path());
    let target = match TargetPath::parse(raw, &decoded) {
        Ok(t) => t,
        Err(msg) => return ApiError::bad_request(msg).into_response(),
    };
    files::serve_repository(
        &state.storage,
        RepoFile::Target(&target),
        &format!("target {}", target.as_str()),
        &method,
        &headers,
        ServeOptions {
            etag: EtagKind::FileIdentity,
            // Images are published under names that contain their hash.
            cache_control: files::IMMUTABLE,
            etag_cache: None,
        },
    )
    .await
}
