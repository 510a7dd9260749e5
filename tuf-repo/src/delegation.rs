//! Delegated targets roles: `ota-repo delegate` hands a set of target paths
//! (e.g. `board-a/*`) to a role with its own keys and threshold, so a board
//! team can sign its releases without the top-level targets keys.
//!
//! * Delegating changes top-level targets (the role's public keys, key ids,
//!   threshold, `paths`, `terminating` are signed there, by the targets
//!   keys: a ceremony when they are offline) and creates `1.ROLE.json`,
//!   signed by the role's keys, before the targets that reference it.
//! * `add --role ROLE` and `resign --role ROLE` sign the next `N.ROLE.json`
//!   with the role's keys, then a snapshot listing it and a timestamp
//!   (ceremonies for those when their keys are offline).
//! * Snapshots list every delegated role (`ROLE.json`), so devices check
//!   each role's version and hash, and no snapshot ever drops one.
//!
//! Every signature goes through `editor::signatures_as`, so it is in the
//! hash-chained audit log under the role's name. Names a role may list are
//! checked with the device's own path matcher
//! (`ota_common::tuf::path_pattern_matches`): `*` never crosses a `/`.
//! Only top-level targets delegates (one level); the device client follows
//! deeper delegations made by other tools.

use crate::add::{self, AddOptions, Added};
use crate::ceremony::{self, Progress};
use crate::config::{RepoConfig, RoleConfig};
use crate::editor::{self, SignPlan};
use crate::error::{RepoError, Result};
use crate::expiry::Expiry;
use crate::key_ref::{KeyRef, LoadedKey};
use crate::keys::{self, KeyType};
use crate::layout::Layout;
use crate::publish::PublishSet;
use crate::role::Role;
use crate::state::RepoState;
use ota_common::rollout::RolloutPlan;
use ota_common::wire::PayloadCustom;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::num::NonZeroU64;
use std::path::PathBuf;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{DelegatedRole, Delegations, PathPattern, PathSet, Signed, Target, Targets};
use tough::TargetName;

/// Default lifetime of a delegated role's metadata (as top-level targets).
pub const DEFAULT_EXPIRY: &str = "90d";
/// Most keys one delegated role may list.
pub const MAX_KEYS: usize = 16;
/// Most path patterns one delegation may list.
pub const MAX_PATHS: usize = 64;

use crate::ceremony::delegated::DelegatedBy;
use crate::ceremony::delegated_keys::{
    chain_expiries, local_keys, next_version, threshold_error, usable_keys,
};
pub use crate::delegated::changed_delegation;
use crate::delegated::covers;
pub use crate::delegated::every_target;
pub use crate::delegated::find;
pub use crate::delegated::locate;
pub use crate::delegated::paths_of;
pub use crate::delegated::roles;
pub use crate::delegated::validate_name;

fn validate_pattern(pattern: &str) -> Result<PathPattern> {
    let bad =
        |detail: &str| RepoError::InvalidArgument(format!("invalid --paths {pattern:?}: {detail}"));
    if pattern.is_empty() || pattern.starts_with('/') {
        return Err(bad(
            "a pattern is relative to the targets and not empty, e.g. board-a/*",
        ));
    }
    if pattern
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad("empty, '.' or '..' path segment"));
    }
    if pattern.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("control character or backslash"));
    }
    PathPattern::new(pattern).map_err(|e| bad(&e.to_string()))
}

fn keyid_bytes(id: &str) -> Result<Decoded<Hex>> {
    Ok(hex::decode(id)
        .map_err(|e| RepoError::Inconsistent(format!("key id {id}: {e}")))?
        .into())
}

/// When a delegated role's next version and the snapshot and timestamp
/// that follow it expire.
struct Expiries {
    role: jiff::Timestamp,
    chain: BTreeMap<Role, jiff::Timestamp>,
}

/// The expiries of delegated role `role_name`'s next version under
/// `policy`, checked (and the chain checked signable) before anything is
/// written; refused while the role's own ceremony is open (`doing` says why
/// it would be changed).
fn next_expiries(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    role_name: &str,
    policy: Expiry,
    allow_expired: bool,
    doing: &str,
) -> Result<Expiries> {
    let now = jiff::Timestamp::now();
    let role = policy.resolve(now)?;
    editor::ensure_future(Role::Targets, role, now, allow_expired)?;
    let chain = chain_expiries(layout, config, state, now)?;
    crate::ceremony::delegated::refuse_open(layout, role_name, doing)?;
    Ok(Expiries { role, chain })
}

