//! `ota-repo evidence`: the record an auditor asks for under IEC 81001-5-1
//! for one release, written as Markdown (to read) and JSON (to archive and
//! check by machine). Every item names the clause it serves:
//!
//! * §5.8.3 (integrity of every release file): each file with its length,
//!   SHA-256 and SHA-512; the signatures on every role (valid ones counted
//!   against the threshold, as a device counts them); expiry dates; and an
//!   independent verification of the *published* repository by our device
//!   TUF client from a fresh trusted root, which downloads and hash-checks
//!   every file of the release.
//! * §5.8.4 (protection of private signing keys): the key inventory, with
//!   the protection attributes of each PKCS#11 key read back from the token
//!   (not what was asked for when it was generated), and the signing audit
//!   log's entries for the release with the result of checking its chain.
//!
//! The evidence is written even when a check fails, so the failure is on
//! record; [`Evidence::passed`] says whether it did.

use crate::audit::AuditEntry;
use crate::config::RepoConfig;
use crate::error::{RepoError, Result};
use crate::key_ref::KeyRef;
use crate::keys;
use crate::layout::Layout;
use crate::pkcs11::KeyProtection;
use crate::role::Role;
use crate::state::{dir_url, RepoState};
use ota_common::hash::{Digests, StreamVerifier};
use ota_common::tuf::{ClientOptions, FileTransport, Transport, TufClient};
use ota_common::wire::ReleaseCustom;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use tough::schema::{Root, Signed};
use url::Url;

/// IEC 81001-5-1 §5.8.3: integrity check for every release file.
pub const CLAUSE_INTEGRITY: &str = "IEC 81001-5-1 5.8.3";
/// IEC 81001-5-1 §5.8.4: protection of private signing keys.
pub const CLAUSE_KEYS: &str = "IEC 81001-5-1 5.8.4";
/// Largest metadata file read while looking for the release's audit entries.
const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

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
    pub sha512: String,
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
    /// Versions the client ended up trusting.
    pub root_version: Option<u64>,
    pub targets_version: Option<u64>,
    pub snapshot_version: Option<u64>,
    pub timestamp_version: Option<u64>,
    pub targets: Vec<TargetCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub name: String,
    pub passed: bool,
    /// `downloaded N bytes; length, sha256 and sha512 match`, or the failure.
    pub detail: String,
}

/// Builds the evidence. Runs blocking I/O (and, for [`Published::Url`],
/// a blocking HTTP client): call it outside an async runtime.
pub fn build(layout: &Layout, state: &RepoState, options: &EvidenceOptions) -> Result<Evidence> {
    let config = RepoConfig::load(layout)?;
    let now = jiff::Timestamp::now();
    let mut failures = Vec::new();
    let mut warnings = Vec::new();

    let release =
        semver::Version::parse(&options.release).map_err(|e| RepoError::InvalidVersion {
            value: options.release.clone(),
            detail: e.to_string(),
        })?;
    let files = release_files(layout, state, &release)?;

    let root = &state.root.signed;
    let roles = vec![
        role_evidence(Role::Root, &state.root, root, now)?,
        role_evidence(Role::Targets, &state.targets, root, now)?,
        role_evidence(Role::Snapshot, &state.snapshot, root, now)?,
        role_evidence(Role::Timestamp, &state.timestamp, root, now)?,
    ];
    let mut roles = roles;
    let signing_roles: BTreeSet<&str> = files.iter().map(|f| f.signed_by.as_str()).collect();
    for role in crate::delegation::roles(state) {
        if signing_roles.contains(role.name.as_str()) {
            roles.push(delegated_role_evidence(state, role, now)?);
        }
    }
    for r in &roles {
        if !r.threshold_met {
            failures.push(format!(
                "{} metadata has {} valid signature(s) of the {} required",
                r.role, r.valid_signatures, r.threshold
            ));
        }
        if r.expired {
            failures.push(format!("{} metadata expired at {}", r.role, r.expires));
        }
    }

    let keys = key_inventory(layout, &config, root, &mut warnings)?;
    let audit = audit_evidence(layout, &config, state, &files)?;
    if !audit.intact {
        failures.push(format!("audit log: {}", audit.verify_result));
    }
    let online_audit = match &options.online_audit {
        Some(file) => {
            let online =
                online_audit_evidence(file, &crate::editor::audit_log(layout, &config), &audit)?;
            if !online.intact {
                failures.push(format!("online audit log: {}", online.verify_result));
            }
            if online.entries.is_empty() {
                warnings.push(format!(
                    "the online audit log {} has no timestamp or snapshot signature made while release {} was current",
                    online.log, options.release
                ));
            }
            Some(online)
        }
        None => None,
    };

    let verification = verify_published(layout, options, &files);
    if !verification.passed {
        failures.push(match &verification.error {
            Some(e) => format!("independent verification failed: {e}"),
            None => {
                "independent verification failed for: ".to_owned()
                    + &verification
                        .targets
                        .iter()
                        .filter(|t| !t.passed)
                        .map(|t| format!("{} ({})", t.name, t.detail))
                        .collect::<Vec<_>>()
                        .join(", ")
            }
        });
    }

    Ok(Evidence {
        standard: "IEC 81001-5-1",
        generated_at: now.round(jiff::Unit::Second).unwrap_or(now).to_string(),
        repository: layout.root().display().to_string(),
        // Normalised, so it is safe in the file names.
        release: release.to_string(),
        passed: failures.is_empty(),
        failures,
        warnings,
        files,
        roles,
        keys,
        audit,
        online_audit,
        verification,
    })
}

