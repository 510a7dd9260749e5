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
//! root at merge time, not from the payload file.

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

/// `ceremony/<role>.json`: present while a version of `role` waits for signatures.
pub fn pending_path(layout: &Layout, role: Role) -> PathBuf {
    layout
        .root()
        .join(CEREMONY_DIR)
        .join(format!("{role}.json"))
}

/// `ceremony/<role>.signatures/`: the signatures accepted so far.
pub fn signatures_dir(layout: &Layout, role: Role) -> PathBuf {
    layout
        .root()
        .join(CEREMONY_DIR)
        .join(format!("{role}.signatures"))
}

/// Where an open ceremony keeps its payload and its signatures.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub payload: PathBuf,
    pub signatures: PathBuf,
    /// The directory holding both (fsynced when they go).
    pub dir: PathBuf,
}

impl Slot {
    pub(crate) fn top(layout: &Layout, role: Role) -> Self {
        Slot {
            payload: pending_path(layout, role),
            signatures: signatures_dir(layout, role),
            dir: layout.root().join(CEREMONY_DIR),
        }
    }
}

// ------------------------------------------------------------ role metadata

/// The metadata of one role, whichever it is.
#[derive(Debug, Clone)]
pub enum RoleMeta {
    Root(Root),
    Targets(Targets),
    Snapshot(Snapshot),
    Timestamp(Timestamp),
}

macro_rules! each_role {
    ($meta:expr, $m:ident => $e:expr) => {
        match $meta {
            RoleMeta::Root($m) => $e,
            RoleMeta::Targets($m) => $e,
            RoleMeta::Snapshot($m) => $e,
            RoleMeta::Timestamp($m) => $e,
        }
    };
}

impl RoleMeta {
    pub fn role(&self) -> Role {
        match self {
            RoleMeta::Root(_) => Role::Root,
            RoleMeta::Targets(_) => Role::Targets,
            RoleMeta::Snapshot(_) => Role::Snapshot,
            RoleMeta::Timestamp(_) => Role::Timestamp,
        }
    }

    pub fn version(&self) -> NonZeroU64 {
        each_role!(self, m => m.version())
    }

    pub fn expires(&self) -> jiff::Timestamp {
        each_role!(self, m => m.expires())
    }

    /// The bytes signatures cover.
    pub fn canonical(&self) -> Result<Vec<u8>> {
        each_role!(self, m => m.canonical_form())
            .map_err(|e| RepoError::Inconsistent(format!("serializing {}: {e}", self.role())))
    }

    fn to_value(&self) -> Result<serde_json::Value> {
        each_role!(self, m => serde_json::to_value(m))
            .map_err(|e| RepoError::Inconsistent(format!("serializing {}: {e}", self.role())))
    }

    /// Parses untrusted JSON as metadata of `role` (its `_type` must match).
    pub fn from_value(role: Role, value: serde_json::Value) -> Result<Self> {
        let bad = |e: serde_json::Error| {
            ceremony_err(format!("payload metadata is not {role} metadata: {e}"))
        };
        Ok(match role {
            Role::Root => RoleMeta::Root(serde_json::from_value(value).map_err(bad)?),
            Role::Targets => RoleMeta::Targets(serde_json::from_value(value).map_err(bad)?),
            Role::Snapshot => RoleMeta::Snapshot(serde_json::from_value(value).map_err(bad)?),
            Role::Timestamp => RoleMeta::Timestamp(serde_json::from_value(value).map_err(bad)?),
        })
    }

    /// The metadata file's bytes with these signatures.
    pub fn signed_file(&self, signatures: Vec<Signature>) -> Result<Vec<u8>> {
        each_role!(self, m => editor::signed_bytes(&Signed { signed: m.clone(), signatures }))
    }

    /// Signs with each key, recording every signature in the audit log.
    async fn sign_with(&self, keys: &[LoadedKey], log: &AuditLog) -> Result<Vec<Signature>> {
        each_role!(self, m => editor::signatures(m, keys, log).await)
    }

    /// The file name in `metadata/` (consistent snapshots).
    pub fn file_name(&self) -> String {
        match self {
            RoleMeta::Timestamp(_) => "timestamp.json".to_owned(),
            other => format!("{}.{}.json", other.version(), other.role()),
        }
    }
}

fn current_version(state: &RepoState, role: Role) -> NonZeroU64 {
    match role {
        Role::Root => state.root.signed.version,
        Role::Targets => state.targets.signed.version,
        Role::Snapshot => state.snapshot.signed.version,
        Role::Timestamp => state.timestamp.signed.version,
    }
}

fn next_version(state: &RepoState, role: Role) -> Result<NonZeroU64> {
    current_version(state, role)
        .checked_add(1)
        .ok_or_else(|| RepoError::Inconsistent(format!("{role} version cannot grow")))
}

// ---------------------------------------------------------------- payloads

impl Payload {
    /// The canonical bytes, checked against `sha256` and against the
    /// readable `metadata` (so what a signer reviews is what they sign).
    pub fn signed_bytes(&self) -> Result<Vec<u8>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.canonical)
            .map_err(|e| ceremony_err(format!("payload canonical bytes are not base64: {e}")))?;
        if sha256_hex(&bytes) != self.sha256 {
            return Err(ceremony_err(
                "payload sha256 does not match its canonical bytes",
            ));
        }
        let meta = self.meta()?;
        if meta.canonical()? != bytes {
            return Err(ceremony_err(
                "payload metadata differs from its canonical bytes",
            ));
        }
        if meta.version().get() != self.version {
            return Err(ceremony_err("payload version differs from its metadata"));
        }
        Ok(bytes)
    }

    pub fn meta(&self) -> Result<RoleMeta> {
        RoleMeta::from_value(self.role, self.metadata.clone())
    }

    pub fn root(&self) -> Result<Root> {
        match self.meta()? {
            RoleMeta::Root(root) => Ok(root),
            other => Err(ceremony_err(format!(
                "payload holds {} metadata, not root",
                other.role()
            ))),
        }
    }

    pub(crate) fn from_meta(
        meta: &RoleMeta,
        keys: BTreeMap<String, Key>,
        requirements: Vec<Requirement>,
        summary: Vec<String>,
    ) -> Result<Self> {
        let bytes = meta.canonical()?;
        Ok(Payload {
            format: PAYLOAD_FORMAT,
            role: meta.role(),
            version: meta.version().get(),
            sha256: sha256_hex(&bytes),
            canonical: base64::engine::general_purpose::STANDARD.encode(&bytes),
            metadata: meta.to_value()?,
            keys,
            requirements,
            summary,
            delegated: None,
            delegating_targets: None,
        })
    }
}

