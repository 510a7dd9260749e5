//! M-of-N ceremonies for delegated targets roles: a board team whose keys
//! live on several machines signs its role's next version the way the
//! top-level roles are signed (`ceremony export --role ROLE`, `sign` on
//! each machine, `ceremony merge --role ROLE`).
//!
//! The waiting version lives in `ceremony/delegated/<ROLE>.json` and its
//! accepted signatures in `ceremony/delegated/<ROLE>.signatures/`; nothing
//! is in `metadata/` until the threshold is met, so the repository keeps
//! loading and `publish` refuses while it is open. The keys and threshold
//! that count are the ones the *delegating* top-level targets lists for the
//! role at merge time (what devices check), never the payload's own list.
//!
//! Merging writes `N.ROLE.json`, then a snapshot listing it and a
//! timestamp, in the order `ceremony::sign_or_stage` uses for targets (a
//! snapshot or timestamp whose keys are offline waits in its own ceremony).

use crate::ceremony::delegated_keys;
use crate::ceremony::{
    self, Collected, Payload, PendingRole, Progress, Requirement, RoleMeta, Slot,
};
use crate::config::RepoConfig;
use crate::delegated;
use crate::editor::{self, SignPlan};
use crate::error::{RepoError, Result};
use crate::expiry::Expiry;
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use base64::Engine as _;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tough::schema::key::Key;
use tough::schema::{DelegatedRole, Signature, Signed, Targets};

/// Subdirectory of `ceremony/` for delegated roles (their names cannot
/// collide with the top-level roles' files there, but a directory of their
/// own keeps listing them simple).
pub const DELEGATED_DIR: &str = "delegated";

fn dir(layout: &Layout) -> PathBuf {
    layout
        .root()
        .join(ceremony::CEREMONY_DIR)
        .join(DELEGATED_DIR)
}

/// Where the ceremony of delegated role `name` keeps its files.
pub(crate) fn slot(layout: &Layout, name: &str) -> Slot {
    let d = dir(layout);
    Slot {
        payload: d.join(format!("{name}.json")),
        signatures: d.join(format!("{name}.signatures")),
        dir: d,
    }
}

/// `ceremony/delegated/<ROLE>.json`.
pub fn pending_path(layout: &Layout, name: &str) -> PathBuf {
    slot(layout, name).payload
}

/// Refuses to sign a new version of `name` while one waits for
/// signatures: two versions of the same number would fork the role.
pub(crate) fn refuse_open(layout: &Layout, name: &str, doing: &str) -> Result<()> {
    let path = pending_path(layout, name);
    if path.exists() {
        return Err(RepoError::Ceremony(format!(
            "delegated role {name} has a version waiting for signatures ({}); finish it with `ota-repo ceremony merge --role {name} SIG...` or abandon it with `ota-repo ceremony abandon --role {name}` before {doing}",
            path.display()
        )));
    }
    Ok(())
}

/// The keys and threshold the delegating targets lists for `role`.
fn requirement(
    state: &RepoState,
    role: &DelegatedRole,
) -> Result<(Vec<Requirement>, BTreeMap<String, Key>)> {
    requirement_in(&state.targets.signed, role)
}

/// The keys and threshold `delegating` (a top-level targets) lists for `role`.
fn requirement_in(
    delegating: &Targets,
    role: &DelegatedRole,
) -> Result<(Vec<Requirement>, BTreeMap<String, Key>)> {
    let listed = delegating
        .delegations
        .as_ref()
        .map(|d| &d.keys)
        .ok_or_else(|| RepoError::Inconsistent("targets lists no delegations".to_owned()))?;
    let mut keys = BTreeMap::new();
    for id in &role.keyids {
        let key = listed.get(id).cloned().ok_or_else(|| {
            RepoError::Inconsistent(format!(
                "targets delegates {} to key {} without listing its public key",
                role.name,
                hex::encode(&**id)
            ))
        })?;
        keys.insert(hex::encode(&**id), key);
    }
    Ok((
        vec![Requirement {
            what: format!(
                "keys of delegated role {} listed by targets version {}",
                role.name, delegating.version
            ),
            threshold: role.threshold.get(),
            keyids: keys.keys().cloned().collect(),
        }],
        keys,
    ))
}