/// Every target whose custom `version` is `release`.
fn release_files(
    layout: &Layout,
    state: &RepoState,
    release: &semver::Version,
) -> Result<Vec<ReleaseFile>> {
    let mut set = crate::publish::collect(layout, state)?;
    crate::delegation::extend_publish_set(layout, state, &mut set)?;
    let mut files = Vec::new();
    for t in set.targets {
        let Some((role, target)) = crate::delegation::locate(state, &t.name) else {
            continue;
        };
        let signed_by = role
            .map(|r| r.name.clone())
            .unwrap_or_else(|| Role::Targets.to_string());
        let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
        let Ok(r) = serde_json::from_value::<ReleaseCustom>(custom) else {
            continue;
        };
        if r.version != *release {
            continue;
        }
        files.push(ReleaseFile {
            clause: CLAUSE_INTEGRITY,
            name: t.name,
            version: r.version.to_string(),
            hardware_ids: r.hardware_ids,
            length: t.length,
            sha256: t.sha256,
            sha512: t.sha512,
            signed_by,
        });
    }
    if files.is_empty() {
        return Err(RepoError::InvalidArgument(format!(
            "no target of release {release} in the signed targets metadata (`ota-repo status` lists the releases)"
        )));
    }
    Ok(files)
}

fn role_evidence<T>(
    role: Role,
    signed: &Signed<T>,
    root: &Root,
    now: jiff::Timestamp,
) -> Result<RoleEvidence>
where
    T: tough::schema::Role + Serialize,
{
    let rk = root
        .roles
        .get(&role.role_type())
        .ok_or_else(|| RepoError::Inconsistent(format!("root lists no {role} role")))?;
    let role_ids: BTreeSet<String> = rk.keyids.iter().map(|id| hex::encode(&**id)).collect();
    let bytes = signed
        .signed
        .canonical_form()
        .map_err(|e| RepoError::Inconsistent(format!("serializing {role} metadata: {e}")))?;
    let mut signatures = Vec::new();
    let mut valid_ids = BTreeSet::new();
    for sig in &signed.signatures {
        let keyid = hex::encode(&*sig.keyid);
        let valid = role_ids.contains(&keyid)
            && root
                .keys
                .get(&sig.keyid)
                .is_some_and(|k| crate::editor::verify_signature(k, &bytes, &sig.sig));
        if valid {
            valid_ids.insert(keyid.clone());
        }
        signatures.push(SignatureEvidence { keyid, valid });
    }
    let expires = signed.signed.expires();
    let threshold = rk.threshold.get();
    Ok(RoleEvidence {
        clause: CLAUSE_INTEGRITY,
        role: role.to_string(),
        version: signed.signed.version().get(),
        expires: expires.to_string(),
        expired: expires <= now,
        threshold,
        keyids: role_ids.into_iter().collect(),
        signatures,
        valid_signatures: valid_ids.len() as u64,
        threshold_met: valid_ids.len() as u64 >= threshold,
    })
}

