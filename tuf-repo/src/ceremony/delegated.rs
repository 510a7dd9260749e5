//! What the one ceremony engine (`export`, `merge`, `abandon` over
//! [`CeremonyRole`]) needs to know only of delegated targets roles: a board
//! team whose keys live on several machines signs its role's next version
//! the way the top-level roles are signed (`ceremony export --role ROLE`,
//! `sign` on each machine, `ceremony merge --role ROLE`).
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
    self, CeremonyRole, DelegatedName, Payload, PendingRole, Progress, Requirement, RoleMeta,
};
use crate::config::RepoConfig;
use crate::delegated;
use crate::editor::{self, SignPlan};
use crate::error::{RepoError, Result};
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use base64::Engine as _;
use std::collections::BTreeMap;
use tough::schema::key::Key;
use tough::schema::{DelegatedRole, Metafile, Signature, Signed, Targets};

/// Refuses to sign a new version of `name` while one waits for signatures.
pub(crate) fn refuse_open(layout: &Layout, name: &str, doing: &str) -> Result<()> {
    CeremonyRole::Delegated(DelegatedName::parse(name)?).refuse_open(layout, doing)
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

/// The top-level targets that delegates a role being staged: its keys and
/// threshold are the ones that count.
pub(crate) enum DelegatedBy<'a> {
    /// The trusted targets; `current` is the role's version being replaced.
    Trusted {
        state: &'a RepoState,
        current: &'a Targets,
    },
    /// A new targets creating the delegation (for version 1 of a role whose
    /// keys here stay below its threshold), already signed by the targets
    /// keys: `merge` commits it after `1.ROLE.json` (a repository cannot
    /// list a delegation before the role's file).
    New {
        targets: &'a Signed<Targets>,
        bytes: &'a [u8],
    },
}

/// Opens the ceremony of `role` for `content` (its version and expiry
/// set), keeping the signatures the keys here already made.
pub(crate) fn stage(
    layout: &Layout,
    role: &DelegatedRole,
    by: DelegatedBy<'_>,
    content: &Targets,
    local: &[Signature],
) -> Result<PendingRole> {
    let (listing, new, delegated_by, delegating_targets, changes) = match by {
        DelegatedBy::Trusted { state, current } => (
            &state.targets.signed,
            "",
            format!("(delegated by targets version {})", state.targets.signed.version),
            None,
            ceremony::summarize_targets(&current.targets, content),
        ),
        DelegatedBy::New { targets, bytes } => (
            &targets.signed,
            "NEW ",
            format!(
                "by targets version {} (signed by the targets keys, committed when this ceremony completes)",
                targets.signed.version
            ),
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            Vec::new(),
        ),
    };
    let mut summary = vec![
        format!(
            "{new}delegated role {} version {}, expires {}{}",
            role.name,
            content.version,
            content.expires,
            if new.is_empty() {
                ""
            } else {
                " (no targets yet)"
            }
        ),
        format!(
            "trusted for paths {} {delegated_by}",
            delegated::paths_of(role).join(", ")
        ),
    ];
    summary.extend(changes);
    let (requirements, keys) = requirement_in(listing, role)?;
    let mut payload = Payload::from_meta(
        &RoleMeta::Targets(content.clone()),
        keys,
        requirements,
        summary,
    )?;
    payload.delegated = Some(role.name.clone());
    payload.delegating_targets = delegating_targets;
    let slot = CeremonyRole::Delegated(DelegatedName::parse(&role.name)?).slot(layout);
    ceremony::open_slot(&slot, &payload, &payload.detached_all(local))?;
    let status = ceremony::pending_status(&slot, &payload)?;
    tracing::info!("{}", status.describe());
    Ok(status)
}

/// `ceremony export` of a new version of `name`: the current one with the
/// next version number and expiry `when`, signed by the keys here (which
/// must stay below the threshold, or no ceremony is needed).
pub(super) async fn start(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    name: &DelegatedName,
    when: jiff::Timestamp,
) -> Result<Payload> {
    let (role, current) = delegated::find(state, name.as_str())?;
    let (keys, short) = delegated_keys::usable_keys(layout, config, role)?;
    if !short {
        return Err(ceremony::keys_reach_threshold(&CeremonyRole::Delegated(
            name.clone(),
        )));
    }
    let mut content = current.signed.clone();
    content.version = delegated_keys::next_version(role, current)?;
    content.expires = when;
    let log = editor::audit_log(layout, config);
    let sigs = editor::signatures_as(name.as_str(), &content, &keys, &log).await?;
    let by = DelegatedBy::Trusted {
        state,
        current: &current.signed,
    };
    stage(layout, role, by, &content, &sigs)?;
    CeremonyRole::Delegated(name.clone()).read_payload(layout)
}

/// What merging a delegated role's ceremony writes once its threshold is met.
pub(super) struct Completion {
    name: DelegatedName,
    content: Targets,
    /// Snapshot and timestamp expiries, chosen (and checked signable) first.
    chain: BTreeMap<Role, jiff::Timestamp>,
    /// For version 1 of a role delegated with keys not at hand: the
    /// top-level targets that delegates it, committed after `1.ROLE.json`.
    delegating: Option<Signed<Targets>>,
}

