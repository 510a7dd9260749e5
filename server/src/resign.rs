//! Online re-signing of `timestamp.json` (`[online_signing]` in the config).
//!
//! The timestamp role exists to expire quickly (a frozen mirror is noticed in
//! hours, not months), which means it must be re-signed often: a job no
//! release engineer should run by hand. With an online key configured, a
//! background task checks the published timestamp and, once it expires
//! within `resign_before`, publishes version + 1 with the same `meta` (same
//! snapshot) and a new expiry `timestamp_expiry` from now, signed with the
//! online key.
//!
//! * The key must be listed by the newest root for the timestamp role and
//!   that role's threshold must be 1; the signature carries the key id root
//!   lists for that public key (which is what clients look up).
//! * The signed bytes are the OLPC canonical JSON of `signed`
//!   ([`ota_common::tuf::canonicalize`], the very encoder clients verify with).
//! * The new file goes through a publication commit, under the same locks as
//!   publications (this instance's commit lock, then PostgreSQL's advisory
//!   lock shared by all instances), and the decision whether to re-sign is
//!   taken under them: re-signing never races a publication, and of several
//!   instances only the first one re-signs (the others then see a fresh
//!   timestamp).
//! * Keys: PKCS#8 PEM files holding an ed25519 or ECDSA P-256 key (what
//!   `ota-repo init` writes). PKCS#11 URIs are refused at start-up (not
//!   supported for the online key yet).

use crate::db::{Db, DbError};
use crate::storage::{Storage, StorageError};
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use base64::Engine;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default lifetime of a re-signed timestamp.
pub const DEFAULT_TIMESTAMP_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Default margin: re-sign when the published timestamp expires within this.
pub const DEFAULT_RESIGN_BEFORE: Duration = Duration::from_secs(6 * 3600);
/// Most root versions probed to find the newest.
const MAX_ROOT_VERSIONS: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ResignError {
    #[error("online signing key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("cannot re-sign timestamp.json: {0}")]
    Metadata(String),
    #[error("re-signing timestamp.json: {0}")]
    Storage(#[from] StorageError),
    #[error("re-signing timestamp.json: {0}")]
    Db(#[from] DbError),
}

/// The resolved `[online_signing]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineSigning {
    pub key: PathBuf,
    pub timestamp_expiry: Duration,
    pub resign_before: Duration,
}

/// `[online_signing]` as written in the config file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineSigningFile {
    key: String,
    timestamp_expiry: Option<String>,
    resign_before: Option<String>,
}

impl OnlineSigningFile {
    pub fn resolve(self) -> Result<OnlineSigning, String> {
        if self.key.starts_with("pkcs11:") {
            return Err(
                "key: PKCS#11 URIs are not supported for the online key yet; \
                 give a PKCS#8 PEM file (ed25519 or ECDSA P-256)"
                    .to_owned(),
            );
        }
        if self.key.is_empty() {
            return Err("key is empty".to_owned());
        }
        let duration = |name: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(text) => parse_duration(&text).map_err(|e| format!("{name}: {e}")),
        };
        let timestamp_expiry = duration(
            "timestamp_expiry",
            self.timestamp_expiry,
            DEFAULT_TIMESTAMP_EXPIRY,
        )?;
        let resign_before = duration("resign_before", self.resign_before, DEFAULT_RESIGN_BEFORE)?;
        if resign_before >= timestamp_expiry {
            return Err(format!(
                "resign_before ({}s) must be shorter than timestamp_expiry ({}s), \
                 or every check would re-sign",
                resign_before.as_secs(),
                timestamp_expiry.as_secs()
            ));
        }
        Ok(OnlineSigning {
            key: PathBuf::from(self.key),
            timestamp_expiry,
            resign_before,
        })
    }
}

/// `90s`, `30m`, `12h`, `1d`, `2w`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("invalid duration {text:?}: expected e.g. 90s, 30m, 12h, 1d, 2w");
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(invalid()),
    };
    // A hundred years is past anything meaningful and far from overflow.
    let secs = n
        .checked_mul(factor)
        .filter(|s| (1..=100 * 366 * 86_400).contains(s))
        .ok_or_else(invalid)?;
    Ok(Duration::from_secs(secs))
}

/// The online private key.
enum OnlineKey {
    Ed25519(Ed25519KeyPair),
    EcdsaP256(EcdsaKeyPair),
}

impl std::fmt::Debug for OnlineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnlineKey::Ed25519(_) => "OnlineKey(ed25519)",
            OnlineKey::EcdsaP256(_) => "OnlineKey(ecdsa-p256)",
        })
    }
}