/// Signs `content` as the next version of delegated role `name` with its
/// keys here, writes `N.ROLE.json`, then signs (or stages) a snapshot that
/// lists it and a timestamp. When the keys here stay below the role's
/// threshold, the version waits in a ceremony instead
/// (`ceremony::delegated`) and nothing else is signed yet.
async fn sign_role(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    role: &DelegatedRole,
    current: &Signed<Targets>,
    mut content: Targets,
    expiries: Expiries,
) -> Result<(u64, Progress)> {
    let Expiries {
        role: role_expires,
        chain,
    } = expiries;
    let (keys, short) = usable_keys(layout, config, role)?;
    content.version = next_version(role, current)?;
    content.expires = role_expires;
    let version = content.version;
    let log = editor::audit_log(layout, config);
    let signatures = editor::signatures_as(&role.name, &content, &keys, &log).await?;
    if short {
        let by = DelegatedBy::Trusted {
            state,
            current: &current.signed,
        };
        let pending = crate::ceremony::delegated::stage(layout, role, by, &content, &signatures)?;
        return Ok((
            version.get(),
            Progress {
                signed: Vec::new(),
                pending: Some(pending),
            },
        ));
    }
    let progress = crate::ceremony::delegated::publish_version(
        layout, config, state, &role.name, content, signatures, chain,
    )
    .await?;
    Ok((version.get(), progress))
}

// ----------------------------------------------------------------- delegate

#[derive(Debug, Clone, Default)]
pub struct DelegateOptions {
    pub name: String,
    /// Path patterns the role is trusted for (`board-a/*`).
    pub paths: Vec<String>,
    /// Existing keys (files or `pkcs11:` URIs).
    pub keys: Vec<KeyRef>,
    /// Public keys (TUF key JSON files, `key export-pub`) of holders who
    /// sign elsewhere: version 1 then waits in a ceremony when the keys
    /// here stay below the threshold (new roles only).
    pub public_keys: Vec<PathBuf>,
    /// Generate a key file `keys/<name>-1.pem` of this type.
    pub generate_key: Option<KeyType>,
    pub threshold: u64,
    /// Devices stop searching past this role for names it covers.
    pub terminating: bool,
    /// Expiry policy of the role's metadata (default 90d).
    pub expires: Option<Expiry>,
}

/// What `delegate` did.
#[derive(Debug, Clone)]
pub struct Delegation {
    pub name: String,
    /// (key id, where it lives).
    pub keys: Vec<(String, String)>,
    /// The targets version that delegates the role (signed or pending).
    pub targets_version: u64,
    pub progress: Progress,
}