/// The signatures of a delegated role's current metadata, checked against
/// the keys and threshold the delegating top-level targets lists for it
/// (what devices check).
fn delegated_role_evidence(
    state: &RepoState,
    role: &tough::schema::DelegatedRole,
    now: jiff::Timestamp,
) -> Result<RoleEvidence> {
    let (_, signed) = crate::delegation::find(state, &role.name)?;
    let keys = state
        .targets
        .signed
        .delegations
        .as_ref()
        .map(|d| &d.keys)
        .ok_or_else(|| RepoError::Inconsistent("targets lists no delegations".to_owned()))?;
    let role_ids: BTreeSet<String> = role.keyids.iter().map(|id| hex::encode(&**id)).collect();
    let bytes = tough::schema::Role::canonical_form(&signed.signed)
        .map_err(|e| RepoError::Inconsistent(format!("serializing {} metadata: {e}", role.name)))?;
    let mut signatures = Vec::new();
    let mut valid_ids = BTreeSet::new();
    for sig in &signed.signatures {
        let keyid = hex::encode(&*sig.keyid);
        let valid = role_ids.contains(&keyid)
            && keys
                .get(&sig.keyid)
                .is_some_and(|k| crate::editor::verify_signature(k, &bytes, &sig.sig));
        if valid {
            valid_ids.insert(keyid.clone());
        }
        signatures.push(SignatureEvidence { keyid, valid });
    }
    let expires = signed.signed.expires;
    let threshold = role.threshold.get();
    Ok(RoleEvidence {
        clause: CLAUSE_INTEGRITY,
        role: role.name.clone(),
        version: signed.signed.version.get(),
        expires: expires.to_string(),
        expired: expires <= now,
        threshold,
        keyids: role_ids.into_iter().collect(),
        signatures,
        valid_signatures: valid_ids.len() as u64,
        threshold_met: valid_ids.len() as u64 >= threshold,
    })
}

fn key_inventory(
    layout: &Layout,
    config: &RepoConfig,
    root: &Root,
    warnings: &mut Vec<String>,
) -> Result<Vec<KeyEvidence>> {
    // Key id -> where repo.json says it lives.
    let mut refs: HashMap<String, KeyRef> = HashMap::new();
    for role in Role::ALL {
        for key_ref in &config.role(role)?.keys {
            match key_ref
                .public_key(Some(layout.root()))
                .and_then(|k| keys::key_id(&k))
            {
                Ok(id) => {
                    refs.insert(id, key_ref.clone());
                }
                Err(e) => warnings.push(format!("{role} key {key_ref} not reachable: {e}")),
            }
        }
    }
    let mut out = Vec::new();
    for role in Role::ALL {
        let Some(rk) = root.roles.get(&role.role_type()) else {
            continue;
        };
        for id in &rk.keyids {
            let keyid = hex::encode(&**id);
            let scheme = root
                .keys
                .get(id)
                .map(keys::describe)
                .unwrap_or_else(|| "?".to_owned());
            let mut k = KeyEvidence {
                clause: CLAUSE_KEYS,
                role: role.to_string(),
                keyid: keyid.clone(),
                scheme,
                storage: "offline",
                location: "offline (not in repo.json): kept on another machine or token".to_owned(),
                protection: None,
                protection_error: None,
            };
            match refs.get(&keyid) {
                Some(r @ KeyRef::File(_)) => {
                    k.storage = "software-file";
                    k.location = r.describe(Some(layout.root()));
                    warnings.push(format!(
                        "{role} key {keyid} is a software key file (development only): not acceptable for production releases"
                    ));
                }
                Some(r @ KeyRef::Pkcs11(uri)) => {
                    k.storage = "pkcs11";
                    k.location = r.describe(Some(layout.root()));
                    match uri.key_protection() {
                        Ok(p) => {
                            for weak in weaknesses(&p) {
                                warnings.push(format!("{role} key {keyid}: {weak}"));
                            }
                            k.protection = Some(p);
                        }
                        Err(e) => {
                            warnings.push(format!(
                                "{role} key {keyid}: protection attributes not read: {e}"
                            ));
                            k.protection_error = Some(e.to_string());
                        }
                    }
                }
                None => warnings.push(format!(
                    "{role} key {keyid} is offline: its protection attributes are not in this evidence (read them at the ceremony)"
                )),
            }
            out.push(k);
        }
    }
    Ok(out)
}