impl OnlineKey {
    fn load(path: &std::path::Path) -> Result<OnlineKey, ResignError> {
        let err = |message: String| ResignError::Key {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let body: String = text
            .lines()
            .skip_while(|l| l.trim() != "-----BEGIN PRIVATE KEY-----")
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .map(str::trim)
            .collect();
        if body.is_empty() {
            return Err(err(
                "no \"BEGIN PRIVATE KEY\" (PKCS#8 PEM) block in it".to_owned()
            ));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| err(format!("bad base64 in the PEM block: {e}")))?;
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            return Ok(OnlineKey::Ed25519(k));
        }
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der) {
            return Ok(OnlineKey::EcdsaP256(k));
        }
        Err(err(
            "not an ed25519 or ECDSA P-256 PKCS#8 key (RSA is not supported online)".to_owned(),
        ))
    }

    /// Whether the TUF key object `key` (from root) is this key's public half.
    fn is_listed_as(&self, key: &Value) -> bool {
        let keytype = key.get("keytype").and_then(Value::as_str).unwrap_or("");
        let Some(public) = key.pointer("/keyval/public").and_then(Value::as_str) else {
            return false;
        };
        match self {
            OnlineKey::Ed25519(k) => {
                keytype == "ed25519"
                    && hex::decode(public).ok().as_deref() == Some(k.public_key().as_ref())
            }
            OnlineKey::EcdsaP256(k) => {
                if !matches!(keytype, "ecdsa" | "ecdsa-sha2-nistp256") {
                    return false;
                }
                // The uncompressed point; in a SubjectPublicKeyInfo (PEM or
                // hex DER) it is the last 65 bytes.
                let point = k.public_key().as_ref();
                let bytes = if public.trim_start().starts_with("-----BEGIN") {
                    let b64: String = public
                        .lines()
                        .filter(|l| !l.starts_with("-----"))
                        .map(str::trim)
                        .collect();
                    base64::engine::general_purpose::STANDARD.decode(b64).ok()
                } else {
                    hex::decode(public).ok()
                };
                bytes.is_some_and(|b| b.ends_with(point))
            }
        }
    }

    /// The signature over `message`, hex (DER for ECDSA), as TUF carries it.
    fn sign(&self, message: &[u8]) -> Result<String, ResignError> {
        match self {
            OnlineKey::Ed25519(k) => Ok(hex::encode(k.sign(message).as_ref())),
            OnlineKey::EcdsaP256(k) => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                let sig = k
                    .sign(&rng, message)
                    .map_err(|_| ResignError::Metadata("ECDSA signing failed".to_owned()))?;
                Ok(hex::encode(sig.as_ref()))
            }
        }
    }
}

/// The re-signing job of one server.
#[derive(Debug)]
pub struct Resigner {
    settings: OnlineSigning,
    key: OnlineKey,
    storage: Arc<Storage>,
    db: Db,
}

impl Resigner {
    /// Loads the key (a bad key stops the server from starting).
    pub fn new(
        settings: &OnlineSigning,
        storage: Arc<Storage>,
        db: Db,
    ) -> Result<Resigner, ResignError> {
        let key = OnlineKey::load(&settings.key)?;
        tracing::info!(key = %settings.key.display(), ?key, "online timestamp signing enabled");
        Ok(Resigner {
            settings: settings.clone(),
            key,
            storage,
            db,
        })
    }

