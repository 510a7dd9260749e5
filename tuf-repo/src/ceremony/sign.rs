//! `ota-repo sign --payload`: a detached signature, made on the signer's machine.

use super::*;

/// `ota-repo sign`: a detached signature of a payload with one key. The
/// key must be one the payload accepts. `log` records the signature when
/// the signing machine keeps an audit log.
pub fn sign_payload(
    payload_path: &Path,
    key: &KeyRef,
    out: &Path,
    log: Option<&AuditLog>,
) -> Result<DetachedSignature> {
    let payload = read_payload(payload_path)?;
    let bytes = payload.signed_bytes()?;
    let loaded = key.open(None)?;
    if !payload.keys.contains_key(&loaded.key_id) {
        return Err(ceremony_err(format!(
            "key {} ({}) is not one of the keys whose signatures this {} version {} accepts",
            loaded.key_id,
            loaded.location,
            payload.role_name(),
            payload.version
        )));
    }
    let sig = futures_sign(&loaded, &bytes)?;
    if let Some(log) = log {
        log.record(&Event {
            action: "detached-sign",
            role: &payload.role_name(),
            version: payload.version,
            signed_bytes: &bytes,
            keyid: &loaded.key_id,
            key_location: &loaded.location,
        })?;
    }
    let detached = payload.detached(loaded.key_id.clone(), &sig);
    write_json(out, &detached)?;
    Ok(detached)
}

/// Reads and checks a payload file (for `sign`, which shows its summary).
pub fn read_payload(path: &Path) -> Result<Payload> {
    let payload: Payload = read_json(path)?;
    if payload.format != PAYLOAD_FORMAT {
        return Err(ceremony_err(format!(
            "payload format {} is not supported",
            payload.format
        )));
    }
    payload.signed_bytes()?;
    Ok(payload)
}

pub(super) fn futures_sign(key: &LoadedKey, bytes: &[u8]) -> Result<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| ceremony_err(format!("starting a runtime: {e}")))?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    rt.block_on(key.signer.sign(bytes, &rng))
        .map_err(|e| ceremony_err(format!("signing with {}: {e}", key.location)))
}
