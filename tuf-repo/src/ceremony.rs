//! M-of-N signing ceremonies for keys kept offline (on other machines, in
//! other people's tokens): `ceremony export` writes the unsigned role and
//! everything a signer needs to a payload file, each key holder runs
//! `ota-repo sign --payload` on their own machine and returns a detached
//! signature file, and `ceremony merge` verifies every signature, counts
//! distinct key ids and writes the signed metadata only when every
//! threshold is met.
//!
//! A new root must be signed by a threshold of the CURRENT root keys and a
//! threshold of the NEW root keys (TUF §5.3.4), so a payload lists both
//! requirements; a key that is in neither (revoked, or never added) does not
//! count.

use crate::audit::{AuditLog, Event};
use crate::config::RepoConfig;
use crate::editor::{self, MetadataFiles};
use crate::error::{RepoError, Result};
use crate::expiry::Expiry;
use crate::key_ref::KeyRef;
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tough::schema::key::Key;
use tough::schema::{Role as TufRole, Root, Signature, Signed};

pub const PAYLOAD_FORMAT: u32 = 1;
pub const CEREMONY_DIR: &str = "ceremony";
/// Payload and signature files are small; anything bigger is not ours.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

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
}

fn ceremony_err(detail: impl Into<String>) -> RepoError {
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

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_small(path)?;
    serde_json::from_slice(&bytes).map_err(|source| RepoError::Json {
        path: path.to_owned(),
        source,
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| RepoError::Inconsistent(format!("serializing {}: {e}", path.display())))?;
    bytes.push(b'\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ota_common::atomic::create_dir_all_durable(dir).map_err(RepoError::io(dir))?;
    }
    ota_common::atomic::write_atomic(path, &bytes).map_err(RepoError::io(path))
}

pub fn pending_path(layout: &Layout, role: Role) -> PathBuf {
    layout
        .root()
        .join(CEREMONY_DIR)
        .join(format!("{role}.json"))
}

fn only_root(role: Role) -> Result<()> {
    if role != Role::Root {
        return Err(ceremony_err(format!(
            "ceremonies are for root (offline keys); {role} is signed online with `ota-repo resign --role {role}`"
        )));
    }
    Ok(())
}

impl Payload {
    /// The canonical bytes, checked against `sha256` and against the
    /// readable `metadata` (so what a signer reviews is what they sign).
    pub fn signed_bytes(&self) -> Result<Vec<u8>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.canonical)
            .map_err(|e| ceremony_err(format!("payload canonical bytes are not base64: {e}")))?;
        if hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &bytes,
        )) != self.sha256
        {
            return Err(ceremony_err(
                "payload sha256 does not match its canonical bytes",
            ));
        }
        let root: Root = serde_json::from_value(self.metadata.clone())
            .map_err(|e| ceremony_err(format!("payload metadata is not a root role: {e}")))?;
        let again = root
            .canonical_form()
            .map_err(|e| ceremony_err(format!("payload metadata: {e}")))?;
        if again != bytes {
            return Err(ceremony_err(
                "payload metadata differs from its canonical bytes",
            ));
        }
        if root.version.get() != self.version {
            return Err(ceremony_err("payload version differs from its metadata"));
        }
        Ok(bytes)
    }

    pub fn root(&self) -> Result<Root> {
        serde_json::from_value(self.metadata.clone())
            .map_err(|e| ceremony_err(format!("payload metadata is not a root role: {e}")))
    }
}

fn requirement(what: String, root: &Root) -> Result<Requirement> {
    let rk = root
        .roles
        .get(&Role::Root.role_type())
        .ok_or_else(|| RepoError::Inconsistent("root lists no root role".to_owned()))?;
    Ok(Requirement {
        what,
        threshold: rk.threshold.get(),
        keyids: rk.keyids.iter().map(|id| hex::encode(&**id)).collect(),
    })
}

/// Builds the payload for `new_root`, which follows `current`.
pub fn payload_for(current: &Root, new_root: &Root) -> Result<Payload> {
    let bytes = new_root
        .canonical_form()
        .map_err(|e| RepoError::Inconsistent(format!("serializing root: {e}")))?;
    let requirements = vec![
        requirement(
            format!("current root keys (version {})", current.version),
            current,
        )?,
        requirement(
            format!("new root keys (version {})", new_root.version),
            new_root,
        )?,
    ];
    let mut keys = BTreeMap::new();
    for req in &requirements {
        for id in &req.keyids {
            let key = current
                .keys
                .iter()
                .chain(new_root.keys.iter())
                .find(|(kid, _)| hex::encode(&***kid) == *id)
                .map(|(_, k)| k.clone())
                .ok_or_else(|| {
                    RepoError::Inconsistent(format!("root lists key {id} without its public key"))
                })?;
            keys.insert(id.clone(), key);
        }
    }
    Ok(Payload {
        format: PAYLOAD_FORMAT,
        role: Role::Root,
        version: new_root.version.get(),
        sha256: hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &bytes,
        )),
        canonical: base64::engine::general_purpose::STANDARD.encode(&bytes),
        metadata: serde_json::to_value(new_root)
            .map_err(|e| RepoError::Inconsistent(format!("serializing root: {e}")))?,
        keys,
        requirements,
    })
}

