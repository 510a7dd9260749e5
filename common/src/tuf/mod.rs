//! The TUF client workflow, verification only (TUF specification 1.0.34,
//! section 5 "Detailed client workflow").
//!
//! # Why our own client and not `tough`
//!
//! Devices trust nothing but this code, so it follows section 5 to the
//! letter and contains no signing code at all. `tough` (used by `ota-repo`
//! to *build* repositories) is not linked into the agent: it carries signing
//! code and deviates from the specification in ways that matter on a
//! device: it accepts a timestamp of the same version, downloads all
//! delegated metadata, rejects the whole repository when a delegated role
//! lists a target outside its paths, fetches targets as
//! `<sha256>.<full/path>` instead of `dir/<hash>.<basename>`, rejects
//! sha512-only targets, stores re-serialized metadata instead of the bytes
//! received, refuses to load when the clock went backwards, and rejects
//! RSA-PSS signatures whose salt is not 32 bytes. This client is written over
//! `serde_json` and `aws-lc-rs` (ed25519, ECDSA P-256/SHA-256 DER), `p256`
//! (parsing PEM SubjectPublicKeyInfo) and `rsa` (key parsing and the raw
//! public operation only; EMSA-PSS decoding with MGF1-SHA-256 is ours and
//! accepts any salt length, like Go's `PSSSaltLengthAuto`).
//!
//! # What it checks
//!
//! * Root (5.3): versions N+1, N+2, ... one at a time (at most
//!   `max_root_rotations`), each signed by a threshold of the old *and* the
//!   new root keys, version exactly N+1, persisted at each step; a 404 ends
//!   the walk, any other failure fails the refresh; the final root must not
//!   be expired. If the timestamp or snapshot keys changed, the trusted
//!   timestamp and snapshot are deleted (fast-forward attack recovery).
//! * Timestamp (5.4): signatures, no version rollback, no rollback of the
//!   snapshot version it lists, not expired. The **same version** as trusted
//!   ends the refresh (`RefreshOutcome::Unchanged`) without fetching
//!   snapshot or targets. The timestamp ETag is kept in `timestamp.etag` and
//!   sent as `If-None-Match`, so an idle poll is one root probe plus one
//!   (usually 304) timestamp request.
//! * Snapshot (5.5) and targets (5.6, also delegated roles): length and every
//!   listed hash against the referring metadata, signatures by the
//!   delegating role's keys, version equal to the listed one, no role removed
//!   or rolled back, not expired.
//! * Target search (5.6.7): pre-order depth-first, visited roles skipped,
//!   `terminating` honoured, at most `max_delegations` roles, `paths` (`*`
//!   never matches `/`) and `path_hash_prefixes`; only the delegated metadata
//!   needed is fetched. A role listing a target outside its paths simply does
//!   not provide it. A delegated role verified under one delegation is never
//!   reused under another delegation of the same name with other keys.
//! * Listing (`all_targets`, what the agent chooses releases from): every
//!   name the search above would resolve, with what it would resolve to: the
//!   first role in pre-order that lists it wins (shadowing), a role counts
//!   only for paths on its whole delegation chain, `terminating` cuts off what
//!   follows. Every reachable delegated role is loaded once per distinct
//!   delegation (at most `max_delegations`, each file bounded by its snapshot
//!   length or `Limits::targets`), then the search is replayed per name. A
//!   role that cannot be fetched or verified (expired, bad signature, not in
//!   the snapshot) ends the search of the names that reach it, with a
//!   warning; top-level targets are always listed. Delegated files are
//!   fetched only when the stored copy no longer matches the snapshot's
//!   listing, so an idle poll makes no extra request.
//! * Signatures: one per distinct key id counts; key ids are trusted as the
//!   delegator lists them; keys of unknown types or schemes are ignored (they
//!   never count) rather than fatal. Supported: ed25519, ecdsa /
//!   ecdsa-sha2-nistp256, rsa / rsassa-pss-sha256 (2048 to 8192 bits). The
//!   signed bytes are the OLPC canonical JSON of the parsed `signed` value,
//!   unknown fields included. `_type` must match and `spec_version` must have
//!   major version 1.
//! * Sizes: every download is limited before bytes are kept (the signed
//!   length when there is one, else [`Limits`]); targets are streamed in
//!   64 KiB chunks, checked against length and every listed hash (sha256
//!   and/or sha512) as they arrive, and renamed into place only once whole.
//!
//! # The metadata directory
//!
//! `root.json`, `timestamp.json`, `snapshot.json`, `targets.json` and one
//! `<role>.json` per delegated role used (unsafe characters percent-encoded),
//! each the exact bytes received, replaced atomically; plus two non-JSON
//! files: `timestamp.etag` and `trusted-time`.
//!
//! # Time on devices without a real-time clock
//!
//! Each refresh takes one fixed start time: the system clock (read through
//! std, so `faketime` works), or the time stored in `trusted-time` if that
//! is later. After every successful refresh the time used is stored in
//! `trusted-time` if it is newer. A device that boots with its clock at
//! 1970 therefore still refuses metadata that expired before the last good
//! refresh (no freeze attack by resetting the clock), while loading never
//! fails because the clock went backwards: `open` never checks expiry.

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

/// OLPC canonical JSON, for the server's online timestamp signing.
pub use canonical::canonicalize;
pub use client::{RefreshOutcome, RoleSummary, TrustedMetadata, TufClient};
pub use transport::{FetchError, Fetched, FileTransport, Transport};

use crate::hash::{Digests, VerifyError};

/// Whether a delegation path `pattern` covers `target` as this client
/// judges it (`*` and `?` never cross a `/`; the numbers of segments must
/// be equal). `ota-repo` checks names with it before signing them into a
/// delegated role, so what it signs is what devices accept.
pub fn path_pattern_matches(pattern: &str, target: &str) -> bool {
    pattern::matches(pattern, target)
}
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
    // The cause is part of the message (one line says it all, in reports and
    // logs), so it is deliberately not also exposed as `source()`: error
    // chains would print it twice.
    #[error("fetching {url}: {error}")]
    Fetch { url: String, error: FetchError },
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
    #[error(
        "{role} metadata is invalid: key id {keyid} appears more than once in its signatures \
         (the TUF specification allows one signature per key id)"
    )]
    DuplicateSignature { role: String, keyid: String },
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
    #[error("target {target}: {error}")]
    TargetVerify { target: String, error: VerifyError },
    #[error("target {target} has invalid release fields: {detail}")]
    InvalidRelease { target: String, detail: String },
    #[error("invalid target name {name:?}: {detail}")]
    InvalidTargetName { name: String, detail: String },
    #[error("URL for {what}: {detail}")]
    Url { what: String, detail: String },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}