/// The keys of `role` in `root` and the threshold they must reach.
fn role_requirement(
    what: String,
    role: Role,
    root: &Root,
) -> Result<(Requirement, BTreeMap<String, Key>)> {
    let rk = root
        .roles
        .get(&role.role_type())
        .ok_or_else(|| RepoError::Inconsistent(format!("root lists no {role} role")))?;
    let mut keys = BTreeMap::new();
    for id in &rk.keyids {
        let key = root.keys.get(id).cloned().ok_or_else(|| {
            RepoError::Inconsistent(format!(
                "root lists {role} key {} without its public key",
                hex::encode(&**id)
            ))
        })?;
        keys.insert(hex::encode(&**id), key);
    }
    Ok((
        Requirement {
            what,
            threshold: rk.threshold.get(),
            keyids: keys.keys().cloned().collect(),
        },
        keys,
    ))
}

/// What a non-root role's signatures must meet under `root`.
fn requirements_under(
    role: Role,
    root: &Root,
) -> Result<(Vec<Requirement>, BTreeMap<String, Key>)> {
    let (req, keys) = role_requirement(
        format!("{role} keys of root version {}", root.version),
        role,
        root,
    )?;
    Ok((vec![req], keys))
}

/// Builds the payload for `new_root`, which follows `current`.
pub fn payload_for(current: &Root, new_root: &Root) -> Result<Payload> {
    let (old_req, old_keys) = role_requirement(
        format!("current root keys (version {})", current.version),
        Role::Root,
        current,
    )?;
    let (new_req, new_keys) = role_requirement(
        format!("new root keys (version {})", new_root.version),
        Role::Root,
        new_root,
    )?;
    let keys = old_keys.into_iter().chain(new_keys).collect();
    let meta = RoleMeta::Root(new_root.clone());
    Payload::from_meta(
        &meta,
        keys,
        vec![old_req, new_req],
        summarize_root(current, new_root),
    )
}

fn header(meta: &RoleMeta) -> String {
    format!(
        "{} version {}, expires {}",
        meta.role(),
        meta.version(),
        meta.expires()
    )
}

fn describe_metafile(name: &str, m: &Metafile) -> String {
    let sha = m
        .hashes
        .as_ref()
        .map(|h| hex::encode(&*h.sha256))
        .unwrap_or_else(|| "(no hash)".to_owned());
    let len = m
        .length
        .map(|l| format!("{l} bytes"))
        .unwrap_or_else(|| "no length".to_owned());
    format!("{name}: version {}, {len}, sha256 {sha}", m.version)
}

fn summarize_root(current: &Root, new_root: &Root) -> Vec<String> {
    let mut lines = vec![header(&RoleMeta::Root(new_root.clone()))];
    for role in Role::ALL {
        let ids = |root: &Root| -> (u64, BTreeSet<String>) {
            root.roles
                .get(&role.role_type())
                .map(|rk| {
                    (
                        rk.threshold.get(),
                        rk.keyids.iter().map(|id| hex::encode(&**id)).collect(),
                    )
                })
                .unwrap_or_default()
        };
        let (old_t, old_ids) = ids(current);
        let (new_t, new_ids) = ids(new_root);
        let mut line = format!("{role}: threshold {new_t} of {} key(s)", new_ids.len());
        if old_t != new_t {
            line.push_str(&format!(" (was {old_t})"));
        }
        for id in new_ids.difference(&old_ids) {
            line.push_str(&format!("; key added {id}"));
        }
        for id in old_ids.difference(&new_ids) {
            line.push_str(&format!("; key removed {id}"));
        }
        lines.push(line);
    }
    lines
}

fn describe_target(name: &str, t: &tough::schema::Target) -> String {
    let sha512 = t
        .hashes
        ._extra
        .get("sha512")
        .and_then(|v| v.as_str())
        .unwrap_or("(none)");
    let custom = |k: &str| {
        t.custom
            .get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".to_owned())
    };
    format!(
        "{name}: {} bytes, sha256 {}, sha512 {sha512}, version {}, hardware ids {}{}",
        t.length,
        hex::encode(&*t.hashes.sha256),
        custom("version"),
        custom("hardware_ids"),
        if t.custom.contains_key("rollout") {
            ", staged rollout"
        } else {
            ""
        }
    )
}

/// The summary a signer reads: for targets, every target added, removed
/// or changed relative to the repository's current targets.
fn summarize(meta: &RoleMeta, state: &RepoState) -> Vec<String> {
    let mut lines = vec![header(meta)];
    match meta {
        RoleMeta::Root(root) => return summarize_root(&state.root.signed, root),
        RoleMeta::Targets(new) => {
            lines.extend(summarize_targets(&state.targets.signed.targets, new));
        }
        RoleMeta::Snapshot(s) => {
            for (name, m) in &s.meta {
                lines.push(describe_metafile(name, m));
            }
        }
        RoleMeta::Timestamp(t) => {
            for (name, m) in &t.meta {
                lines.push(describe_metafile(name, m));
            }
        }
    }
    lines
}

