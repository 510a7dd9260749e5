//! Who may call what.
//!
//! * Admin API: `Authorization: Bearer <token>`. The bootstrap token
//!   (`<data_dir>/admin-token` or `admin_token_file`) holds every role; tokens
//!   made with `ota-server token create --role R` hold one [`Role`]. Missing
//!   or unknown/revoked token: 401; a token without the role: 403.
//! * Device reports ([`DeviceAuth`]): anyone (`none`, the default), a
//!   per-device bearer token (`token`), or a client certificate whose subject
//!   CN is the device id (`mtls`). A device may write only its own status
//!   (403 otherwise).
//!
//! Only SHA-256 digests of tokens are kept (in memory and in the database).
//! Stored tokens are found by their digest (an index lookup: its timing can
//! only tell an attacker about the digest of what *they* sent, never about a
//! stored secret), then compared again in constant time.

pub mod session;

use crate::db::Db;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The admin token, kept only as its SHA-256: the secret itself is never
/// held in memory after start-up, and comparing fixed-size digests in
/// constant time leaks neither content nor length.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read admin token file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("admin token file {0} is empty")]
    Empty(PathBuf),
    #[error("cannot create admin token file {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

impl AdminToken {
    pub fn from_secret(secret: &str) -> AdminToken {
        AdminToken {
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// Reads the token from `configured`, or from `<data_dir>/admin-token`,
    /// generating that (32 random bytes, hex, mode 0600) on first start.
    pub fn load_or_create(
        configured: Option<&Path>,
        data_dir: &Path,
    ) -> Result<AdminToken, TokenError> {
        if let Some(path) = configured {
            return Self::read(path);
        }
        let path = data_dir.join("admin-token");
        if path.exists() {
            return Self::read(&path);
        }
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = hex::encode(raw);
        ota_common::atomic::write_atomic_with_mode(&path, format!("{secret}\n").as_bytes(), 0o600)
            .map_err(|source| TokenError::Create {
                path: path.clone(),
                source,
            })?;
        tracing::info!(path = %path.display(), "generated admin token");
        Ok(Self::from_secret(&secret))
    }

    fn read(path: &Path) -> Result<AdminToken, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(TokenError::Empty(path.to_owned()));
        }
        tracing::info!(path = %path.display(), "admin token loaded");
        Ok(Self::from_secret(secret))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        self.matches_digest(&Sha256::digest(presented.as_bytes()).into())
    }

    /// Whether `other` is the SHA-256 of the token (a dashboard session
    /// keeps only that), in time independent of where they differ.
    pub fn matches_digest(&self, other: &[u8; 32]) -> bool {
        let diff = self
            .digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publications (`ota-repo publish`).
    Publisher,
    /// Pauses, resumes and aborts staged rollouts. Also sees the fleet.
    Operator,
    /// Fleet status: device listings and events.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Publisher, Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// Whether a token of this role may call an endpoint needing `needed`.
    pub fn grants(self, needed: Role) -> bool {
        self == needed || (self == Role::Operator && needed == Role::Viewer)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (expected publisher, operator or viewer)"))
    }
}

/// How devices prove who they are when they report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceAuth {
    /// Anyone may report as any device (development, demos, closed networks).
    #[default]
    None,
    /// `Authorization: Bearer <token>` from `ota-server device add ID`.
    Token,
    /// A TLS client certificate signed by `device_ca`; its subject CN is the device id.
    Mtls,
}

/// A device identity proven by the connection (a verified client
/// certificate), put into each request's extensions by `crate::http`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDevice {
    /// The certificate's subject CN, `None` if it has none usable as an id.
    pub device_id: Option<String>,
}

/// The device id a client certificate carries: its subject CN, which must
/// be a single valid device id (several CNs would be ambiguous: none).
pub fn device_id_from_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let cn = names.next()?.as_str().ok()?;
    if names.next().is_some() || !ota_common::wire::is_valid_id(cn) {
        return None;
    }
    Some(cn.to_owned())
}

/// A new random secret: 32 bytes from the OS, hex.
pub fn new_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

/// The SHA-256 (hex) under which a token is stored.
pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.trim().as_bytes()))
}

/// Equality of two byte strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The admin API's credentials: the bootstrap token and the token table.
#[derive(Debug)]
pub struct AdminAuth {
    pub bootstrap: AdminToken,
    pub db: Db,
    /// Dashboard log-ins, each standing for the token it was opened with.
    pub sessions: session::Sessions,
}

/// Who the bootstrap token (`<data_dir>/admin-token` or `admin_token_file`)
/// is in records such as a rollout's history; parentheses are not allowed
/// in token names, so it never collides with a stored token.
pub const BOOTSTRAP_TOKEN_NAME: &str = "(admin-token)";