/// `name` becomes part of file paths under `ceremony/delegated/`: refuse
/// anything but a valid role name before it gets there (the CLI checks too,
/// but these functions are public).
fn check_name(name: &str) -> Result<()> {
    delegated::validate_name(name).map_err(RepoError::InvalidArgument)
}

fn read_payload(layout: &Layout, name: &str) -> Result<Payload> {
    let path = pending_path(layout, name);
    let payload: Payload = ceremony::read_json(&path)?;
    if payload.delegated.as_deref() != Some(name) || payload.role != Role::Targets {
        return Err(RepoError::Ceremony(format!(
            "{} holds a {} payload, not one of delegated role {name}",
            path.display(),
            payload.role_name()
        )));
    }
    Ok(payload)
}

/// Opens the ceremony of `role` for `content` (its version and expiry
/// set), keeping the signatures the keys here already made.
pub(crate) fn stage(
    layout: &Layout,
    state: &RepoState,
    role: &DelegatedRole,
    current: &Targets,
    content: &Targets,
    local: &[Signature],
) -> Result<PendingRole> {
    let (requirements, keys) = requirement(state, role)?;
    let mut summary = vec![
        format!(
            "delegated role {} version {}, expires {}",
            role.name, content.version, content.expires
        ),
        format!(
            "trusted for paths {} (delegated by targets version {})",
            delegated::paths_of(role).join(", "),
            state.targets.signed.version
        ),
    ];
    summary.extend(ceremony::summarize_targets(&current.targets, content));
    let mut payload = Payload::from_meta(
        &RoleMeta::Targets(content.clone()),
        keys,
        requirements,
        summary,
    )?;
    payload.delegated = Some(role.name.clone());
    open_with(layout, role, payload, local)
}

/// Opens the ceremony of version 1 of a new delegated role whose keys here
/// stay below its threshold. `delegating` is the top-level targets that
/// creates the delegation, already signed by the targets keys: it is
/// committed by `merge`, after `1.ROLE.json` (a repository cannot list a
/// delegation before the role's file), and its keys and threshold are the
/// ones that count.
pub(crate) fn stage_first(
    layout: &Layout,
    role: &DelegatedRole,
    delegating: &Signed<Targets>,
    delegating_bytes: &[u8],
    content: &Targets,
    local: &[Signature],
) -> Result<PendingRole> {
    let (requirements, keys) = requirement_in(&delegating.signed, role)?;
    let summary = vec![
        format!(
            "NEW delegated role {} version {}, expires {} (no targets yet)",
            role.name, content.version, content.expires
        ),
        format!(
            "trusted for paths {} by targets version {} (signed by the targets keys, committed when this ceremony completes)",
            delegated::paths_of(role).join(", "),
            delegating.signed.version
        ),
    ];
    let mut payload = Payload::from_meta(
        &RoleMeta::Targets(content.clone()),
        keys,
        requirements,
        summary,
    )?;
    payload.delegated = Some(role.name.clone());
    payload.delegating_targets =
        Some(base64::engine::general_purpose::STANDARD.encode(delegating_bytes));
    open_with(layout, role, payload, local)
}

fn open_with(
    layout: &Layout,
    role: &DelegatedRole,
    payload: Payload,
    local: &[Signature],
) -> Result<PendingRole> {
    let detached: Vec<_> = local
        .iter()
        .map(|s| ceremony::DetachedSignature {
            role: Role::Targets,
            version: payload.version,
            payload_sha256: payload.sha256.clone(),
            keyid: hex::encode(&*s.keyid),
            sig: hex::encode(&*s.sig),
            delegated: Some(role.name.clone()),
        })
        .collect();
    let slot = slot(layout, &role.name);
    ceremony::open_slot(&slot, &payload, &detached)?;
    let status = ceremony::pending_status_in(&slot, &payload)?;
    tracing::info!("{}", status.describe());
    Ok(status)
}