/// Every target `new` adds, removes or changes relative to `old`.
pub(crate) fn summarize_targets(
    old: &std::collections::HashMap<tough::TargetName, tough::schema::Target>,
    new: &Targets,
) -> Vec<String> {
    let mut lines = Vec::new();
    {
        {
            let mut names: Vec<_> = old.keys().chain(new.targets.keys()).collect();
            names.sort_by(|a, b| a.raw().cmp(b.raw()));
            names.dedup();
            let mut changes = 0;
            for name in names {
                match (old.get(name), new.targets.get(name)) {
                    (None, Some(t)) => {
                        lines.push(format!("added {}", describe_target(name.raw(), t)))
                    }
                    (Some(t), None) => {
                        lines.push(format!("removed {}", describe_target(name.raw(), t)))
                    }
                    (Some(a), Some(b)) if a != b => {
                        lines.push(format!("changed {}", describe_target(name.raw(), b)))
                    }
                    _ => continue,
                }
                changes += 1;
            }
            if changes == 0 {
                lines.push("no target added, removed or changed (a re-signing)".to_owned());
            }
            lines.push(format!("{} target(s) listed in all", new.targets.len()));
            lines.push(match &new.delegations {
                Some(d) => format!(
                    "delegations: {}",
                    d.roles
                        .iter()
                        .map(|r| format!(
                            "{} (paths {}; threshold {} of {} key(s))",
                            r.name,
                            crate::delegation::paths_of(r).join(", "),
                            r.threshold,
                            r.keyids.len()
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                None => "delegations: none".to_owned(),
            });
        }
    }
    lines
}

// ------------------------------------------------------- counting signatures

/// Valid signatures by distinct key, and what was not counted and why.
#[derive(Debug, Default)]
struct Tally {
    /// Key id -> (signature, file it came from).
    accepted: BTreeMap<String, (Vec<u8>, PathBuf)>,
    rejected: Vec<String>,
    /// (requirement, distinct keys of it that signed).
    counts: Vec<(Requirement, u64)>,
}

impl Tally {
    fn missing(&self) -> Vec<String> {
        self.counts
            .iter()
            .filter(|(r, have)| *have < r.threshold)
            .map(|(r, have)| {
                format!(
                    "{have} of {} required signatures from the {} ({} key(s))",
                    r.threshold,
                    r.what,
                    r.keyids.len()
                )
            })
            .collect()
    }

    fn signatures(&self) -> Result<Vec<Signature>> {
        self.accepted
            .iter()
            .map(|(id, (sig, _))| {
                let keyid =
                    hex::decode(id).map_err(|e| ceremony_err(format!("key id {id}: {e}")))?;
                Ok(Signature {
                    keyid: keyid.into(),
                    sig: sig.clone().into(),
                })
            })
            .collect()
    }
}

/// Checks each signature against the payload's bytes and keys, counting a
/// key once however many files it signed.
fn tally(payload: &Payload, bytes: &[u8], sigs: &[(PathBuf, DetachedSignature)]) -> Tally {
    let mut t = Tally::default();
    let role = payload.role;
    for (path, s) in sigs {
        let name = path.display();
        if s.role != role || s.delegated != payload.delegated {
            let signed = s.delegated.clone().unwrap_or_else(|| s.role.to_string());
            t.rejected.push(format!(
                "{name}: signs {signed} metadata, not {}",
                payload.role_name()
            ));
            continue;
        }
        if s.version != payload.version {
            t.rejected.push(format!(
                "{name}: signs {role} version {}, but the open ceremony is for version {}",
                s.version, payload.version
            ));
            continue;
        }
        if s.payload_sha256 != payload.sha256 {
            t.rejected.push(format!(
                "{name}: signs other bytes (sha256 {}) than {role} version {} (sha256 {}): the signer was given another payload",
                s.payload_sha256, payload.version, payload.sha256
            ));
            continue;
        }
        let Some(key) = payload.keys.get(&s.keyid) else {
            t.rejected.push(format!(
                "{name}: key {} is not one of the keys {role} version {} accepts ({}): revoked, never added, or another role's",
                s.keyid,
                payload.version,
                payload
                    .requirements
                    .iter()
                    .map(|r| r.what.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        };
        let Ok(sig) = hex::decode(&s.sig) else {
            t.rejected.push(format!("{name}: signature is not hex"));
            continue;
        };
        if !editor::verify_signature(key, bytes, &sig) {
            t.rejected.push(format!(
                "{name}: signature by key {} does not verify",
                s.keyid
            ));
            continue;
        }
        // Thresholds count keys: a second signature by a key adds nothing.
        if let Some((_, first)) = t.accepted.get(&s.keyid) {
            t.rejected.push(format!(
                "{name}: key {} already signed ({}); counted once",
                s.keyid,
                first.display()
            ));
            continue;
        }
        t.accepted.insert(s.keyid.clone(), (sig, path.clone()));
    }
    let ids: BTreeSet<&String> = t.accepted.keys().collect();
    t.counts = payload
        .requirements
        .iter()
        .map(|r| {
            let have = r.keyids.iter().filter(|id| ids.contains(id)).count() as u64;
            (r.clone(), have)
        })
        .collect();
    t
}

/// Counts valid signatures by distinct key ids against each requirement.
/// Returns the accepted signatures, or an error saying what is missing.
pub fn check_signatures(
    payload: &Payload,
    sigs: &[(PathBuf, DetachedSignature)],
) -> Result<Vec<Signature>> {
    let bytes = payload.signed_bytes()?;
    let t = tally(payload, &bytes, sigs);
    let missing = t.missing();
    if !missing.is_empty() {
        let mut msg = format!(
            "{} version {} is NOT signed: {}",
            payload.role,
            payload.version,
            missing.join("; ")
        );
        if !t.rejected.is_empty() {
            msg.push_str(&format!(" (not counted: {})", t.rejected.join("; ")));
        }
        return Err(ceremony_err(msg));
    }
    t.signatures()
}

// ------------------------------------------------------------ stored state

pub(crate) fn stored_signatures_in(slot: &Slot) -> Result<Vec<(PathBuf, DetachedSignature)>> {
    let dir = slot.signatures.clone();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(RepoError::Io {
                path: dir,
                source: e,
            })
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(RepoError::io(&dir))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
        if paths.len() > MAX_STORED_SIGNATURES {
            return Err(ceremony_err(format!(
                "{} holds more than {MAX_STORED_SIGNATURES} signature files",
                dir.display()
            )));
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| read_json(&p).map(|s| (p, s)))
        .collect()
}

pub(crate) fn store_signature_in(slot: &Slot, sig: &DetachedSignature) -> Result<()> {
    // Key ids are hex (they matched a key of the role): safe as a file name.
    if !sig.keyid.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ceremony_err(format!("key id {:?} is not hex", sig.keyid)));
    }
    write_json(&slot.signatures.join(format!("{}.json", sig.keyid)), sig)
}

/// Ends a ceremony: the payload first (its presence is what "open" means),
/// then the signatures kept for it.
fn close(layout: &Layout, role: Role) -> Result<()> {
    close_slot(&Slot::top(layout, role))
}

pub(crate) fn close_slot(slot: &Slot) -> Result<()> {
    let pending = slot.payload.clone();
    match std::fs::remove_file(&pending) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(RepoError::Io {
                path: pending,
                source: e,
            })
        }
    }
    let dir = slot.signatures.clone();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(RepoError::Io {
                path: dir,
                source: e,
            })
        }
    }
    let ceremony_dir = slot.dir.clone();
    if !ceremony_dir.exists() {
        return Ok(());
    }
    ota_common::atomic::fsync_dir(&ceremony_dir).map_err(RepoError::io(&ceremony_dir))
}

/// Opens a ceremony: old signatures out, the local ones in, the payload last.
fn open(layout: &Layout, payload: &Payload, local: &[DetachedSignature]) -> Result<()> {
    open_slot(&Slot::top(layout, payload.role), payload, local)
}

pub(crate) fn open_slot(slot: &Slot, payload: &Payload, local: &[DetachedSignature]) -> Result<()> {
    close_slot(slot)?;
    for sig in local {
        store_signature_in(slot, sig)?;
    }
    write_json(&slot.payload, payload)
}

/// Stores `new_root` as the pending root ceremony of the repository.
pub fn stage(layout: &Layout, current: &Root, new_root: &Root) -> Result<Payload> {
    let payload = payload_for(current, new_root)?;
    open(layout, &payload, &[])?;
    Ok(payload)
}

/// A role version waiting for signatures.
#[derive(Debug, Clone)]
pub struct PendingRole {
    pub role: Role,
    /// The delegated targets role waiting (`role` is then `targets`).
    pub delegated: Option<String>,
    pub version: u64,
    /// Per requirement: what, signatures counted, threshold, keys.
    pub counts: Vec<(String, u64, u64, usize)>,
    pub payload: PathBuf,
}

