//! `ota-server token ...` and `ota-server device ...`: managing admin and
//! device tokens in the configured database. A token's secret is printed
//! once, at creation, and only its SHA-256 is stored.

use crate::auth::{new_secret, token_hash, Role};
use crate::db::{AdminTokenInfo, Db, DbError};
use ota_common::wire::is_valid_id;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Invalid(String),
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Creates an admin token; returns its secret.
pub async fn create_admin_token(
    db: &Db,
    name: &str,
    role: Role,
) -> Result<String, CredentialError> {
    if !is_valid_id(name) {
        return Err(CredentialError::Invalid(format!(
            "invalid token name {name:?}: 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    let secret = new_secret();
    let id = new_secret()[..32].to_owned();
    let created = db
        .create_admin_token(&id, name, role.as_str(), &token_hash(&secret), &now())
        .await?;
    if !created {
        return Err(CredentialError::Invalid(format!(
            "an admin token named {name:?} already exists (revoked tokens keep their name)"
        )));
    }
    tracing::info!(name, role = %role, "admin token created");
    Ok(secret)
}

pub async fn list_admin_tokens(db: &Db) -> Result<Vec<AdminTokenInfo>, CredentialError> {
    Ok(db.admin_tokens().await?)
}

pub async fn revoke_admin_token(db: &Db, name: &str) -> Result<(), CredentialError> {
    if !db.revoke_admin_token(name).await? {
        return Err(CredentialError::Invalid(format!(
            "no admin token named {name:?}"
        )));
    }
    tracing::info!(name, "admin token revoked");
    Ok(())
}

/// Creates (or replaces) a device's token; returns its secret.
pub async fn add_device(db: &Db, device_id: &str) -> Result<String, CredentialError> {
    if !is_valid_id(device_id) {
        return Err(CredentialError::Invalid(format!(
            "invalid device id {device_id:?}: 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    let secret = new_secret();
    db.set_device_token(device_id, &token_hash(&secret), &now())
        .await?;
    tracing::info!(device_id, "device token set");
    Ok(secret)
}

pub async fn revoke_device(db: &Db, device_id: &str) -> Result<(), CredentialError> {
    if !db.revoke_device_token(device_id).await? {
        return Err(CredentialError::Invalid(format!(
            "device {device_id:?} has no token"
        )));
    }
    tracing::info!(device_id, "device token revoked");
    Ok(())
}