/// Checks that the pending version is still the role's next one and not
/// expired, and settles the keys that decide (those the delegating targets
/// lists, the trusted one or the payload's own for version 1) and what
/// completing writes.
pub(super) fn prepare(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    name: &DelegatedName,
    stored: &Payload,
    meta: RoleMeta,
) -> Result<(Payload, Completion)> {
    let RoleMeta::Targets(content) = meta else {
        return Err(RepoError::Ceremony(format!(
            "the {name} payload does not hold targets metadata"
        )));
    };
    let delegating = stored
        .delegating_targets
        .as_deref()
        .map(|encoded| delegating_targets(state, name.as_str(), encoded))
        .transpose()?;
    let (listing, role, expected, again) = match &delegating {
        Some(d) => {
            let role = d
                .signed
                .delegations
                .as_ref()
                .and_then(|ds| ds.roles.iter().find(|r| r.name == name.as_str()))
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
            (
                &d.signed,
                role,
                content.version,
                "run `ota-repo delegate` again",
            )
        }
        None => {
            let (role, current) = delegated::find(state, name.as_str())?;
            let expected = delegated_keys::next_version(role, current)?;
            (&state.targets.signed, role, expected, "start again")
        }
    };
    if content.version != expected {
        return Err(RepoError::Ceremony(format!(
            "the open {name} ceremony is for version {} but the repository's next {name} version is {expected}; abandon it with `ota-repo ceremony abandon --role {name}` and start again",
            content.version
        )));
    }
    let now = jiff::Timestamp::now();
    if content.expires <= now {
        return Err(RepoError::Ceremony(format!(
            "the {name} version {} being signed expired at {}; abandon it and {again}",
            content.version, content.expires
        )));
    }
    // Snapshot and timestamp must be signable (or stageable) before the
    // role's file is written: nothing half-done if they are not.
    let chain = delegated_keys::chain_expiries(layout, config, state, now)?;
    let (requirements, keys) = requirement_in(listing, role)?;
    let deciding = Payload {
        requirements,
        keys,
        ..stored.clone()
    };
    Ok((
        deciding,
        Completion {
            name: name.clone(),
            content,
            chain,
            delegating,
        },
    ))
}

impl Completion {
    /// Writes `N.ROLE.json` with `signatures`, then (for version 1, after
    /// committing the delegating targets) signs or stages a snapshot
    /// listing it and a timestamp.
    pub(super) async fn complete(
        self,
        layout: &Layout,
        config: &RepoConfig,
        state: &RepoState,
        signatures: Vec<Signature>,
    ) -> Result<Progress> {
        let name = self.name.as_str();
        match self.delegating {
            Some(targets) => {
                let listed = write_role_file(layout, name, self.content, signatures)?;
                let delegated = BTreeMap::from([listed]);
                ceremony::commit_signed_targets(
                    layout,
                    config,
                    state,
                    targets,
                    &self.chain,
                    &delegated,
                )
                .await
            }
            None => {
                publish_version(
                    layout,
                    config,
                    state,
                    name,
                    self.content,
                    signatures,
                    self.chain,
                )
                .await
            }
        }
    }
}

/// Writes `N.ROLE.json` (unreferenced until a snapshot lists it) and
/// returns its snapshot entry (`ROLE.json` and its metafile).
pub(crate) fn write_role_file(
    layout: &Layout,
    name: &str,
    content: Targets,
    signatures: Vec<Signature>,
) -> Result<(String, Metafile)> {
    let version = content.version;
    let bytes = RoleMeta::Targets(content).signed_file(signatures)?;
    editor::write_metadata(
        layout,
        &editor::MetadataFiles {
            versioned: vec![(format!("{version}.{name}.json"), bytes.clone())],
            ..Default::default()
        },
    )?;
    Ok((format!("{name}.json"), editor::metafile(&bytes, version)))
}

/// Writes `N.ROLE.json`, then signs (or stages) a snapshot listing it and
/// a timestamp with expiries `chain`.
pub(crate) async fn publish_version(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    name: &str,
    content: Targets,
    signatures: Vec<Signature>,
    chain: BTreeMap<Role, jiff::Timestamp>,
) -> Result<Progress> {
    let listed = write_role_file(layout, name, content, signatures)?;
    let plan = SignPlan {
        snapshot: true,
        timestamp: true,
        expires: chain,
        delegated: BTreeMap::from([listed]),
        ..SignPlan::default()
    };
    ceremony::sign_or_stage(layout, config, state, plan).await
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

/// After `ceremony abandon` of version 1 of a role delegated with
/// `--key-pub`: nothing delegates it, so repo.json forgets where its keys
/// are (as after `undelegate`).
pub(super) fn forget_undelegated(
    layout: &Layout,
    name: &DelegatedName,
    payload: &Payload,
) -> Result<()> {
    if payload.delegating_targets.is_none() {
        return Ok(());
    }
    let mut config = RepoConfig::load(layout)?;
    if config.delegations.remove(name.as_str()).is_some() {
        config.save(layout)?;
    }
    Ok(())
}