/// Stores `new_root` as the pending root ceremony of the repository.
pub fn stage(layout: &Layout, current: &Root, new_root: &Root) -> Result<Payload> {
    let payload = payload_for(current, new_root)?;
    write_json(&pending_path(layout, Role::Root), &payload)?;
    Ok(payload)
}

/// `ceremony export`: the pending root (from `rotate`), or else the next
/// root version with a fresh expiry, written to `out`.
pub async fn export(
    layout: &Layout,
    role: Role,
    expires: Option<Expiry>,
    out: &Path,
) -> Result<Payload> {
    only_root(role)?;
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let pending = pending_path(layout, role);
    let payload = if pending.exists() {
        let p: Payload = read_json(&pending)?;
        if expires.is_some() {
            return Err(ceremony_err(format!(
                "root version {} is already staged ({}); --expires applies only when starting a ceremony",
                p.version,
                pending.display()
            )));
        }
        p
    } else {
        let now = jiff::Timestamp::now();
        let policy = match expires {
            Some(e) => e,
            None => config.role(Role::Root)?.expiry()?,
        };
        let mut root = state.root.signed.clone();
        root.version = root
            .version
            .checked_add(1)
            .ok_or_else(|| RepoError::Inconsistent("root version cannot grow".to_owned()))?;
        root.expires = policy.resolve(now)?;
        editor::ensure_future(Role::Root, root.expires, now, false)?;
        stage(layout, &state.root.signed, &root)?
    };
    payload.signed_bytes()?;
    write_json(out, &payload)?;
    Ok(payload)
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
    let payload: Payload = read_json(payload_path)?;
    if payload.format != PAYLOAD_FORMAT {
        return Err(ceremony_err(format!(
            "payload format {} is not supported",
            payload.format
        )));
    }
    let bytes = payload.signed_bytes()?;
    let loaded = key.open(None)?;
    if !payload.keys.contains_key(&loaded.key_id) {
        return Err(ceremony_err(format!(
            "key {} ({}) is not one of the keys whose signatures this {} version {} accepts",
            loaded.key_id, loaded.location, payload.role, payload.version
        )));
    }
    let sig = futures_sign(&loaded, &bytes)?;
    if let Some(log) = log {
        log.record(&Event {
            action: "detached-sign",
            role: payload.role.as_str(),
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
    };
    write_json(out, &detached)?;
    Ok(detached)
}

fn futures_sign(key: &crate::key_ref::LoadedKey, bytes: &[u8]) -> Result<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| ceremony_err(format!("starting a runtime: {e}")))?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    rt.block_on(key.signer.sign(bytes, &rng))
        .map_err(|e| ceremony_err(format!("signing with {}: {e}", key.location)))
}

/// Outcome of a merge.
#[derive(Debug, Clone)]
pub struct Merged {
    pub version: u64,
    /// Key ids whose signatures were counted.
    pub counted: Vec<String>,
}

