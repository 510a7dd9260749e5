//! Power-cut recovery and the files ceremonies keep referenced.

use super::*;

/// Repairs what an interrupted signing run (a power cut, a kill) can leave
/// behind, so the next command proceeds instead of tripping over it. Every
/// step of a run writes new, unreferenced names first and makes them
/// visible last (`timestamp.json`, or the ceremony file that lists them),
/// so what is left over is one of:
///
/// * a ceremony, of any role, for a version the repository already has
///   (the run wrote the metadata, then was cut before closing the
///   ceremony): closed;
/// * a ceremony whose version a later open ceremony already lists as
///   signed (cut between opening the next ceremony and closing the
///   completed one): closed;
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
    // 1. Ceremonies, of any role, for versions the repository already has
    // or that an open ceremony lists as signed.
    let listed = listed_by_ceremonies(layout, state)?;
    for role in open_ceremonies(layout)? {
        let payload = role.read_payload(layout)?;
        let version = payload.version;
        let trusted = role.trusted_version(state);
        let file = format!("{version}.{role}.json");
        let reason = if version <= trusted {
            format!(
                "the repository already has {role} version {trusted} (a run was interrupted after writing it)"
            )
        } else if let Some(listing) = listed.get(&file).filter(|l| l.is_on_disk(layout, &role)) {
            format!(
                "it was signed and the open {} ceremony lists it (a run was interrupted before closing it)",
                listing.by
            )
        } else {
            continue;
        };
        close_slot(&role.slot(layout))?;
        done.push(format!(
            "closed the {role} version {version} ceremony: {reason}"
        ));
    }
    // 2. Versioned files nothing references.
    let protected = listed_by_ceremonies(layout, state)?;
    let dir = layout.metadata_dir();
    let mut orphans = Vec::new();
    for path in paths_in(&dir)? {
        let path = path?;
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((version, role)) = versioned_name(name) else {
            continue;
        };
        if role == "root" || protected.contains_key(name) {
            continue;
        }
        let trusted = match role {
            "targets" => state.targets.signed.version.get(),
            "snapshot" => state.snapshot.signed.version.get(),
            // `timestamp` is never versioned here; a delegated role's
            // trusted version is the one the trusted snapshot lists.
            other => listed_version(state, other),
        };
        if version > trusted {
            orphans.push(name.to_owned());
        }
    }
    orphans.sort();
    for name in orphans {
        let path = dir.join(&name);
        if !remove_if_present(&path, |p| std::fs::remove_file(p))? {
            continue;
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

/// A versioned file an open ceremony will publish.
pub(crate) struct Listing {
    /// The open ceremony that lists it.
    pub by: Role,
    /// The file's length and hashes, where the listing gives them (a
    /// pending targets names a new delegated role's first file without).
    pub meta: Option<Metafile>,
}

impl Listing {
    /// Whether `role`'s file of the listed version is in `metadata/` as
    /// listed (with the bytes listed, when the listing has hashes).
    fn is_on_disk(&self, layout: &Layout, role: &CeremonyRole) -> bool {
        match &self.meta {
            Some(m) => current_metafile(layout, role, m.version).ok().as_ref() == Some(m),
            None => true,
        }
    }
}

/// Versioned metadata files that open ceremonies will publish, by file
/// name: what a pending snapshot lists, what a pending timestamp's
/// snapshot lists, and the first version of a delegated role a pending
/// targets introduces.
pub(crate) fn listed_by_ceremonies(
    layout: &Layout,
    state: &RepoState,
) -> Result<BTreeMap<String, Listing>> {
    let mut out = BTreeMap::new();
    for by in CHAIN {
        let path = pending_path(layout, by);
        if !path.exists() {
            continue;
        }
        let payload: Payload = read_json(&path)?;
        let mut list = |file: String, meta: Option<&Metafile>| {
            out.insert(
                file,
                Listing {
                    by,
                    meta: meta.cloned(),
                },
            );
        };
        match payload.meta()? {
            RoleMeta::Snapshot(s) => {
                for (name, m) in &s.meta {
                    list(format!("{}.{name}", m.version), Some(m));
                }
            }
            RoleMeta::Timestamp(t) => {
                for (name, m) in &t.meta {
                    let file = format!("{}.{name}", m.version);
                    let bytes = std::fs::read(layout.metadata_dir().join(&file)).ok();
                    list(file, Some(m));
                    if let Some(s) =
                        bytes.and_then(|b| serde_json::from_slice::<Signed<Snapshot>>(&b).ok())
                    {
                        for (name, m) in &s.signed.meta {
                            list(format!("{}.{name}", m.version), Some(m));
                        }
                    }
                }
            }
            RoleMeta::Targets(t) => {
                for d in t.delegations.iter().flat_map(|d| d.roles.iter()) {
                    match state.snapshot.signed.meta.get(&format!("{}.json", d.name)) {
                        None => list(format!("1.{}.json", d.name), None),
                        // A changed delegation brings the role's next version.
                        Some(m) if crate::delegated::changed_delegation(state, d) => {
                            list(format!("{}.{}.json", m.version.get() + 1, d.name), None)
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
