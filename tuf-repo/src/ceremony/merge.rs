//! `ceremony merge`: verifying signatures and committing a complete role.

use super::*;

/// Outcome of a merge that met every threshold.
#[derive(Debug, Clone)]
pub struct Merged {
    pub role: CeremonyRole,
    pub version: u64,
    /// Key ids whose signatures were counted.
    pub counted: Vec<String>,
    /// Signature files given that were not counted, and why.
    pub not_counted: Vec<String>,
    /// What was signed after it (snapshot, timestamp; for version 1 of a
    /// delegated role, first the targets that delegates it) and what now
    /// waits.
    pub progress: Progress,
}

/// What a complete ceremony commits, settled before any signature counts.
enum Completion {
    /// The new root, and a re-signing of the roles it re-keys.
    Root(Root),
    /// The role, then what the chain lists after it.
    Chain(RoleMeta),
    /// `N.ROLE.json`, then a snapshot listing it.
    Delegated(Box<delegated::Completion>),
}

/// The pending payload with the keys and threshold that decide now: the
/// trusted root's for the role (a rotation since the export wins), the
/// payload's own two requirements for a new root.
pub(super) fn deciding_payload(payload: &Payload, state: &RepoState) -> Result<Payload> {
    if payload.role == Role::Root {
        return Ok(payload.clone());
    }
    let (requirements, keys) = requirements_under(payload.role, &state.root.signed)?;
    Ok(Payload {
        requirements,
        keys,
        ..payload.clone()
    })
}

/// Refuses a pending version the repository has moved past, or whose
/// snapshot/timestamp lists a file that is not (or no longer) there.
pub(super) fn check_fresh(
    layout: &Layout,
    payload: &Payload,
    meta: &RoleMeta,
    state: &RepoState,
) -> Result<()> {
    let role = payload.role;
    let expected = next_version(state, role)?.get();
    if payload.version != expected {
        return Err(ceremony_err(format!(
            "the open {role} ceremony is for version {} but the repository's next {role} version is {expected}; abandon it with `ota-repo ceremony abandon --role {role}` and start again",
            payload.version
        )));
    }
    let listed: Vec<(String, &Metafile)> = match meta {
        RoleMeta::Snapshot(s) => s
            .meta
            .iter()
            .map(|(name, m)| (name.trim_end_matches(".json").to_owned(), m))
            .collect(),
        RoleMeta::Timestamp(t) => t
            .meta
            .iter()
            .map(|(name, m)| (name.trim_end_matches(".json").to_owned(), m))
            .collect(),
        _ => Vec::new(),
    };
    for (r, m) in listed {
        let actual = current_metafile(layout, &r, m.version)?;
        if actual != *m {
            return Err(ceremony_err(format!(
                "the {role} being signed lists {r} version {} with other bytes than metadata/{}.{r}.json; abandon this ceremony",
                m.version, m.version
            )));
        }
    }
    Ok(())
}

/// `ceremony merge`: verifies the signature files against the pending
/// payload, keeps the valid ones (recorded in the audit log) with those
/// already accepted, and when every threshold is met writes the signed
/// metadata, then signs (or stages) what depends on it. Below a threshold
/// it fails, naming what is missing; the valid signatures stay for the
/// next merge.
pub async fn merge(layout: &Layout, role: &CeremonyRole, sig_files: &[PathBuf]) -> Result<Merged> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    heal(layout, &state)?;
    let slot = role.slot(layout);
    slot.require_open(role, true)?;
    let stored = role.read_payload(layout)?;
    let bytes = stored.signed_bytes()?;
    let meta = stored.meta()?;
    // The keys that decide and what completing writes are settled (and
    // checked) before any signature is stored: nothing is half done.
    let (deciding, completion) = match role {
        CeremonyRole::Root | CeremonyRole::TopLevel(_) => {
            check_fresh(layout, &stored, &meta, &state)?;
            let completion = match meta {
                RoleMeta::Root(new_root) => Completion::Root(new_root),
                other => Completion::Chain(other),
            };
            (deciding_payload(&stored, &state)?, completion)
        }
        CeremonyRole::Delegated(name) => {
            let (deciding, completion) =
                delegated::prepare(layout, &config, &state, name, &stored, meta)?;
            (deciding, Completion::Delegated(Box::new(completion)))
        }
    };
    let Collected {
        signatures,
        counted,
        rejected,
    } = collect(layout, &config, &slot, &deciding, &bytes, sig_files)?;
    let progress = match completion {
        Completion::Root(new_root) => {
            finish_root(layout, &config, &state, new_root, signatures).await?
        }
        Completion::Chain(meta) => {
            let merged = meta.role();
            let expires = chain_expiries(&config, &BTreeMap::new(), jiff::Timestamp::now())?;
            let step = Step::Signed(meta, signatures);
            let mut progress =
                run_chain(layout, &config, &state, step, &expires, &BTreeMap::new()).await?;
            progress.signed.retain(|(r, _)| *r != merged);
            progress
        }
        Completion::Delegated(completion) => {
            completion
                .complete(layout, &config, &state, signatures)
                .await?
        }
    };
    // The next ceremony (if any) opened before this one closes: a cut in
    // between leaves both open, and `heal` sees that the next one lists
    // this version.
    close_slot(&slot)?;
    Ok(Merged {
        role: role.clone(),
        version: stored.version,
        counted,
        not_counted: rejected,
        progress,
    })
}

