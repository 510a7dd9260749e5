//! M-of-N signing ceremonies for keys kept offline (on other machines, in
//! other people's tokens), for every role: `ceremony export` writes the
//! unsigned role and everything a signer needs to a payload file (the
//! canonical bytes, their SHA-256 and a readable summary of what changes),
//! each key holder runs `ota-repo sign --payload` on their own machine and
//! returns a detached signature file, and `ceremony merge` verifies every
//! signature, counts distinct key ids and writes the signed metadata only
//! when every threshold is met.
//!
//! A role version waiting for signatures lives in `ceremony/<role>.json`
//! (the payload) and `ceremony/<role>.signatures/<keyid>.json` (the
//! signatures accepted so far: made here by the keys repo.json lists, or
//! merged from files). Nothing of it is in `metadata/` until it is complete,
//! so the repository keeps loading, and `publish` refuses while any
//! ceremony is open rather than ship the previous version.
//!
//! Targets, snapshot and timestamp form a chain: snapshot lists the hash of
//! the signed targets file (signatures included), timestamp the hash of the
//! signed snapshot. So a pending targets version stops the chain, and
//! completing it signs a new snapshot and timestamp (or stages them in turn
//! when their keys are offline too). At most one of these three is open at
//! a time.
//!
//! A new root must be signed by a threshold of the CURRENT root keys and a
//! threshold of the NEW root keys (TUF §5.3.4), so a root payload lists both
//! requirements; a key that is in neither (revoked, or never added) does not
//! count. For the other roles the keys and threshold come from the trusted
//! metadata at merge time (root, or for a delegated role the targets that
//! delegates it), not from the payload file.
//!
//! Export, merge, abandon, heal and the list of open ceremonies are written
//! once over [`CeremonyRole`] (`kind.rs`); `delegated.rs` holds only what a
//! delegated role adds.

use crate::audit::{AuditLog, Event};
use crate::config::RepoConfig;
use crate::editor::{self, MetadataFiles, SignPlan};
use crate::error::{RepoError, Result};
use crate::expiry::Expiry;
use crate::key_ref::{KeyRef, LoadedKey};
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use tough::schema::key::Key;
use tough::schema::{
    Metafile, Role as TufRole, Root, Signature, Signed, Snapshot, Targets, Timestamp,
};

pub const PAYLOAD_FORMAT: u32 = 1;
pub const CEREMONY_DIR: &str = "ceremony";
/// Subdirectory of `ceremony/` for delegated roles (their names cannot
/// collide with the top-level roles' files there, but a directory of their
/// own keeps listing them simple).
pub const DELEGATED_DIR: &str = "delegated";
/// Payload and signature files are small; anything bigger is not ours.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Signature files a ceremony keeps; far more than any role has keys.
const MAX_STORED_SIGNATURES: usize = 1024;
/// The roles whose versions chain through snapshot and timestamp.
const CHAIN: [Role; 3] = [Role::Targets, Role::Snapshot, Role::Timestamp];

/// One threshold the signatures must meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// e.g. "current root keys (version 2)".
    pub what: String,
    pub threshold: u64,
    pub keyids: Vec<String>,
}

/// The unsigned role as exported for signing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub format: u32,
    pub role: Role,
    pub version: u64,
    /// SHA-256 of `canonical`'s bytes: what signers compare out of band.
    pub sha256: String,
    /// Base64 of the canonical JSON bytes that are signed.
    pub canonical: String,
    /// The same role as readable JSON, for review before signing.
    pub metadata: serde_json::Value,
    /// Public keys whose signatures may count, by key id.
    pub keys: BTreeMap<String, Key>,
    pub requirements: Vec<Requirement>,
    /// What a signer signs, in words: version, expiry, what changed (for
    /// targets: each target added, removed or changed, with its hashes).
    /// Made by the exporting repository; `metadata` is what it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub summary: Vec<String>,
    /// For a delegated targets role: its name (`role` is then `targets`,
    /// the type of its metadata). A signature names the same role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegated: Option<String>,
    /// For version 1 of a delegated role whose keys were not at hand when
    /// it was delegated: base64 of the top-level targets file (signed by
    /// the targets keys at `delegate` time) that creates the delegation.
    /// Merge verifies it against root and commits it after `1.ROLE.json`:
    /// the repository cannot list a delegation before the role's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegating_targets: Option<String>,
}

impl Payload {
    /// The role as people and the audit log name it: `targets`, or the
    /// delegated role's own name.
    pub fn role_name(&self) -> String {
        self.delegated
            .clone()
            .unwrap_or_else(|| self.role.as_str().to_owned())
    }
}

/// A signature made on a signer's machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachedSignature {
    pub role: Role,
    pub version: u64,
    /// SHA-256 of the payload's canonical bytes this signature covers.
    pub payload_sha256: String,
    pub keyid: String,
    /// Hex.
    pub sig: String,
    /// The delegated role signed, when the payload was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegated: Option<String>,
}

pub(crate) fn ceremony_err(detail: impl Into<String>) -> RepoError {
    RepoError::Ceremony(detail.into())
}

fn read_small(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).map_err(RepoError::io(path))?.len();
    if len > MAX_FILE_BYTES {
        return Err(ceremony_err(format!(
            "{} is {len} bytes, larger than any payload or signature file",
            path.display()
        )));
    }
    std::fs::read(path).map_err(RepoError::io(path))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_small(path)?;
    serde_json::from_slice(&bytes).map_err(|source| RepoError::Json {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| RepoError::Inconsistent(format!("serializing {}: {e}", path.display())))?;
    bytes.push(b'\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ota_common::atomic::create_dir_all_durable(dir).map_err(RepoError::io(dir))?;
    }
    ota_common::atomic::write_atomic(path, &bytes).map_err(RepoError::io(path))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// The paths in `dir`; none while it does not exist (nothing put one there yet).
pub(crate) fn paths_in(dir: &Path) -> Result<impl Iterator<Item = Result<PathBuf>> + '_> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => Some(e),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(RepoError::io(dir)(e)),
    };
    Ok(entries
        .into_iter()
        .flatten()
        .map(move |entry| entry.map(|e| e.path()).map_err(RepoError::io(dir))))
}

/// Removes `path` with `remove`; one already gone is fine. Says whether it
/// was there.
pub(crate) fn remove_if_present(
    path: &Path,
    remove: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<bool> {
    match remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RepoError::io(path)(e)),
    }
}

/// `ceremony/<role>.json`: present while a version of `role` waits for signatures.
pub fn pending_path(layout: &Layout, role: Role) -> PathBuf {
    CeremonyRole::top(role).slot(layout).payload
}

/// Where an open ceremony keeps its payload and its signatures.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub payload: PathBuf,
    pub signatures: PathBuf,
    /// The directory holding both (fsynced when they go).
    pub dir: PathBuf,
}

mod chain;
pub mod delegated;
pub(crate) mod delegated_keys;
mod export;
mod heal;
mod kind;
mod merge;
mod meta;
mod payload;
mod sign;
mod stored;
mod tally;

pub use chain::*;
pub use export::*;
pub use heal::*;
pub use kind::*;
pub use merge::*;
pub use meta::*;
pub use payload::*;
pub use sign::*;
pub use stored::*;
pub use tally::*;
