//! `ceremony export` and `ceremony abandon`.

use super::*;

/// `ceremony export`: the pending version of `role`, or else a new one
/// (the next version with a fresh expiry: a re-signing by offline keys),
/// written to `out`.
pub async fn export(
    layout: &Layout,
    role: Role,
    expires: Option<Expiry>,
    out: &Path,
) -> Result<Payload> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    heal(layout, &state)?;
    let slot = Slot::top(layout, role);
    let payload = if slot.payload.exists() {
        let p: Payload = read_json(&slot.payload)?;
        slot.refuse_new_expiry(role, p.version, expires.as_ref())?;
        p
    } else {
        let now = jiff::Timestamp::now();
        let policy = match expires {
            Some(e) => e,
            None => config.role(role)?.expiry()?,
        };
        let when = policy.resolve(now)?;
        editor::ensure_future(role, when, now, false)?;
        if role == Role::Root {
            let mut root = state.root.signed.clone();
            root.version = next_version(&state, Role::Root)?;
            root.expires = when;
            stage(layout, &state.root.signed, &root)?
        } else {
            refuse_open_chain(layout, &format!("starting a {role} ceremony"))?;
            let step = match role {
                Role::Snapshot => Step::Snapshot(editor::snapshot_meta(
                    layout,
                    &state,
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
            let meta = build(step, &state, &BTreeMap::from([(role, when)]))?;
            let log = editor::audit_log(layout, &config);
            match sign_here(layout, &config, &state, &meta, &log).await? {
                Ok(_) => {
                    return Err(ceremony_err(format!(
                        "the {role} keys here reach the threshold: re-sign with `ota-repo resign --role {role}` instead of a ceremony"
                    )))
                }
                Err((payload, local)) => {
                    open(layout, &payload, &local)?;
                    payload
                }
            }
        }
    };
    payload.signed_bytes()?;
    write_json(out, &payload)?;
    Ok(payload)
}

/// `ceremony abandon`: closes the open ceremony of `role`. Versioned files
/// that only the abandoned chain referenced (a targets version whose
/// snapshot was never completed) are removed too: no snapshot lists them,
/// so they were never published, and leaving them would block the next
/// version of that number.
pub async fn abandon(layout: &Layout, role: Role) -> Result<u64> {
    let slot = Slot::top(layout, role);
    slot.require_open(role, false)?;
    let payload: Payload = read_json(&slot.payload)?;
    close(layout, role)?;
    if role != Role::Root {
        let state = RepoState::load(layout).await?;
        for r in [Role::Targets, Role::Snapshot] {
            let Ok(next) = next_version(&state, r) else {
                continue;
            };
            let orphan = layout.metadata_dir().join(format!("{next}.{r}.json"));
            match std::fs::remove_file(&orphan) {
                Ok(()) => tracing::info!("removed unreferenced {}", orphan.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RepoError::Io {
                        path: orphan,
                        source: e,
                    })
                }
            }
        }
    }
    Ok(payload.version)
}
