//! The fleet dashboard, served by the server itself: one small page of
//! vanilla HTML, CSS and JavaScript compiled into the binary (no CDN, no
//! external fonts), which reads the admin API through a session cookie.
//!
//! * `crate::auth::session`: log-in with an admin token, the cookie, CSRF
//!   checks (with the rest of authentication, below the routes).
//! * `assets/`: the page. It puts text from devices and operators into the
//!   page only through `textContent` (never as markup), and the strict
//!   Content-Security-Policy below forbids inline script and any other
//!   origin, so such text cannot run as script even if that slipped.
//!
//! The dashboard has no powers of its own: every read and action goes
//! through the same `/admin/v1` routes and roles as a bearer token (viewer
//! reads, operator pauses, resumes and aborts), and it signs nothing.

use crate::auth::session;
use crate::auth::{AdminIdentity, Role};
use crate::error::{body_rejection, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest log-in body (a token and a little JSON).
pub const MAX_LOGIN_BYTES: usize = 4096;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Everything from this origin only, no inline script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The headers every dashboard answer carries.
fn hardened(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /dashboard`: the page.
pub async fn index() -> Response {
    hardened(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            INDEX_HTML,
        )
            .into_response(),
    )
}

/// `GET /dashboard/assets/{file}`: the script and the style sheet.
pub async fn asset(
    file: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let found = match file.as_ref().map(|Path(f)| f.as_str()) {
        Ok("app.js") => Some(("text/javascript; charset=utf-8", APP_JS)),
        Ok("app.css") => Some(("text/css; charset=utf-8", APP_CSS)),
        _ => None,
    };
    match found {
        Some((kind, body)) => hardened(([(header::CONTENT_TYPE, kind)], body).into_response()),
        None => hardened(ApiError::not_found("no such dashboard asset").into_response()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// Who is logged in, as the page needs it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// The admin token's name.
    pub name: String,
    /// `viewer`, `operator`, or `admin` for the bootstrap token.
    pub role: String,
    /// Whether this session may pause, resume and abort rollouts.
    pub can_act: bool,
    /// To send in `X-CSRF-Token` on every state-changing request.
    pub csrf_token: String,
}

fn session_info(who: &AdminIdentity, csrf_token: String) -> SessionInfo {
    SessionInfo {
        name: who.name.clone(),
        role: who.role.map_or("admin", Role::as_str).to_owned(),
        can_act: who.role.is_none_or(|r| r.grants(Role::Operator)),
        csrf_token,
    }
}

/// `POST /dashboard/session` `{"token": "..."}`: opens a session for an
/// admin token that may at least view (a publisher's token may not: it
/// has no business with the fleet).
pub async fn login(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    session::check_same_origin(&headers, &uri)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    let body = body.map_err(body_rejection)?;
    let login: Login = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid body: expected {{\"token\": \"...\"}}: {e}"
        ))
    })?;
    let token = login.token.trim();
    if token.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "an admin token is needed to log in",
        ));
    }
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let who = state.admin.identify(&digest).await?;
    if let Some(role) = who.role.filter(|r| !r.grants(Role::Viewer)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "admin token {:?} has role {role}; the dashboard needs role viewer or operator",
                who.name
            ),
        ));
    }
    let (id, opened) = state
        .admin
        .sessions
        .open(digest)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    tracing::info!(token = %who.name, "dashboard log-in");
    let mut response = axum::Json(session_info(&who, opened.csrf_token)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&id, state.secure_cookies),
    );
    Ok(hardened(response))
}

/// The session of this request and who it stands for (401 without one, or
/// when its token was revoked since).
async fn current(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(session::Session, AdminIdentity), ApiError> {
    let s = state.admin.sessions.from_headers(headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not logged in to the dashboard (or the session expired)",
        )
    })?;
    match state.admin.identify(&s.token_digest).await {
        Ok(who) => Ok((s, who)),
        Err(e) => {
            state.admin.sessions.close(headers);
            Err(e)
        }
    }
}

/// `GET /dashboard/session`: who is logged in, with the CSRF token.
pub async fn whoami(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (s, who) = current(&state, &headers).await?;
    Ok(hardened(
        axum::Json(session_info(&who, s.csrf_token)).into_response(),
    ))
}

/// `DELETE /dashboard/session`: logs out (needs the CSRF token, so another
/// site cannot log an operator out either).
pub async fn logout(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (s, who) = current(&state, &headers).await?;
    session::check_csrf(&s, &headers, &uri)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    state.admin.sessions.close(&headers);
    tracing::info!(token = %who.name, "dashboard log-out");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(state.secure_cookies),
    );
    Ok(hardened(response))
}