/// What in a token's answer falls short of a non-exportable signing key.
fn weaknesses(p: &KeyProtection) -> Vec<&'static str> {
    let mut out = Vec::new();
    if p.sensitive != Some(true) {
        out.push("CKA_SENSITIVE is not true");
    }
    if p.extractable != Some(false) {
        out.push("CKA_EXTRACTABLE is not false");
    }
    if p.never_extractable != Some(true) {
        out.push("CKA_NEVER_EXTRACTABLE is not true: the key may have been exported before");
    }
    if p.always_sensitive != Some(true) {
        out.push("CKA_ALWAYS_SENSITIVE is not true");
    }
    if p.local != Some(true) {
        out.push("CKA_LOCAL is not true: the key was imported, not generated in the token");
    }
    out
}

fn audit_evidence(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    files: &[ReleaseFile],
) -> Result<AuditEvidence> {
    let log = crate::editor::audit_log(layout, config);
    let (intact, verify_result) = verify_log(&log);
    let meta = layout.metadata_dir();
    // Targets versions that list every file of the release with the same hashes.
    let mut targets_versions = Vec::new();
    for v in 1..=state.targets.signed.version.get() {
        let Some(doc) = read_json(&meta.join(format!("{v}.targets.json"))) else {
            continue;
        };
        if lists_all(&doc, files.iter()) {
            targets_versions.push(v);
        }
    }
    let mut snapshot_versions = Vec::new();
    for v in 1..=state.snapshot.signed.version.get() {
        let Some(doc) = read_json(&meta.join(format!("{v}.snapshot.json"))) else {
            continue;
        };
        let tv = doc
            .pointer("/signed/meta/targets.json/version")
            .and_then(|v| v.as_u64());
        if tv.is_some_and(|tv| targets_versions.contains(&tv)) {
            snapshot_versions.push(v);
        }
    }
    // Versions of each delegated role that list every file it signed.
    let mut delegated_versions: Vec<(String, u64)> = Vec::new();
    for role in crate::delegation::roles(state) {
        let mine: Vec<&ReleaseFile> = files.iter().filter(|f| f.signed_by == role.name).collect();
        let Some(current) = role.targets.as_ref().map(|t| t.signed.version.get()) else {
            continue;
        };
        if mine.is_empty() {
            continue;
        }
        for v in 1..=current {
            let Some(doc) = read_json(&meta.join(format!("{v}.{}.json", role.name))) else {
                continue;
            };
            if lists_all(&doc, mine.iter().copied()) {
                delegated_versions.push((role.name.clone(), v));
            }
        }
    }
    // Older timestamps are not kept; the current one counts when it points
    // at a snapshot that contains the release.
    let timestamp_version = state.timestamp.signed.version.get();
    let current_snapshot = state.snapshot.signed.version.get();
    let timestamp_counts = snapshot_versions.contains(&current_snapshot);
    let entries = log
        .entries()
        .into_iter()
        .filter(|e| match e.role.as_str() {
            "targets" => targets_versions.contains(&e.version),
            "snapshot" => snapshot_versions.contains(&e.version),
            "timestamp" => timestamp_counts && e.version == timestamp_version,
            other => delegated_versions
                .iter()
                .any(|(r, v)| r == other && *v == e.version),
        })
        .collect();
    Ok(AuditEvidence {
        clause: CLAUSE_KEYS,
        log: log.path().display().to_string(),
        intact,
        verify_result,
        entries,
        targets_versions,
        snapshot_versions,
    })
}