pub async fn delegate(layout: &Layout, options: &DelegateOptions) -> Result<Delegation> {
    let mut config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let name = options.name.as_str();
    validate_name(name).map_err(RepoError::InvalidArgument)?;
    // Delegating an existing name changes that delegation: its paths, keys,
    // threshold and `terminating` become the ones given here.
    let existing = roles(&state).iter().find(|r| r.name == name);
    // Also for a new name: its version 1 may be waiting (`--key-pub`).
    crate::ceremony::delegated::refuse_open(layout, name, "changing its delegation")?;
    // Read before anything is created: a bad file must change nothing.
    let offline = options
        .public_keys
        .iter()
        .map(|p| Ok((keys::read_public_key(p)?, p)))
        .collect::<Result<Vec<_>>>()?;
    if options.paths.is_empty() || options.paths.len() > MAX_PATHS {
        return Err(RepoError::InvalidArgument(format!(
            "give 1 to {MAX_PATHS} --paths patterns (e.g. --paths 'board-a/*')"
        )));
    }
    let patterns = options
        .paths
        .iter()
        .map(|p| validate_pattern(p))
        .collect::<Result<Vec<_>>>()?;
    let n_keys = options.keys.len() + usize::from(options.generate_key.is_some()) + offline.len();
    if n_keys == 0 || n_keys > MAX_KEYS {
        return Err(RepoError::InvalidArgument(format!(
            "give 1 to {MAX_KEYS} keys: --key FILE, --key-uri URI, --key-pub FILE or --generate-key"
        )));
    }
    if options.threshold == 0 || options.threshold > n_keys as u64 {
        return Err(RepoError::InvalidArgument(format!(
            "--threshold {}: must be between 1 and the {n_keys} key(s) of {name}",
            options.threshold
        )));
    }
    let now = jiff::Timestamp::now();
    let policy = options
        .expires
        .map(|e| e.to_string())
        .unwrap_or_else(|| DEFAULT_EXPIRY.to_owned());
    let role_expires = policy.parse::<Expiry>()?.resolve(now)?;
    editor::ensure_future(Role::Targets, role_expires, now, false)?;
    // Everything that could refuse (top-level keys, open ceremonies,
    // expiries) is checked before a key or file is created.
    let chain = add::signing_expiries(layout, &config, &state, now)?;

    let mut key_refs = options.keys.clone();
    if let Some(key_type) = options.generate_key {
        let rel = PathBuf::from(crate::layout::KEYS_DIR).join(format!("{name}-1.pem"));
        let path = layout.resolve(&rel);
        if path.exists() {
            return Err(RepoError::InvalidArgument(format!(
                "{} already exists; pass it with --key instead of --generate-key",
                path.display()
            )));
        }
        let pem = keys::generate_pem(key_type)?;
        ota_common::atomic::write_atomic_with_mode(&path, pem.as_bytes(), 0o600)
            .map_err(RepoError::io(&path))?;
        key_refs.push(KeyRef::File(rel));
    }
    let mut public: Vec<(String, Key, String)> = Vec::new();
    for k in &key_refs {
        let key = k.public_key(Some(layout.root()))?;
        let id = keys::key_id(&key)?;
        if public.iter().any(|(i, _, _)| *i == id) {
            return Err(RepoError::InvalidArgument(format!(
                "key {id} ({}) is given twice",
                k.describe(Some(layout.root()))
            )));
        }
        public.push((id, key, k.describe(Some(layout.root()))));
    }
    for (key, path) in offline {
        let id = keys::key_id(&key)?;
        if public.iter().any(|(i, _, _)| *i == id) {
            return Err(RepoError::InvalidArgument(format!(
                "key {id} (--key-pub {}) is given twice",
                path.display()
            )));
        }
        public.push((
            id,
            key,
            format!("held elsewhere (public key {})", path.display()),
        ));
    }
    let threshold = NonZeroU64::new(options.threshold)
        .ok_or_else(|| RepoError::InvalidArgument("--threshold must be at least 1".to_owned()))?;
    let role = DelegatedRole {
        name: name.to_owned(),
        keyids: public
            .iter()
            .map(|(id, _, _)| keyid_bytes(id))
            .collect::<Result<_>>()?,
        threshold,
        paths: PathSet::Paths(patterns),
        terminating: options.terminating,
        targets: None,
    };
    // repo.json must find the keys of whichever delegation the signed
    // metadata holds when the power goes: before signing it lists the old
    // keys and the new ones (a cut leaves the old delegation signed, and the
    // old keys still sign the role), and only once the new targets is signed
    // the new keys alone. A role's keys are those repo.json lists *and* the
    // delegation lists, so an extra entry never signs anything.
    let final_entry = RoleConfig {
        keys: key_refs.clone(),
        threshold: options.threshold,
        expires: policy,
    };
    let mut both = final_entry.clone();
    if let Some(old) = config.delegations.get(name) {
        for k in &old.keys {
            if !both.keys.contains(k) {
                both.keys.push(k.clone());
            }
        }
    }
    config.delegations.insert(name.to_owned(), both);
    config.save(layout)?;

    // The role's next version (1 for a new role; for a changed one its
    // current targets, so devices that trust the new keys see them signed by
    // those keys), signed by its keys, before the targets that delegate to
    // it (unreferenced until a snapshot lists it).
    let (keys, problems) = local_keys(layout, &config, &role)?;
    if (keys.len() as u64) < role.threshold.get() {
        if existing.is_some() || options.public_keys.is_empty() || !problems.is_empty() {
            // Changing a delegation signs the role's next version with the
            // new keys before the targets that trusts them: they must be here.
            return Err(threshold_error(&role, keys.len(), &problems));
        }
        return delegate_offline(
            layout,
            &config,
            &state,
            role,
            public,
            keys,
            role_expires,
            chain,
        )
        .await;
    }
    let content = match existing.and_then(|r| r.targets.as_ref()) {
        Some(current) => {
            let mut c = current.signed.clone();
            c.version = next_version(&role, current)?;
            c.expires = role_expires;
            c
        }
        None => {
            let mut first = Targets::new(
                editor::SPEC_VERSION.to_owned(),
                NonZeroU64::MIN,
                role_expires,
            );
            first.delegations = None;
            first
        }
    };
    let log = editor::audit_log(layout, &config);
    let signatures = editor::signatures_as(name, &content, &keys, &log).await?;
    let listed = crate::ceremony::delegated::write_role_file(layout, name, content, signatures)?;

    let (targets, replaced) = with_delegation(&state, &public, role)?;
    let mut delegated = BTreeMap::new();
    if replaced {
        delegated.insert(listed.0, listed.1);
    }
    let plan = SignPlan {
        new_targets: Some(targets),
        snapshot: true,
        timestamp: true,
        expires: chain,
        delegated,
        ..SignPlan::default()
    };
    let progress = ceremony::sign_or_stage(layout, &config, &state, plan).await?;
    // The new targets is signed: drop the old keys. While it waits in a
    // ceremony the old delegation is the signed one, so both stay listed
    // (the next `delegate` of this role, or editing repo.json, drops them).
    let targets_signed = progress.signed.iter().any(|(r, _)| *r == Role::Targets);
    if targets_signed && config.delegations.get(name) != Some(&final_entry) {
        config.delegations.insert(name.to_owned(), final_entry);
        config.save(layout)?;
    }
    Ok(Delegation {
        name: name.to_owned(),
        keys: public.into_iter().map(|(id, _, loc)| (id, loc)).collect(),
        targets_version: state.targets.signed.version.get() + 1,
        progress,
    })
}

