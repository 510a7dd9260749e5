//! What a ceremony keeps in `ceremony/`: its slot, signatures and status.

use super::*;

/// The checks every ceremony command makes on its slot, whatever the role.
impl Slot {
    /// Refuses unless a ceremony of role `name` is open in this slot; with
    /// `hint`, the error says how to open one.
    pub(crate) fn require_open(&self, name: impl std::fmt::Display, hint: bool) -> Result<()> {
        if self.payload.exists() {
            return Ok(());
        }
        let mut msg = format!(
            "no {name} ceremony is open ({} missing)",
            self.payload.display()
        );
        if hint {
            msg.push_str(&format!(
                "; start one with `ota-repo ceremony export --role {name} --out FILE`"
            ));
        }
        Err(ceremony_err(msg))
    }

    /// Refuses `--expires` for version `version` of role `name`, already
    /// staged in this slot with the expiry it was started with.
    pub(crate) fn refuse_new_expiry(
        &self,
        name: impl std::fmt::Display,
        version: u64,
        expires: Option<&Expiry>,
    ) -> Result<()> {
        if expires.is_none() {
            return Ok(());
        }
        Err(ceremony_err(format!(
            "{name} version {version} is already staged ({}); --expires applies only when starting a ceremony",
            self.payload.display()
        )))
    }
}

pub(crate) fn stored_signatures_in(slot: &Slot) -> Result<Vec<(PathBuf, DetachedSignature)>> {
    let dir = &slot.signatures;
    let mut paths = Vec::new();
    for path in paths_in(dir)? {
        let path = path?;
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
        if paths.len() > MAX_STORED_SIGNATURES {
            return Err(ceremony_err(format!(
                "{} holds more than {MAX_STORED_SIGNATURES} signature files",
                dir.display()
            )));
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| read_json(&p).map(|s| (p, s)))
        .collect()
}

pub(crate) fn store_signature_in(slot: &Slot, sig: &DetachedSignature) -> Result<()> {
    // Key ids are hex (they matched a key of the role): safe as a file name.
    if !sig.keyid.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ceremony_err(format!("key id {:?} is not hex", sig.keyid)));
    }
    write_json(&slot.signatures.join(format!("{}.json", sig.keyid)), sig)
}

/// Ends a ceremony: the payload first (its presence is what "open" means),
/// then the signatures kept for it.
pub(crate) fn close_slot(slot: &Slot) -> Result<()> {
    remove_if_present(&slot.payload, |p| std::fs::remove_file(p))?;
    remove_if_present(&slot.signatures, |p| std::fs::remove_dir_all(p))?;
    if !slot.dir.exists() {
        return Ok(());
    }
    ota_common::atomic::fsync_dir(&slot.dir).map_err(RepoError::io(&slot.dir))
}

/// Opens a ceremony: old signatures out, the local ones in, the payload last.
pub(crate) fn open_slot(slot: &Slot, payload: &Payload, local: &[DetachedSignature]) -> Result<()> {
    close_slot(slot)?;
    for sig in local {
        store_signature_in(slot, sig)?;
    }
    write_json(&slot.payload, payload)
}

/// Stores `new_root` as the pending root ceremony of the repository.
pub fn stage(layout: &Layout, current: &Root, new_root: &Root) -> Result<Payload> {
    let payload = payload_for(current, new_root)?;
    open_slot(&CeremonyRole::Root.slot(layout), &payload, &[])?;
    Ok(payload)
}

/// A role version waiting for signatures.
#[derive(Debug, Clone)]
pub struct PendingRole {
    pub role: Role,
    /// The delegated targets role waiting (`role` is then `targets`).
    pub delegated: Option<String>,
    pub version: u64,
    /// Per requirement: what, signatures counted, threshold, keys.
    pub counts: Vec<(String, u64, u64, usize)>,
    pub payload: PathBuf,
}

impl PendingRole {
    /// e.g. "targets version 3 is pending signatures: 1 of 2 signatures
    /// from the targets keys of root version 1 (3 keys)".
    pub fn describe(&self) -> String {
        format!(
            "{} version {} is pending signatures: {}",
            self.name(),
            self.version,
            self.counts
                .iter()
                .map(|(what, have, need, n)| format!(
                    "{have} of {need} signatures from the {what} ({n} key(s))"
                ))
                .collect::<Vec<_>>()
                .join(" and ")
        )
    }

    /// `targets`, or the delegated role's name.
    pub fn name(&self) -> String {
        self.delegated
            .clone()
            .unwrap_or_else(|| self.role.as_str().to_owned())
    }

