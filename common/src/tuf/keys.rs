//! Public keys as TUF lists them, and signature verification.
//!
//! Supported (keytype / scheme):
//! * `ed25519` / `ed25519`: `keyval.public` is 32 bytes in hex.
//! * `ecdsa` or `ecdsa-sha2-nistp256` / `ecdsa-sha2-nistp256`: `keyval.public`
//!   is a PEM SubjectPublicKeyInfo (or a hex SEC1 point); signatures are DER.
//! * `rsa` / `rsassa-pss-sha256`: `keyval.public` is a PEM SubjectPublicKeyInfo
//!   (or PKCS#1) key; RSASSA-PSS with SHA-256 and MGF1-SHA-256 verifies with
//!   any salt length (the salt is recovered from the encoded message).
//!
//! A key of another type or scheme, or one that does not parse, is kept as
//! [`PublicKey::Unusable`]: its signatures never count, but metadata listing
//! it still loads (a repository may list keys for newer clients).

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Smallest and largest RSA moduli accepted, in bits.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

// PartialEq: the delegation listing tells two delegations of one role
// apart by the keys they trust (`client::EdgeKeys`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PublicKey {
    Ed25519(Vec<u8>),
    /// Uncompressed SEC1 point.
    EcdsaP256(Vec<u8>),
    RsaPss(RsaPublicKey),
    /// Unknown type or scheme, or unparseable: never verifies anything.
    Unusable(String),
}

impl PublicKey {
    /// Parses a key object `{"keytype", "scheme", "keyval": {"public"}}`.
    /// Never fails: what cannot be used becomes `Unusable` with the reason.
    pub(crate) fn from_json(v: &Value) -> PublicKey {
        match Self::try_from_json(v) {
            Ok(k) => k,
            Err(reason) => PublicKey::Unusable(reason),
        }
    }

    fn try_from_json(v: &Value) -> Result<PublicKey, String> {
        let keytype = v
            .get("keytype")
            .and_then(Value::as_str)
            .ok_or("no keytype")?;
        let scheme = v.get("scheme").and_then(Value::as_str).ok_or("no scheme")?;
        let public = v
            .get("keyval")
            .and_then(|kv| kv.get("public"))
            .and_then(Value::as_str)
            .ok_or("no keyval.public")?;
        match (keytype, scheme) {
            ("ed25519", "ed25519") => {
                let bytes = hex::decode(public).map_err(|e| format!("ed25519 key: {e}"))?;
                if bytes.len() != 32 {
                    return Err(format!("ed25519 key of {} bytes", bytes.len()));
                }
                Ok(PublicKey::Ed25519(bytes))
            }
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                parse_p256(public).map(PublicKey::EcdsaP256)
            }
            ("rsa", "rsassa-pss-sha256") => parse_rsa(public).map(PublicKey::RsaPss),
            _ => Err(format!(
                "unsupported key type {keytype:?} with scheme {scheme:?}"
            )),
        }
    }

    /// Whether `sig` is this key's signature of `msg`.
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::Ed25519(k) => UnparsedPublicKey::new(&ED25519, k).verify(msg, sig).is_ok(),
            PublicKey::EcdsaP256(k) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, k)
                .verify(msg, sig)
                .is_ok(),
            PublicKey::RsaPss(k) => verify_pss_sha256_any_salt(k, msg, sig),
            PublicKey::Unusable(_) => false,
        }
    }
}

fn parse_p256(public: &str) -> Result<Vec<u8>, String> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::DecodePublicKey;
    let key = if public.trim_start().starts_with("-----BEGIN") {
        p256::PublicKey::from_public_key_pem(public.trim())
            .map_err(|e| format!("ecdsa PEM key: {e}"))?
    } else {
        let bytes = hex::decode(public).map_err(|e| format!("ecdsa hex key: {e}"))?;
        p256::PublicKey::from_sec1_bytes(&bytes).map_err(|e| format!("ecdsa key: {e}"))?
    };
    Ok(key.to_encoded_point(false).as_bytes().to_vec())
}

