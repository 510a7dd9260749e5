//! `ota-repo rotate`: change a role's keys or threshold. Writes a new root
//! version signed by a threshold of the current root keys AND a threshold
//! of the new root keys; when those keys are offline, stages the new root
//! as a ceremony instead. A removed (revoked) key is no longer listed in
//! root, so nothing it signs counts from this root version on. When the
//! root is signed here, the rotated role (and what depends on it) is
//! re-signed with its new keys at once, so devices never see metadata
//! signed by a revoked key under the new root.

use crate::ceremony;
use crate::config::RepoConfig;
use crate::editor;
use crate::error::{RepoError, Result};
use crate::expiry::Expiry;
use crate::key_ref::{KeyRef, LoadedKey};
use crate::keys;
use crate::layout::Layout;
use crate::resign;
use crate::role::Role;
use crate::state::RepoState;
use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::PathBuf;
use tough::schema::Signed;

#[derive(Debug, Clone)]
pub struct RotateOptions {
    pub role: Role,
    /// Keys to add (their public keys are read now).
    pub add_keys: Vec<KeyRef>,
    /// Key ids to remove (revoke).
    pub remove_keys: Vec<String>,
    pub threshold: Option<u64>,
    /// Expiry of the new root (default: the root policy).
    pub expires: Option<Expiry>,
}

#[derive(Debug, Clone)]
pub enum Rotated {
    /// The new root is written; `resigned` lists (role, version) re-signed after it.
    Signed {
        root_version: u64,
        resigned: Vec<(Role, u64)>,
    },
    /// Root keys are offline: the new root waits in a ceremony.
    Staged {
        root_version: u64,
        pending: PathBuf,
        needs: Vec<String>,
    },
}

