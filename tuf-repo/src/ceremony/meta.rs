//! The unsigned role a ceremony signs: its metadata and version.

use super::*;

/// The metadata of one role, whichever it is.
#[derive(Debug, Clone)]
pub enum RoleMeta {
    Root(Root),
    Targets(Targets),
    Snapshot(Snapshot),
    Timestamp(Timestamp),
}

macro_rules! each_role {
    ($meta:expr, $m:ident => $e:expr) => {
        match $meta {
            RoleMeta::Root($m) => $e,
            RoleMeta::Targets($m) => $e,
            RoleMeta::Snapshot($m) => $e,
            RoleMeta::Timestamp($m) => $e,
        }
    };
}

impl RoleMeta {
    pub fn role(&self) -> Role {
        match self {
            RoleMeta::Root(_) => Role::Root,
            RoleMeta::Targets(_) => Role::Targets,
            RoleMeta::Snapshot(_) => Role::Snapshot,
            RoleMeta::Timestamp(_) => Role::Timestamp,
        }
    }

    pub fn version(&self) -> NonZeroU64 {
        each_role!(self, m => m.version())
    }

    pub fn expires(&self) -> jiff::Timestamp {
        each_role!(self, m => m.expires())
    }

    /// The bytes signatures cover.
    pub fn canonical(&self) -> Result<Vec<u8>> {
        each_role!(self, m => m.canonical_form())
            .map_err(|e| RepoError::Inconsistent(format!("serializing {}: {e}", self.role())))
    }

    pub(super) fn to_value(&self) -> Result<serde_json::Value> {
        each_role!(self, m => serde_json::to_value(m))
            .map_err(|e| RepoError::Inconsistent(format!("serializing {}: {e}", self.role())))
    }

    /// Parses untrusted JSON as metadata of `role` (its `_type` must match).
    pub fn from_value(role: Role, value: serde_json::Value) -> Result<Self> {
        let bad = |e: serde_json::Error| {
            ceremony_err(format!("payload metadata is not {role} metadata: {e}"))
        };
        Ok(match role {
            Role::Root => RoleMeta::Root(serde_json::from_value(value).map_err(bad)?),
            Role::Targets => RoleMeta::Targets(serde_json::from_value(value).map_err(bad)?),
            Role::Snapshot => RoleMeta::Snapshot(serde_json::from_value(value).map_err(bad)?),
            Role::Timestamp => RoleMeta::Timestamp(serde_json::from_value(value).map_err(bad)?),
        })
    }

    /// The metadata file's bytes with these signatures.
    pub fn signed_file(&self, signatures: Vec<Signature>) -> Result<Vec<u8>> {
        each_role!(self, m => editor::signed_bytes(&Signed { signed: m.clone(), signatures }))
    }

    /// Signs with each key, recording every signature in the audit log.
    pub(super) async fn sign_with(
        &self,
        keys: &[LoadedKey],
        log: &AuditLog,
    ) -> Result<Vec<Signature>> {
        each_role!(self, m => editor::signatures(m, keys, log).await)
    }

    /// The file name in `metadata/` (consistent snapshots).
    pub fn file_name(&self) -> String {
        match self {
            RoleMeta::Timestamp(_) => "timestamp.json".to_owned(),
            other => format!("{}.{}.json", other.version(), other.role()),
        }
    }
}

pub(super) fn current_version(state: &RepoState, role: Role) -> NonZeroU64 {
    match role {
        Role::Root => state.root.signed.version,
        Role::Targets => state.targets.signed.version,
        Role::Snapshot => state.snapshot.signed.version,
        Role::Timestamp => state.timestamp.signed.version,
    }
}

pub(super) fn next_version(state: &RepoState, role: Role) -> Result<NonZeroU64> {
    current_version(state, role)
        .checked_add(1)
        .ok_or_else(|| RepoError::Inconsistent(format!("{role} version cannot grow")))
}