/// Names of the delegated roles with an open ceremony.
fn open_names(layout: &Layout) -> Result<Vec<String>> {
    let d = dir(layout);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RepoError::Io { path: d, source: e }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let path = entry.map_err(RepoError::io(&d))?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        // Anything else there is not ours to interpret.
        if delegated::validate_name(name).is_ok() && path.is_file() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Every open delegated ceremony, with the signatures it has so far.
pub fn pending(layout: &Layout) -> Result<Vec<PendingRole>> {
    open_names(layout)?
        .into_iter()
        .map(|name| {
            let payload = read_payload(layout, &name)?;
            ceremony::pending_status_in(&slot(layout, &name), &payload)
        })
        .collect()
}

/// Closes delegated ceremonies for versions the repository already has
/// (the trusted snapshot lists that version or a newer one) or that an
/// open snapshot/timestamp ceremony lists: a merge was cut after writing
/// them, before closing the ceremony.
pub(crate) fn heal(layout: &Layout, state: &RepoState) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let names = open_names(layout)?;
    if names.is_empty() {
        return Ok(done);
    }
    let referenced: BTreeSet<String> = ceremony::referenced_by_ceremonies(layout, state)?;
    for name in names {
        let payload = read_payload(layout, &name)?;
        let trusted = state
            .snapshot
            .signed
            .meta
            .get(&format!("{name}.json"))
            .map(|m| m.version.get())
            .unwrap_or(0);
        let listed = referenced.contains(&format!("{}.{name}.json", payload.version));
        if payload.version <= trusted || listed {
            ceremony::close_slot(&slot(layout, &name))?;
            done.push(format!(
                "closed the {name} version {} ceremony: {} (a run was interrupted before closing it)",
                payload.version,
                if listed {
                    "it was signed and an open ceremony lists it"
                } else {
                    "the repository already has that version"
                }
            ));
        }
    }
    Ok(done)
}

/// `ceremony export --role ROLE` for a delegated role: the pending version,
/// or else a new one (the next version with a fresh expiry: a re-signing
/// by keys kept offline), written to `out`.
pub async fn export(
    layout: &Layout,
    name: &str,
    expires: Option<Expiry>,
    out: &Path,
) -> Result<Payload> {
    check_name(name)?;
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    ceremony::heal(layout, &state)?;
    let slot = slot(layout, name);
    let payload = if slot.payload.exists() {
        let p = read_payload(layout, name)?;
        slot.refuse_new_expiry(name, p.version, expires.as_ref())?;
        p
    } else {
        let (role, current) = delegated::find(&state, name)?;
        let now = jiff::Timestamp::now();
        let policy = match expires {
            Some(e) => e,
            None => config.delegated(name)?.expiry()?,
        };
        let when = policy.resolve(now)?;
        editor::ensure_future(Role::Targets, when, now, false)?;
        let (keys, short) = delegated_keys::usable_keys(layout, &config, role)?;
        if !short {
            return Err(RepoError::Ceremony(format!(
                "the {name} keys here reach its threshold: re-sign with `ota-repo resign --role {name}` instead of a ceremony"
            )));
        }
        let mut content = current.signed.clone();
        content.version = delegated_keys::next_version(role, current)?;
        content.expires = when;
        let log = editor::audit_log(layout, &config);
        let sigs = editor::signatures_as(name, &content, &keys, &log).await?;
        stage(layout, &state, role, &current.signed, &content, &sigs)?;
        read_payload(layout, name)?
    };
    payload.signed_bytes()?;
    ceremony::write_json(out, &payload)?;
    Ok(payload)
}

/// Outcome of a delegated merge that met the threshold.
#[derive(Debug, Clone)]
pub struct DelegatedMerged {
    pub name: String,
    pub version: u64,
    /// Key ids whose signatures were counted.
    pub counted: Vec<String>,
    /// Signature files given that were not counted, and why.
    pub not_counted: Vec<String>,
    /// Snapshot and timestamp signed after it, and what now waits.
    pub progress: Progress,
}

