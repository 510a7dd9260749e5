//! The release files, the signatures on each role and the key inventory.

use super::*;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;

/// Every target whose custom `version` is `release`.
pub(super) fn release_files(
    layout: &Layout,
    state: &RepoState,
    release: &semver::Version,
) -> Result<Vec<ReleaseFile>> {
    let mut set = crate::publish::collect(layout, state)?;
    crate::delegation::extend_publish_set(layout, state, &mut set)?;
    let mut files = Vec::new();
    for t in set.targets {
        let Some((role, target)) = crate::delegation::locate(state, &t.name) else {
            continue;
        };
        let signed_by = role
            .map(|r| r.name.clone())
            .unwrap_or_else(|| Role::Targets.to_string());
        let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
        let Ok(r) = serde_json::from_value::<ReleaseCustom>(custom) else {
            continue;
        };
        if r.version != *release {
            continue;
        }
        files.push(ReleaseFile {
            clause: CLAUSE_INTEGRITY,
            name: t.name,
            version: r.version.to_string(),
            hardware_ids: r.hardware_ids,
            length: t.length,
            sha256: t.sha256,
            sha512: t.sha512,
            signed_by,
        });
    }
    if files.is_empty() {
        return Err(RepoError::InvalidArgument(format!(
            "no target of release {release} in the signed targets metadata (`ota-repo status` lists the releases)"
        )));
    }
    Ok(files)
}

pub(super) fn role_evidence<T>(
    role: Role,
    signed: &Signed<T>,
    root: &Root,
    now: jiff::Timestamp,
) -> Result<RoleEvidence>
where
    T: tough::schema::Role + Serialize,
{
    let rk = root
        .roles
        .get(&role.role_type())
        .ok_or_else(|| RepoError::Inconsistent(format!("root lists no {role} role")))?;
    let listed = Listed {
        keyids: &rk.keyids,
        keys: &root.keys,
        threshold: rk.threshold.get(),
    };
    evidence_of(role.to_string(), signed, &listed, now)
}

/// The signatures of a delegated role's current metadata, checked against
/// the keys and threshold the delegating top-level targets lists for it
/// (what devices check).
pub(super) fn delegated_role_evidence(
    state: &RepoState,
    role: &tough::schema::DelegatedRole,
    now: jiff::Timestamp,
) -> Result<RoleEvidence> {
    let (_, signed) = crate::delegation::find(state, &role.name)?;
    let keys = state
        .targets
        .signed
        .delegations
        .as_ref()
        .map(|d| &d.keys)
        .ok_or_else(|| RepoError::Inconsistent("targets lists no delegations".to_owned()))?;
    let listed = Listed {
        keyids: &role.keyids,
        keys,
        threshold: role.threshold.get(),
    };
    evidence_of(role.name.clone(), signed, &listed, now)
}

/// The keys a role's signatures must come from, as the metadata above it
/// (root, or the delegating targets) lists them.
struct Listed<'a> {
    keyids: &'a [Decoded<Hex>],
    keys: &'a HashMap<Decoded<Hex>, Key>,
    threshold: u64,
}

/// Which of `signed`'s signatures verify by a key `listed` names, and
/// whether they reach its threshold.
fn evidence_of<T>(
    name: String,
    signed: &Signed<T>,
    listed: &Listed<'_>,
    now: jiff::Timestamp,
) -> Result<RoleEvidence>
where
    T: tough::schema::Role + Serialize,
{
    let role_ids: BTreeSet<String> = listed.keyids.iter().map(|id| hex::encode(&**id)).collect();
    let bytes = signed
        .signed
        .canonical_form()
        .map_err(|e| RepoError::Inconsistent(format!("serializing {name} metadata: {e}")))?;
    let mut signatures = Vec::new();
    let mut valid_ids = BTreeSet::new();
    for sig in &signed.signatures {
        let keyid = hex::encode(&*sig.keyid);
        let valid = role_ids.contains(&keyid)
            && listed
                .keys
                .get(&sig.keyid)
                .is_some_and(|k| crate::editor::verify_signature(k, &bytes, &sig.sig));
        if valid {
            valid_ids.insert(keyid.clone());
        }
        signatures.push(SignatureEvidence { keyid, valid });
    }
    let expires = signed.signed.expires();
    Ok(RoleEvidence {
        clause: CLAUSE_INTEGRITY,
        role: name,
        version: signed.signed.version().get(),
        expires: expires.to_string(),
        expired: expires <= now,
        threshold: listed.threshold,
        keyids: role_ids.into_iter().collect(),
        signatures,
        valid_signatures: valid_ids.len() as u64,
        threshold_met: valid_ids.len() as u64 >= listed.threshold,
    })
}