    /// How often the published timestamp is checked: often enough that the
    /// margin is never missed by much, rarely enough to cost nothing.
    fn check_interval(&self) -> Duration {
        (self.settings.resign_before / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Runs [`Self::resign_if_due`] forever (until aborted).
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.check_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_error = String::new();
            loop {
                tick.tick().await;
                match self.resign_if_due().await {
                    Ok(Some(version)) => {
                        last_error.clear();
                        tracing::info!(version, "timestamp.json re-signed with the online key");
                    }
                    Ok(None) => last_error.clear(),
                    Err(e) => {
                        // Once per distinct problem, not at every tick.
                        let text = e.to_string();
                        if text != last_error {
                            tracing::error!("{text}");
                            last_error = text;
                        }
                    }
                }
            }
        })
    }

    /// Re-signs `timestamp.json` if it expires within `resign_before`;
    /// returns the new version, or `None` when nothing was due (or there is
    /// no repository yet).
    pub async fn resign_if_due(&self) -> Result<Option<u64>, ResignError> {
        let local = self.storage.lock_commits().await;
        let shared = self.db.lock_publications().await?;
        let result = async {
            let Some(bytes) = self.read_metadata("timestamp.json").await? else {
                return Ok(None);
            };
            let now = chrono::Utc::now();
            let Some(new) = self.next_timestamp(&bytes, now).await? else {
                return Ok(None);
            };
            let (version, content) = new;
            let id = {
                let storage = Arc::clone(&self.storage);
                tokio::task::spawn_blocking(move || storage.create_publication())
                    .await
                    .map_err(|e| ResignError::Metadata(format!("background task: {e}")))??
            };
            self.storage
                .stage_metadata(&id, "timestamp.json", content.into())
                .await?;
            self.storage.commit_locked(&local, &id).await?;
            Ok(Some(version))
        }
        .await;
        shared.release().await;
        drop(local);
        result
    }

    /// The re-signed successor of the timestamp `bytes`, if due.
    async fn next_timestamp(
        &self,
        bytes: &[u8],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(u64, Vec<u8>)>, ResignError> {
        let bad = |m: String| ResignError::Metadata(m);
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("published timestamp.json is not JSON: {e}")))?;
        let mut signed = doc
            .get("signed")
            .cloned()
            .filter(Value::is_object)
            .ok_or_else(|| bad("published timestamp.json has no signed object".to_owned()))?;
        let expires = signed
            .get("expires")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .ok_or_else(
                || bad("published timestamp.json has no valid signed.expires".to_owned()),
            )?;
        let margin = chrono::Duration::from_std(self.settings.resign_before)
            .map_err(|e| bad(e.to_string()))?;
        if expires.with_timezone(&chrono::Utc) - now > margin {
            return Ok(None);
        }
        let version = signed
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("published timestamp.json has no signed.version".to_owned()))?;
        let next = version
            .checked_add(1)
            .ok_or_else(|| bad("timestamp version overflow".to_owned()))?;
        let keyid = self.listed_keyid().await?;
        let lifetime = chrono::Duration::from_std(self.settings.timestamp_expiry)
            .map_err(|e| bad(e.to_string()))?;
        let new_expiry = (now + lifetime).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if let Some(obj) = signed.as_object_mut() {
            obj.insert("version".to_owned(), json!(next));
            obj.insert("expires".to_owned(), json!(new_expiry));
        }
        let canonical = ota_common::tuf::canonicalize(&signed)
            .map_err(|e| bad(format!("timestamp has no canonical form: {e}")))?;
        let sig = self.key.sign(&canonical)?;
        let out = json!({
            "signed": signed,
            "signatures": [{"keyid": keyid, "sig": sig}],
        });
        let content = serde_json::to_vec_pretty(&out).map_err(|e| bad(e.to_string()))?;
        Ok(Some((next, content)))
    }

    /// The key id the newest root lists for our key in the timestamp role.
    async fn listed_keyid(&self) -> Result<String, ResignError> {
        let bad = |m: String| ResignError::Metadata(m);
        let (n, root) = self.newest_root().await?;
        let root: Value = serde_json::from_slice(&root)
            .map_err(|e| bad(format!("{n}.root.json is not JSON: {e}")))?;
        let role = root
            .pointer("/signed/roles/timestamp")
            .ok_or_else(|| bad(format!("{n}.root.json has no timestamp role")))?;
        let threshold = role.get("threshold").and_then(Value::as_u64).unwrap_or(0);
        if threshold != 1 {
            return Err(bad(format!(
                "{n}.root.json sets the timestamp threshold to {threshold}; one online key needs 1"
            )));
        }
        let keyids = role
            .get("keyids")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        keyids
            .iter()
            .filter_map(Value::as_str)
            .find(|id| {
                root.pointer(&format!("/signed/keys/{id}"))
                    .is_some_and(|k| self.key.is_listed_as(k))
            })
            .map(str::to_owned)
            .ok_or_else(|| {
                bad(format!(
                    "the online key {} is not a timestamp key of {n}.root.json",
                    self.settings.key.display()
                ))
            })
    }

    /// The highest `N.root.json` published, by probing 1, 2, ... (the way
    /// clients walk them).
    async fn newest_root(&self) -> Result<(u64, Vec<u8>), ResignError> {
        let mut newest = None;
        for n in 1..=MAX_ROOT_VERSIONS {
            match self.read_metadata(&format!("{n}.root.json")).await? {
                Some(bytes) => newest = Some((n, bytes)),
                None => break,
            }
        }
        newest.ok_or_else(|| ResignError::Metadata("no 1.root.json published".to_owned()))
    }

    /// Through the storage layer: the directory or the object store.
    async fn read_metadata(&self, name: &str) -> Result<Option<Vec<u8>>, ResignError> {
        Ok(self.storage.read_metadata(name).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21_600)));
        for bad in ["", "s", "0s", "5", "1y", "-1h", "99999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let file = |key: &str, e: Option<&str>, b: Option<&str>| OnlineSigningFile {
            key: key.to_owned(),
            timestamp_expiry: e.map(str::to_owned),
            resign_before: b.map(str::to_owned),
        };
        let ok = file("/k.pem", None, None).resolve().expect("defaults");
        assert_eq!(ok.timestamp_expiry, DEFAULT_TIMESTAMP_EXPIRY);
        assert!(file("pkcs11:token=x", None, None)
            .resolve()
            .expect_err("pkcs11")
            .contains("PKCS#11"));
        assert!(file("/k.pem", Some("1h"), Some("2h"))
            .resolve()
            .expect_err("margin")
            .contains("resign_before"));
    }
}
