//! Signing with tough: which keys sign a role, building the new versions of
//! root, targets, snapshot and timestamp, and writing them in a safe order.
//!
//! Each role is signed on its own (tough's `SignedRole`), so refreshing the
//! timestamp leaves `N.targets.json` and `N.snapshot.json` byte-for-byte
//! untouched: consistent-snapshot files never change once written.

use crate::config::RepoConfig;
use crate::error::{RepoError, Result};
use crate::keys::{self, PemKeySource};
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use aws_lc_rs::rand::SystemRandom;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU64;
use std::path::Path;
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::{
    Hashes, KeyHolder, Metafile, Role as TufRole, Root, Snapshot, Targets, Timestamp,
};

pub const SPEC_VERSION: &str = "1.0.0";

/// The key sources of `role` that load and that root lists for that role,
/// after checking they reach `threshold`. Fails before anything is signed,
/// naming every key file that could not be used.
pub fn role_keys(
    layout: &Layout,
    config: &RepoConfig,
    role: Role,
    root: &Root,
) -> Result<Vec<Box<dyn KeySource>>> {
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
    let mut usable: Vec<Box<dyn KeySource>> = Vec::new();
    let mut problems = Vec::new();
    for rel in &role_config.keys {
        let path = layout.resolve(rel);
        match keys::public_key(&path).and_then(|k| keys::key_id(&k)) {
            Ok(id) if listed.contains(&id) => usable.push(Box::new(PemKeySource { path })),
            Ok(id) => problems.push(format!(
                "{}: key {id} is not a {role} key in root metadata",
                path.display()
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if (usable.len() as u64) < threshold {
        let details = if problems.is_empty() {
            String::new()
        } else {
            format!(": {}", problems.join("; "))
        };
        return Err(RepoError::ThresholdUnreachable {
            role: role.to_string(),
            threshold,
            available: usable.len(),
            details,
        });
    }
    Ok(usable)
}

/// Signs one role with the given keys under `root`.
pub async fn sign<T>(role: T, root: &Root, keys: &[Box<dyn KeySource>]) -> Result<SignedRole<T>>
where
    T: TufRole + Serialize,
{
    let name = T::TYPE.to_string();
    let signed = SignedRole::new(
        role,
        &KeyHolder::Root(root.clone()),
        keys,
        &SystemRandom::new(),
    )
    .await
    .map_err(RepoError::tough(format!("signing {name} metadata")))?;
    Ok(signed)
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
    let keys_of = |role: Role| -> Result<&Vec<Box<dyn KeySource>>> {
        keys.get(&role)
            .ok_or_else(|| RepoError::Inconsistent(format!("no keys loaded for {role}")))
    };
    let mut out = MetadataFiles::default();
    let mut root = state.root.signed.clone();
    if plan.root {
        root.version = next(root.version)?;
        root.expires = plan.expiry(Role::Root)?;
        let signed = sign(root.clone(), &root, keys_of(Role::Root)?).await?;
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
        let signed = sign(targets, &root, keys_of(Role::Targets)?).await?;
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
        snapshot
            .meta
            .insert("targets.json".to_owned(), targets_meta);
        let signed = sign(snapshot, &root, keys_of(Role::Snapshot)?).await?;
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
        let signed = sign(timestamp, &root, keys_of(Role::Timestamp)?).await?;
        out.timestamp = Some(signed.buffer().clone());
    }
    Ok(out)
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
