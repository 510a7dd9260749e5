//! Signing with tough: which keys sign a role, building the new versions of
//! root, targets, snapshot and timestamp, and writing them in a safe order.
//!
//! Each role is signed on its own (tough's `SignedRole`), so refreshing the
//! timestamp leaves `N.targets.json` and `N.snapshot.json` byte-for-byte
//! untouched: consistent-snapshot files never change once written.

use crate::audit::{self, AuditLog, Event};
use crate::config::RepoConfig;
use crate::error::{RepoError, Result};
use crate::key_ref::LoadedKey;
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use aws_lc_rs::rand::SystemRandom;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU64;
use std::path::Path;
use tough::schema::key::Key;
use tough::schema::{
    Hashes, Metafile, Role as TufRole, Root, Signature, Signed, Snapshot, Targets, Timestamp,
};

pub const SPEC_VERSION: &str = "1.0.0";

/// The keys of `role` that repo.json lists, that open here and that root
/// lists for that role, with the role's threshold and a description of
/// every listed key that could not be used. Below the threshold is not an
/// error here: the missing signatures may come from a ceremony.
#[derive(Debug)]
pub struct LocalKeys {
    pub usable: Vec<LoadedKey>,
    pub threshold: u64,
    pub problems: Vec<String>,
}

pub fn local_keys(
    layout: &Layout,
    config: &RepoConfig,
    role: Role,
    root: &Root,
) -> Result<LocalKeys> {
    let role_config = config.role(role)?;
    let (listed, threshold) = match root.roles.get(&role.role_type()) {
        Some(rk) => (
            rk.keyids
                .iter()
                .map(|id| hex::encode(&**id))
                .collect::<BTreeSet<_>>(),
            rk.threshold.get(),
        ),
        None => (BTreeSet::new(), role_config.threshold),
    };
    let mut usable: Vec<LoadedKey> = Vec::new();
    let mut problems = Vec::new();
    for key_ref in &role_config.keys {
        match key_ref.open(Some(layout.root())) {
            Ok(k) if usable.iter().any(|u| u.key_id == k.key_id) => {}
            Ok(k) if listed.contains(&k.key_id) => usable.push(k),
            Ok(k) => problems.push(format!(
                "{}: key {} is not a {role} key in root metadata (revoked or never added)",
                k.location, k.key_id
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok(LocalKeys {
        usable,
        threshold,
        problems,
    })
}

/// The error for a role whose usable keys stay below its threshold.
pub fn threshold_unreachable(role: Role, local: &LocalKeys) -> RepoError {
    let mut details = if local.problems.is_empty() {
        String::new()
    } else {
        format!(": {}", local.problems.join("; "))
    };
    details.push_str(&format!(
        " ({role} keys kept offline sign through `ota-repo ceremony export --role {role}`, `ota-repo sign`, `ota-repo ceremony merge --role {role}`)"
    ));
    RepoError::ThresholdUnreachable {
        role: role.to_string(),
        threshold: local.threshold,
        available: local.usable.len(),
        details,
    }
}

/// The keys of `role` that open and that root lists for that role, after
/// checking they reach `threshold`. Fails before anything is signed,
/// naming every key that could not be used.
pub fn role_keys(
    layout: &Layout,
    config: &RepoConfig,
    role: Role,
    root: &Root,
) -> Result<Vec<LoadedKey>> {
    let local = local_keys(layout, config, role, root)?;
    if (local.usable.len() as u64) < local.threshold {
        return Err(threshold_unreachable(role, &local));
    }
    Ok(local.usable)
}

/// The audit log of a repository, with its operator.
pub fn audit_log(layout: &Layout, config: &RepoConfig) -> AuditLog {
    AuditLog::new(layout.root(), audit::operator(config.operator.as_deref()))
}

/// Signs the canonical form of `role` with each key, recording every
/// signature in the audit log before it is returned.
pub async fn signatures<T>(role: &T, keys: &[LoadedKey], log: &AuditLog) -> Result<Vec<Signature>>
where
    T: TufRole + Serialize,
{
    signatures_as(&T::TYPE.to_string(), role, keys, log).await
}

/// [`signatures`], recorded in the audit log under `name` (a delegated
/// targets role is recorded under its own name, not as "targets").
pub async fn signatures_as<T>(
    name: &str,
    role: &T,
    keys: &[LoadedKey],
    log: &AuditLog,
) -> Result<Vec<Signature>>
where
    T: TufRole + Serialize,
{
    let data = role
        .canonical_form()
        .map_err(|e| RepoError::Inconsistent(format!("serializing {name} metadata: {e}")))?;
    let rng = SystemRandom::new();
    let mut out = Vec::new();
    for key in keys {
        let sig = key.signer.sign(&data, &rng).await.map_err(|e| {
            RepoError::InvalidArgument(format!("signing {name} with {}: {e}", key.location))
        })?;
        let keyid = hex::decode(&key.key_id)
            .map_err(|e| RepoError::Inconsistent(format!("key id {}: {e}", key.key_id)))?;
        log.record(&Event {
            action: "sign",
            role: name,
            version: role.version().get(),
            signed_bytes: &data,
            keyid: &key.key_id,
            key_location: &key.location,
        })?;
        out.push(Signature {
            keyid: keyid.into(),
            sig: sig.into(),
        });
    }
    Ok(out)
}

/// The file bytes of signed metadata (pretty JSON and a newline, as tough writes).
pub fn signed_bytes<T: Serialize>(signed: &Signed<T>) -> Result<Vec<u8>> {
    let mut buf = serde_json::to_vec_pretty(signed)
        .map_err(|e| RepoError::Inconsistent(format!("serializing signed metadata: {e}")))?;
    buf.push(b'\n');
    Ok(buf)
}

/// Signs one role with the given keys (which must all be keys of the role
/// in `root`), refusing to produce metadata below the role's threshold.
pub async fn sign<T>(
    role: T,
    root: &Root,
    keys: &[LoadedKey],
    log: &AuditLog,
) -> Result<SignedMeta<T>>
where
    T: TufRole + Serialize,
{
    let name = T::TYPE.to_string();
    let threshold = root
        .roles
        .get(&T::TYPE)
        .map(|rk| rk.threshold.get())
        .ok_or_else(|| RepoError::Inconsistent(format!("root lists no {name} role")))?;
    if (keys.len() as u64) < threshold {
        return Err(RepoError::ThresholdUnreachable {
            role: name,
            threshold,
            available: keys.len(),
            details: String::new(),
        });
    }
    let signatures = signatures(&role, keys, log).await?;
    let signed = Signed {
        signed: role,
        signatures,
    };
    let bytes = signed_bytes(&signed)?;
    Ok(SignedMeta { signed, bytes })
}

/// Signed metadata and its file bytes.
#[derive(Debug)]
pub struct SignedMeta<T> {
    pub signed: Signed<T>,
    pub bytes: Vec<u8>,
}

impl<T> SignedMeta<T> {
    pub fn buffer(&self) -> &Vec<u8> {
        &self.bytes
    }
}

/// Whether `sig` is a valid signature of `msg` by `key` (the same checks
/// as tough's and our device client's verification).
pub fn verify_signature(key: &Key, msg: &[u8], sig: &[u8]) -> bool {
    use aws_lc_rs::signature::{UnparsedPublicKey, VerificationAlgorithm};
    use tough::schema::key::{EcdsaScheme, Ed25519Scheme, RsaScheme};
    let (alg, public): (&'static dyn VerificationAlgorithm, &[u8]) = match key {
        Key::Ecdsa {
            scheme: EcdsaScheme::EcdsaSha2Nistp256,
            keyval,
            ..
        }
        | Key::EcdsaOld {
            scheme: EcdsaScheme::EcdsaSha2Nistp256,
            keyval,
            ..
        } => (
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            &keyval.public,
        ),
        Key::Ed25519 {
            scheme: Ed25519Scheme::Ed25519,
            keyval,
            ..
        } => (&aws_lc_rs::signature::ED25519, &keyval.public),
        Key::Rsa {
            scheme: RsaScheme::RsassaPssSha256,
            keyval,
            ..
        } => (
            &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
            &keyval.public,
        ),
    };
    UnparsedPublicKey::new(alg, public).verify(msg, sig).is_ok()
}

/// Version, length and sha256 of a serialized metadata file, as listed by
/// snapshot (for targets) and timestamp (for snapshot).
pub fn metafile(bytes: &[u8], version: NonZeroU64) -> Metafile {
    Metafile {
        hashes: Some(Hashes {
            sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
                .as_ref()
                .to_vec()
                .into(),
            _extra: HashMap::new(),
        }),
        length: Some(bytes.len() as u64),
        version,
        _extra: HashMap::new(),
    }
}

fn next(v: NonZeroU64) -> Result<NonZeroU64> {
    v.checked_add(1)
        .ok_or_else(|| RepoError::Inconsistent(format!("version {v} cannot be incremented")))
}

/// What to sign in one go. A role left out keeps its current file.
#[derive(Debug, Default)]
pub struct SignPlan {
    pub root: bool,
    /// New targets content (its version and expiry are set here), or the
    /// current content re-signed when `resign_targets` is set.
    pub new_targets: Option<Targets>,
    pub resign_targets: bool,
    pub snapshot: bool,
    pub timestamp: bool,
    /// Expiry of each role signed.
    pub expires: BTreeMap<Role, jiff::Timestamp>,
    /// New versions of delegated roles (`ROLE.json` -> its file), already
    /// written to `metadata/`, for the new snapshot to list.
    pub delegated: BTreeMap<String, Metafile>,
}

impl SignPlan {
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = Vec::new();
        if self.root {
            roles.push(Role::Root);
        }
        if self.new_targets.is_some() || self.resign_targets {
            roles.push(Role::Targets);
        }
        if self.snapshot {
            roles.push(Role::Snapshot);
        }
        if self.timestamp {
            roles.push(Role::Timestamp);
        }
        roles
    }

    fn expiry(&self, role: Role) -> Result<jiff::Timestamp> {
        self.expires
            .get(&role)
            .copied()
            .ok_or_else(|| RepoError::Inconsistent(format!("no expiry chosen for {role}")))
    }
}

/// Files to write, in the order they must become visible.
#[derive(Debug, Default)]
pub struct MetadataFiles {
    /// Versioned files (`N.root.json`, `N.targets.json`, `N.snapshot.json`).
    pub versioned: Vec<(String, Vec<u8>)>,
    /// New content of `root.json` (the newest root, for convenience).
    pub root_copy: Option<Vec<u8>>,
    pub timestamp: Option<Vec<u8>>,
}

/// Checks every key needed by `plan` is usable (threshold reachable), then
/// signs the new versions. Nothing is written.
pub async fn sign_plan(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    plan: SignPlan,
) -> Result<MetadataFiles> {
    // Keys first, for every role, so a missing key fails before any work.
    let mut keys = BTreeMap::new();
    for role in plan.roles() {
        keys.insert(role, role_keys(layout, config, role, &state.root.signed)?);
    }
    let log = audit_log(layout, config);
    let keys_of = |role: Role| -> Result<&Vec<LoadedKey>> {
        keys.get(&role)
            .ok_or_else(|| RepoError::Inconsistent(format!("no keys loaded for {role}")))
    };
    let mut out = MetadataFiles::default();
    let mut root = state.root.signed.clone();
    if plan.root {
        root.version = next(root.version)?;
        root.expires = plan.expiry(Role::Root)?;
        let signed = sign(root.clone(), &root, keys_of(Role::Root)?, &log).await?;
        out.versioned.push((
            format!("{}.root.json", root.version),
            signed.buffer().clone(),
        ));
        out.root_copy = Some(signed.buffer().clone());
    }

    let metadata_dir = layout.metadata_dir();
    let targets_meta = if plan.new_targets.is_some() || plan.resign_targets {
        let mut targets = plan
            .new_targets
            .clone()
            .unwrap_or_else(|| state.targets.signed.clone());
        targets.version = next(state.targets.signed.version)?;
        targets.expires = plan.expiry(Role::Targets)?;
        let version = targets.version;
        let signed = sign(targets, &root, keys_of(Role::Targets)?, &log).await?;
        out.versioned
            .push((format!("{version}.targets.json"), signed.buffer().clone()));
        metafile(signed.buffer(), version)
    } else {
        let version = state.targets.signed.version;
        metafile(
            &read_file(&metadata_dir.join(format!("{version}.targets.json")))?,
            version,
        )
    };

    let snapshot_meta = if plan.snapshot {
        let version = next(state.snapshot.signed.version)?;
        let mut snapshot = Snapshot::new(
            SPEC_VERSION.to_owned(),
            version,
            plan.expiry(Role::Snapshot)?,
        );
        let listed_targets = plan.new_targets.as_ref().unwrap_or(&state.targets.signed);
        snapshot.meta =
            snapshot_meta(layout, state, listed_targets, targets_meta, &plan.delegated)?;
        let signed = sign(snapshot, &root, keys_of(Role::Snapshot)?, &log).await?;
        out.versioned
            .push((format!("{version}.snapshot.json"), signed.buffer().clone()));
        metafile(signed.buffer(), version)
    } else {
        let version = state.snapshot.signed.version;
        metafile(
            &read_file(&metadata_dir.join(format!("{version}.snapshot.json")))?,
            version,
        )
    };

    if plan.timestamp {
        let version = next(state.timestamp.signed.version)?;
        let mut timestamp = Timestamp::new(
            SPEC_VERSION.to_owned(),
            version,
            plan.expiry(Role::Timestamp)?,
        );
        timestamp
            .meta
            .insert("snapshot.json".to_owned(), snapshot_meta);
        let signed = sign(timestamp, &root, keys_of(Role::Timestamp)?, &log).await?;
        out.timestamp = Some(signed.buffer().clone());
    }
    Ok(out)
}

/// What a new snapshot lists: `targets.json` (the given file), and every
/// delegated role: its new version in `updates`, else the version the
/// current snapshot lists, else (a role `targets` delegates for the first
/// time) its `1.ROLE.json`, written before the targets that delegate it.
/// Nothing the current snapshot lists is dropped: devices refuse a
/// snapshot that removes a role.
pub fn snapshot_meta(
    layout: &Layout,
    state: &RepoState,
    targets: &Targets,
    targets_meta: Metafile,
    updates: &BTreeMap<String, Metafile>,
) -> Result<HashMap<String, Metafile>> {
    let mut meta = state.snapshot.signed.meta.clone();
    meta.insert("targets.json".to_owned(), targets_meta);
    for (name, m) in updates {
        meta.insert(name.clone(), m.clone());
    }
    for role in targets.delegations.iter().flat_map(|d| d.roles.iter()) {
        let key = format!("{}.json", role.name);
        if updates.contains_key(&key) {
            continue;
        }
        if let Some(listed) = meta.get(&key).map(|m| m.version) {
            // A delegation changed by `delegate` (keys, threshold, paths)
            // comes with the role's next version signed by the new keys,
            // written before the targets (possibly merged from a ceremony
            // much later) that changes it.
            if crate::delegated::changed_delegation(state, role) {
                if let Some(next) = listed.checked_add(1) {
                    let path = layout.metadata_dir().join(format!("{next}.{key}"));
                    if path.exists() {
                        meta.insert(key, metafile(&read_file(&path)?, next));
                    }
                }
            }
            continue;
        }
        let path = layout.metadata_dir().join(format!("1.{}", key));
        meta.insert(key, metafile(&read_file(&path)?, NonZeroU64::MIN));
    }
    Ok(meta)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(RepoError::io(path))
}

/// Writes the files atomically in a safe order: versioned files (new names,
/// unreferenced until the timestamp points at them), then `root.json`, then
/// `timestamp.json` last. A versioned file that already exists must have
/// the same bytes: consistent-snapshot files are immutable.
pub fn write_metadata(layout: &Layout, files: &MetadataFiles) -> Result<()> {
    let dir = layout.metadata_dir();
    ota_common::atomic::create_dir_all_durable(&dir).map_err(RepoError::io(&dir))?;
    for (name, bytes) in &files.versioned {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(existing) if existing == *bytes => continue,
            Ok(_) => {
                return Err(RepoError::Inconsistent(format!(
                    "{} already exists with other content; versions must only grow",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RepoError::Io { path, source: e }),
        }
        ota_common::atomic::write_atomic(&path, bytes).map_err(RepoError::io(&path))?;
    }
    if let Some(root) = &files.root_copy {
        let path = dir.join("root.json");
        ota_common::atomic::write_atomic(&path, root).map_err(RepoError::io(&path))?;
    }
    if let Some(ts) = &files.timestamp {
        let path = dir.join("timestamp.json");
        ota_common::atomic::write_atomic(&path, ts).map_err(RepoError::io(&path))?;
    }
    Ok(())
}

/// Writes a signed new root (`N.root.json`, `root.json`) and, in the same
/// write, `resigned` re-signed under it with the expiries repo.json sets:
/// roles whose keys or threshold the new root changes, or the repository
/// would hold metadata its root no longer accepts (and could not even be
/// loaded to fix it).
pub async fn write_root(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    root: Signed<Root>,
    resigned: &BTreeSet<Role>,
) -> Result<()> {
    let root_bytes = signed_bytes(&root)?;
    let version = root.signed.version;
    let mut files = if resigned.is_empty() {
        MetadataFiles::default()
    } else {
        let now = jiff::Timestamp::now();
        let mut expires = BTreeMap::new();
        for role in resigned {
            expires.insert(*role, config.role(*role)?.expiry()?.resolve(now)?);
        }
        let mut new_state = state.clone();
        new_state.root = root;
        let plan = SignPlan {
            resign_targets: resigned.contains(&Role::Targets),
            snapshot: resigned.contains(&Role::Snapshot),
            timestamp: resigned.contains(&Role::Timestamp),
            expires,
            ..SignPlan::default()
        };
        sign_plan(layout, config, &new_state, plan).await?
    };
    files
        .versioned
        .insert(0, (format!("{version}.root.json"), root_bytes.clone()));
    files.root_copy = Some(root_bytes);
    write_metadata(layout, &files)
}

/// Fails if `role`'s current metadata has expired by `now`, naming the
/// command that fixes it.
pub fn ensure_not_expired(
    role: Role,
    expires: jiff::Timestamp,
    now: jiff::Timestamp,
) -> Result<()> {
    if expires <= now {
        return Err(RepoError::ExpiredRole {
            role: role.to_string(),
            expires: expires.to_string(),
            fix: format!("ota-repo resign --role {role}"),
        });
    }
    Ok(())
}

/// Fails unless `expires` is after `now` (or `allow_expired`).
pub fn ensure_future(
    role: Role,
    expires: jiff::Timestamp,
    now: jiff::Timestamp,
    allow_expired: bool,
) -> Result<()> {
    if expires <= now && !allow_expired {
        return Err(RepoError::ExpiryInPast {
            role: role.to_string(),
            expires: expires.to_string(),
        });
    }
    Ok(())
}