impl PendingRole {
    /// e.g. "targets version 3 is pending signatures: 1 of 2 signatures
    /// from the targets keys of root version 1 (3 keys)".
    pub fn describe(&self) -> String {
        format!(
            "{} version {} is pending signatures: {}",
            self.name(),
            self.version,
            self.counts
                .iter()
                .map(|(what, have, need, n)| format!(
                    "{have} of {need} signatures from the {what} ({n} key(s))"
                ))
                .collect::<Vec<_>>()
                .join(" and ")
        )
    }

    /// The commands that finish it.
    /// `targets`, or the delegated role's name.
    pub fn name(&self) -> String {
        self.delegated
            .clone()
            .unwrap_or_else(|| self.role.as_str().to_owned())
    }

    pub fn next_steps(&self) -> String {
        let r = self.name();
        format!(
            "`ota-repo ceremony export --role {r} --out FILE`, `ota-repo sign --payload FILE` by each key holder, then `ota-repo ceremony merge --role {r} SIG...` (or `ota-repo ceremony abandon --role {r}`)"
        )
    }
}

fn pending_status(layout: &Layout, payload: &Payload) -> Result<PendingRole> {
    pending_status_in(&Slot::top(layout, payload.role), payload)
}

pub(crate) fn pending_status_in(slot: &Slot, payload: &Payload) -> Result<PendingRole> {
    let bytes = payload.signed_bytes()?;
    let t = tally(payload, &bytes, &stored_signatures_in(slot)?);
    Ok(PendingRole {
        role: payload.role,
        delegated: payload.delegated.clone(),
        version: payload.version,
        counts: t
            .counts
            .iter()
            .map(|(r, have)| (r.what.clone(), *have, r.threshold, r.keyids.len()))
            .collect(),
        payload: slot.payload.clone(),
    })
}

/// Every open ceremony, with the signatures it has so far.
pub fn pending(layout: &Layout) -> Result<Vec<PendingRole>> {
    let mut out = Vec::new();
    for role in Role::ALL {
        let path = pending_path(layout, role);
        if !path.exists() {
            continue;
        }
        let payload: Payload = read_json(&path)?;
        if payload.role != role {
            return Err(ceremony_err(format!(
                "{} holds a {} payload",
                path.display(),
                payload.role
            )));
        }
        out.push(pending_status(layout, &payload)?);
    }
    out.extend(crate::delegation_ceremony::pending(layout)?);
    Ok(out)
}

