//! The four top-level TUF roles and `ROLE=VALUE` command-line pairs.

use crate::error::{RepoError, Result};
use crate::expiry::Expiry;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Root,
    Targets,
    Snapshot,
    Timestamp,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }

    pub fn role_type(self) -> tough::schema::RoleType {
        use tough::schema::RoleType;
        match self {
            Role::Root => RoleType::Root,
            Role::Targets => RoleType::Targets,
            Role::Snapshot => RoleType::Snapshot,
            Role::Timestamp => RoleType::Timestamp,
        }
    }

    /// Default lifetime of freshly signed metadata of this role.
    pub fn default_expiry(self) -> &'static str {
        match self {
            Role::Root => "365d",
            Role::Targets => "90d",
            Role::Snapshot => "30d",
            Role::Timestamp => "7d",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RepoError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "root" => Ok(Role::Root),
            "targets" => Ok(Role::Targets),
            "snapshot" => Ok(Role::Snapshot),
            "timestamp" => Ok(Role::Timestamp),
            other => Err(RepoError::InvalidArgument(format!(
                "unknown role {other:?}: expected root, targets, snapshot or timestamp"
            ))),
        }
    }
}

/// Splits `ROLE=VALUE` (as in `--keys targets=2`).
pub fn parse_role_pair(arg: &str) -> Result<(Role, String)> {
    let (role, value) = arg.split_once('=').ok_or_else(|| {
        RepoError::InvalidArgument(format!("{arg:?}: expected ROLE=VALUE, e.g. targets=2"))
    })?;
    Ok((role.trim().parse()?, value.trim().to_owned()))
}

/// The roles actually signed for a request, with their dependents.
pub fn expand(roles: &[Role], expires: &BTreeMap<Role, Expiry>) -> BTreeSet<Role> {
    let mut set: BTreeSet<Role> = roles
        .iter()
        .copied()
        .chain(expires.keys().copied())
        .collect();
    if set.is_empty() {
        set.insert(Role::Timestamp);
    }
    if set.contains(&Role::Targets) {
        set.insert(Role::Snapshot);
    }
    if set.contains(&Role::Snapshot) {
        set.insert(Role::Timestamp);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs() {
        assert_eq!(
            parse_role_pair("targets=2").expect("pair"),
            (Role::Targets, "2".to_owned())
        );
        assert!(parse_role_pair("targets").is_err());
        assert!(parse_role_pair("mirrors=1").is_err());
    }

    #[test]
    fn cascades_to_dependent_roles() {
        let none = BTreeMap::new();
        assert_eq!(expand(&[], &none), BTreeSet::from([Role::Timestamp]));
        assert_eq!(
            expand(&[Role::Targets], &none),
            BTreeSet::from([Role::Targets, Role::Snapshot, Role::Timestamp])
        );
        assert_eq!(expand(&[Role::Root], &none), BTreeSet::from([Role::Root]));
        let exp = BTreeMap::from([(Role::Snapshot, Expiry::After(60))]);
        assert_eq!(
            expand(&[], &exp),
            BTreeSet::from([Role::Snapshot, Role::Timestamp])
        );
    }
}
