//! The delegated targets roles as the repository holds them: their names,
//! the delegations top-level targets lists and the targets each role
//! lists. Read-only queries over [`RepoState`]; `delegation` edits them.

use crate::error::{RepoError, Result};
use crate::role::Role;
use crate::state::RepoState;
use tough::schema::{DelegatedRole, PathSet, Signed, Target, Targets};
use tough::TargetName;

/// A delegated role name: 1 to 64 of `a-z 0-9 - _`, starting with a letter
/// or digit, and not a top-level role. The name becomes part of file names
/// (`N.ROLE.json`, here, on the server and on devices), so nothing that
/// needs encoding is allowed.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 64 || !ok_chars || !first_ok {
        return Err(format!(
            "invalid delegated role name {name:?}: expected 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ));
    }
    if Role::ALL.iter().any(|r| r.as_str() == name) {
        return Err(format!(
            "{name:?} is a top-level role; a delegated role needs another name"
        ));
    }
    Ok(())
}

/// The roles top-level targets delegates to, in search order.
pub fn roles(state: &RepoState) -> &[DelegatedRole] {
    state
        .targets
        .signed
        .delegations
        .as_ref()
        .map(|d| d.roles.as_slice())
        .unwrap_or(&[])
}

/// A delegated role and its signed metadata, as loaded (and verified) by tough.
pub fn find<'a>(
    state: &'a RepoState,
    name: &str,
) -> Result<(&'a DelegatedRole, &'a Signed<Targets>)> {
    let role = roles(state).iter().find(|r| r.name == name).ok_or_else(|| {
        RepoError::InvalidArgument(format!(
            "no delegated role {name:?} in the signed targets metadata (`ota-repo delegate` creates one; `ota-repo status` lists them)"
        ))
    })?;
    let targets = role.targets.as_ref().ok_or_else(|| {
        RepoError::Inconsistent(format!(
            "delegated role {name} has no metadata listed in snapshot"
        ))
    })?;
    Ok((role, targets))
}

/// Every target the repository lists: top-level first, then each delegated
/// role's (a name listed twice is refused when added, so order is only
/// for display).
pub fn every_target(state: &RepoState) -> Vec<(&TargetName, &Target)> {
    let mut out: Vec<(&TargetName, &Target)> = state.targets.signed.targets.iter().collect();
    for role in roles(state) {
        if let Some(t) = &role.targets {
            out.extend(t.signed.targets.iter());
        }
    }
    out
}

/// Where a target is listed: top-level targets (`None`) or the delegated
/// role that lists it, with its entry.
pub fn locate<'a>(
    state: &'a RepoState,
    name: &str,
) -> Option<(Option<&'a DelegatedRole>, &'a Target)> {
    if let Some((_, t)) = state
        .targets
        .signed
        .targets
        .iter()
        .find(|(n, _)| n.raw() == name)
    {
        return Some((None, t));
    }
    roles(state).iter().find_map(|role| {
        role.targets.as_ref().and_then(|signed| {
            signed
                .signed
                .targets
                .iter()
                .find(|(n, _)| n.raw() == name)
                .map(|(_, t)| (Some(role), t))
        })
    })
}

/// Whether `role` (as a new targets delegates it) differs from the
/// delegation of that name in the trusted targets: other keys, threshold,
/// paths or `terminating`.
pub fn changed_delegation(state: &RepoState, role: &DelegatedRole) -> bool {
    match roles(state).iter().find(|r| r.name == role.name) {
        Some(r) => {
            r.keyids != role.keyids
                || r.threshold != role.threshold
                || r.paths != role.paths
                || r.terminating != role.terminating
        }
        None => false,
    }
}

/// The patterns of a delegation, as text.
pub fn paths_of(role: &DelegatedRole) -> Vec<String> {
    match &role.paths {
        PathSet::Paths(p) => p.iter().map(|p| p.value().to_owned()).collect(),
        PathSet::PathHashPrefixes(p) => p
            .iter()
            .map(|p| format!("sha256 prefix {}", p.value()))
            .collect(),
    }
}

/// Whether devices trust `role` for `name` (their matcher, their rules).
pub(crate) fn covers(role: &DelegatedRole, name: &str) -> bool {
    match &role.paths {
        PathSet::Paths(p) => p
            .iter()
            .any(|p| ota_common::tuf::path_pattern_matches(p.value(), name)),
        PathSet::PathHashPrefixes(prefixes) => {
            let hash = ota_common::hash::sha256_hex(name.as_bytes());
            prefixes
                .iter()
                .any(|p| hash.starts_with(&p.value().to_ascii_lowercase()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_file_name_safe_and_not_top_level() {
        for ok in ["board-a", "b", "team_1", "0x"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Board",
            "-a",
            "a.b",
            "a/b",
            "targets",
            "root",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
