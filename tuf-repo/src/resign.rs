//! `ota-repo resign`: new versions with new expiry dates, to refresh
//! metadata before it expires (or, with `--allow-expired`, to produce
//! expired metadata for tests).
//!
//! Signing a role re-signs what refers to it: targets ⇒ snapshot and
//! timestamp, snapshot ⇒ timestamp. Root stands alone (clients fetch
//! `N+1.root.json` by name).

use crate::config::RepoConfig;
use crate::editor::{self, SignPlan};
use crate::error::Result;
use crate::expiry::Expiry;
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct ResignOptions {
    /// Roles asked for; empty means timestamp. Roles given an expiry in
    /// `expires` are re-signed too.
    pub roles: Vec<Role>,
    /// One-off expiry per role (the policy in repo.json is left unchanged).
    pub expires: BTreeMap<Role, Expiry>,
    pub allow_expired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resigned {
    /// (role, new version, new expiry), in signing order.
    pub roles: Vec<(Role, u64, String)>,
}

pub use crate::role::expand;

pub async fn resign(layout: &Layout, options: &ResignOptions) -> Result<Resigned> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    crate::ceremony::heal(layout, &state)?;
    let roles = expand(&options.roles, &options.expires);
    let now = jiff::Timestamp::now();

    // A role left as it is must still be valid, or the refresh is useless:
    // clients would refuse the repository anyway.
    if !options.allow_expired {
        let current = [
            (Role::Root, state.root.signed.expires),
            (Role::Targets, state.targets.signed.expires),
            (Role::Snapshot, state.snapshot.signed.expires),
            (Role::Timestamp, state.timestamp.signed.expires),
        ];
        for (role, expires) in current {
            if !roles.contains(&role) {
                editor::ensure_not_expired(role, expires, now)?;
            }
        }
    }

    let mut expires = BTreeMap::new();
    for role in &roles {
        let policy = match options.expires.get(role) {
            Some(e) => *e,
            None => config.role(*role)?.expiry()?,
        };
        let t = policy.resolve(now)?;
        editor::ensure_future(*role, t, now, options.allow_expired)?;
        expires.insert(*role, t);
    }
    let plan = SignPlan {
        root: roles.contains(&Role::Root),
        new_targets: None,
        resign_targets: roles.contains(&Role::Targets),
        snapshot: roles.contains(&Role::Snapshot),
        timestamp: roles.contains(&Role::Timestamp),
        expires: expires.clone(),
        delegated: BTreeMap::new(),
    };
    let files = editor::sign_plan(layout, &config, &state, plan).await?;
    editor::write_metadata(layout, &files)?;

    let version_of = |role: Role| match role {
        Role::Root => state.root.signed.version.get() + 1,
        Role::Targets => state.targets.signed.version.get() + 1,
        Role::Snapshot => state.snapshot.signed.version.get() + 1,
        Role::Timestamp => state.timestamp.signed.version.get() + 1,
    };
    Ok(Resigned {
        roles: roles
            .iter()
            .map(|r| (*r, version_of(*r), expires[r].to_string()))
            .collect(),
    })
}