/// Counts valid signatures by distinct key ids against each requirement.
/// Returns the accepted signatures, or an error saying what is missing.
pub fn check_signatures(
    payload: &Payload,
    sigs: &[(PathBuf, DetachedSignature)],
) -> Result<Vec<Signature>> {
    let bytes = payload.signed_bytes()?;
    let mut accepted: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rejected = Vec::new();
    for (path, s) in sigs {
        let name = path.display();
        if s.payload_sha256 != payload.sha256
            || s.role != payload.role
            || s.version != payload.version
        {
            rejected.push(format!(
                "{name}: signs another payload (sha256 {})",
                s.payload_sha256
            ));
            continue;
        }
        let Some(key) = payload.keys.get(&s.keyid) else {
            rejected.push(format!(
                "{name}: key {} is not a root key of this ceremony (revoked or unknown)",
                s.keyid
            ));
            continue;
        };
        let Ok(sig) = hex::decode(&s.sig) else {
            rejected.push(format!("{name}: signature is not hex"));
            continue;
        };
        if !editor::verify_signature(key, &bytes, &sig) {
            rejected.push(format!(
                "{name}: signature by key {} does not verify",
                s.keyid
            ));
            continue;
        }
        // A second signature by the same key adds nothing: thresholds count keys.
        accepted.entry(s.keyid.clone()).or_insert(sig);
    }
    let ids: BTreeSet<&String> = accepted.keys().collect();
    let mut missing = Vec::new();
    for req in &payload.requirements {
        let have = req.keyids.iter().filter(|id| ids.contains(id)).count() as u64;
        if have < req.threshold {
            missing.push(format!(
                "{have} of {} required signatures from the {}",
                req.threshold, req.what
            ));
        }
    }
    if !missing.is_empty() {
        let mut msg = format!(
            "{} version {} is NOT signed: {}",
            payload.role,
            payload.version,
            missing.join("; ")
        );
        if !rejected.is_empty() {
            msg.push_str(&format!(" (not counted: {})", rejected.join("; ")));
        }
        return Err(ceremony_err(msg));
    }
    for r in &rejected {
        tracing::warn!("not counted: {r}");
    }
    accepted
        .into_iter()
        .map(|(id, sig)| {
            let keyid = hex::decode(&id).map_err(|e| ceremony_err(format!("key id {id}: {e}")))?;
            Ok(Signature {
                keyid: keyid.into(),
                sig: sig.into(),
            })
        })
        .collect()
}

/// `ceremony merge`: verifies the signature files against the pending
/// payload and, when every threshold is met, writes `N.root.json` and
/// `root.json` and records each counted signature in the audit log.
pub async fn merge(layout: &Layout, role: Role, sig_files: &[PathBuf]) -> Result<Merged> {
    only_root(role)?;
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let pending = pending_path(layout, role);
    if !pending.exists() {
        return Err(ceremony_err(format!(
            "no {role} ceremony is open ({} missing); start one with `ota-repo ceremony export --role {role} --out FILE`",
            pending.display()
        )));
    }
    let payload: Payload = read_json(&pending)?;
    if payload.version != state.root.signed.version.get() + 1 {
        return Err(ceremony_err(format!(
            "the staged root is version {} but the repository is at root version {}; export a new payload",
            payload.version, state.root.signed.version
        )));
    }
    let mut sigs = Vec::new();
    for path in sig_files {
        sigs.push((path.clone(), read_json::<DetachedSignature>(path)?));
    }
    let signatures = check_signatures(&payload, &sigs)?;
    let bytes = payload.signed_bytes()?;
    let log = editor::audit_log(layout, &config);
    let counted: Vec<String> = signatures.iter().map(|s| hex::encode(&*s.keyid)).collect();
    for id in &counted {
        let file = sigs
            .iter()
            .find(|(_, s)| s.keyid == *id)
            .map(|(p, _)| p.display().to_string())
            .unwrap_or_default();
        log.record(&Event {
            action: "merge",
            role: role.as_str(),
            version: payload.version,
            signed_bytes: &bytes,
            keyid: id,
            key_location: &format!("offline key, detached signature file {file}"),
        })?;
    }
    let new_root = payload.root()?;
    let signed = Signed {
        signed: new_root.clone(),
        signatures,
    };
    let file_bytes = editor::signed_bytes(&signed)?;
    // Roles whose keys or threshold changed must be re-signed under the new
    // root in the same step, or the repository would hold metadata the new
    // root no longer accepts (and could not even be loaded to fix it).
    let changed: Vec<Role> = [Role::Targets, Role::Snapshot, Role::Timestamp]
        .into_iter()
        .filter(|r| {
            state.root.signed.roles.get(&r.role_type()) != new_root.roles.get(&r.role_type())
        })
        .collect();
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
        let plan = editor::SignPlan {
            root: false,
            new_targets: None,
            resign_targets: roles.contains(&Role::Targets),
            snapshot: roles.contains(&Role::Snapshot),
            timestamp: roles.contains(&Role::Timestamp),
            expires,
        };
        editor::sign_plan(layout, &config, &new_state, plan).await?
    };
    files.versioned.insert(
        0,
        (format!("{}.root.json", payload.version), file_bytes.clone()),
    );
    files.root_copy = Some(file_bytes);
    editor::write_metadata(layout, &files)?;
    // The repository must load with the new root (tough checks both thresholds).
    RepoState::load(layout).await?;
    std::fs::remove_file(&pending).map_err(RepoError::io(&pending))?;
    Ok(Merged {
        version: payload.version,
        counted,
    })
}