/// Whether targets metadata `doc` lists each of `files` with its sha256.
fn lists_all<'a>(
    doc: &serde_json::Value,
    mut files: impl Iterator<Item = &'a ReleaseFile>,
) -> bool {
    files.all(|f| {
        doc.pointer("/signed/targets")
            .and_then(|t| t.get(&f.name))
            .and_then(|t| t.pointer("/hashes/sha256"))
            .and_then(|h| h.as_str())
            == Some(f.sha256.as_str())
    })
}

/// `(intact, what audit verify said)` for an audit log.
fn verify_log(log: &crate::audit::AuditLog) -> (bool, String) {
    match log.verify() {
        Ok(n) => (true, format!("audit log intact: {n} entries")),
        Err(e) => (false, e.to_string()),
    }
}

fn entry_time(e: &AuditEntry) -> Option<jiff::Timestamp> {
    e.time.parse().ok()
}

fn online_audit_evidence(
    file: &Path,
    repo_log: &crate::audit::AuditLog,
    audit: &AuditEvidence,
) -> Result<OnlineAuditEvidence> {
    // A missing file would verify as an empty log.
    if !file.is_file() {
        return Err(RepoError::InvalidArgument(format!(
            "--online-audit {}: no such file",
            file.display()
        )));
    }
    let log = crate::audit::AuditLog::at_file(file);
    let (intact, verify_result) = verify_log(&log);
    // The release became current with its first signature here ...
    let from = audit.entries.iter().filter_map(entry_time).min();
    // ... and stopped being so with a later snapshot that does not list it.
    let last_listing = audit.snapshot_versions.iter().max().copied();
    let until = from.and_then(|from| {
        repo_log
            .entries()
            .iter()
            .filter(|e| {
                e.role == "snapshot"
                    && last_listing.is_some_and(|v| e.version > v)
                    && !audit.snapshot_versions.contains(&e.version)
            })
            .filter_map(entry_time)
            .filter(|t| *t >= from)
            .min()
    });
    let entries = match from {
        Some(from) => log
            .entries()
            .into_iter()
            .filter(|e| e.role == "timestamp" || e.role == "snapshot")
            .filter(|e| entry_time(e).is_some_and(|t| t >= from && until.is_none_or(|u| t < u)))
            .collect(),
        None => Vec::new(),
    };
    Ok(OnlineAuditEvidence {
        clause: CLAUSE_KEYS,
        log: file.display().to_string(),
        intact,
        verify_result,
        from: from.map(|t| t.to_string()),
        until: until.map(|t| t.to_string()),
        entries,
    })
}

/// Audit entries as a Markdown table.
fn entry_table(o: &mut String, entries: &[AuditEntry]) {
    let _ = writeln!(
        o,
        "| seq | time (UTC) | operator | action | role | version | key id | key location | sha256 of signed bytes |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    for e in entries {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | `{}` | {} | `{}` |",
            e.seq,
            e.time,
            e.operator,
            e.action,
            e.role,
            e.version,
            e.keyid,
            e.key_location,
            e.sha256
        );
    }
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_METADATA_BYTES).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn verify_published(
    layout: &Layout,
    options: &EvidenceOptions,
    files: &[ReleaseFile],
) -> Verification {
    let root_path = options
        .trusted_root
        .clone()
        .unwrap_or_else(|| layout.metadata_dir().join("1.root.json"));
    let mut v = Verification {
        clause: CLAUSE_INTEGRITY,
        trusted_root: root_path.display().to_string(),
        trusted_root_sha256: String::new(),
        metadata_base: String::new(),
        targets_base: String::new(),
        passed: false,
        error: None,
        root_version: None,
        targets_version: None,
        snapshot_version: None,
        timestamp_version: None,
        targets: Vec::new(),
    };
    if let Err(e) = run_verification(layout, options, files, &root_path, &mut v) {
        v.error = Some(e);
    }
    v.passed =
        v.error.is_none() && v.targets.len() == files.len() && v.targets.iter().all(|t| t.passed);
    v
}

