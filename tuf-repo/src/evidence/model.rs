//! What the evidence files hold.

use super::*;

/// Where the published repository that is verified independently lives.
#[derive(Debug, Clone)]
pub enum Published {
    /// The repository directory itself (`metadata/`, `targets/`).
    Repository,
    /// A directory written by `ota-repo publish --dir`.
    Dir(PathBuf),
    /// A server (`URL/metadata/`, `URL/targets/`), read over HTTP(S).
    Url(Url),
}

#[derive(Debug, Clone)]
pub struct EvidenceOptions {
    /// The release: targets whose custom `version` is this.
    pub release: String,
    /// The root devices ship with; default: the repository's `metadata/1.root.json`.
    pub trusted_root: Option<PathBuf>,
    pub published: Published,
    /// The server's online-signing log (`<audit_dir>/audit.jsonl`).
    pub online_audit: Option<PathBuf>,
}

/// Everything the evidence files hold.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub standard: &'static str,
    pub generated_at: String,
    pub repository: String,
    pub release: String,
    /// True when every check passed (see `failures` otherwise).
    pub passed: bool,
    pub failures: Vec<String>,
    /// Things an auditor should look at that do not fail the evidence
    /// (development keys, attributes not read, weak protection flags).
    pub warnings: Vec<String>,
    pub files: Vec<ReleaseFile>,
    pub roles: Vec<RoleEvidence>,
    pub keys: Vec<KeyEvidence>,
    pub audit: AuditEvidence,
    /// The server's online-signing log, when `--online-audit` gave it.
    pub online_audit: Option<OnlineAuditEvidence>,
    pub verification: Verification,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseFile {
    pub clause: &'static str,
    pub name: String,
    pub version: String,
    pub hardware_ids: Vec<String>,
    pub length: u64,
    pub sha256: String,
    /// Only when the target lists sha512.
    pub sha512: Option<String>,
    /// The role whose signed metadata lists the file: `targets`, or a
    /// delegated role's name (its signatures are in `roles`).
    pub signed_by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleEvidence {
    pub clause: &'static str,
    pub role: String,
    pub version: u64,
    pub expires: String,
    pub expired: bool,
    pub threshold: u64,
    pub keyids: Vec<String>,
    pub signatures: Vec<SignatureEvidence>,
    /// Distinct keys of the role whose signature verifies.
    pub valid_signatures: u64,
    pub threshold_met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SignatureEvidence {
    pub keyid: String,
    /// Made by a key of this role and verifies over the canonical bytes.
    pub valid: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyEvidence {
    pub clause: &'static str,
    pub role: String,
    pub keyid: String,
    pub scheme: String,
    /// `pkcs11`, `software-file` (development only) or `offline`.
    pub storage: &'static str,
    pub location: String,
    /// Read back from the token (PKCS#11 keys only).
    pub protection: Option<KeyProtection>,
    /// Why the attributes could not be read, when they could not.
    pub protection_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEvidence {
    pub clause: &'static str,
    pub log: String,
    pub intact: bool,
    /// `audit log intact: N entries`, or what `audit verify` found.
    pub verify_result: String,
    /// Signing events of the metadata versions that contain the release.
    pub entries: Vec<AuditEntry>,
    /// targets versions that list every file of the release.
    pub targets_versions: Vec<u64>,
    /// snapshot versions that list one of those targets versions.
    pub snapshot_versions: Vec<u64>,
}

/// The server's online signatures (timestamp, snapshot) of the release.
///
/// The server numbers the versions it signs itself (they are not the
/// repository's), so they are matched by time: its `timestamp` and
/// `snapshot` entries from the release's first signature in the
/// repository's log (`from`) up to the repository's first snapshot that no
/// longer lists the release (`until`, none while it is current).
#[derive(Debug, Clone, Serialize)]
pub struct OnlineAuditEvidence {
    pub clause: &'static str,
    pub log: String,
    pub intact: bool,
    /// `audit log intact: N entries`, or what `audit verify --log` found.
    pub verify_result: String,
    pub from: Option<String>,
    pub until: Option<String>,
    pub entries: Vec<AuditEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub clause: &'static str,
    pub trusted_root: String,
    pub trusted_root_sha256: String,
    pub metadata_base: String,
    pub targets_base: String,
    pub passed: bool,
    /// What failed before any target could be checked (refresh, setup).
    pub error: Option<String>,
    /// Versions the client ended up trusting (in the JSON, fields of the
    /// verification itself).
    #[serde(flatten)]
    pub trusted: TrustedVersions,
    pub targets: Vec<TargetCheck>,
}

/// The metadata versions the device client trusts after its refresh.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrustedVersions {
    pub root_version: Option<u64>,
    pub targets_version: Option<u64>,
    pub snapshot_version: Option<u64>,
    pub timestamp_version: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub name: String,
    pub passed: bool,
    /// `downloaded N bytes; length, sha256 [and sha512] match`, or the failure.
    pub detail: String,
}