/// The signatures of a ceremony that met every threshold.
pub(crate) struct Collected {
    pub signatures: Vec<Signature>,
    /// Key ids whose signatures were counted.
    pub counted: Vec<String>,
    /// Signature files given that were not counted, and why.
    pub rejected: Vec<String>,
}

/// Verifies `sig_files` against `payload` (whose keys and thresholds are
/// the ones that decide now), keeps the valid new ones (recorded in the
/// audit log) beside those accepted before, and fails naming what is
/// missing while a threshold is not met.
pub(crate) fn collect(
    layout: &Layout,
    config: &RepoConfig,
    slot: &Slot,
    payload: &Payload,
    bytes: &[u8],
    sig_files: &[PathBuf],
) -> Result<Collected> {
    let role = payload.role;
    let role_name = payload.role_name();
    let mut sigs = stored_signatures_in(slot)?;
    let stored_count = sigs.len();
    for path in sig_files {
        sigs.push((path.clone(), read_json::<DetachedSignature>(path)?));
    }
    let t = tally(payload, bytes, &sigs);
    let given: BTreeSet<&PathBuf> = sigs[stored_count..].iter().map(|(p, _)| p).collect();
    let log = editor::audit_log(layout, config);
    for (id, (sig, path)) in &t.accepted {
        if !given.contains(path) {
            continue;
        }
        log.record(&Event {
            action: "merge",
            role: &role_name,
            version: payload.version,
            signed_bytes: bytes,
            keyid: id,
            key_location: &format!("offline key, detached signature file {}", path.display()),
        })?;
        store_signature_in(
            slot,
            &DetachedSignature {
                role,
                version: payload.version,
                payload_sha256: payload.sha256.clone(),
                keyid: id.clone(),
                sig: hex::encode(sig),
                delegated: payload.delegated.clone(),
            },
        )?;
    }
    let missing = t.missing();
    if !missing.is_empty() {
        let mut msg = format!(
            "{role_name} version {} is NOT signed yet: {}; the {} valid signature(s) are kept in {} for the next merge",
            payload.version,
            missing.join("; "),
            t.accepted.len(),
            slot.signatures.display()
        );
        if !t.rejected.is_empty() {
            msg.push_str(&format!(" (not counted: {})", t.rejected.join("; ")));
        }
        return Err(ceremony_err(msg));
    }
    Ok(Collected {
        signatures: t.signatures()?,
        counted: t.accepted.keys().cloned().collect(),
        rejected: t.rejected,
    })
}

/// Writes the merged root (`N.root.json`, `root.json`) and re-signs the
/// roles it re-keys.
pub(super) async fn finish_root(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    new_root: Root,
    signatures: Vec<Signature>,
) -> Result<Progress> {
    let changed: Vec<Role> = CHAIN
        .into_iter()
        .filter(|r| {
            state.root.signed.roles.get(&r.role_type()) != new_root.roles.get(&r.role_type())
        })
        .collect();
    let resigned = crate::role::expand(&changed, &BTreeMap::new());
    let signed = Signed {
        signed: new_root,
        signatures,
    };
    editor::write_root(layout, config, state, signed, &resigned).await?;
    // The repository must load with the new root (tough checks both thresholds).
    RepoState::load(layout).await?;
    Ok(Progress {
        signed: resigned
            .into_iter()
            .map(|r| Ok((r, next_version(state, r)?.get())))
            .collect::<Result<_>>()?,
        pending: None,
    })
}