pub(super) fn key_inventory(
    layout: &Layout,
    config: &RepoConfig,
    root: &Root,
    warnings: &mut Vec<String>,
) -> Result<Vec<KeyEvidence>> {
    // Key id -> where repo.json says it lives.
    let mut refs: HashMap<String, KeyRef> = HashMap::new();
    for role in Role::ALL {
        for key_ref in &config.role(role)?.keys {
            match key_ref
                .public_key(Some(layout.root()))
                .and_then(|k| keys::key_id(&k))
            {
                Ok(id) => {
                    refs.insert(id, key_ref.clone());
                }
                Err(e) => warnings.push(format!("{role} key {key_ref} not reachable: {e}")),
            }
        }
    }
    let mut out = Vec::new();
    for role in Role::ALL {
        let Some(rk) = root.roles.get(&role.role_type()) else {
            continue;
        };
        for id in &rk.keyids {
            let keyid = hex::encode(&**id);
            let scheme = root
                .keys
                .get(id)
                .map(keys::describe)
                .unwrap_or_else(|| "?".to_owned());
            let mut k = KeyEvidence {
                clause: CLAUSE_KEYS,
                role: role.to_string(),
                keyid: keyid.clone(),
                scheme,
                storage: "offline",
                location: "offline (not in repo.json): kept on another machine or token".to_owned(),
                protection: None,
                protection_error: None,
            };
            match refs.get(&keyid) {
                Some(r @ KeyRef::File(_)) => {
                    k.storage = "software-file";
                    k.location = r.describe(Some(layout.root()));
                    warnings.push(format!(
                        "{role} key {keyid} is a software key file (development only): not acceptable for production releases"
                    ));
                }
                Some(r @ KeyRef::Pkcs11(uri)) => {
                    k.storage = "pkcs11";
                    k.location = r.describe(Some(layout.root()));
                    match uri.key_protection() {
                        Ok(p) => {
                            for weak in weaknesses(&p) {
                                warnings.push(format!("{role} key {keyid}: {weak}"));
                            }
                            k.protection = Some(p);
                        }
                        Err(e) => {
                            warnings.push(format!(
                                "{role} key {keyid}: protection attributes not read: {e}"
                            ));
                            k.protection_error = Some(e.to_string());
                        }
                    }
                }
                None => warnings.push(format!(
                    "{role} key {keyid} is offline: its protection attributes are not in this evidence (read them at the ceremony)"
                )),
            }
            out.push(k);
        }
    }
    Ok(out)
}

/// What in a token's answer falls short of a non-exportable signing key.
pub(super) fn weaknesses(p: &KeyProtection) -> Vec<&'static str> {
    let mut out = Vec::new();
    if p.sensitive != Some(true) {
        out.push("CKA_SENSITIVE is not true");
    }
    if p.extractable != Some(false) {
        out.push("CKA_EXTRACTABLE is not false");
    }
    if p.never_extractable != Some(true) {
        out.push("CKA_NEVER_EXTRACTABLE is not true: the key may have been exported before");
    }
    if p.always_sensitive != Some(true) {
        out.push("CKA_ALWAYS_SENSITIVE is not true");
    }
    if p.local != Some(true) {
        out.push("CKA_LOCAL is not true: the key was imported, not generated in the token");
    }
    out
}
