//! The error answer every endpoint shares, and the mapping of axum's
//! body and path rejections onto it. It sits below the modules that
//! answer requests (api, auth, files) so that none of them has to import
//! another for it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ota_common::wire::ErrorBody;

/// An error answer: `{"error": "..."}` with a status. Client mistakes carry a
/// message naming what is wrong; server faults are logged here and answered
/// with a generic 500 so internal paths do not leak.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A real server fault: logged with its cause, answered without details.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error (see the server log)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

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
