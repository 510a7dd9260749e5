//! `repo.json`: which key files sign each role, how many signatures each
//! role needs and how long freshly signed metadata of each role lives.

use crate::error::{RepoError, Result};
use crate::expiry::Expiry;
use crate::key_ref::KeyRef;
use crate::keys::KeyType;
use crate::layout::Layout;
use crate::role::Role;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Version of this file's layout.
    pub format: u32,
    /// Type of the keys `init` generated.
    pub key_type: KeyType,
    pub roles: BTreeMap<Role, RoleConfig>,
    /// Operator name for the audit log when env OTA_OPERATOR is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Delegated targets roles (`ota-repo delegate`): where each role's
    /// keys live and its expiry policy. Its paths, key ids and threshold are
    /// in the signed top-level targets metadata, which decides.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delegations: BTreeMap<String, RoleConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Where the keys live: key files (relative to the repository
    /// directory, or absolute) or PKCS#11 URIs (without PIN). A key listed
    /// in root but kept offline (on another machine) need not be here.
    pub keys: Vec<KeyRef>,
    pub threshold: u64,
    /// Expiry policy: a lifetime such as `30d` or an RFC 3339 instant.
    pub expires: String,
}

impl RoleConfig {
    pub fn expiry(&self) -> Result<Expiry> {
        self.expires.parse()
    }
}

impl RepoConfig {
    pub fn load(layout: &Layout) -> Result<Self> {
        let path = layout.config();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RepoError::NotARepository {
                    path: layout.root().to_owned(),
                })
            }
            Err(e) => return Err(RepoError::Io { path, source: e }),
        };
        let config: RepoConfig =
            serde_json::from_slice(&bytes).map_err(|source| RepoError::Json {
                path: path.clone(),
                source,
            })?;
        config
            .validate()
            .map_err(|detail| RepoError::InvalidConfig { path, detail })?;
        Ok(config)
    }

    pub fn save(&self, layout: &Layout) -> Result<()> {
        let path = layout.config();
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|source| RepoError::Json {
            path: path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        ota_common::atomic::write_atomic(&path, &bytes).map_err(RepoError::io(path))
    }

    /// The entry of a delegated role.
    pub fn delegated(&self, name: &str) -> Result<&RoleConfig> {
        self.delegations
            .get(name)
            .ok_or_else(|| RepoError::InvalidConfig {
                path: PathBuf::from(crate::layout::CONFIG_FILE),
                detail: format!(
                    "no delegations entry for role {name} (`ota-repo status` lists the delegated roles)"
                ),
            })
    }

    pub fn role(&self, role: Role) -> Result<&RoleConfig> {
        self.roles
            .get(&role)
            .ok_or_else(|| RepoError::InvalidConfig {
                path: PathBuf::from(crate::layout::CONFIG_FILE),
                detail: format!("no entry for role {role}"),
            })
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} is not supported (expected {FORMAT})",
                self.format
            ));
        }
        for role in Role::ALL {
            let rc = self
                .roles
                .get(&role)
                .ok_or_else(|| format!("no entry for role {role}"))?;
            if rc.threshold == 0 {
                return Err(format!("role {role} has threshold 0"));
            }
            rc.expiry().map_err(|e| format!("role {role}: {e}"))?;
        }
        for (name, rc) in &self.delegations {
            crate::delegated::validate_name(name).map_err(|e| format!("delegations: {e}"))?;
            if rc.threshold == 0 {
                return Err(format!("delegated role {name} has threshold 0"));
            }
            rc.expiry()
                .map_err(|e| format!("delegated role {name}: {e}"))?;
        }
        Ok(())
    }
}