fn run_verification(
    layout: &Layout,
    options: &EvidenceOptions,
    files: &[ReleaseFile],
    root_path: &Path,
    v: &mut Verification,
) -> std::result::Result<(), String> {
    let root = std::fs::read(root_path)
        .map_err(|e| format!("reading the trusted root {}: {e}", root_path.display()))?;
    v.trusted_root_sha256 = hex::encode(Sha256::digest(&root));
    let url_err = |e: RepoError| e.to_string();
    let (metadata_base, targets_base) = match &options.published {
        Published::Repository => (
            dir_url(&layout.metadata_dir()).map_err(url_err)?,
            dir_url(&layout.targets_dir()).map_err(url_err)?,
        ),
        Published::Dir(dir) => (
            dir_url(&dir.join("metadata")).map_err(url_err)?,
            dir_url(&dir.join("targets")).map_err(url_err)?,
        ),
        Published::Url(base) => {
            let base = ClientOptions::new(base.clone(), base.clone()).metadata_base;
            let join = |rel: &str| {
                base.join(rel)
                    .map_err(|e| format!("--published-url {base}: {e}"))
            };
            (join("metadata/")?, join("targets/")?)
        }
    };
    v.metadata_base = metadata_base.to_string();
    v.targets_base = targets_base.to_string();
    // A fresh client state, as on a device that was just flashed.
    let state_dir = tempfile::tempdir()
        .map_err(|e| format!("creating a temporary directory for the client: {e}"))?;
    let client_options = ClientOptions::new(metadata_base, targets_base);
    match &options.published {
        Published::Url(_) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let transport = ota_common::tuf::http::HttpTransport::new(
                std::time::Duration::from_secs(60),
                concat!("ota-repo/", env!("CARGO_PKG_VERSION")),
            )
            .map_err(|e| format!("HTTP client: {e}"))?;
            verify_with(state_dir.path(), &root, client_options, transport, files, v)
        }
        Published::Repository | Published::Dir(_) => verify_with(
            state_dir.path(),
            &root,
            client_options,
            FileTransport,
            files,
            v,
        ),
    }
}

fn verify_with<T: Transport>(
    state_dir: &Path,
    root: &[u8],
    options: ClientOptions,
    transport: T,
    files: &[ReleaseFile],
    v: &mut Verification,
) -> std::result::Result<(), String> {
    TufClient::<T>::init(state_dir, root).map_err(|e| format!("trusted root: {e}"))?;
    let mut client =
        TufClient::open(state_dir, options, transport).map_err(|e| format!("TUF client: {e}"))?;
    let refreshed = client.refresh();
    let trusted = client.trusted();
    v.root_version = Some(trusted.root.version);
    v.timestamp_version = trusted.timestamp.as_ref().map(|r| r.version);
    v.snapshot_version = trusted.snapshot.as_ref().map(|r| r.version);
    v.targets_version = trusted.targets.as_ref().map(|r| r.version);
    refreshed.map_err(|e| format!("refreshing the published metadata: {e}"))?;
    for f in files {
        let detail = check_target(&mut client, f);
        v.targets.push(TargetCheck {
            name: f.name.clone(),
            passed: detail.is_ok(),
            detail: detail.unwrap_or_else(|e| e),
        });
    }
    Ok(())
}

/// Finds the file through the client's target search and streams it,
/// checking length and every digest as the bytes arrive (nothing is kept).
fn check_target<T: Transport>(
    client: &mut TufClient<T>,
    f: &ReleaseFile,
) -> std::result::Result<String, String> {
    let target = client
        .find_target(&f.name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "not listed by the published targets metadata".to_owned())?;
    let listed = (
        target.length,
        target.digests.sha256.map(hex::encode),
        target.digests.sha512.map(hex::encode),
    );
    if listed != (f.length, Some(f.sha256.clone()), Some(f.sha512.clone())) {
        return Err(format!(
            "published metadata lists length {} sha256 {} for it, the repository {} and {}",
            target.length,
            listed.1.unwrap_or_default(),
            f.length,
            f.sha256
        ));
    }
    let digests: Digests = target.digests.clone();
    let mut verifier = StreamVerifier::new(digests, target.length).map_err(|e| e.to_string())?;
    let mut reader = client.open_target(&target, 0).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("downloading: {e}")),
        };
        verifier.update(&buf[..n]).map_err(|e| e.to_string())?;
    }
    verifier.finish().map_err(|e| e.to_string())?;
    Ok(format!(
        "downloaded {} bytes; length, sha256 and sha512 match the signed metadata",
        target.length
    ))
}

