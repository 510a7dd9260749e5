//! Where a signing key lives, as recorded in repo.json: a software key file
//! (a path, development only) or a key inside a PKCS#11 token (a `pkcs11:`
//! URI without a PIN). Both are plain strings in repo.json, so older
//! repositories that list only paths still load.

use crate::error::{Result, SigningError};
use crate::keys;
use crate::pkcs11::Pkcs11Uri;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tough::schema::key::Key;
use tough::sign::Sign;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A PKCS#8 PEM file, relative to the repository directory or absolute.
    File(PathBuf),
    Pkcs11(Pkcs11Uri),
}

impl FromStr for KeyRef {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with("pkcs11:") {
            Ok(KeyRef::Pkcs11(s.parse()?))
        } else if s.is_empty() {
            Err(SigningError::InvalidArgument(
                "empty key reference: expected a key file path or a pkcs11: URI".to_owned(),
            ))
        } else {
            Ok(KeyRef::File(PathBuf::from(s)))
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::File(p) => write!(f, "{}", p.display()),
            KeyRef::Pkcs11(u) => write!(f, "{u}"),
        }
    }
}

impl Serialize for KeyRef {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for KeyRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A key opened for signing, with what the audit log and errors need.
pub struct LoadedKey {
    pub key_id: String,
    /// Human description of where the key lives.
    pub location: String,
    pub signer: Box<dyn Sign>,
}

impl fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedKey")
            .field("key_id", &self.key_id)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl KeyRef {
    /// A key file's path: relative ones are relative to `base` (the
    /// repository directory) when there is one.
    fn file_path(p: &Path, base: Option<&Path>) -> PathBuf {
        base.map(|b| b.join(p)).unwrap_or_else(|| p.to_owned())
    }

    /// "PKCS#11 token X, object Y" or "software key file PATH (development only)".
    pub fn describe(&self, base: Option<&Path>) -> String {
        match self {
            KeyRef::File(p) => {
                let path = Self::file_path(p, base);
                format!("software key file {} (development only)", path.display())
            }
            KeyRef::Pkcs11(u) => u.describe(),
        }
    }

    /// Opens the key for signing (reads the file, or logs in to the token).
    pub fn open(&self, base: Option<&Path>) -> Result<LoadedKey> {
        let signer: Box<dyn Sign> = match self {
            KeyRef::File(p) => keys::load_signer(&Self::file_path(p, base))?,
            KeyRef::Pkcs11(u) => Box::new(u.signer()?),
        };
        Ok(LoadedKey {
            key_id: keys::key_id(&signer.tuf_key())?,
            location: self.describe(base),
            signer,
        })
    }

    /// The public key (a token's public key object is read without a PIN).
    pub fn public_key(&self, base: Option<&Path>) -> Result<Key> {
        match self {
            KeyRef::File(_) => Ok(self.open(base)?.signer.tuf_key()),
            KeyRef::Pkcs11(u) => u.public_key(),
        }
    }
}