/// `ceremony merge --role ROLE` for a delegated role: verifies the
/// signatures against the keys top-level targets lists for the role, and at
/// its threshold writes `N.ROLE.json`, then signs (or stages) a snapshot
/// listing it and a timestamp. Below it, fails naming what is missing and
/// keeps the valid signatures for the next merge.
pub async fn merge(layout: &Layout, name: &str, sig_files: &[PathBuf]) -> Result<DelegatedMerged> {
    check_name(name)?;
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    ceremony::heal(layout, &state)?;
    slot(layout, name).require_open(name, true)?;
    let stored = read_payload(layout, name)?;
    let bytes = stored.signed_bytes()?;
    let RoleMeta::Targets(content) = stored.meta()? else {
        return Err(RepoError::Ceremony(format!(
            "the {name} payload does not hold targets metadata"
        )));
    };
    if let Some(delegating) = &stored.delegating_targets {
        let delegating = delegating_targets(&state, name, delegating)?;
        return merge_first(
            layout,
            &config,
            &state,
            FirstVersion {
                name,
                stored: &stored,
                bytes: &bytes,
                content,
                delegating,
            },
            sig_files,
        )
        .await;
    }
    let (role, current) = delegated::find(&state, name)?;
    let expected = delegated_keys::next_version(role, current)?;
    if content.version != expected {
        return Err(RepoError::Ceremony(format!(
            "the open {name} ceremony is for version {} but the repository's next {name} version is {expected}; abandon it with `ota-repo ceremony abandon --role {name}` and start again",
            content.version
        )));
    }
    let now = jiff::Timestamp::now();
    if content.expires <= now {
        return Err(RepoError::Ceremony(format!(
            "the {name} version {} being signed expired at {}; abandon it and start again",
            content.version, content.expires
        )));
    }
    // Snapshot and timestamp must be signable (or stageable) before the
    // role's file is written: nothing half-done if they are not.
    let chain = delegated_keys::chain_expiries(layout, &config, &state, now)?;
    let (requirements, keys) = requirement(&state, role)?;
    let deciding = Payload {
        requirements,
        keys,
        ..stored.clone()
    };
    let slot = slot(layout, name);
    let Collected {
        signatures,
        counted,
        rejected,
    } = ceremony::collect(layout, &config, &slot, &deciding, &bytes, sig_files)?;
    let version = content.version;
    let file = RoleMeta::Targets(content).signed_file(signatures)?;
    editor::write_metadata(
        layout,
        &editor::MetadataFiles {
            versioned: vec![(format!("{version}.{name}.json"), file.clone())],
            ..Default::default()
        },
    )?;
    let plan = SignPlan {
        snapshot: true,
        timestamp: true,
        expires: chain,
        delegated: BTreeMap::from([(format!("{name}.json"), editor::metafile(&file, version))]),
        ..SignPlan::default()
    };
    // The next ceremony (if any) opens before this one closes; `heal`
    // closes this one when a cut falls in between.
    let progress = ceremony::sign_or_stage(layout, &config, &state, plan).await?;
    ceremony::close_slot(&slot)?;
    Ok(DelegatedMerged {
        name: name.to_owned(),
        version: version.get(),
        counted,
        not_counted: rejected,
        progress,
    })
}

/// The top-level targets a version-1 ceremony commits: it must verify
/// against the trusted root's targets keys (an edited payload cannot add a
/// key) and be the repository's next targets version (a targets signed
/// since `delegate` would be overwritten otherwise).
fn delegating_targets(state: &RepoState, name: &str, encoded: &str) -> Result<Signed<Targets>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| {
            RepoError::Ceremony(format!(
                "the {name} payload's delegating targets is not base64: {e}"
            ))
        })?;
    let signed: Signed<Targets> = serde_json::from_slice(&bytes).map_err(|e| {
        RepoError::Ceremony(format!(
            "the {name} payload's delegating targets is not targets metadata: {e}"
        ))
    })?;
    state.root.signed.verify_role(&signed).map_err(|e| {
        RepoError::Ceremony(format!(
            "the {name} payload's delegating targets is not signed by the targets keys of root version {}: {e}",
            state.root.signed.version
        ))
    })?;
    let next = state.targets.signed.version.get() + 1;
    if signed.signed.version.get() != next {
        return Err(RepoError::Ceremony(format!(
            "top-level targets changed since {name} was delegated (the delegating targets is version {}, the repository's next is {next}); abandon with `ota-repo ceremony abandon --role {name}` and run `ota-repo delegate` again",
            signed.signed.version
        )));
    }
    if delegated::roles(state).iter().any(|r| r.name == name) {
        return Err(RepoError::Ceremony(format!(
            "targets already delegates {name}; abandon this ceremony with `ota-repo ceremony abandon --role {name}`"
        )));
    }
    if signed.signed.expires <= jiff::Timestamp::now() {
        return Err(RepoError::Ceremony(format!(
            "the targets version {} delegating {name} expired at {}; abandon and run `ota-repo delegate` again",
            signed.signed.version, signed.signed.expires
        )));
    }
    Ok(signed)
}

