//! Power-cut recovery and the files ceremonies keep referenced.

use super::*;

/// Repairs what an interrupted signing run (a power cut, a kill) can leave
/// behind, so the next command proceeds instead of tripping over it. Every
/// step of a run writes new, unreferenced names first and makes them
/// visible last (`timestamp.json`, or the ceremony file that lists them),
/// so what is left over is one of:
///
/// * a ceremony for a version the repository already has (the run wrote
///   the metadata, then was cut before closing the ceremony): closed;
/// * a targets or snapshot ceremony that a later ceremony of the chain
///   already lists as signed (cut between opening the next ceremony and
///   closing the completed one): closed;
/// * versioned metadata newer than what the trusted chain and every open
///   ceremony reference (`N.targets.json`, `N.snapshot.json`, `N.ROLE.json`
///   written, then cut before the timestamp or the next ceremony): no
///   timestamp ever pointed at them and `publish` only sends referenced
///   versions, so they were never published; removed.
///
/// Each repair is logged (warning) and returned. `state` is the trusted
/// chain as loaded (orphans are, by definition, not part of it).
pub fn heal(layout: &Layout, state: &RepoState) -> Result<Vec<String>> {
    let mut done = Vec::new();
    // 1. Ceremonies for versions already in metadata/.
    for role in Role::ALL {
        let path = pending_path(layout, role);
        if !path.exists() {
            continue;
        }
        let payload: Payload = read_json(&path)?;
        let current = current_version(state, role).get();
        if payload.version <= current {
            close(layout, role)?;
            done.push(format!(
                "closed the {role} version {} ceremony: the repository already has {role} version {current} (a run was interrupted after writing it)",
                payload.version
            ));
        }
    }
    // 2. Chain ceremonies already listed as signed by the next one.
    for (earlier, later) in [
        (Role::Targets, Role::Snapshot),
        (Role::Snapshot, Role::Timestamp),
    ] {
        let (early_path, late_path) = (pending_path(layout, earlier), pending_path(layout, later));
        if !early_path.exists() || !late_path.exists() {
            continue;
        }
        let early: Payload = read_json(&early_path)?;
        let late: Payload = read_json(&late_path)?;
        let listed = match late.meta()? {
            RoleMeta::Snapshot(s) => s.meta.get(&format!("{earlier}.json")).cloned(),
            RoleMeta::Timestamp(t) => t.meta.get(&format!("{earlier}.json")).cloned(),
            _ => None,
        };
        let Some(m) = listed.filter(|m| m.version.get() == early.version) else {
            continue;
        };
        if current_metafile(layout, earlier, m.version).ok() == Some(m) {
            close(layout, earlier)?;
            done.push(format!(
                "closed the {earlier} version {} ceremony: it was signed and the open {later} ceremony lists it (a run was interrupted before closing it)",
                early.version
            ));
        }
    }
    // 2b. Delegated roles' ceremonies the repository moved past.
    done.extend(delegated::heal(layout, state)?);
    // 3. Versioned files nothing references.
    let protected = referenced_by_ceremonies(layout, state)?;
    let dir = layout.metadata_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => {
            return Err(RepoError::Io {
                path: dir,
                source: e,
            })
        }
    };
    let mut orphans = Vec::new();
    for entry in entries {
        let name = entry.map_err(RepoError::io(&dir))?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((version, role)) = versioned_name(name) else {
            continue;
        };
        if role == "root" || protected.contains(name) {
            continue;
        }
        let trusted = match role {
            "targets" => state.targets.signed.version.get(),
            "snapshot" => state.snapshot.signed.version.get(),
            // `timestamp` is never versioned here; a delegated role's
            // trusted version is the one the trusted snapshot lists.
            other => state
                .snapshot
                .signed
                .meta
                .get(&format!("{other}.json"))
                .map(|m| m.version.get())
                .unwrap_or(0),
        };
        if version > trusted {
            orphans.push(name.to_owned());
        }
    }
    orphans.sort();
    for name in orphans {
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(RepoError::Io { path, source: e }),
        }
        done.push(format!(
            "removed {}: written by a signing run that was interrupted before anything referenced it (never published)",
            path.display()
        ));
    }
    if !done.is_empty() {
        ota_common::atomic::fsync_dir(&layout.metadata_dir())
            .map_err(RepoError::io(layout.metadata_dir()))?;
    }
    for line in &done {
        tracing::warn!("{line}");
    }
    Ok(done)
}

/// `N.NAME.json` -> (N, NAME).
pub(super) fn versioned_name(file: &str) -> Option<(u64, &str)> {
    let stem = file.strip_suffix(".json")?;
    let (version, role) = stem.split_once('.')?;
    if role.is_empty() || version.starts_with('0') {
        return None;
    }
    Some((version.parse().ok()?, role))
}

/// Versioned metadata files that open ceremonies will publish: what a
/// pending snapshot lists, what a pending timestamp's snapshot lists, and
/// the first version of a delegated role a pending targets introduces.
pub(crate) fn referenced_by_ceremonies(
    layout: &Layout,
    state: &RepoState,
) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for role in CHAIN {
        let path = pending_path(layout, role);
        if !path.exists() {
            continue;
        }
        let payload: Payload = read_json(&path)?;
        match payload.meta()? {
            RoleMeta::Snapshot(s) => list_files(&s.meta, &mut out),
            RoleMeta::Timestamp(t) => {
                for (name, m) in &t.meta {
                    let file = format!("{}.{name}", m.version);
                    let bytes = std::fs::read(layout.metadata_dir().join(&file)).ok();
                    out.insert(file);
                    if let Some(s) =
                        bytes.and_then(|b| serde_json::from_slice::<Signed<Snapshot>>(&b).ok())
                    {
                        list_files(&s.signed.meta, &mut out);
                    }
                }
            }
            RoleMeta::Targets(t) => {
                for d in t.delegations.iter().flat_map(|d| d.roles.iter()) {
                    match state.snapshot.signed.meta.get(&format!("{}.json", d.name)) {
                        None => {
                            out.insert(format!("1.{}.json", d.name));
                        }
                        // A changed delegation brings the role's next version.
                        Some(m) if crate::delegated::changed_delegation(state, d) => {
                            out.insert(format!("{}.{}.json", m.version.get() + 1, d.name));
                        }
                        Some(_) => {}
                    }
                }
            }
            RoleMeta::Root(_) => {}
        }
    }
    Ok(out)
}

pub(super) fn list_files(
    meta: &std::collections::HashMap<String, Metafile>,
    out: &mut BTreeSet<String>,
) {
    for (name, m) in meta {
        out.insert(format!("{}.{name}", m.version));
    }
}