impl Evidence {
    /// Writes `evidence-RELEASE.md` and `evidence-RELEASE.json` into `dir`
    /// (atomically each) and returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        ota_common::atomic::create_dir_all_durable(dir).map_err(RepoError::io(dir))?;
        let md = dir.join(format!("evidence-{}.md", self.release));
        let json = dir.join(format!("evidence-{}.json", self.release));
        let mut json_bytes = serde_json::to_vec_pretty(self).map_err(|source| RepoError::Json {
            path: json.clone(),
            source,
        })?;
        json_bytes.push(b'\n');
        ota_common::atomic::write_atomic(&json, &json_bytes).map_err(RepoError::io(&json))?;
        ota_common::atomic::write_atomic(&md, self.markdown().as_bytes())
            .map_err(RepoError::io(&md))?;
        Ok((md, json))
    }

    /// The human-readable report.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let yes = |b: bool| if b { "yes" } else { "**NO**" };
        let flag = |b: Option<bool>| match b {
            Some(true) => "true",
            Some(false) => "false",
            None => "not reported",
        };
        let _ = writeln!(o, "# Release evidence: {}\n", self.release);
        let _ = writeln!(
            o,
            "Standard: {}. Generated {} by `ota-repo evidence` from repository `{}`.\n",
            self.standard, self.generated_at, self.repository
        );
        let _ = writeln!(
            o,
            "**Result: {}**\n",
            if self.passed { "PASSED" } else { "FAILED" }
        );
        for f in &self.failures {
            let _ = writeln!(o, "* FAILED: {f}");
        }
        for w in &self.warnings {
            let _ = writeln!(o, "* Warning: {w}");
        }

        let _ = writeln!(o, "\n## 1. Release files ({CLAUSE_INTEGRITY})\n");
        let _ = writeln!(
            o,
            "Every file of the release is listed in the signed targets metadata with these values; devices refuse any byte that does not match.\n"
        );
        let _ = writeln!(
            o,
            "| file | hardware ids | length | SHA-256 | SHA-512 | signed by role |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for f in &self.files {
            let _ = writeln!(
                o,
                "| `{}` | {} | {} | `{}` | `{}` | {} |",
                f.name,
                f.hardware_ids.join(", "),
                f.length,
                f.sha256,
                f.sha512,
                f.signed_by
            );
        }

        let _ = writeln!(
            o,
            "\n## 2. Signatures and expiry of the metadata ({CLAUSE_INTEGRITY})\n"
        );
        let _ = writeln!(
            o,
            "| role | version | expires | threshold | valid signatures | threshold met | signing key ids |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|");
        for r in &self.roles {
            let ids = r
                .signatures
                .iter()
                .map(|s| format!("`{}`{}", s.keyid, if s.valid { "" } else { " (invalid)" }))
                .collect::<Vec<_>>()
                .join("<br>");
            let _ = writeln!(
                o,
                "| {} | {} | {}{} | {} of {} | {} | {} | {} |",
                r.role,
                r.version,
                r.expires,
                if r.expired { " **EXPIRED**" } else { "" },
                r.threshold,
                r.keyids.len(),
                r.valid_signatures,
                yes(r.threshold_met),
                ids
            );
        }

        let _ = writeln!(
            o,
            "\n## 3. Signing keys and their protection ({CLAUSE_KEYS})\n"
        );
        let _ = writeln!(
            o,
            "Attributes are read back from the token with C_GetAttributeValue, not taken from the generation request.\n"
        );
        let _ = writeln!(
            o,
            "| role | key id | scheme | where it lives | CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE | CKA_EXTRACTABLE | CKA_NEVER_EXTRACTABLE | CKA_LOCAL | CKA_PRIVATE | CKA_SIGN | CKA_ALLOWED_MECHANISMS |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for k in &self.keys {
            let (attrs, mechs) = match &k.protection {
                Some(p) => (
                    [
                        flag(p.sensitive),
                        flag(p.always_sensitive),
                        flag(p.extractable),
                        flag(p.never_extractable),
                        flag(p.local),
                        flag(p.private),
                        flag(p.sign),
                    ]
                    .join(" | "),
                    p.allowed_mechanisms
                        .as_ref()
                        .map(|m| {
                            if m.is_empty() {
                                "(empty: any)".to_owned()
                            } else {
                                m.join(", ")
                            }
                        })
                        .unwrap_or_else(|| "not supported by the token".to_owned()),
                ),
                None => {
                    let why = match (&k.protection_error, k.storage) {
                        (Some(e), _) => format!("not read: {e}"),
                        (None, "software-file") => {
                            "n/a: software key file (development only)".to_owned()
                        }
                        (None, _) => "n/a: offline key".to_owned(),
                    };
                    ([why.as_str(); 7].join(" | "), "–".to_owned())
                }
            };
            let token = k
                .protection
                .as_ref()
                .map(|p| {
                    format!(
                        " ({} {}, serial {})",
                        p.token_manufacturer, p.token_model, p.token_serial
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "| {} | `{}` | {} | {}{} | {} | {} |",
                k.role, k.keyid, k.scheme, k.location, token, attrs, mechs
            );
        }

        let _ = writeln!(o, "\n## 4. Signing audit log ({CLAUSE_KEYS})\n");
        let _ = writeln!(
            o,
            "Log `{}`: {}.\n",
            self.audit.log, self.audit.verify_result
        );
        let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            o,
            "Targets versions containing the release: {}; snapshot versions listing them: {}.\n",
            list(&self.audit.targets_versions),
            list(&self.audit.snapshot_versions)
        );
        entry_table(&mut o, &self.audit.entries);
        if let Some(online) = &self.online_audit {
            let _ = writeln!(o, "\n### Online signing by the server ({CLAUSE_KEYS})\n");
            let _ = writeln!(o, "Log `{}`: {}.\n", online.log, online.verify_result);
            let _ = writeln!(
                o,
                "Its timestamp and snapshot signatures from {} (the release's first signature in the repository's log) until {} (the repository's first snapshot without the release):\n",
                online.from.as_deref().unwrap_or("– (none in the repository's log)"),
                online.until.as_deref().unwrap_or("now")
            );
            entry_table(&mut o, &online.entries);
        }

        let v = &self.verification;
        let _ = writeln!(
            o,
            "\n## 5. Independent verification of the published repository ({CLAUSE_INTEGRITY})\n"
        );
        let _ = writeln!(
            o,
            "The device TUF client (ota-common, verification only) started from the trusted root `{}` (sha256 `{}`), walked the root chain and refreshed from `{}`, then downloaded every file of the release from `{}` and checked its length and digests.\n",
            v.trusted_root, v.trusted_root_sha256, v.metadata_base, v.targets_base
        );
        let ver = |x: Option<u64>| x.map(|x| x.to_string()).unwrap_or_else(|| "–".to_owned());
        let _ = writeln!(
            o,
            "Trusted after refresh: root {}, timestamp {}, snapshot {}, targets {}.\n",
            ver(v.root_version),
            ver(v.timestamp_version),
            ver(v.snapshot_version),
            ver(v.targets_version)
        );
        if let Some(e) = &v.error {
            let _ = writeln!(o, "**FAILED:** {e}\n");
        }
        let _ = writeln!(o, "| file | verified | detail |");
        let _ = writeln!(o, "|---|---|---|");
        for t in &v.targets {
            let _ = writeln!(o, "| `{}` | {} | {} |", t.name, yes(t.passed), t.detail);
        }
        let _ = writeln!(
            o,
            "\nResult of the independent verification: **{}**",
            if v.passed { "PASSED" } else { "FAILED" }
        );
        o
    }
}
