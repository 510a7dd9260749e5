//! `GET /openapi.json`: the OpenAPI 3 description of the device and admin
//! APIs, kept in `server/openapi.json` and compiled in. A test checks that
//! it lists exactly the routes of [`crate::api::routes`].

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, verbatim.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}
