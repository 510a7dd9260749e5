//! The four top-level TUF roles and `ROLE=VALUE` command-line pairs.

use crate::error::{RepoError, Result};
use serde::{Deserialize, Serialize};
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
}