/// A version-1 ceremony being merged.
struct FirstVersion<'a> {
    name: &'a str,
    stored: &'a Payload,
    bytes: &'a [u8],
    content: Targets,
    delegating: Signed<Targets>,
}

/// Merge of version 1 of a role delegated with keys not at hand: at the
/// threshold of the keys the delegating targets lists, writes
/// `1.ROLE.json`, then commits the delegating targets and signs (or
/// stages) snapshot and timestamp after it.
async fn merge_first(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    first: FirstVersion<'_>,
    sig_files: &[PathBuf],
) -> Result<DelegatedMerged> {
    let FirstVersion {
        name,
        stored,
        bytes,
        content,
        delegating,
    } = first;
    let role = delegating
        .signed
        .delegations
        .as_ref()
        .and_then(|d| d.roles.iter().find(|r| r.name == name))
        .ok_or_else(|| {
            RepoError::Ceremony(format!(
                "the {name} payload's delegating targets does not delegate {name}"
            ))
        })?;
    if content.version.get() != 1 {
        return Err(RepoError::Ceremony(format!(
            "the {name} payload carries a delegating targets but is for version {}, not 1",
            content.version
        )));
    }
    let now = jiff::Timestamp::now();
    if content.expires <= now {
        return Err(RepoError::Ceremony(format!(
            "the {name} version 1 being signed expired at {}; abandon it and run `ota-repo delegate` again",
            content.expires
        )));
    }
    let chain = delegated_keys::chain_expiries(layout, config, state, now)?;
    let (requirements, keys) = requirement_in(&delegating.signed, role)?;
    let deciding = Payload {
        requirements,
        keys,
        ..stored.clone()
    };
    let slot = slot(layout, name);
    let Collected {
        signatures,
        counted,
        rejected,
    } = ceremony::collect(layout, config, &slot, &deciding, bytes, sig_files)?;
    let version = content.version;
    let file = RoleMeta::Targets(content).signed_file(signatures)?;
    editor::write_metadata(
        layout,
        &editor::MetadataFiles {
            versioned: vec![(format!("{version}.{name}.json"), file.clone())],
            ..Default::default()
        },
    )?;
    let delegated = BTreeMap::from([(format!("{name}.json"), editor::metafile(&file, version))]);
    let progress =
        ceremony::commit_signed_targets(layout, config, state, delegating, &chain, &delegated)
            .await?;
    ceremony::close_slot(&slot)?;
    Ok(DelegatedMerged {
        name: name.to_owned(),
        version: version.get(),
        counted,
        not_counted: rejected,
        progress,
    })
}

/// `ceremony abandon --role ROLE` for a delegated role. Nothing of the
/// pending version is in `metadata/`, so closing is all there is.
pub async fn abandon(layout: &Layout, name: &str) -> Result<u64> {
    check_name(name)?;
    let slot = slot(layout, name);
    slot.require_open(name, false)?;
    let payload = read_payload(layout, name)?;
    ceremony::close_slot(&slot)?;
    // Version 1 of a role delegated with `--key-pub`: nothing delegates it,
    // so repo.json forgets where its keys are (as after `undelegate`).
    if payload.delegating_targets.is_some() {
        let mut config = RepoConfig::load(layout)?;
        if config.delegations.remove(name).is_some() {
            config.save(layout)?;
        }
    }
    Ok(payload.version)
}