fn parse_rsa(public: &str) -> Result<RsaPublicKey, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    let (label, der) = pem_decode(public)?;
    let key = match label.as_str() {
        "PUBLIC KEY" => {
            RsaPublicKey::from_public_key_der(&der).map_err(|e| format!("rsa SPKI key: {e}"))?
        }
        "RSA PUBLIC KEY" => {
            RsaPublicKey::from_pkcs1_der(&der).map_err(|e| format!("rsa PKCS#1 key: {e}"))?
        }
        other => return Err(format!("rsa key in PEM block {other:?}")),
    };
    let bits = key.n().bits();
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(format!(
            "rsa key of {bits} bits (accepted: {RSA_MIN_BITS} to {RSA_MAX_BITS})"
        ));
    }
    Ok(key)
}

/// Decodes one PEM block: its label and DER body.
fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), String> {
    use base64::Engine;
    let mut lines = pem.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().ok_or("empty PEM")?;
    let label = first
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or("not a PEM block")?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if line == end {
            ended = true;
            break;
        }
        body.push_str(line);
    }
    if !ended {
        return Err("PEM block without its END line".into());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("PEM base64: {e}"))?;
    Ok((label, der))
}

const SHA256_LEN: usize = 32;

/// RSASSA-PSS-VERIFY (RFC 8017 8.1.2 and 9.1.2) with SHA-256, MGF1-SHA-256
/// and the salt length taken from the encoded message, as Go's
/// `PSSSaltLengthAuto` does: signers differ in the salt length they use
/// (32, or the maximum), and any length is as secure to verify.
fn verify_pss_sha256_any_salt(key: &RsaPublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let n = key.n();
    let k = key.size();
    if sig.len() != k {
        return false;
    }
    let s = BigUint::from_bytes_be(sig);
    if &s >= n {
        return false;
    }
    let m = s.modpow(key.e(), n);
    let mod_bits = n.bits();
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let m_bytes = m.to_bytes_be();
    if m_bytes.len() > em_len {
        return false;
    }
    // I2OSP(m, emLen): left-pad with zeros.
    let mut em = vec![0u8; em_len - m_bytes.len()];
    em.extend_from_slice(&m_bytes);
    emsa_pss_verify_auto(&Sha256::digest(msg), &em, em_bits)
}

fn emsa_pss_verify_auto(m_hash: &[u8], em: &[u8], em_bits: usize) -> bool {
    let em_len = em.len();
    if em_len < SHA256_LEN + 2 || em[em_len - 1] != 0xbc {
        return false;
    }
    let db_len = em_len - SHA256_LEN - 1;
    let (masked_db, rest) = em.split_at(db_len);
    let h = &rest[..SHA256_LEN];
    // The leftmost 8*emLen - emBits bits of maskedDB must be zero.
    let unused_bits = 8 * em_len - em_bits;
    let top_mask: u8 = if unused_bits == 0 {
        0xff
    } else {
        0xff >> unused_bits
    };
    if masked_db[0] & !top_mask != 0 {
        return false;
    }
    let mut db = mgf1_sha256(h, db_len);
    for (d, m) in db.iter_mut().zip(masked_db) {
        *d ^= m;
    }
    db[0] &= top_mask;
    // DB = PS (zeros) || 0x01 || salt: the separator marks where the salt starts.
    let Some(sep) = db.iter().position(|&b| b != 0) else {
        return false;
    };
    if db[sep] != 0x01 {
        return false;
    }
    let salt = &db[sep + 1..];
    let mut hasher = Sha256::new();
    hasher.update([0u8; 8]);
    hasher.update(m_hash);
    hasher.update(salt);
    hasher.finalize()[..] == *h
}

fn mgf1_sha256(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + SHA256_LEN);
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut hasher = Sha256::new();
        hasher.update(seed);
        hasher.update(counter.to_be_bytes());
        out.extend_from_slice(&hasher.finalize());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}
