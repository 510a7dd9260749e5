//! HTTP endpoints beyond static file serving, and the body and path
//! rejections they share (the error answer itself is `crate::error`).

pub mod admin;
pub mod devices;
pub mod fleet;
pub mod health;
pub mod openapi;
pub mod releases;
pub mod repository;
pub mod rollouts;
pub mod routes;

pub use crate::error::ApiError;
use axum::http::StatusCode;

/// Maps an axum body rejection (too large, broken stream) to a JSON error
/// with the status axum chose (413 for a body over the limit).
pub fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "request body is too large")
    } else {
        ApiError::new(status, rejection.body_text())
    }
}

/// Maps a path-parameter rejection (e.g. invalid UTF-8 after percent-decoding).
pub fn path_rejection(rejection: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::new(rejection.status(), rejection.body_text())
}