/// The current top-level targets with `role` (and its keys `public`)
/// delegated; whether it replaced a delegation of that name.
fn with_delegation(
    state: &RepoState,
    public: &[(String, Key, String)],
    role: DelegatedRole,
) -> Result<(Targets, bool)> {
    let mut targets = state.targets.signed.clone();
    let delegations = targets.delegations.get_or_insert_with(Delegations::new);
    for (id, key, _) in public {
        delegations.keys.insert(keyid_bytes(id)?, key.clone());
    }
    let replaced = match delegations.roles.iter_mut().find(|r| r.name == role.name) {
        Some(slot) => {
            *slot = role;
            true
        }
        None => {
            delegations.roles.push(role);
            false
        }
    };
    drop_unused_keys(delegations);
    Ok((targets, replaced))
}

/// `delegate` of a new role whose keys here stay below its threshold
/// (`--key-pub`): version 1 is signed by the keys here and waits in the
/// role's ceremony together with the top-level targets that delegates it,
/// signed now by the targets keys. `ceremony merge --role ROLE` commits
/// both (the role's file first), then snapshot and timestamp: until then
/// the repository is unchanged, as devices must never see a delegation
/// whose role file does not exist.
// The repository context, the new delegation, the keys here and two expiry
// choices: a struct would only rename these arguments.
#[allow(clippy::too_many_arguments)]
async fn delegate_offline(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    role: DelegatedRole,
    public: Vec<(String, Key, String)>,
    keys: Vec<LoadedKey>,
    role_expires: jiff::Timestamp,
    chain: BTreeMap<Role, jiff::Timestamp>,
) -> Result<Delegation> {
    // A targets version waiting in a ceremony would be forked by this one.
    ceremony::refuse_open_chain(layout, "delegating a role whose keys are elsewhere")?;
    let name = role.name.clone();
    let mut content = Targets::new(
        editor::SPEC_VERSION.to_owned(),
        NonZeroU64::MIN,
        role_expires,
    );
    content.delegations = None;
    let log = editor::audit_log(layout, config);
    let signatures = editor::signatures_as(&name, &content, &keys, &log).await?;
    let (targets, _) = with_delegation(state, &public, role.clone())?;
    let files = editor::sign_plan(
        layout,
        config,
        state,
        SignPlan {
            new_targets: Some(targets),
            expires: chain,
            ..SignPlan::default()
        },
    )
    .await?;
    let bytes = files
        .versioned
        .into_iter()
        .find(|(f, _)| f.ends_with(".targets.json"))
        .map(|(_, b)| b)
        .ok_or_else(|| RepoError::Inconsistent("no targets was signed".to_owned()))?;
    let delegating: Signed<Targets> = serde_json::from_slice(&bytes)
        .map_err(|e| RepoError::Inconsistent(format!("reading the signed targets back: {e}")))?;
    let by = DelegatedBy::New {
        targets: &delegating,
        bytes: &bytes,
    };
    let pending = crate::ceremony::delegated::stage(layout, &role, by, &content, &signatures)?;
    Ok(Delegation {
        name,
        keys: public.into_iter().map(|(id, _, loc)| (id, loc)).collect(),
        targets_version: delegating.signed.version.get(),
        progress: Progress {
            signed: Vec::new(),
            pending: Some(pending),
        },
    })
}