/// The gate `publish` passes first: no role below its threshold. A
/// pending version is not in `metadata/` yet, so publishing now would ship
/// the previous one while the release engineer believes the new one is out.
pub fn ensure_nothing_pending(layout: &Layout) -> Result<()> {
    let open = pending(layout)?;
    if open.is_empty() {
        return Ok(());
    }
    Err(ceremony_err(format!(
        "refusing to publish: {}. Collect the signatures with {}",
        open.iter()
            .map(PendingRole::describe)
            .collect::<Vec<_>>()
            .join("; "),
        open.iter()
            .map(PendingRole::next_steps)
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

fn open_in_chain(layout: &Layout) -> Option<Role> {
    CHAIN
        .into_iter()
        .find(|r| pending_path(layout, *r).exists())
}

pub(crate) fn refuse_open_chain(layout: &Layout, doing: &str) -> Result<()> {
    if let Some(open) = open_in_chain(layout) {
        return Err(ceremony_err(format!(
            "{open} is waiting for signatures ({}); finish it with `ota-repo ceremony merge --role {open} SIG...` or abandon it with `ota-repo ceremony abandon --role {open}` before {doing}",
            pending_path(layout, open).display()
        )));
    }
    Ok(())
}

/// The check `add` (and any new targets content) makes for each role
/// before irreversible work: no targets/snapshot/timestamp version is
/// already waiting for signatures, and every key repo.json lists for
/// `role` opens. Fewer keys than the threshold is fine (the rest sign in
/// a ceremony); a listed key that fails is not: a missing PIN or a
/// revoked key must not silently turn a release into a ceremony.
pub fn ensure_signable(
    layout: &Layout,
    config: &RepoConfig,
    role: Role,
    root: &Root,
) -> Result<()> {
    refuse_open_chain(layout, "signing new metadata")?;
    let local = editor::local_keys(layout, config, role, root)?;
    if (local.usable.len() as u64) < local.threshold && !local.problems.is_empty() {
        return Err(editor::threshold_unreachable(role, &local));
    }
    Ok(())
}

// ----------------------------------------------------------- signing chain

/// What one signing step produces next.
enum Step {
    /// New targets content (version and expiry are set here).
    Targets(Targets),
    /// A snapshot listing these files (`targets.json` and delegated roles).
    Snapshot(std::collections::HashMap<String, Metafile>),
    /// A timestamp listing this snapshot file.
    Timestamp(Metafile),
    /// Metadata complete with its signatures (a merged ceremony).
    Signed(RoleMeta, Vec<Signature>),
}

fn build(
    step: Step,
    state: &RepoState,
    expires: &BTreeMap<Role, jiff::Timestamp>,
) -> Result<RoleMeta> {
    let expiry = |role: Role| {
        expires
            .get(&role)
            .copied()
            .ok_or_else(|| RepoError::Inconsistent(format!("no expiry chosen for {role}")))
    };
    Ok(match step {
        Step::Targets(mut targets) => {
            targets.version = next_version(state, Role::Targets)?;
            targets.expires = expiry(Role::Targets)?;
            RoleMeta::Targets(targets)
        }
        Step::Snapshot(meta) => {
            let mut s = Snapshot::new(
                editor::SPEC_VERSION.to_owned(),
                next_version(state, Role::Snapshot)?,
                expiry(Role::Snapshot)?,
            );
            s.meta = meta;
            RoleMeta::Snapshot(s)
        }
        Step::Timestamp(snapshot_meta) => {
            let mut t = Timestamp::new(
                editor::SPEC_VERSION.to_owned(),
                next_version(state, Role::Timestamp)?,
                expiry(Role::Timestamp)?,
            );
            t.meta.insert("snapshot.json".to_owned(), snapshot_meta);
            RoleMeta::Timestamp(t)
        }
        Step::Signed(meta, _) => meta,
    })
}

/// Signs `meta` with the keys here; when they stay below the threshold,
/// returns the payload to stage with the signatures they made.
async fn sign_here(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    meta: &RoleMeta,
    log: &AuditLog,
) -> Result<std::result::Result<Vec<Signature>, (Payload, Vec<DetachedSignature>)>> {
    let role = meta.role();
    let root = &state.root.signed;
    let local = editor::local_keys(layout, config, role, root)?;
    let short = (local.usable.len() as u64) < local.threshold;
    if short && !local.problems.is_empty() {
        return Err(editor::threshold_unreachable(role, &local));
    }
    let signatures = meta.sign_with(&local.usable, log).await?;
    if !short {
        return Ok(Ok(signatures));
    }
    let (requirements, keys) = requirements_under(role, root)?;
    let payload = Payload::from_meta(meta, keys, requirements, summarize(meta, state))?;
    let detached = signatures
        .iter()
        .map(|s| DetachedSignature {
            role,
            version: payload.version,
            payload_sha256: payload.sha256.clone(),
            keyid: hex::encode(&*s.keyid),
            sig: hex::encode(&*s.sig),
            delegated: None,
        })
        .collect();
    Ok(Err((payload, detached)))
}

/// What a signing run wrote and what it left waiting.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// (role, version) written to `metadata/`, in order.
    pub signed: Vec<(Role, u64)>,
    /// The role version now waiting for signatures, if any.
    pub pending: Option<PendingRole>,
}

/// Signs `first` and what depends on it (targets ⇒ snapshot ⇒ timestamp)
/// as far as the keys here reach; the first role they cannot sign to its
/// threshold is staged as a ceremony and the chain stops there.
/// `completing` is the ceremony whose metadata `first` is: it is closed
/// once that metadata is written, before the next ceremony opens.
async fn run_chain(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    first: Step,
    expires: &BTreeMap<Role, jiff::Timestamp>,
    completing: Option<Role>,
    delegated: &BTreeMap<String, Metafile>,
) -> Result<Progress> {
    let log = editor::audit_log(layout, config);
    let mut files = MetadataFiles::default();
    let mut progress = Progress::default();
    let mut staged = None;
    let mut step = Some(first);
    while let Some(s) = step.take() {
        let preset = match &s {
            Step::Signed(_, sigs) => Some(sigs.clone()),
            _ => None,
        };
        let meta = build(s, state, expires)?;
        let signatures = match preset {
            Some(sigs) => sigs,
            None => match sign_here(layout, config, state, &meta, &log).await? {
                Ok(sigs) => sigs,
                Err(stage) => {
                    staged = Some(stage);
                    break;
                }
            },
        };
        let bytes = meta.signed_file(signatures)?;
        let version = meta.version();
        progress.signed.push((meta.role(), version.get()));
        step = match &meta {
            RoleMeta::Targets(t) => Some(Step::Snapshot(editor::snapshot_meta(
                layout,
                state,
                t,
                editor::metafile(&bytes, version),
                delegated,
            )?)),
            RoleMeta::Snapshot(_) => Some(Step::Timestamp(editor::metafile(&bytes, version))),
            RoleMeta::Timestamp(_) | RoleMeta::Root(_) => None,
        };
        match &meta {
            RoleMeta::Timestamp(_) => files.timestamp = Some(bytes),
            other => files.versioned.push((other.file_name(), bytes)),
        }
    }
    // Versioned files first (unreferenced until a timestamp points at
    // them), then the ceremony that waits on them.
    // The next ceremony opens before the completed one closes: a power cut
    // in between leaves both open, and `heal` sees that the next one lists
    // the completed version. The other order would leave the completed
    // version's file unreferenced and its collected signatures gone.
    editor::write_metadata(layout, &files)?;
    if let Some((payload, local)) = staged {
        open(layout, &payload, &local)?;
        let status = pending_status(layout, &payload)?;
        tracing::info!("{}", status.describe());
        progress.pending = Some(status);
    }
    if let Some(role) = completing {
        close(layout, role)?;
    }
    Ok(progress)
}

fn current_metafile(
    layout: &Layout,
    role: impl std::fmt::Display,
    version: NonZeroU64,
) -> Result<Metafile> {
    let path = layout.metadata_dir().join(format!("{version}.{role}.json"));
    let bytes = std::fs::read(&path).map_err(RepoError::io(&path))?;
    Ok(editor::metafile(&bytes, version))
}

/// Commits `targets`, already signed (by `delegate`, for a delegated role
/// whose version 1 was signed in a ceremony), then signs (or stages) a
/// snapshot listing it and `delegated`, and a timestamp.
pub(crate) async fn commit_signed_targets(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    targets: Signed<Targets>,
    expires: &BTreeMap<Role, jiff::Timestamp>,
    delegated: &BTreeMap<String, Metafile>,
) -> Result<Progress> {
    refuse_open_chain(layout, "signing new metadata")?;
    let expires = chain_expiries(config, expires, jiff::Timestamp::now())?;
    run_chain(
        layout,
        config,
        state,
        Step::Signed(RoleMeta::Targets(targets.signed), targets.signatures),
        &expires,
        None,
        delegated,
    )
    .await
}

/// Expiries for the chain roles, from `given` or else the policy in repo.json.
fn chain_expiries(
    config: &RepoConfig,
    given: &BTreeMap<Role, jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Result<BTreeMap<Role, jiff::Timestamp>> {
    let mut out = BTreeMap::new();
    for role in CHAIN {
        let t = match given.get(&role) {
            Some(t) => *t,
            None => {
                let t = config.role(role)?.expiry()?.resolve(now)?;
                editor::ensure_future(role, t, now, false)?;
                t
            }
        };
        out.insert(role, t);
    }
    Ok(out)
}

/// Signs the plan's roles with the keys here, like `editor::sign_plan` and
/// `editor::write_metadata`, except that a role whose keys here stay below
/// its threshold is staged as a ceremony instead of failing: the first such
/// role waits in `ceremony/<role>.json`, and what depends on it is signed
/// when it is merged. Root is not staged here (see `rotate`).
pub async fn sign_or_stage(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    plan: SignPlan,
) -> Result<Progress> {
    // No `heal` here: callers heal before writing what this plan lists
    // (a delegated role's new file is unreferenced until this run ends).
    let roles = plan.roles();
    if plan.root {
        let files = editor::sign_plan(layout, config, state, plan).await?;
        editor::write_metadata(layout, &files)?;
        return Ok(Progress {
            signed: roles
                .iter()
                .map(|r| Ok((*r, next_version(state, *r)?.get())))
                .collect::<Result<_>>()?,
            pending: None,
        });
    }
    refuse_open_chain(layout, "signing new metadata")?;
    let first = if let Some(targets) = plan.new_targets.clone() {
        Step::Targets(targets)
    } else if plan.resign_targets {
        Step::Targets(state.targets.signed.clone())
    } else if plan.snapshot {
        Step::Snapshot(editor::snapshot_meta(
            layout,
            state,
            &state.targets.signed,
            current_metafile(layout, Role::Targets, state.targets.signed.version)?,
            &plan.delegated,
        )?)
    } else if plan.timestamp {
        Step::Timestamp(current_metafile(
            layout,
            Role::Snapshot,
            state.snapshot.signed.version,
        )?)
    } else {
        return Ok(Progress::default());
    };
    let expires = chain_expiries(config, &plan.expires, jiff::Timestamp::now())?;
    run_chain(
        layout,
        config,
        state,
        first,
        &expires,
        None,
        &plan.delegated,
    )
    .await
}

// ------------------------------------------------------------ the commands

/// `ceremony export`: the pending version of `role`, or else a new one
/// (the next version with a fresh expiry: a re-signing by offline keys),
/// written to `out`.
pub async fn export(
    layout: &Layout,
    role: Role,
    expires: Option<Expiry>,
    out: &Path,
) -> Result<Payload> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    heal(layout, &state)?;
    let pending = pending_path(layout, role);
    let payload = if pending.exists() {
        let p: Payload = read_json(&pending)?;
        if expires.is_some() {
            return Err(ceremony_err(format!(
                "{role} version {} is already staged ({}); --expires applies only when starting a ceremony",
                p.version,
                pending.display()
            )));
        }
        p
    } else {
        let now = jiff::Timestamp::now();
        let policy = match expires {
            Some(e) => e,
            None => config.role(role)?.expiry()?,
        };
        let when = policy.resolve(now)?;
        editor::ensure_future(role, when, now, false)?;
        if role == Role::Root {
            let mut root = state.root.signed.clone();
            root.version = next_version(&state, Role::Root)?;
            root.expires = when;
            stage(layout, &state.root.signed, &root)?
        } else {
            refuse_open_chain(layout, &format!("starting a {role} ceremony"))?;
            let step = match role {
                Role::Snapshot => Step::Snapshot(editor::snapshot_meta(
                    layout,
                    &state,
                    &state.targets.signed,
                    current_metafile(layout, Role::Targets, state.targets.signed.version)?,
                    &BTreeMap::new(),
                )?),
                Role::Timestamp => Step::Timestamp(current_metafile(
                    layout,
                    Role::Snapshot,
                    state.snapshot.signed.version,
                )?),
                _ => Step::Targets(state.targets.signed.clone()),
            };
            let meta = build(step, &state, &BTreeMap::from([(role, when)]))?;
            let log = editor::audit_log(layout, &config);
            match sign_here(layout, &config, &state, &meta, &log).await? {
                Ok(_) => {
                    return Err(ceremony_err(format!(
                        "the {role} keys here reach the threshold: re-sign with `ota-repo resign --role {role}` instead of a ceremony"
                    )))
                }
                Err((payload, local)) => {
                    open(layout, &payload, &local)?;
                    payload
                }
            }
        }
    };
    payload.signed_bytes()?;
    write_json(out, &payload)?;
    Ok(payload)
}

/// `ceremony abandon`: closes the open ceremony of `role`. Versioned files
/// that only the abandoned chain referenced (a targets version whose
/// snapshot was never completed) are removed too: no snapshot lists them,
/// so they were never published, and leaving them would block the next
/// version of that number.
pub async fn abandon(layout: &Layout, role: Role) -> Result<u64> {
    let pending = pending_path(layout, role);
    if !pending.exists() {
        return Err(ceremony_err(format!(
            "no {role} ceremony is open ({} missing)",
            pending.display()
        )));
    }
    let payload: Payload = read_json(&pending)?;
    close(layout, role)?;
    if role != Role::Root {
        let state = RepoState::load(layout).await?;
        for r in [Role::Targets, Role::Snapshot] {
            let Ok(next) = next_version(&state, r) else {
                continue;
            };
            let orphan = layout.metadata_dir().join(format!("{next}.{r}.json"));
            match std::fs::remove_file(&orphan) {
                Ok(()) => tracing::info!("removed unreferenced {}", orphan.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RepoError::Io {
                        path: orphan,
                        source: e,
                    })
                }
            }
        }
    }
    Ok(payload.version)
}

/// `ota-repo sign`: a detached signature of a payload with one key. The
/// key must be one the payload accepts. `log` records the signature when
/// the signing machine keeps an audit log.
pub fn sign_payload(
    payload_path: &Path,
    key: &KeyRef,
    out: &Path,
    log: Option<&AuditLog>,
) -> Result<DetachedSignature> {
    let payload = read_payload(payload_path)?;
    let bytes = payload.signed_bytes()?;
    let loaded = key.open(None)?;
    if !payload.keys.contains_key(&loaded.key_id) {
        return Err(ceremony_err(format!(
            "key {} ({}) is not one of the keys whose signatures this {} version {} accepts",
            loaded.key_id,
            loaded.location,
            payload.role_name(),
            payload.version
        )));
    }
    let sig = futures_sign(&loaded, &bytes)?;
    if let Some(log) = log {
        log.record(&Event {
            action: "detached-sign",
            role: &payload.role_name(),
            version: payload.version,
            signed_bytes: &bytes,
            keyid: &loaded.key_id,
            key_location: &loaded.location,
        })?;
    }
    let detached = DetachedSignature {
        role: payload.role,
        version: payload.version,
        payload_sha256: payload.sha256.clone(),
        keyid: loaded.key_id.clone(),
        sig: hex::encode(sig),
        delegated: payload.delegated.clone(),
    };
    write_json(out, &detached)?;
    Ok(detached)
}

/// Reads and checks a payload file (for `sign`, which shows its summary).
pub fn read_payload(path: &Path) -> Result<Payload> {
    let payload: Payload = read_json(path)?;
    if payload.format != PAYLOAD_FORMAT {
        return Err(ceremony_err(format!(
            "payload format {} is not supported",
            payload.format
        )));
    }
    payload.signed_bytes()?;
    Ok(payload)
}

fn futures_sign(key: &LoadedKey, bytes: &[u8]) -> Result<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| ceremony_err(format!("starting a runtime: {e}")))?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    rt.block_on(key.signer.sign(bytes, &rng))
        .map_err(|e| ceremony_err(format!("signing with {}: {e}", key.location)))
}

