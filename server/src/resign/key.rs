//! One online signing key, a PKCS#8 file or a key inside a PKCS#11 token,
//! opened through `ota-repo`'s own key code ([`KeyRef`]) so the server and
//! the release tool accept exactly the same key references (RFC 7512 URIs,
//! PIN from `pin-source=file:PATH` or env `OTA_PKCS11_PIN`, never in the
//! URI) and produce exactly the same signatures (ECDSA hashed on the host,
//! raw r||s turned into DER; RSASSA-PSS SHA-256; pure Ed25519).
//!
//! PKCS#11 calls block, so every open and every signature runs on a
//! blocking thread. One session stays open between signatures (a login per
//! signature would be slow on real HSMs and fill their audit logs); it sits
//! behind a mutex, which also serializes signing. When a signature fails
//! (token unplugged, HSM restarted, session closed) the session is dropped,
//! re-opened once and the signature retried; a re-opened key must still be
//! the same key (same key id), or nothing is signed.

use super::ResignError;
use ota_signing::key_ref::{KeyRef, LoadedKey};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// An online key, opened and checked.
pub struct OnlineKey {
    /// `timestamp` or `snapshot`: for messages.
    role: &'static str,
    source: KeyRef,
    /// "PKCS#11 token X, object Y" or "software key file PATH ..." (no PIN).
    location: String,
    /// The TUF key id of the public key (sha256 of its canonical JSON).
    key_id: String,
    /// The public key as TUF writes it in root (`keytype`, `scheme`, `keyval`).
    public: Value,
    /// The open session (`None` after a failure, until re-opened).
    loaded: Arc<Mutex<Option<LoadedKey>>>,
}

impl std::fmt::Debug for OnlineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineKey")
            .field("role", &self.role)
            .field("location", &self.location)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl OnlineKey {
    /// Opens the key (logs in to the token) and reads its public key.
    pub async fn open(role: &'static str, source: &KeyRef) -> Result<OnlineKey, ResignError> {
        let location = source.describe(None);
        let src = source.clone();
        let loaded = run_blocking(move || src.open(None))
            .await?
            .map_err(|e| ResignError::Key {
                role,
                location: location.clone(),
                message: e.to_string(),
            })?;
        let public =
            serde_json::to_value(loaded.signer.tuf_key()).map_err(|e| ResignError::Key {
                role,
                location: location.clone(),
                message: format!("its public key cannot be serialised: {e}"),
            })?;
        Ok(OnlineKey {
            role,
            source: source.clone(),
            location,
            key_id: loaded.key_id.clone(),
            public,
            loaded: Arc::new(Mutex::new(Some(loaded))),
        })
    }

    pub fn role(&self) -> &'static str {
        self.role
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `id` / `key` (an entry of root's `keys`) is this key.
    pub fn is(&self, id: &str, key: &Value) -> bool {
        if id == self.key_id {
            return true;
        }
        let field = |v: &Value, p: &str| v.pointer(p).cloned();
        ["/keytype", "/scheme", "/keyval/public"]
            .iter()
            .all(|p| field(key, p).is_some() && field(key, p) == field(&self.public, p))
    }

    /// The signature over `message`, as the raw bytes TUF hex-encodes.
    pub async fn sign(&self, message: Vec<u8>) -> Result<Vec<u8>, ResignError> {
        let loaded = Arc::clone(&self.loaded);
        let source = self.source.clone();
        let role = self.role;
        let location = self.location.clone();
        let key_id = self.key_id.clone();
        run_blocking(move || {
            let err = |message: String| ResignError::Key {
                role,
                location: location.clone(),
                message,
            };
            let handle = tokio::runtime::Handle::current();
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let mut guard = loaded
                .lock()
                .map_err(|_| err("signing lock poisoned".to_owned()))?;
            if let Some(key) = guard.as_ref() {
                match handle.block_on(key.signer.sign(&message, &rng)) {
                    Ok(sig) => return Ok(sig),
                    Err(e) => {
                        tracing::warn!(
                            role,
                            key = %location,
                            "signing failed ({e}); re-opening the key (token session)"
                        );
                        *guard = None;
                    }
                }
            }
            let key = source
                .open(None)
                .map_err(|e| err(format!("re-opening failed: {e}")))?;
            if key.key_id != key_id {
                return Err(err(format!(
                    "re-opened, it is another key (key id {}, expected {key_id}); not signing",
                    key.key_id
                )));
            }
            tracing::info!(role, key = %location, "key re-opened");
            let sig = handle
                .block_on(key.signer.sign(&message, &rng))
                .map_err(|e| err(format!("signing failed after re-opening: {e}")))?;
            *guard = Some(key);
            Ok(sig)
        })
        .await?
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ResignError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ResignError::Metadata(format!("background signing task: {e}")))
}