    /// The commands that finish it.
    pub fn next_steps(&self) -> String {
        let r = self.name();
        format!(
            "`ota-repo ceremony export --role {r} --out FILE`, `ota-repo sign --payload FILE` by each key holder, then `ota-repo ceremony merge --role {r} SIG...` (or `ota-repo ceremony abandon --role {r}`)"
        )
    }
}

pub(crate) fn pending_status(slot: &Slot, payload: &Payload) -> Result<PendingRole> {
    let bytes = payload.signed_bytes()?;
    let t = tally(payload, &bytes, &stored_signatures_in(slot)?);
    Ok(PendingRole {
        role: payload.role,
        delegated: payload.delegated.clone(),
        version: payload.version,
        counts: t
            .counts
            .iter()
            .map(|(r, have)| (r.what.clone(), *have, r.threshold, r.keyids.len()))
            .collect(),
        payload: slot.payload.clone(),
    })
}

/// Every open ceremony, with the signatures it has so far.
pub fn pending(layout: &Layout) -> Result<Vec<PendingRole>> {
    open_ceremonies(layout)?
        .iter()
        .map(|c| pending_status(&c.slot(layout), &c.read_payload(layout)?))
        .collect()
}

/// The gate `publish` passes first: no role below its threshold. A
/// pending version is not in `metadata/` yet, so publishing now would ship
/// the previous one while the release engineer believes the new one is out.
pub fn ensure_nothing_pending(layout: &Layout) -> Result<()> {
    let open = pending(layout)?;
    if open.is_empty() {
        return Ok(());
    }
    Err(ceremony_err(format!(
        "refusing to publish: {}. Collect the signatures with {}",
        open.iter()
            .map(PendingRole::describe)
            .collect::<Vec<_>>()
            .join("; "),
        open.iter()
            .map(PendingRole::next_steps)
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

impl CeremonyRole {
    /// Refuses to sign a new version of this role while one waits for
    /// signatures: two versions of the same number would fork the role.
    pub(crate) fn refuse_open(&self, layout: &Layout, doing: &str) -> Result<()> {
        let path = self.slot(layout).payload;
        if !path.exists() {
            return Ok(());
        }
        Err(ceremony_err(format!(
            "{} is waiting for signatures ({}); finish it with `ota-repo ceremony merge --role {self} SIG...` or abandon it with `ota-repo ceremony abandon --role {self}` before {doing}",
            self.describe(),
            path.display()
        )))
    }
}

/// Refuses while targets, snapshot or timestamp waits for signatures.
pub(crate) fn refuse_open_chain(layout: &Layout, doing: &str) -> Result<()> {
    CHAIN
        .into_iter()
        .try_for_each(|r| CeremonyRole::top(r).refuse_open(layout, doing))
}

/// The check `add` (and any new targets content) makes for each role
/// before irreversible work: no targets/snapshot/timestamp version is
/// already waiting for signatures, and every key repo.json lists for
/// `role` opens. Fewer keys than the threshold is fine (the rest sign in
/// a ceremony); a listed key that fails is not: a missing PIN or a
/// revoked key must not silently turn a release into a ceremony.
pub fn ensure_signable(
    layout: &Layout,
    config: &RepoConfig,
    role: Role,
    root: &Root,
) -> Result<()> {
    refuse_open_chain(layout, "signing new metadata")?;
    let local = editor::local_keys(layout, config, role, root)?;
    if (local.usable.len() as u64) < local.threshold && !local.problems.is_empty() {
        return Err(editor::threshold_unreachable(role, &local));
    }
    Ok(())
}

/// The expiries `roles` are signed with next, from repo.json's policy, after
/// checking that they can be signed or staged (root still valid, each
/// expiry in the future, every listed key usable): call it before any
/// irreversible work. What an interrupted run left is healed first, so it
/// neither blocks nor forks this one.
pub fn signable_expiries(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    roles: &[Role],
    now: jiff::Timestamp,
) -> Result<BTreeMap<Role, jiff::Timestamp>> {
    editor::ensure_not_expired(Role::Root, state.root.signed.expires, now)?;
    heal(layout, state)?;
    let mut expires = BTreeMap::new();
    for role in roles {
        let t = config.role(*role)?.expiry()?.resolve(now)?;
        editor::ensure_future(*role, t, now, false)?;
        expires.insert(*role, t);
        // Keys kept offline are fine: the version then waits in a ceremony.
        ensure_signable(layout, config, *role, &state.root.signed)?;
    }
    Ok(expires)
}