/// The admin token a request was authenticated with, put into the request's
/// extensions by [`require_role`] so handlers know who acts without looking
/// the token up again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminIdentity {
    /// The stored token's name, or [`BOOTSTRAP_TOKEN_NAME`].
    pub name: String,
    /// The token's role; `None` for the bootstrap token, which holds every role.
    pub role: Option<Role>,
}

/// Middleware state: the credentials and the role one group of routes needs.
#[derive(Debug, Clone)]
pub struct RequireRole {
    pub auth: Arc<AdminAuth>,
    pub role: Role,
}

/// Middleware for every `/admin/v1` route: a bearer token, or a dashboard
/// session (plus its CSRF token on state-changing requests), holding the
/// role the route needs; 401 without a valid credential, 403 with the wrong
/// role or a failed CSRF check. The handler finds who called in an
/// [`AdminIdentity`] extension.
pub async fn require_role(
    State(need): State<RequireRole>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let digest: [u8; 32] = if let Some(presented) = bearer(request.headers()) {
        Sha256::digest(presented.as_bytes()).into()
    } else if let Some(session) = need.auth.sessions.from_headers(request.headers()) {
        if !session::is_safe(request.method()) {
            session::check_csrf(&session, request.headers(), request.uri())
                .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
        }
        session.token_digest
    } else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin endpoints require an Authorization: Bearer <token> header \
             (or a dashboard session)",
        ));
    };
    let identity = need.auth.identify(&digest).await?;
    if let Some(role) = identity.role.filter(|r| !r.grants(need.role)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "admin token {:?} has role {role}; this endpoint needs role {}",
                identity.name, need.role
            ),
        ));
    }
    request.extensions_mut().insert(identity);
    Ok(next.run(request).await)
}

impl AdminAuth {
    /// Who holds the token whose SHA-256 is `digest`: the bootstrap token,
    /// or a stored token that is not revoked (401 otherwise).
    pub async fn identify(&self, digest: &[u8; 32]) -> Result<AdminIdentity, ApiError> {
        if self.bootstrap.matches_digest(digest) {
            return Ok(AdminIdentity {
                name: BOOTSTRAP_TOKEN_NAME.to_owned(),
                role: None,
            });
        }
        let digest = hex::encode(digest);
        let found = self
            .db
            .admin_token_by_hash(&digest)
            .await
            .map_err(|e| ApiError::internal("look up admin token", e))?
            .filter(|t| constant_time_eq(t.sha256.as_bytes(), digest.as_bytes()))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid admin token (unknown or revoked)",
                )
            })?;
        let role: Role = found.role.parse().map_err(|e: String| {
            ApiError::internal("admin token role", format!("token {}: {e}", found.name))
        })?;
        Ok(AdminIdentity {
            name: found.name,
            role: Some(role),
        })
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Decides whether the caller may report as `device_id` under `mode`: the
/// one place device credentials are checked.
pub async fn authorize_device(
    mode: DeviceAuth,
    db: &Db,
    headers: &HeaderMap,
    peer: Option<&PeerDevice>,
    device_id: &str,
) -> Result<(), ApiError> {
    let proven = match mode {
        DeviceAuth::None => return Ok(()),
        DeviceAuth::Token => {
            let presented = bearer(headers).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "device reports require an Authorization: Bearer <device token> header",
                )
            })?;
            let digest = token_hash(presented);
            let (owner, _) = db
                .device_by_token_hash(&digest)
                .await
                .map_err(|e| ApiError::internal("look up device token", e))?
                .filter(|(_, stored)| constant_time_eq(stored.as_bytes(), digest.as_bytes()))
                .ok_or_else(|| {
                    ApiError::new(StatusCode::UNAUTHORIZED, "invalid or revoked device token")
                })?;
            owner
        }
        DeviceAuth::Mtls => peer.and_then(|p| p.device_id.clone()).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "device reports require a TLS client certificate (subject CN = device id) \
                     signed by the device CA",
            )
        })?,
    };
    if proven != device_id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("credentials of device {proven:?} cannot report for device {device_id:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_token_is_private_and_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = AdminToken::load_or_create(None, dir.path()).expect("create");
        let path = dir.path().join("admin-token");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let secret = std::fs::read_to_string(&path).expect("read");
        assert_eq!(secret.trim().len(), 64);
        assert!(a.matches(secret.trim()));
        assert!(!a.matches("wrong"));
        let b = AdminToken::load_or_create(None, dir.path()).expect("reload");
        assert!(b.matches(secret.trim()));
    }

    #[test]
    fn configured_file_must_not_be_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tok");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(
            AdminToken::load_or_create(Some(&path), dir.path()),
            Err(TokenError::Empty(_))
        ));
    }
}