pub async fn rotate(layout: &Layout, options: &RotateOptions) -> Result<Rotated> {
    let mut config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let pending = ceremony::pending_path(layout, Role::Root);
    if pending.exists() {
        return Err(RepoError::Ceremony(format!(
            "a root ceremony is already open ({}); merge it first or delete it to abandon it",
            pending.display()
        )));
    }
    if options.add_keys.is_empty() && options.remove_keys.is_empty() && options.threshold.is_none()
    {
        return Err(RepoError::InvalidArgument(
            "nothing to rotate: give --add-key, --remove-key and/or --threshold".to_owned(),
        ));
    }
    let old_root = state.root.signed.clone();
    let mut root = old_root.clone();
    root.version = root
        .version
        .checked_add(1)
        .ok_or_else(|| RepoError::Inconsistent("root version cannot grow".to_owned()))?;
    let now = jiff::Timestamp::now();
    root.expires = match options.expires {
        Some(e) => e,
        None => config.role(Role::Root)?.expiry()?,
    }
    .resolve(now)?;
    editor::ensure_future(Role::Root, root.expires, now, false)?;

    let role_type = options.role.role_type();
    let mut rk =
        root.roles.get(&role_type).cloned().ok_or_else(|| {
            RepoError::Inconsistent(format!("root lists no {} role", options.role))
        })?;
    for id in &options.remove_keys {
        let id = id.trim().to_ascii_lowercase();
        let before = rk.keyids.len();
        rk.keyids.retain(|k| hex::encode(&**k) != id);
        if rk.keyids.len() == before {
            return Err(RepoError::InvalidArgument(format!(
                "--remove-key {id}: not a {} key (see `ota-repo status`)",
                options.role
            )));
        }
    }
    let mut added_ids = Vec::new();
    for key_ref in &options.add_keys {
        let public = key_ref.public_key(Some(layout.root()))?;
        let id = public
            .key_id()
            .map_err(|e| RepoError::Inconsistent(format!("computing a key id: {e}")))?;
        if rk.keyids.contains(&id) {
            return Err(RepoError::InvalidArgument(format!(
                "--add-key {key_ref}: key {} is already a {} key",
                hex::encode(&*id),
                options.role
            )));
        }
        root.keys.insert(id.clone(), public);
        rk.keyids.push(id.clone());
        added_ids.push(hex::encode(&*id));
    }
    let threshold = options.threshold.unwrap_or(rk.threshold.get());
    if threshold == 0 || threshold > rk.keyids.len() as u64 {
        return Err(RepoError::InvalidArgument(format!(
            "{} would have threshold {threshold} with {} key(s)",
            options.role,
            rk.keyids.len()
        )));
    }
    rk.threshold = NonZeroU64::new(threshold).unwrap_or(NonZeroU64::MIN);
    root.roles.insert(role_type, rk);
    // Drop public keys no role uses any more (a revoked key disappears).
    let used: Vec<_> = root.roles.values().flat_map(|r| r.keyids.clone()).collect();
    root.keys.retain(|id, _| used.contains(id));

    // repo.json follows root: removed keys out, added keys in.
    let removed: Vec<String> = options
        .remove_keys
        .iter()
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let rc = config
        .roles
        .get_mut(&options.role)
        .ok_or_else(|| RepoError::Inconsistent(format!("repo.json has no {}", options.role)))?;
    rc.keys.retain(|k| {
        k.public_key(Some(layout.root()))
            .and_then(|p| keys::key_id(&p))
            .map(|id| !removed.contains(&id))
            .unwrap_or(true)
    });
    rc.keys.extend(options.add_keys.iter().cloned());
    rc.threshold = threshold;

    // Keys able to sign: the current root's root keys and the new root's.
    let old_keys = loaded_root_keys(layout, &RepoConfig::load(layout)?, &old_root);
    let new_keys = loaded_root_keys(layout, &config, &root);
    let need = |r: &tough::schema::Root| {
        r.roles
            .get(&Role::Root.role_type())
            .map(|k| k.threshold.get())
            .unwrap_or(1)
    };
    let old_ok = count_in(&old_keys, &old_root) >= need(&old_root);
    let new_ok = count_in(&new_keys, &root) >= need(&root);
    if !(old_ok && new_ok) {
        let payload = ceremony::stage(layout, &old_root, &root)?;
        config.save(layout)?;
        return Ok(Rotated::Staged {
            root_version: root.version.get(),
            pending: ceremony::pending_path(layout, Role::Root),
            needs: payload
                .requirements
                .iter()
                .map(|r| format!("{} of {}", r.threshold, r.what))
                .collect(),
        });
    }
    let mut signers: Vec<LoadedKey> = Vec::new();
    for k in old_keys.into_iter().chain(new_keys) {
        if !signers.iter().any(|s| s.key_id == k.key_id) {
            signers.push(k);
        }
    }
    let log = editor::audit_log(layout, &config);
    let signatures = editor::signatures(&root, &signers, &log).await?;
    let signed_root = Signed {
        signed: root.clone(),
        signatures,
    };
    let resigned_roles = match options.role {
        Role::Root => Default::default(),
        r => resign::expand(&[r], &BTreeMap::new()),
    };
    editor::write_root(layout, &config, &state, signed_root, &resigned_roles).await?;
    config.save(layout)?;
    let version_of = |role: Role| match role {
        Role::Root => root.version.get(),
        Role::Targets => state.targets.signed.version.get() + 1,
        Role::Snapshot => state.snapshot.signed.version.get() + 1,
        Role::Timestamp => state.timestamp.signed.version.get() + 1,
    };
    Ok(Rotated::Signed {
        root_version: root.version.get(),
        resigned: resigned_roles
            .iter()
            .map(|r| (*r, version_of(*r)))
            .collect(),
    })
}

/// The root keys of `root` that repo.json lists and that open here.
fn loaded_root_keys(
    layout: &Layout,
    config: &RepoConfig,
    root: &tough::schema::Root,
) -> Vec<LoadedKey> {
    let Some(rk) = root.roles.get(&Role::Root.role_type()) else {
        return Vec::new();
    };
    let ids: Vec<String> = rk.keyids.iter().map(|id| hex::encode(&**id)).collect();
    let Ok(rc) = config.role(Role::Root) else {
        return Vec::new();
    };
    rc.keys
        .iter()
        .filter_map(|k| k.open(Some(layout.root())).ok())
        .filter(|k| ids.contains(&k.key_id))
        .collect()
}

fn count_in(keys: &[LoadedKey], root: &tough::schema::Root) -> u64 {
    let Some(rk) = root.roles.get(&Role::Root.role_type()) else {
        return 0;
    };
    keys.iter()
        .filter(|k| rk.keyids.iter().any(|id| hex::encode(&**id) == k.key_id))
        .count() as u64
}
