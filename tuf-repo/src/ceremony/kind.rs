//! Which role a ceremony signs. Export, merge, abandon, heal and the list
//! of open ceremonies are written once over [`CeremonyRole`]; what differs
//! between the kinds is answered here (where the ceremony's files live,
//! which version the repository trusts, how to read its payload) or in the
//! few `match`es of those commands (which keys decide, what completing it
//! signs next).

use super::*;

/// The role a ceremony signs a new version of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CeremonyRole {
    /// A new root: a threshold of the current AND of the new root keys
    /// must sign it; completing it re-signs what the new root re-keys.
    Root,
    /// Targets, snapshot or timestamp (never root; [`CeremonyRole::top`]
    /// makes sure): the trusted root's keys decide, and completing it signs
    /// what the chain lists after it (targets → snapshot → timestamp).
    TopLevel(Role),
    /// A delegated targets role: the keys the delegating top-level targets
    /// lists decide, and completing it signs a snapshot listing it.
    Delegated(DelegatedName),
}

/// A valid delegated role name (it becomes part of file paths under
/// `ceremony/delegated/`, so nothing else gets that far).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DelegatedName(String);

impl DelegatedName {
    pub fn parse(name: &str) -> Result<Self> {
        crate::delegated::validate_name(name).map_err(RepoError::InvalidArgument)?;
        Ok(DelegatedName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DelegatedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for CeremonyRole {
    /// The name `--role` takes and messages use.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CeremonyRole::Root => f.write_str(Role::Root.as_str()),
            CeremonyRole::TopLevel(role) => f.write_str(role.as_str()),
            CeremonyRole::Delegated(name) => f.write_str(name.as_str()),
        }
    }
}

impl CeremonyRole {
    /// The ceremony of a top-level role.
    pub fn top(role: Role) -> Self {
        match role {
            Role::Root => CeremonyRole::Root,
            other => CeremonyRole::TopLevel(other),
        }
    }

    /// `--role ARG`: a top-level role, or else a delegated role's name.
    pub fn parse(arg: &str) -> Result<Self> {
        match arg.parse::<Role>() {
            Ok(role) => Ok(CeremonyRole::top(role)),
            Err(_) => Ok(CeremonyRole::Delegated(DelegatedName::parse(arg)?)),
        }
    }

    /// The type of the metadata signed (`targets` for a delegated role).
    pub fn metadata_role(&self) -> Role {
        match self {
            CeremonyRole::Root => Role::Root,
            CeremonyRole::TopLevel(role) => *role,
            CeremonyRole::Delegated(_) => Role::Targets,
        }
    }

    /// Where the ceremony keeps its payload and signatures: `ceremony/` for
    /// the top-level roles, `ceremony/delegated/` for delegated ones.
    pub(crate) fn slot(&self, layout: &Layout) -> Slot {
        let ceremony_dir = layout.root().join(CEREMONY_DIR);
        let (dir, file) = match self {
            CeremonyRole::Delegated(name) => (ceremony_dir.join(DELEGATED_DIR), name.as_str()),
            top => (ceremony_dir, top.metadata_role().as_str()),
        };
        Slot {
            payload: dir.join(format!("{file}.json")),
            signatures: dir.join(format!("{file}.signatures")),
            dir,
        }
    }

    /// The open ceremony's payload, refused when it is another role's.
    pub(crate) fn read_payload(&self, layout: &Layout) -> Result<Payload> {
        let path = self.slot(layout).payload;
        let payload: Payload = read_json(&path)?;
        let ours = payload.role == self.metadata_role()
            && match self {
                CeremonyRole::Delegated(name) => {
                    payload.delegated.as_deref() == Some(name.as_str())
                }
                _ => true,
            };
        if !ours {
            return Err(ceremony_err(format!(
                "{} holds a {} payload, not one of {}",
                path.display(),
                payload.role_name(),
                self.describe()
            )));
        }
        Ok(payload)
    }

    /// e.g. `targets`, `delegated role board-a`.
    pub fn describe(&self) -> String {
        match self {
            CeremonyRole::Delegated(name) => format!("delegated role {name}"),
            top => top.to_string(),
        }
    }

    /// The version the trusted metadata holds (0 for a delegated role no
    /// trusted snapshot lists yet).
    pub(super) fn trusted_version(&self, state: &RepoState) -> u64 {
        match self {
            CeremonyRole::Delegated(name) => listed_version(state, name.as_str()),
            top => current_version(state, top.metadata_role()).get(),
        }
    }

    /// The expiry policy repo.json sets for the role.
    pub(super) fn expiry_policy(&self, config: &RepoConfig, state: &RepoState) -> Result<Expiry> {
        match self {
            CeremonyRole::Delegated(name) => {
                // A role targets does not delegate is named as such, not as
                // a missing repo.json entry.
                crate::delegated::find(state, name.as_str())?;
                config.delegated(name.as_str())?.expiry()
            }
            top => config.role(top.metadata_role())?.expiry(),
        }
    }
}

/// The version of `name` (a role's file stem) the trusted snapshot lists.
pub(super) fn listed_version(state: &RepoState, name: &str) -> u64 {
    state
        .snapshot
        .signed
        .meta
        .get(&format!("{name}.json"))
        .map(|m| m.version.get())
        .unwrap_or(0)
}

/// Every open ceremony: the top-level roles in chain order, then the
/// delegated roles by name.
pub(crate) fn open_ceremonies(layout: &Layout) -> Result<Vec<CeremonyRole>> {
    let mut open: Vec<CeremonyRole> = Role::ALL
        .into_iter()
        .map(CeremonyRole::top)
        .filter(|c| c.slot(layout).payload.exists())
        .collect();
    let dir = layout.root().join(CEREMONY_DIR).join(DELEGATED_DIR);
    let mut names = Vec::new();
    for path in paths_in(&dir)? {
        let path = path?;
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        // Anything else there is not ours to interpret.
        if let (Ok(name), true) = (DelegatedName::parse(stem), path.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    open.extend(names.into_iter().map(CeremonyRole::Delegated));
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_argument_names_its_kind_and_where_its_ceremony_lives() {
        let layout = Layout::new("/repo");
        let cases = [
            ("root", CeremonyRole::Root, "/repo/ceremony/root.json"),
            (
                "snapshot",
                CeremonyRole::TopLevel(Role::Snapshot),
                "/repo/ceremony/snapshot.json",
            ),
            (
                "board-a",
                CeremonyRole::Delegated(DelegatedName::parse("board-a").expect("name")),
                "/repo/ceremony/delegated/board-a.json",
            ),
        ];
        for (arg, kind, payload) in cases {
            let parsed = CeremonyRole::parse(arg).expect("role");
            assert_eq!(parsed, kind);
            assert_eq!(parsed.to_string(), arg);
            let slot = parsed.slot(&layout);
            assert_eq!(slot.payload, Path::new(payload));
            assert_eq!(
                slot.signatures,
                Path::new(&payload.replace(".json", ".signatures"))
            );
        }
        assert_eq!(CeremonyRole::top(Role::Root), CeremonyRole::Root);
        // A name that would leave `ceremony/delegated/` never gets a slot.
        for bad in ["../targets", "Board", "a/b", ""] {
            assert!(CeremonyRole::parse(bad).is_err(), "{bad}");
        }
    }
}
