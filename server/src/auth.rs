//! Who may call what: the admin bearer token, and the seam where device
//! authentication will go.

use crate::api::ApiError;
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
        let other: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = self
            .digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// Middleware for every `/admin/v1` route: `Authorization: Bearer <token>` or 401.
pub async fn require_admin(
    State(token): State<Arc<AdminToken>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = bearer(request.headers()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin endpoints require an Authorization: Bearer <token> header",
        )
    })?;
    if !token.matches(presented) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid admin token",
        ));
    }
    Ok(next.run(request).await)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Device authentication seam: decides whether the caller may report as
/// `device_id`. Every device is accepted until device credentials (mTLS or
/// per-device tokens) arrive; that check goes here, and only here.
pub fn authorize_device(_headers: &HeaderMap, _device_id: &str) -> Result<(), ApiError> {
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
