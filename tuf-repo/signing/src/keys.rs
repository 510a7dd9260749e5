//! Software signing keys: generation with aws-lc-rs, PEM (PKCS#8) files with
//! mode 0600, and a `tough` key source that reads them.
//!
//! tough's own `LocalKeySource` only recognises RSA keys in PEM form (it
//! expects Ed25519 and ECDSA keys as raw DER), so [`PemKeySource`] removes
//! the PEM armour and hands the DER to tough's `parse_keypair`, which then
//! recognises all three types. Key material is never printed or logged.

use crate::error::{Result, SigningError};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tough::key_source::KeySource;
use tough::schema::key::Key;
use tough::sign::{parse_keypair, Sign};

const PEM_LABEL: &str = "PRIVATE KEY";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    #[default]
    Ed25519,
    /// ECDSA on NIST P-256 with SHA-256 (TUF keytype "ecdsa", scheme "ecdsa-sha2-nistp256").
    Ecdsa,
    /// RSA 3072 with RSASSA-PSS SHA-256 (TUF keytype "rsa", scheme "rsassa-pss-sha256").
    Rsa,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Ecdsa => "ecdsa",
            KeyType::Rsa => "rsa",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ed25519" => Ok(KeyType::Ed25519),
            "ecdsa" => Ok(KeyType::Ecdsa),
            "rsa" => Ok(KeyType::Rsa),
            other => Err(SigningError::InvalidArgument(format!(
                "unknown key type {other:?}: expected ed25519, ecdsa or rsa"
            ))),
        }
    }
}

/// Generates a private key and returns it as a PKCS#8 PEM document.
pub fn generate_pem(key_type: KeyType) -> Result<String> {
    let failed = |_| SigningError::KeyGeneration {
        key_type: key_type.as_str(),
    };
    let der: Vec<u8> = match key_type {
        KeyType::Ed25519 => Ed25519KeyPair::generate()
            .and_then(|k| k.to_pkcs8v1())
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        KeyType::Ecdsa => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .and_then(|k| k.to_pkcs8v1())
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        KeyType::Rsa => {
            let key = RsaKeyPair::generate(KeySize::Rsa3072).map_err(failed)?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = key.as_der().map_err(failed)?;
            der.as_ref().to_vec()
        }
    };
    Ok(pem_encode(&der))
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {PEM_LABEL}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    out
}

/// The DER inside a `PRIVATE KEY` PEM document.
fn pem_decode(text: &str) -> std::result::Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("not a PEM file with a \"{PEM_LABEL}\" (PKCS#8) block"))?;
    let body = &text[start + begin.len()..];
    let stop = body
        .find(&end)
        .ok_or_else(|| format!("PEM block has no \"{end}\" line"))?;
    let b64: String = body[..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("PEM body is not valid base64: {e}"))
}

/// Reads and parses a key file into a tough signer.
pub fn load_signer(path: &Path) -> Result<Box<dyn Sign>> {
    let bytes = std::fs::read(path).map_err(|e| SigningError::Key {
        path: path.to_owned(),
        detail: format!("cannot read: {e}"),
    })?;
    parse_signer(&bytes).map_err(|detail| SigningError::Key {
        path: path.to_owned(),
        detail,
    })
}

fn parse_signer(bytes: &[u8]) -> std::result::Result<Box<dyn Sign>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not a text (PEM) file".to_owned())?;
    let der = pem_decode(text)?;
    // tough recognises Ed25519 and ECDSA PKCS#8 as DER, RSA PKCS#8 as PEM.
    if let Ok(k) = parse_keypair(&der) {
        return Ok(Box::new(k));
    }
    parse_keypair(bytes)
        .map(|k| Box::new(k) as Box<dyn Sign>)
        .map_err(|_| "not an Ed25519, ECDSA P-256 or RSA PKCS#8 private key".to_owned())
}

/// The public TUF key of a key file.
pub fn public_key(path: &Path) -> Result<Key> {
    Ok(load_signer(path)?.tuf_key())
}

/// Largest public key file read (an RSA-4096 key is under 1 KiB of JSON).
const MAX_PUBLIC_KEY_FILE: u64 = 64 * 1024;

/// The TUF JSON of a public key (`{"keytype":..,"scheme":..,"keyval":{"public":..}}`,
/// as root and targets metadata list it): what `key export-pub` writes and
/// `delegate --key-pub` reads, so a key holder hands over only that.
pub fn public_key_json(key: &Key) -> Result<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(key)
        .map_err(|e| SigningError::Inconsistent(format!("serializing a public key: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Reads a public key file in the TUF JSON format of [`public_key_json`].
pub fn read_public_key(path: &Path) -> Result<Key> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(SigningError::io(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_PUBLIC_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(SigningError::io(path))?;
    if bytes.len() as u64 > MAX_PUBLIC_KEY_FILE {
        return Err(SigningError::InvalidArgument(format!(
            "{}: larger than {MAX_PUBLIC_KEY_FILE} bytes, not a public key file",
            path.display()
        )));
    }
    let key: Key = serde_json::from_slice(&bytes).map_err(|e| {
        SigningError::InvalidArgument(format!(
            "{}: not a TUF public key (expected JSON like {{\"keytype\":\"ed25519\",\"scheme\":\"ed25519\",\"keyval\":{{\"public\":\"<hex>\"}}}}, as `ota-repo key export-pub` writes): {e}",
            path.display()
        ))
    })?;
    Ok(key)
}

/// TUF key id (sha256 of the canonical JSON of the public key), as hex.
pub fn key_id(key: &Key) -> Result<String> {
    key.key_id()
        .map(|id| hex::encode(&*id))
        .map_err(|e| SigningError::Inconsistent(format!("computing a key id: {e}")))
}

/// `keytype/scheme` of a public key, as written in root metadata.
pub fn describe(key: &Key) -> String {
    let v = serde_json::to_value(key).unwrap_or_default();
    format!(
        "{}/{}",
        v.get("keytype").and_then(|s| s.as_str()).unwrap_or("?"),
        v.get("scheme").and_then(|s| s.as_str()).unwrap_or("?")
    )
}

/// A PKCS#8 PEM key file, read each time tough asks for a signer so the
/// private key is held in memory only while signing.
#[derive(Debug, Clone)]
pub struct PemKeySource {
    pub path: PathBuf,
}

#[tough::async_trait]
impl KeySource for PemKeySource {
    async fn as_sign(
        &self,
    ) -> std::result::Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>>
    {
        Ok(load_signer(&self.path)?)
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err(Box::new(SigningError::Key {
            path: self.path.clone(),
            detail: "ota-repo never rewrites key files through tough".to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_type_parses_back_with_the_right_scheme() {
        for (kt, expected) in [
            (KeyType::Ed25519, "ed25519/ed25519"),
            (KeyType::Ecdsa, "ecdsa/ecdsa-sha2-nistp256"),
            (KeyType::Rsa, "rsa/rsassa-pss-sha256"),
        ] {
            let pem = generate_pem(kt).expect("generate");
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let signer = parse_signer(pem.as_bytes()).expect("parse");
            assert_eq!(describe(&signer.tuf_key()), expected, "{kt}");
        }
    }

    #[test]
    fn rejects_garbage_keys() {
        assert!(parse_signer(b"hello").is_err());
        assert!(
            parse_signer(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
        assert!(parse_signer(&[0xff, 0xfe]).is_err());
    }
}
