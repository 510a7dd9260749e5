//! `ota-repo init`: keys for every role, `repo.json`, and version 1 of root,
//! targets (empty), snapshot and timestamp with consistent snapshots.

use crate::config::{RepoConfig, RoleConfig, FORMAT};
use crate::editor::{self, metafile, MetadataFiles, SPEC_VERSION};
use crate::error::{RepoError, Result};
use crate::expiry::Expiry;
use crate::key_ref::{KeyRef, LoadedKey};
use crate::keys::{self, KeyType};
use crate::layout::Layout;
use crate::pkcs11::Pkcs11Uri;
use crate::role::Role;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::PathBuf;
use tough::schema::{RoleKeys, Root, Snapshot, Targets, Timestamp};

/// Most keys per role `init` will generate (a guard against typos such as `root=100`).
pub const MAX_KEYS_PER_ROLE: u64 = 16;

#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub key_type: KeyType,
    pub keys: BTreeMap<Role, u64>,
    pub thresholds: BTreeMap<Role, u64>,
    pub expires: BTreeMap<Role, Expiry>,
    /// Generate every key in this token (a `pkcs11:` URI naming the token
    /// and module, without object) instead of in key files.
    pub key_store: Option<Pkcs11Uri>,
    /// Explicit token keys per role (generated at these URIs); a role given
    /// here has exactly these keys.
    pub key_uris: BTreeMap<Role, Vec<Pkcs11Uri>>,
}

/// Creates the repository; refuses a non-empty existing directory.
pub async fn init(layout: &Layout, options: &InitOptions) -> Result<RepoConfig> {
    let root_dir = layout.root();
    if root_dir.exists() {
        let mut entries = std::fs::read_dir(root_dir).map_err(RepoError::io(root_dir))?;
        if entries.next().is_some() {
            return Err(RepoError::NotEmpty {
                path: root_dir.to_owned(),
            });
        }
    }
    let config = plan_config(options)?;
    let now = jiff::Timestamp::now();
    let mut expires = BTreeMap::new();
    for role in Role::ALL {
        let t = config.role(role)?.expiry()?.resolve(now)?;
        editor::ensure_future(role, t, now, false)?;
        expires.insert(role, t);
    }

    ota_common::atomic::create_dir_all_durable(&layout.keys_dir())
        .map_err(RepoError::io(layout.keys_dir()))?;
    restrict_dir(&layout.keys_dir())?;
    let mut root = Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: expires[&Role::Root],
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    let mut sources: BTreeMap<Role, Vec<LoadedKey>> = BTreeMap::new();
    for role in Role::ALL {
        let rc = config.role(role)?;
        let mut keyids = Vec::new();
        for key_ref in &rc.keys {
            match key_ref {
                KeyRef::File(rel) => {
                    let path = layout.resolve(rel);
                    let pem = keys::generate_pem(config.key_type)?;
                    ota_common::atomic::write_atomic_with_mode(&path, pem.as_bytes(), 0o600)
                        .map_err(RepoError::io(&path))?;
                }
                KeyRef::Pkcs11(uri) => {
                    uri.generate(config.key_type)?;
                }
            }
            let loaded = key_ref.open(Some(layout.root()))?;
            let public = loaded.signer.tuf_key();
            let id = public
                .key_id()
                .map_err(|e| RepoError::Inconsistent(format!("computing a key id: {e}")))?;
            root.keys.insert(id.clone(), public);
            keyids.push(id);
            sources.entry(role).or_default().push(loaded);
        }
        root.roles.insert(
            role.role_type(),
            RoleKeys {
                keyids,
                threshold: NonZeroU64::new(rc.threshold).unwrap_or(NonZeroU64::MIN),
                _extra: HashMap::new(),
            },
        );
    }
    let log = editor::audit_log(layout, &config);
    let keys_of = |role: Role| sources.get(&role).map(Vec::as_slice).unwrap_or(&[]);

    let signed_root = editor::sign(root.clone(), &root, keys_of(Role::Root), &log).await?;
    let mut targets = Targets::new(
        SPEC_VERSION.to_owned(),
        NonZeroU64::MIN,
        expires[&Role::Targets],
    );
    // No delegations: an empty delegations object only adds surface for clients.
    targets.delegations = None;
    let signed_targets = editor::sign(targets, &root, keys_of(Role::Targets), &log).await?;
    let mut snapshot = Snapshot::new(
        SPEC_VERSION.to_owned(),
        NonZeroU64::MIN,
        expires[&Role::Snapshot],
    );
    snapshot.meta.insert(
        "targets.json".to_owned(),
        metafile(signed_targets.buffer(), NonZeroU64::MIN),
    );
    let signed_snapshot = editor::sign(snapshot, &root, keys_of(Role::Snapshot), &log).await?;
    let mut timestamp = Timestamp::new(
        SPEC_VERSION.to_owned(),
        NonZeroU64::MIN,
        expires[&Role::Timestamp],
    );
    timestamp.meta.insert(
        "snapshot.json".to_owned(),
        metafile(signed_snapshot.buffer(), NonZeroU64::MIN),
    );
    let signed_timestamp = editor::sign(timestamp, &root, keys_of(Role::Timestamp), &log).await?;

    let files = MetadataFiles {
        versioned: vec![
            ("1.root.json".to_owned(), signed_root.buffer().clone()),
            ("1.targets.json".to_owned(), signed_targets.buffer().clone()),
            (
                "1.snapshot.json".to_owned(),
                signed_snapshot.buffer().clone(),
            ),
        ],
        root_copy: Some(signed_root.buffer().clone()),
        timestamp: Some(signed_timestamp.buffer().clone()),
    };
    ota_common::atomic::create_dir_all_durable(&layout.targets_dir())
        .map_err(RepoError::io(layout.targets_dir()))?;
    editor::write_metadata(layout, &files)?;
    // repo.json last: its presence marks a complete repository.
    config.save(layout)?;
    Ok(config)
}

