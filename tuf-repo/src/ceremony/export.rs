//! `ceremony export` and `ceremony abandon`, for every kind of role.

use super::*;

/// `ceremony export`: the pending version of `role`, or else a new one
/// (the next version with a fresh expiry: a re-signing by offline keys),
/// written to `out`.
pub async fn export(
    layout: &Layout,
    role: &CeremonyRole,
    expires: Option<Expiry>,
    out: &Path,
) -> Result<Payload> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    heal(layout, &state)?;
    let slot = role.slot(layout);
    let payload = if slot.payload.exists() {
        let p = role.read_payload(layout)?;
        slot.refuse_new_expiry(role, p.version, expires.as_ref())?;
        p
    } else {
        let now = jiff::Timestamp::now();
        let policy = match expires {
            Some(e) => e,
            None => role.expiry_policy(&config, &state)?,
        };
        let when = policy.resolve(now)?;
        editor::ensure_future(role.metadata_role(), when, now, false)?;
        match role {
            CeremonyRole::Root => {
                let mut root = state.root.signed.clone();
                root.version = next_version(&state, Role::Root)?;
                root.expires = when;
                stage(layout, &state.root.signed, &root)?
            }
            CeremonyRole::TopLevel(top) => {
                start_chain_role(layout, &config, &state, *top, when).await?
            }
            CeremonyRole::Delegated(name) => {
                delegated::start(layout, &config, &state, name, when).await?
            }
        }
    };
    payload.signed_bytes()?;
    write_json(out, &payload)?;
    Ok(payload)
}

/// A new version of targets, snapshot or timestamp as the chain would sign
/// it next, staged with the signatures the keys here make.
async fn start_chain_role(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    role: Role,
    when: jiff::Timestamp,
) -> Result<Payload> {
    refuse_open_chain(layout, &format!("starting a {role} ceremony"))?;
    let step = match role {
        Role::Snapshot => Step::Snapshot(editor::snapshot_meta(
            layout,
            state,
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
    let meta = build(step, state, &BTreeMap::from([(role, when)]))?;
    let log = editor::audit_log(layout, config);
    match sign_here(layout, config, state, &meta, &log).await? {
        Ok(_) => Err(keys_reach_threshold(&CeremonyRole::top(role))),
        Err((payload, local)) => {
            open_slot(&CeremonyRole::top(role).slot(layout), &payload, &local)?;
            Ok(payload)
        }
    }
}

/// Export refuses a ceremony the keys here could do without.
pub(super) fn keys_reach_threshold(role: &CeremonyRole) -> RepoError {
    ceremony_err(format!(
        "the {role} keys here reach the threshold: re-sign with `ota-repo resign --role {role}` instead of a ceremony"
    ))
}

/// `ceremony abandon`: closes the open ceremony of `role`; nothing of the
/// pending version is in `metadata/`. A top-level role's abandoned chain
/// may leave versioned files nothing references (removed here), and
/// version 1 of a delegated role leaves its keys in repo.json (forgotten).
pub async fn abandon(layout: &Layout, role: &CeremonyRole) -> Result<u64> {
    let slot = role.slot(layout);
    slot.require_open(role, false)?;
    let payload = role.read_payload(layout)?;
    close_slot(&slot)?;
    match role {
        CeremonyRole::Root => {}
        CeremonyRole::TopLevel(_) => remove_unreferenced_chain_files(layout).await?,
        CeremonyRole::Delegated(name) => delegated::forget_undelegated(layout, name, &payload)?,
    }
    Ok(payload.version)
}

/// Versioned files that only an abandoned chain referenced (a targets
/// version whose snapshot was never completed) are removed: no snapshot
/// lists them, so they were never published, and leaving them would block
/// the next version of that number.
async fn remove_unreferenced_chain_files(layout: &Layout) -> Result<()> {
    let state = RepoState::load(layout).await?;
    for r in [Role::Targets, Role::Snapshot] {
        let Ok(next) = next_version(&state, r) else {
            continue;
        };
        let orphan = layout.metadata_dir().join(format!("{next}.{r}.json"));
        if remove_if_present(&orphan, |p| std::fs::remove_file(p))? {
            tracing::info!("removed unreferenced {}", orphan.display());
        }
    }
    Ok(())
}
