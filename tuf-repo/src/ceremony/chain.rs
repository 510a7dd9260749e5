//! Signing the targets, snapshot and timestamp chain, staging what cannot be signed here.

use super::*;

/// What one signing step produces next.
pub(super) enum Step {
    /// New targets content (version and expiry are set here).
    Targets(Targets),
    /// A snapshot listing these files (`targets.json` and delegated roles).
    Snapshot(std::collections::HashMap<String, Metafile>),
    /// A timestamp listing this snapshot file.
    Timestamp(Metafile),
    /// Metadata complete with its signatures (a merged ceremony).
    Signed(RoleMeta, Vec<Signature>),
}

pub(super) fn build(
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
pub(super) async fn sign_here(
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
    let detached = payload.detached_all(&signatures);
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
pub(super) async fn run_chain(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    first: Step,
    expires: &BTreeMap<Role, jiff::Timestamp>,
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
    // The next ceremony opens here, before `merge` closes the completed
    // one: a power cut in between leaves both open, and `heal` sees that
    // the next one lists the completed version. The other order would
    // leave the completed version's file unreferenced and its collected
    // signatures gone.
    editor::write_metadata(layout, &files)?;
    if let Some((payload, local)) = staged {
        let slot = CeremonyRole::top(payload.role).slot(layout);
        open_slot(&slot, &payload, &local)?;
        let status = pending_status(&slot, &payload)?;
        tracing::info!("{}", status.describe());
        progress.pending = Some(status);
    }
    Ok(progress)
}

pub(super) fn current_metafile(
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
        delegated,
    )
    .await
}

/// Expiries for the chain roles, from `given` or else the policy in repo.json.
pub(super) fn chain_expiries(
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
    run_chain(layout, config, state, first, &expires, &plan.delegated).await
}