fn restrict_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(RepoError::io(dir))
}

fn plan_config(options: &InitOptions) -> Result<RepoConfig> {
    let mut roles = BTreeMap::new();
    for role in Role::ALL {
        let explicit = options.key_uris.get(&role);
        let n = match explicit {
            Some(uris) => uris.len() as u64,
            None => options.keys.get(&role).copied().unwrap_or(1),
        };
        if n == 0 || n > MAX_KEYS_PER_ROLE {
            return Err(RepoError::InvalidArgument(format!(
                "--keys {role}={n}: a role needs 1 to {MAX_KEYS_PER_ROLE} keys"
            )));
        }
        let threshold = options.thresholds.get(&role).copied().unwrap_or(1);
        if threshold == 0 || threshold > n {
            return Err(RepoError::InvalidArgument(format!(
                "--threshold {role}={threshold}: must be between 1 and the {n} key(s) of {role}"
            )));
        }
        let expires = options
            .expires
            .get(&role)
            .map(ToString::to_string)
            .unwrap_or_else(|| role.default_expiry().to_owned());
        let keys = match (explicit, &options.key_store) {
            (Some(uris), _) => uris.iter().cloned().map(KeyRef::Pkcs11).collect(),
            (None, Some(store)) => (1..=n)
                .map(|i| {
                    let mut uri = store.clone();
                    uri.object = Some(format!("{role}-{i}"));
                    // A fresh random id, so a re-run never confuses keys.
                    let mut id = [0u8; 8];
                    aws_lc_rs::rand::fill(&mut id).map_err(|_| RepoError::KeyGeneration {
                        key_type: "random id",
                    })?;
                    uri.id = Some(id.to_vec());
                    Ok(KeyRef::Pkcs11(uri))
                })
                .collect::<Result<Vec<_>>>()?,
            (None, None) => (1..=n)
                .map(|i| {
                    KeyRef::File(
                        PathBuf::from(crate::layout::KEYS_DIR).join(format!("{role}-{i}.pem")),
                    )
                })
                .collect(),
        };
        roles.insert(
            role,
            RoleConfig {
                keys,
                threshold,
                expires,
            },
        );
    }
    Ok(RepoConfig {
        format: FORMAT,
        key_type: options.key_type,
        roles,
        operator: None,
        delegations: BTreeMap::new(),
    })
}