/// Outcome of a merge that met every threshold.
#[derive(Debug, Clone)]
pub struct Merged {
    pub role: Role,
    pub version: u64,
    /// Key ids whose signatures were counted.
    pub counted: Vec<String>,
    /// Signature files given that were not counted, and why.
    pub not_counted: Vec<String>,
    /// What was signed after it (snapshot, timestamp) and what now waits.
    pub progress: Progress,
}

/// The pending payload with the keys and threshold that decide now: the
/// trusted root's for the role (a rotation since the export wins), the
/// payload's own two requirements for a new root.
fn deciding_payload(payload: &Payload, state: &RepoState) -> Result<Payload> {
    if payload.role == Role::Root {
        return Ok(payload.clone());
    }
    let (requirements, keys) = requirements_under(payload.role, &state.root.signed)?;
    Ok(Payload {
        requirements,
        keys,
        ..payload.clone()
    })
}

/// Refuses a pending version the repository has moved past, or whose
/// snapshot/timestamp lists a file that is not (or no longer) there.
fn check_fresh(
    layout: &Layout,
    payload: &Payload,
    meta: &RoleMeta,
    state: &RepoState,
) -> Result<()> {
    let role = payload.role;
    let expected = next_version(state, role)?.get();
    if payload.version != expected {
        return Err(ceremony_err(format!(
            "the open {role} ceremony is for version {} but the repository's next {role} version is {expected}; abandon it with `ota-repo ceremony abandon --role {role}` and start again",
            payload.version
        )));
    }
    let listed: Vec<(String, &Metafile)> = match meta {
        RoleMeta::Snapshot(s) => s
            .meta
            .iter()
            .map(|(name, m)| (name.trim_end_matches(".json").to_owned(), m))
            .collect(),
        RoleMeta::Timestamp(t) => t
            .meta
            .iter()
            .map(|(name, m)| (name.trim_end_matches(".json").to_owned(), m))
            .collect(),
        _ => Vec::new(),
    };
    for (r, m) in listed {
        let actual = current_metafile(layout, &r, m.version)?;
        if actual != *m {
            return Err(ceremony_err(format!(
                "the {role} being signed lists {r} version {} with other bytes than metadata/{}.{r}.json; abandon this ceremony",
                m.version, m.version
            )));
        }
    }
    Ok(())
}

