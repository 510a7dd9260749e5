//! The releases of the currently published targets metadata, with their
//! signed wave schedules: `timestamp.json` → its snapshot version →
//! `V.snapshot.json` → its targets version → `V.targets.json`, read from the
//! storage (directory or bucket) exactly as devices would find them.
//!
//! The server holds no keys and checks no signatures here: these are the
//! files it serves, published through the admin API. Only the top-level
//! targets role is read; releases of delegated roles are not listed.

use crate::storage::{Storage, StorageError};
use ota_common::rollout::RolloutPlan;
use ota_common::wire::ReleaseCustom;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the published metadata: {0}")]
    Storage(#[from] StorageError),
    #[error("published metadata: {0}")]
    Metadata(String),
}

/// One release as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub target: String,
    pub version: String,
    pub hardware_ids: Vec<String>,
    /// `None`: no staged rollout (devices install at once, never ask).
    pub plan: Option<RolloutPlan>,
}

/// Every release of the current top-level targets metadata, by name; empty
/// before the first publication.
pub async fn published(storage: &Storage) -> Result<Vec<Release>, CatalogError> {
    let Some(timestamp) = read(storage, "timestamp.json").await? else {
        return Ok(Vec::new());
    };
    let snapshot_version = meta_version(&timestamp, "timestamp.json", "snapshot.json")?;
    let snapshot_name = format!("{snapshot_version}.snapshot.json");
    let snapshot = read(storage, &snapshot_name)
        .await?
        .ok_or_else(|| missing(&snapshot_name, "timestamp.json"))?;
    let targets_version = meta_version(&snapshot, &snapshot_name, "targets.json")?;
    let targets_name = format!("{targets_version}.targets.json");
    let targets = read(storage, &targets_name)
        .await?
        .ok_or_else(|| missing(&targets_name, &snapshot_name))?;
    let listed = targets
        .pointer("/signed/targets")
        .and_then(Value::as_object)
        .ok_or_else(|| CatalogError::Metadata(format!("{targets_name} has no signed.targets")))?;
    let mut releases = Vec::new();
    for (name, target) in listed {
        let custom = target.get("custom").cloned().unwrap_or(Value::Null);
        match serde_json::from_value::<ReleaseCustom>(custom) {
            Ok(c) => releases.push(Release {
                target: name.clone(),
                version: c.version.to_string(),
                hardware_ids: c.hardware_ids,
                plan: c.rollout,
            }),
            // Devices refuse such a target too; it is nobody's rollout.
            Err(e) => tracing::warn!(target = %name, "{targets_name}: target not listed: {e}"),
        }
    }
    releases.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(releases)
}

/// The published release named `target`, if any.
pub async fn release(storage: &Storage, target: &str) -> Result<Option<Release>, CatalogError> {
    Ok(published(storage)
        .await?
        .into_iter()
        .find(|r| r.target == target))
}

async fn read(storage: &Storage, name: &str) -> Result<Option<Value>, CatalogError> {
    let Some(bytes) = storage.read_metadata(name).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CatalogError::Metadata(format!("{name} is not JSON: {e}")))
}

fn meta_version(doc: &Value, file: &str, entry: &str) -> Result<u64, CatalogError> {
    doc.pointer("/signed/meta")
        .and_then(|m| m.get(entry))
        .and_then(|m| m.get("version"))
        .and_then(Value::as_u64)
        .ok_or_else(|| CatalogError::Metadata(format!("{file} names no version of {entry}")))
}

fn missing(name: &str, referrer: &str) -> CatalogError {
    CatalogError::Metadata(format!("{name}, named by {referrer}, is not published"))
}
