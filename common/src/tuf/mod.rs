//! The TUF client workflow, verification only (TUF specification 1.0.34,
//! section 5 "Detailed client workflow").
//!
//! Being filled in; see the API below.

mod canonical;
mod client;
#[cfg(feature = "http")]
pub mod http;
mod keys;
mod metadata;
mod pattern;
mod store;
#[cfg(test)]
mod tests;
mod transport;

pub use client::{RefreshOutcome, RoleSummary, TrustedMetadata, TufClient};
pub use transport::{FetchError, Fetched, FileTransport, Transport};

use crate::hash::{Digests, VerifyError};
use url::Url;

/// Largest metadata files accepted when the signed metadata gives no length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            root: 512_000,
            timestamp: 16_384,
            snapshot: 2_000_000,
            targets: 5_000_000,
        }
    }
}

/// Where the repository is and how far the client will go.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL of the metadata files (`1.root.json`, `timestamp.json`, ...).
    pub metadata_base: Url,
    /// Base URL of the target files.
    pub targets_base: Url,
    /// Most root versions walked in one refresh (spec 5.3.3).
    pub max_root_rotations: u32,
    /// Most delegated roles visited in one target search (spec 5.6.7).
    pub max_delegations: u32,
    pub limits: Limits,
}

impl ClientOptions {
    /// Options with the defaults (256 root rotations, 32 delegations,
    /// default size limits). Both base URLs get a trailing slash so that
    /// file names join below them rather than replacing their last segment.
    pub fn new(metadata_base: Url, targets_base: Url) -> Self {
        Self {
            metadata_base: with_trailing_slash(metadata_base),
            targets_base: with_trailing_slash(targets_base),
            max_root_rotations: 256,
            max_delegations: 32,
            limits: Limits::default(),
        }
    }
}

fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// A target as listed by verified targets metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The target path, e.g. `board-a/image-1.2.0.img`.
    pub name: String,
    pub length: u64,
    pub digests: Digests,
    /// The `custom` object (`null` when absent).
    pub custom: serde_json::Value,
}

impl Target {
    /// The release fields `ota-repo add` put on this target.
    pub fn release(&self) -> Result<crate::wire::ReleaseCustom, TufError> {
        serde_json::from_value(self.custom.clone()).map_err(|e| TufError::InvalidRelease {
            target: self.name.clone(),
            detail: e.to_string(),
        })
    }
}

/// Why the client refused metadata or a target. Every variant names what
/// was refused so the one-line message is enough to diagnose it.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    #[error("fetching {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: FetchError,
    },
    #[error("{role} metadata expired at {expires}")]
    Expired { role: String, expires: String },
    #[error("rollback attack on {role}: trusted version {trusted}, offered version {new}")]
    Rollback {
        role: String,
        trusted: u64,
        new: u64,
    },
    #[error("{role} metadata has {valid} valid signature(s) of the {threshold} required")]
    ThresholdNotMet {
        role: String,
        valid: u32,
        threshold: u32,
    },
    #[error("{role} metadata has version {got}, expected {expected}")]
    VersionMismatch {
        role: String,
        expected: u64,
        got: u64,
    },
    #[error("{what}: {algorithm} mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        what: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{what}: length {actual} instead of the signed {expected}")]
    LengthMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{role} metadata has _type {found:?}, expected {expected:?}")]
    WrongType {
        role: String,
        expected: String,
        found: String,
    },
    #[error("malformed {role} metadata: {detail}")]
    Malformed { role: String, detail: String },
    #[error("{role} metadata has unsupported spec_version {version:?} (major version 1 required)")]
    UnsupportedSpecVersion { role: String, version: String },
    #[error("{role} metadata does not list {missing}")]
    MissingMeta { role: String, missing: String },
    #[error(
        "snapshot version {new} drops {missing}, which trusted snapshot version {trusted} lists"
    )]
    RoleRemoved {
        missing: String,
        trusted: u64,
        new: u64,
    },
    #[error("no trusted root metadata at {path}: run init with a trusted root first")]
    NoTrustedRoot { path: String },
    #[error("no trusted {role} metadata: refresh first")]
    NotLoaded { role: String },
    #[error("target {target}: {source}")]
    TargetVerify {
        target: String,
        #[source]
        source: VerifyError,
    },
    #[error("target {target} has invalid release fields: {detail}")]
    InvalidRelease { target: String, detail: String },
    #[error("invalid target name {name:?}: {detail}")]
    InvalidTargetName { name: String, detail: String },
    #[error("URL for {what}: {detail}")]
    Url { what: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