/// `ceremony merge`: verifies the signature files against the pending
/// payload, keeps the valid ones (recorded in the audit log) with those
/// already accepted, and when every threshold is met writes the signed
/// metadata, then signs (or stages) what depends on it. Below a threshold
/// it fails, naming what is missing; the valid signatures stay for the
/// next merge.
pub async fn merge(layout: &Layout, role: Role, sig_files: &[PathBuf]) -> Result<Merged> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    heal(layout, &state)?;
    let pending = pending_path(layout, role);
    if !pending.exists() {
        return Err(ceremony_err(format!(
            "no {role} ceremony is open ({} missing); start one with `ota-repo ceremony export --role {role} --out FILE`",
            pending.display()
        )));
    }
    let stored_payload: Payload = read_json(&pending)?;
    if stored_payload.role != role {
        return Err(ceremony_err(format!(
            "{} holds a {} payload",
            pending.display(),
            stored_payload.role
        )));
    }
    let bytes = stored_payload.signed_bytes()?;
    let meta = stored_payload.meta()?;
    check_fresh(layout, &stored_payload, &meta, &state)?;
    let payload = deciding_payload(&stored_payload, &state)?;

    let Collected {
        signatures,
        counted,
        rejected,
    } = collect(
        layout,
        &config,
        &Slot::top(layout, role),
        &payload,
        &bytes,
        sig_files,
    )?;
    let progress = match meta {
        RoleMeta::Root(new_root) => {
            finish_root(layout, &config, &state, new_root, signatures).await?
        }
        other => {
            let expires = chain_expiries(&config, &BTreeMap::new(), jiff::Timestamp::now())?;
            run_chain(
                layout,
                &config,
                &state,
                Step::Signed(other, signatures),
                &expires,
                Some(role),
                &BTreeMap::new(),
            )
            .await?
        }
    };
    Ok(Merged {
        role,
        version: payload.version,
        counted,
        not_counted: rejected,
        progress,
    })
}

/// The signatures of a ceremony that met every threshold.
pub(crate) struct Collected {
    pub signatures: Vec<Signature>,
    /// Key ids whose signatures were counted.
    pub counted: Vec<String>,
    /// Signature files given that were not counted, and why.
    pub rejected: Vec<String>,
}

/// Verifies `sig_files` against `payload` (whose keys and thresholds are
/// the ones that decide now), keeps the valid new ones (recorded in the
/// audit log) beside those accepted before, and fails naming what is
/// missing while a threshold is not met.
pub(crate) fn collect(
    layout: &Layout,
    config: &RepoConfig,
    slot: &Slot,
    payload: &Payload,
    bytes: &[u8],
    sig_files: &[PathBuf],
) -> Result<Collected> {
    let role = payload.role;
    let role_name = payload.role_name();
    let mut sigs = stored_signatures_in(slot)?;
    let stored_count = sigs.len();
    for path in sig_files {
        sigs.push((path.clone(), read_json::<DetachedSignature>(path)?));
    }
    let t = tally(payload, bytes, &sigs);
    let given: BTreeSet<&PathBuf> = sigs[stored_count..].iter().map(|(p, _)| p).collect();
    let log = editor::audit_log(layout, config);
    for (id, (sig, path)) in &t.accepted {
        if !given.contains(path) {
            continue;
        }
        log.record(&Event {
            action: "merge",
            role: &role_name,
            version: payload.version,
            signed_bytes: bytes,
            keyid: id,
            key_location: &format!("offline key, detached signature file {}", path.display()),
        })?;
        store_signature_in(
            slot,
            &DetachedSignature {
                role,
                version: payload.version,
                payload_sha256: payload.sha256.clone(),
                keyid: id.clone(),
                sig: hex::encode(sig),
                delegated: payload.delegated.clone(),
            },
        )?;
    }
    let missing = t.missing();
    if !missing.is_empty() {
        let mut msg = format!(
            "{role_name} version {} is NOT signed yet: {}; the {} valid signature(s) are kept in {} for the next merge",
            payload.version,
            missing.join("; "),
            t.accepted.len(),
            slot.signatures.display()
        );
        if !t.rejected.is_empty() {
            msg.push_str(&format!(" (not counted: {})", t.rejected.join("; ")));
        }
        return Err(ceremony_err(msg));
    }
    Ok(Collected {
        signatures: t.signatures()?,
        counted: t.accepted.keys().cloned().collect(),
        rejected: t.rejected,
    })
}

/// Writes the merged root (`N.root.json`, `root.json`).
async fn finish_root(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    new_root: Root,
    signatures: Vec<Signature>,
) -> Result<Progress> {
    let version = new_root.version.get();
    let signed = Signed {
        signed: new_root.clone(),
        signatures,
    };
    let file_bytes = editor::signed_bytes(&signed)?;
    // Roles whose keys or threshold changed must be re-signed under the new
    // root in the same step, or the repository would hold metadata the new
    // root no longer accepts (and could not even be loaded to fix it).
    let changed: Vec<Role> = CHAIN
        .into_iter()
        .filter(|r| {
            state.root.signed.roles.get(&r.role_type()) != new_root.roles.get(&r.role_type())
        })
        .collect();
    let mut progress = Progress {
        signed: vec![(Role::Root, version)],
        pending: None,
    };
    let mut files = if changed.is_empty() {
        MetadataFiles::default()
    } else {
        let roles = crate::resign::expand(&changed, &BTreeMap::new());
        let now = jiff::Timestamp::now();
        let mut expires = BTreeMap::new();
        for role in &roles {
            expires.insert(*role, config.role(*role)?.expiry()?.resolve(now)?);
        }
        let mut new_state = state.clone();
        new_state.root = signed.clone();
        let plan = SignPlan {
            root: false,
            new_targets: None,
            resign_targets: roles.contains(&Role::Targets),
            snapshot: roles.contains(&Role::Snapshot),
            timestamp: roles.contains(&Role::Timestamp),
            expires,
            delegated: BTreeMap::new(),
        };
        for r in plan.roles() {
            progress.signed.push((r, next_version(state, r)?.get()));
        }
        editor::sign_plan(layout, config, &new_state, plan).await?
    };
    files
        .versioned
        .insert(0, (format!("{version}.root.json"), file_bytes.clone()));
    files.root_copy = Some(file_bytes);
    editor::write_metadata(layout, &files)?;
    // The repository must load with the new root (tough checks both thresholds).
    RepoState::load(layout).await?;
    close(layout, Role::Root)?;
    Ok(progress)
}

