//! `repo.json`: which key files sign each role, how many signatures each
//! role needs and how long freshly signed metadata of each role lives.

use crate::error::{RepoError, Result};
use crate::expiry::Expiry;
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Key files, relative to the repository directory (or absolute).
    pub keys: Vec<PathBuf>,
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
            if rc.keys.is_empty() {
                return Err(format!("role {role} lists no key files"));
            }
            if rc.threshold == 0 || rc.threshold > rc.keys.len() as u64 {
                return Err(format!(
                    "role {role} has threshold {} with {} key file(s)",
                    rc.threshold,
                    rc.keys.len()
                ));
            }
            rc.expiry().map_err(|e| format!("role {role}: {e}"))?;
        }
        Ok(())
    }
}
