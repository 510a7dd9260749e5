//! The keys a delegated role's new version is signed with, its number and
//! the expiries of the snapshot and timestamp that list it: shared by
//! `delegation` (signing here) and the delegated role's ceremony (signing
//! elsewhere).

use crate::config::RepoConfig;
use crate::error::{RepoError, Result};
use crate::key_ref::LoadedKey;
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use tough::schema::{DelegatedRole, Signed, Targets};

/// The role's keys that repo.json lists, open here and that the delegation
/// lists, with a description of each listed key that could not be used.
pub(crate) fn local_keys(
    layout: &Layout,
    config: &RepoConfig,
    role: &DelegatedRole,
) -> Result<(Vec<LoadedKey>, Vec<String>)> {
    let listed: BTreeSet<String> = role.keyids.iter().map(|id| hex::encode(&**id)).collect();
    let mut usable: Vec<LoadedKey> = Vec::new();
    let mut problems = Vec::new();
    let keys = config
        .delegations
        .get(&role.name)
        .map(|c| c.keys.as_slice())
        .unwrap_or(&[]);
    for key_ref in keys {
        match key_ref.open(Some(layout.root())) {
            Ok(k) if usable.iter().any(|u| u.key_id == k.key_id) => {}
            Ok(k) if listed.contains(&k.key_id) => usable.push(k),
            Ok(k) => problems.push(format!(
                "{}: key {} is not a key of delegated role {} in the targets metadata",
                k.location, k.key_id, role.name
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok((usable, problems))
}

pub(crate) fn threshold_error(
    role: &DelegatedRole,
    available: usize,
    problems: &[String],
) -> RepoError {
    let mut details = if problems.is_empty() {
        String::new()
    } else {
        format!(": {}", problems.join("; "))
    };
    details.push_str(&format!(
        " (repo.json \"delegations\".\"{}\".\"keys\" lists where this role's keys are)",
        role.name
    ));
    RepoError::ThresholdUnreachable {
        role: format!("delegated role {}", role.name),
        threshold: role.threshold.get(),
        available,
        details,
    }
}

/// The keys of `role` usable here, and whether they stay below its
/// threshold (the rest then sign in a ceremony). A key repo.json lists
/// that does not open is an error when the threshold is not reached
/// without it: a missing PIN or a moved file must not silently turn a
/// release into a ceremony.
pub(crate) fn usable_keys(
    layout: &Layout,
    config: &RepoConfig,
    role: &DelegatedRole,
) -> Result<(Vec<LoadedKey>, bool)> {
    let (usable, problems) = local_keys(layout, config, role)?;
    let short = (usable.len() as u64) < role.threshold.get();
    if short && !problems.is_empty() {
        return Err(threshold_error(role, usable.len(), &problems));
    }
    Ok((usable, short))
}

/// The role's next version number.
pub(crate) fn next_version(role: &DelegatedRole, current: &Signed<Targets>) -> Result<NonZeroU64> {
    current.signed.version.checked_add(1).ok_or_else(|| {
        RepoError::Inconsistent(format!("delegated role {} version cannot grow", role.name))
    })
}

/// The expiries for the snapshot and timestamp that list a delegated role's
/// new version, checked signable (or stageable) before any file is written.
pub(crate) fn chain_expiries(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    now: jiff::Timestamp,
) -> Result<BTreeMap<Role, jiff::Timestamp>> {
    let chain = [Role::Snapshot, Role::Timestamp];
    crate::ceremony::signable_expiries(layout, config, state, &chain, now)
}