// ------------------------------------------------------ power-cut recovery

/// Repairs what an interrupted signing run (a power cut, a kill) can leave
/// behind, so the next command proceeds instead of tripping over it. Every
/// step of a run writes new, unreferenced names first and makes them
/// visible last (`timestamp.json`, or the ceremony file that lists them),
/// so what is left over is one of:
///
/// * a ceremony for a version the repository already has (the run wrote
///   the metadata, then was cut before closing the ceremony): closed;
/// * a targets or snapshot ceremony that a later ceremony of the chain
///   already lists as signed (cut between opening the next ceremony and
///   closing the completed one): closed;
/// * versioned metadata newer than what the trusted chain and every open
///   ceremony reference (`N.targets.json`, `N.snapshot.json`, `N.ROLE.json`
///   written, then cut before the timestamp or the next ceremony): no
///   timestamp ever pointed at them and `publish` only sends referenced
///   versions, so they were never published; removed.
///
/// Each repair is logged (warning) and returned. `state` is the trusted
/// chain as loaded (orphans are, by definition, not part of it).
pub fn heal(layout: &Layout, state: &RepoState) -> Result<Vec<String>> {
    let mut done = Vec::new();
    // 1. Ceremonies for versions already in metadata/.
    for role in Role::ALL {
        let path = pending_path(layout, role);
        if !path.exists() {
            continue;
        }
        let payload: Payload = read_json(&path)?;
        let current = current_version(state, role).get();
        if payload.version <= current {
            close(layout, role)?;
            done.push(format!(
                "closed the {role} version {} ceremony: the repository already has {role} version {current} (a run was interrupted after writing it)",
                payload.version
            ));
        }
    }
    // 2. Chain ceremonies already listed as signed by the next one.
    for (earlier, later) in [
        (Role::Targets, Role::Snapshot),
        (Role::Snapshot, Role::Timestamp),
    ] {
        let (early_path, late_path) = (pending_path(layout, earlier), pending_path(layout, later));
        if !early_path.exists() || !late_path.exists() {
            continue;
        }
        let early: Payload = read_json(&early_path)?;
        let late: Payload = read_json(&late_path)?;
        let listed = match late.meta()? {
            RoleMeta::Snapshot(s) => s.meta.get(&format!("{earlier}.json")).cloned(),
            RoleMeta::Timestamp(t) => t.meta.get(&format!("{earlier}.json")).cloned(),
            _ => None,
        };
        let Some(m) = listed.filter(|m| m.version.get() == early.version) else {
            continue;
        };
        if current_metafile(layout, earlier, m.version).ok() == Some(m) {
            close(layout, earlier)?;
            done.push(format!(
                "closed the {earlier} version {} ceremony: it was signed and the open {later} ceremony lists it (a run was interrupted before closing it)",
                early.version
            ));
        }
    }
    // 2b. Delegated roles' ceremonies the repository moved past.
    done.extend(crate::delegation_ceremony::heal(layout, state)?);
    // 3. Versioned files nothing references.
    let protected = referenced_by_ceremonies(layout, state)?;
    let dir = layout.metadata_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => {
            return Err(RepoError::Io {
                path: dir,
                source: e,
            })
        }
    };
    let mut orphans = Vec::new();
    for entry in entries {
        let name = entry.map_err(RepoError::io(&dir))?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((version, role)) = versioned_name(name) else {
            continue;
        };
        if role == "root" || protected.contains(name) {
            continue;
        }
        let trusted = match role {
            "targets" => state.targets.signed.version.get(),
            "snapshot" => state.snapshot.signed.version.get(),
            // `timestamp` is never versioned here; a delegated role's
            // trusted version is the one the trusted snapshot lists.
            other => state
                .snapshot
                .signed
                .meta
                .get(&format!("{other}.json"))
                .map(|m| m.version.get())
                .unwrap_or(0),
        };
        if version > trusted {
            orphans.push(name.to_owned());
        }
    }
    orphans.sort();
    for name in orphans {
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(RepoError::Io { path, source: e }),
        }
        done.push(format!(
            "removed {}: written by a signing run that was interrupted before anything referenced it (never published)",
            path.display()
        ));
    }
    if !done.is_empty() {
        ota_common::atomic::fsync_dir(&layout.metadata_dir())
            .map_err(RepoError::io(layout.metadata_dir()))?;
    }
    for line in &done {
        tracing::warn!("{line}");
    }
    Ok(done)
}

/// `N.NAME.json` -> (N, NAME).
fn versioned_name(file: &str) -> Option<(u64, &str)> {
    let stem = file.strip_suffix(".json")?;
    let (version, role) = stem.split_once('.')?;
    if role.is_empty() || version.starts_with('0') {
        return None;
    }
    Some((version.parse().ok()?, role))
}

/// Versioned metadata files that open ceremonies will publish: what a
/// pending snapshot lists, what a pending timestamp's snapshot lists, and
/// the first version of a delegated role a pending targets introduces.
pub(crate) fn referenced_by_ceremonies(
    layout: &Layout,
    state: &RepoState,
) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for role in CHAIN {
        let path = pending_path(layout, role);
        if !path.exists() {
            continue;
        }
        let payload: Payload = read_json(&path)?;
        match payload.meta()? {
            RoleMeta::Snapshot(s) => list_files(&s.meta, &mut out),
            RoleMeta::Timestamp(t) => {
                for (name, m) in &t.meta {
                    let file = format!("{}.{name}", m.version);
                    let bytes = std::fs::read(layout.metadata_dir().join(&file)).ok();
                    out.insert(file);
                    if let Some(s) =
                        bytes.and_then(|b| serde_json::from_slice::<Signed<Snapshot>>(&b).ok())
                    {
                        list_files(&s.signed.meta, &mut out);
                    }
                }
            }
            RoleMeta::Targets(t) => {
                for d in t.delegations.iter().flat_map(|d| d.roles.iter()) {
                    match state.snapshot.signed.meta.get(&format!("{}.json", d.name)) {
                        None => {
                            out.insert(format!("1.{}.json", d.name));
                        }
                        // A changed delegation brings the role's next version.
                        Some(m) if crate::delegation::changed_delegation(state, d) => {
                            out.insert(format!("{}.{}.json", m.version.get() + 1, d.name));
                        }
                        Some(_) => {}
                    }
                }
            }
            RoleMeta::Root(_) => {}
        }
    }
    Ok(out)
}

fn list_files(meta: &std::collections::HashMap<String, Metafile>, out: &mut BTreeSet<String>) {
    for (name, m) in meta {
        out.insert(format!("{}.{name}", m.version));
    }
}