/// Keys no delegated role lists any more leave the delegations' key list.
fn drop_unused_keys(delegations: &mut Delegations) {
    let used: BTreeSet<Vec<u8>> = delegations
        .roles
        .iter()
        .flat_map(|r| r.keyids.iter().map(|id| id.to_vec()))
        .collect();
    delegations.keys.retain(|id, _| used.contains(&id.to_vec()));
}

/// What `undelegate` did.
#[derive(Debug, Clone)]
pub struct Undelegation {
    /// The targets version that no longer delegates the role (signed or pending).
    pub targets_version: u64,
    pub progress: Progress,
}

/// `ota-repo undelegate --name ROLE`: top-level targets stops delegating to
/// the role, so devices no longer trust anything it lists. Snapshots keep
/// listing `ROLE.json` (TUF clients refuse a snapshot that drops a file),
/// but no targets points at it. repo.json forgets the role once the new
/// targets is signed.
pub async fn undelegate(layout: &Layout, name: &str) -> Result<Undelegation> {
    let mut config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    validate_name(name).map_err(RepoError::InvalidArgument)?;
    find(&state, name)?;
    crate::ceremony::delegated::refuse_open(layout, name, "removing its delegation")?;
    let chain = add::signing_expiries(layout, &config, &state, jiff::Timestamp::now())?;
    let mut targets = state.targets.signed.clone();
    if let Some(d) = targets.delegations.as_mut() {
        d.roles.retain(|r| r.name != name);
        drop_unused_keys(d);
    }
    let plan = SignPlan {
        new_targets: Some(targets),
        snapshot: true,
        timestamp: true,
        expires: chain,
        ..SignPlan::default()
    };
    let progress = ceremony::sign_or_stage(layout, &config, &state, plan).await?;
    if progress
        .signed
        .contains(&(Role::Targets, state.targets.signed.version.get() + 1))
    {
        config.delegations.remove(name);
        config.save(layout)?;
    }
    Ok(Undelegation {
        targets_version: state.targets.signed.version.get() + 1,
        progress,
    })
}

// ---------------------------------------------------------------- add, resign

/// `add --role ROLE`: the image becomes a target of the delegated role
/// (its name must be inside the role's paths), signed by the role's keys,
/// packed as `packing` says (as for a top-level target: the signed
/// payload, `None` for a raw target, is returned too).
pub async fn add(
    layout: &Layout,
    role_name: &str,
    options: &AddOptions,
    rollout: Option<RolloutPlan>,
    packing: &add::Packing,
) -> Result<(Added, Option<PayloadCustom>, Progress)> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let (role, current) = find(&state, role_name)?;
    let mut release = add::release_fields(options)?;
    release.rollout = rollout;
    let name = add::target_name_of(options)?;
    if !covers(role, &name) {
        return Err(RepoError::InvalidTargetName {
            name,
            detail: format!(
                "outside the paths of delegated role {role_name} ({}): devices would not trust it from that role; pass --name inside them (`*` does not match '/')",
                paths_of(role).join(", ")
            ),
        });
    }
    let image = File::open(&options.image).map_err(|source| RepoError::Image {
        path: options.image.clone(),
        source,
    })?;
    add::check_not_published(&state, &name, &release)?;
    let policy = config.delegated(role_name)?.expiry()?;
    let expiries = next_expiries(
        layout,
        &config,
        &state,
        role_name,
        policy,
        false,
        "adding to it",
    )?;
    // The role's keys must open (or be offline by design) before the image is copied.
    usable_keys(layout, &config, role)?;

    let size = image.metadata().map(|m| m.len()).unwrap_or(0);
    let packed = add::store_packed(layout, &name, &options.image, image, size, packing)?;
    let digests = packed.digests;
    release.payload = packed.payload.clone();
    release.delta = add::delta_of(layout, &options.image, packing)?;
    let target = add::target_entry(&digests, &release, packing.list_sha512)?;
    let mut content = current.signed.clone();
    let tname =
        TargetName::new(name.clone()).map_err(RepoError::tough(format!("target name {name:?}")))?;
    content.targets.insert(tname, target);
    let (version, progress) =
        sign_role(layout, &config, &state, role, current, content, expiries).await?;
    Ok((
        Added {
            name,
            length: digests.length,
            sha256: hex::encode(digests.sha256),
            sha512: packing.list_sha512.then(|| hex::encode(digests.sha512)),
            targets_version: version,
        },
        packed.payload,
        progress,
    ))
}

