//! Every route of the server, in one table: the router is built from it
//! (`crate::router`) and the OpenAPI document is checked against it (tests),
//! so neither can list an endpoint the other lacks.

use crate::api;
use crate::auth::Role;
use crate::dashboard;
use crate::AppState;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{delete, get, post, put, MethodRouter};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the repository, probes, metrics, the API description.
    Public,
    /// A device, as configured by `device_auth`.
    Device,
    /// An admin bearer token holding this role.
    Admin(Role),
}

/// One method on one path (an axum path template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

fn spec(method: Method, path: &'static str, access: Access) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
    }
}

/// The routes with their handlers (and per-route body limits).
pub fn all() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Access::{Admin, Device, Public};
    vec![
        (
            spec(Method::GET, "/healthz", Public),
            get(api::health::healthz),
        ),
        (
            spec(Method::GET, "/readyz", Public),
            get(api::health::readyz),
        ),
        (
            spec(Method::GET, "/metrics", Public),
            get(api::health::metrics),
        ),
        (
            spec(Method::GET, "/openapi.json", Public),
            get(api::openapi::document),
        ),
        (
            spec(Method::GET, "/metadata/{file}", Public),
            get(api::repository::metadata),
        ),
        (
            spec(Method::GET, "/targets/{*path}", Public),
            get(api::repository::target),
        ),
        (
            spec(Method::POST, "/api/v1/devices/{device_id}/reports", Device),
            post(api::devices::report)
                .layer(DefaultBodyLimit::max(ota_common::wire::MAX_REPORT_BYTES)),
        ),
        (
            spec(
                Method::POST,
                "/admin/v1/publications",
                Admin(Role::Publisher),
            ),
            post(api::admin::create_publication),
        ),
        (
            spec(
                Method::PUT,
                "/admin/v1/publications/{id}/targets/{*target}",
                Admin(Role::Publisher),
            ),
            // Uploads are streamed to disk; their limit is max_upload_bytes.
            put(api::admin::put_target).layer(DefaultBodyLimit::disable()),
        ),
        (
            spec(
                Method::PUT,
                "/admin/v1/publications/{id}/metadata/{file}",
                Admin(Role::Publisher),
            ),
            put(api::admin::put_metadata)
                .layer(DefaultBodyLimit::max(api::admin::MAX_METADATA_BYTES)),
        ),
        (
            spec(
                Method::POST,
                "/admin/v1/publications/{id}/commit",
                Admin(Role::Publisher),
            ),
            post(api::admin::commit),
        ),
        (
            spec(Method::GET, "/admin/v1/devices", Admin(Role::Viewer)),
            get(api::admin::list_devices),
        ),
        (
            spec(Method::GET, "/admin/v1/devices/{id}", Admin(Role::Viewer)),
            get(api::admin::device),
        ),
        (
            spec(Method::GET, "/admin/v1/fleet", Admin(Role::Viewer)),
            get(api::fleet::fleet),
        ),
        (
            spec(Method::GET, "/admin/v1/releases", Admin(Role::Viewer)),
            get(api::releases::releases),
        ),
        (
            spec(
                Method::GET,
                "/admin/v1/devices/{id}/events",
                Admin(Role::Viewer),
            ),
            get(api::admin::device_events),
        ),
        (
            spec(Method::GET, "/api/v1/rollouts/{*target}", Public),
            get(api::rollouts::device_hold),
        ),
        (
            spec(Method::GET, "/admin/v1/rollouts", Admin(Role::Viewer)),
            get(api::rollouts::list),
        ),
        (
            spec(
                Method::GET,
                "/admin/v1/rollouts/{*target}",
                Admin(Role::Viewer),
            ),
            get(api::rollouts::status),
        ),
        (
            // `{target}/pause`, `/resume`, `/abort`: the action is the last
            // segment (nothing may follow a catch-all).
            spec(
                Method::POST,
                "/admin/v1/rollouts/{*target}",
                Admin(Role::Operator),
            ),
            post(api::rollouts::change)
                .layer(DefaultBodyLimit::max(api::rollouts::MAX_CHANGE_BYTES)),
        ),
        // The dashboard: the page is public (it holds no data); the session
        // routes check the token or cookie themselves, as log-in must.
        (
            spec(Method::GET, "/dashboard", Public),
            get(dashboard::index),
        ),
        (
            spec(Method::GET, "/dashboard/assets/{file}", Public),
            get(dashboard::asset),
        ),
        (
            spec(Method::POST, "/dashboard/session", Public),
            post(dashboard::login).layer(DefaultBodyLimit::max(dashboard::MAX_LOGIN_BYTES)),
        ),
        (
            spec(Method::GET, "/dashboard/session", Public),
            get(dashboard::whoami),
        ),
        (
            spec(Method::DELETE, "/dashboard/session", Public),
            delete(dashboard::logout),
        ),
    ]
}

/// The table without handlers.
pub fn table() -> Vec<RouteSpec> {
    all().into_iter().map(|(s, _)| s).collect()
}
