//! Counting the signatures a payload has against its requirements.

use super::*;

/// Valid signatures by distinct key, and what was not counted and why.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Key id -> (signature, file it came from).
    pub(super) accepted: BTreeMap<String, (Vec<u8>, PathBuf)>,
    pub(super) rejected: Vec<String>,
    /// (requirement, distinct keys of it that signed).
    pub(super) counts: Vec<(Requirement, u64)>,
}

impl Tally {
    pub(super) fn missing(&self) -> Vec<String> {
        self.counts
            .iter()
            .filter(|(r, have)| *have < r.threshold)
            .map(|(r, have)| {
                format!(
                    "{have} of {} required signatures from the {} ({} key(s))",
                    r.threshold,
                    r.what,
                    r.keyids.len()
                )
            })
            .collect()
    }

    pub(super) fn signatures(&self) -> Result<Vec<Signature>> {
        self.accepted
            .iter()
            .map(|(id, (sig, _))| {
                let keyid =
                    hex::decode(id).map_err(|e| ceremony_err(format!("key id {id}: {e}")))?;
                Ok(Signature {
                    keyid: keyid.into(),
                    sig: sig.clone().into(),
                })
            })
            .collect()
    }
}

/// Checks each signature against the payload's bytes and keys, counting a
/// key once however many files it signed.
pub(super) fn tally(
    payload: &Payload,
    bytes: &[u8],
    sigs: &[(PathBuf, DetachedSignature)],
) -> Tally {
    let mut t = Tally::default();
    let role = payload.role;
    for (path, s) in sigs {
        let name = path.display();
        if s.role != role || s.delegated != payload.delegated {
            let signed = s.delegated.clone().unwrap_or_else(|| s.role.to_string());
            t.rejected.push(format!(
                "{name}: signs {signed} metadata, not {}",
                payload.role_name()
            ));
            continue;
        }
        if s.version != payload.version {
            t.rejected.push(format!(
                "{name}: signs {role} version {}, but the open ceremony is for version {}",
                s.version, payload.version
            ));
            continue;
        }
        if s.payload_sha256 != payload.sha256 {
            t.rejected.push(format!(
                "{name}: signs other bytes (sha256 {}) than {role} version {} (sha256 {}): the signer was given another payload",
                s.payload_sha256, payload.version, payload.sha256
            ));
            continue;
        }
        let Some(key) = payload.keys.get(&s.keyid) else {
            t.rejected.push(format!(
                "{name}: key {} is not one of the keys {role} version {} accepts ({}): revoked, never added, or another role's",
                s.keyid,
                payload.version,
                payload
                    .requirements
                    .iter()
                    .map(|r| r.what.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        };
        let Ok(sig) = hex::decode(&s.sig) else {
            t.rejected.push(format!("{name}: signature is not hex"));
            continue;
        };
        if !editor::verify_signature(key, bytes, &sig) {
            t.rejected.push(format!(
                "{name}: signature by key {} does not verify",
                s.keyid
            ));
            continue;
        }
        // Thresholds count keys: a second signature by a key adds nothing.
        if let Some((_, first)) = t.accepted.get(&s.keyid) {
            t.rejected.push(format!(
                "{name}: key {} already signed ({}); counted once",
                s.keyid,
                first.display()
            ));
            continue;
        }
        t.accepted.insert(s.keyid.clone(), (sig, path.clone()));
    }
    let ids: BTreeSet<&String> = t.accepted.keys().collect();
    t.counts = payload
        .requirements
        .iter()
        .map(|r| {
            let have = r.keyids.iter().filter(|id| ids.contains(id)).count() as u64;
            (r.clone(), have)
        })
        .collect();
    t
}

/// Counts valid signatures by distinct key ids against each requirement.
/// Returns the accepted signatures, or an error saying what is missing.
pub fn check_signatures(
    payload: &Payload,
    sigs: &[(PathBuf, DetachedSignature)],
) -> Result<Vec<Signature>> {
    let bytes = payload.signed_bytes()?;
    let t = tally(payload, &bytes, sigs);
    let missing = t.missing();
    if !missing.is_empty() {
        let mut msg = format!(
            "{} version {} is NOT signed: {}",
            payload.role,
            payload.version,
            missing.join("; ")
        );
        if !t.rejected.is_empty() {
            msg.push_str(&format!(" (not counted: {})", t.rejected.join("; ")));
        }
        return Err(ceremony_err(msg));
    }
    t.signatures()
}