/// `resign --role ROLE`: the role's next version with a fresh expiry.
pub async fn resign(
    layout: &Layout,
    role_name: &str,
    expires: Option<Expiry>,
    allow_expired: bool,
) -> Result<(u64, jiff::Timestamp, Progress)> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let (role, current) = find(&state, role_name)?;
    let policy = match expires {
        Some(e) => e,
        None => config.delegated(role_name)?.expiry()?,
    };
    let expiries = next_expiries(
        layout,
        &config,
        &state,
        role_name,
        policy,
        allow_expired,
        "re-signing it",
    )?;
    let role_expires = expiries.role;
    let content = current.signed.clone();
    let (version, progress) =
        sign_role(layout, &config, &state, role, current, content, expiries).await?;
    Ok((version, role_expires, progress))
}

/// Replaces the entry of target `name` in delegated role `role_name` with
/// `target` and signs the role's next version (or stages it when its keys
/// are offline), then snapshot and timestamp. `rollout set/clear` use it.
pub async fn replace_target(
    layout: &Layout,
    role_name: &str,
    name: &str,
    target: Target,
) -> Result<(u64, Progress)> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let (role, current) = find(&state, role_name)?;
    let policy = config.delegated(role_name)?.expiry()?;
    let doing = "changing its targets";
    let expiries = next_expiries(layout, &config, &state, role_name, policy, false, doing)?;
    let mut content = current.signed.clone();
    let entry = content
        .targets
        .iter_mut()
        .find(|(n, _)| n.raw() == name)
        .map(|(_, t)| t)
        .ok_or_else(|| RepoError::UnknownTarget {
            name: name.to_owned(),
        })?;
    *entry = target;
    sign_role(layout, &config, &state, role, current, content, expiries).await
}

// ------------------------------------------------------------------ publish

/// Adds what the delegated roles need to a publication: each role's
/// current `N.ROLE.json` and the images it lists.
pub fn extend_publish_set(layout: &Layout, state: &RepoState, set: &mut PublishSet) -> Result<()> {
    // A role no longer delegated (`undelegate`) stays listed by snapshots
    // (clients refuse a snapshot that drops a file): its listed file is
    // published so that listing resolves, but not its images.
    for (file, m) in &state.snapshot.signed.meta {
        let Some(role) = file.strip_suffix(".json") else {
            continue;
        };
        if role == "targets" || roles(state).iter().any(|r| r.name == role) {
            continue;
        }
        let name = format!("{}.{file}", m.version);
        let path = layout.metadata_dir().join(&name);
        if path.exists() && !set.metadata.contains(&name) {
            set.metadata.push(name);
        }
    }
    for role in roles(state) {
        let (_, signed) = find(state, &role.name)?;
        set.metadata
            .push(format!("{}.{}.json", signed.signed.version, role.name));
        let mut listed: Vec<_> = signed.signed.targets.iter().collect();
        listed.sort_by(|a, b| a.0.raw().cmp(b.0.raw()));
        for (name, target) in listed {
            let t = crate::publish::target_file(layout, name, target)?;
            if !set.targets.iter().any(|x| x.by_sha256 == t.by_sha256) {
                set.targets.push(t);
            }
        }
        if signed.signed.expires <= jiff::Timestamp::now() {
            set.expired_roles.push(role.name.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_relative_and_clean() {
        assert!(validate_pattern("board-a/*").is_ok());
        assert!(validate_pattern("*.img").is_ok());
        for bad in ["", "/abs/*", "a/../b", "a//b", "a\\b"] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
    }
}
