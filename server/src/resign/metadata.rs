//! The published metadata the re-signing job reads (as untrusted JSON: it
//! was checked by nobody on this server) and the successors it signs.

use super::{OnlineKey, ResignError};
use serde_json::{json, Map, Value};
use sha2::Digest;

fn bad(message: String) -> ResignError {
    ResignError::Metadata(message)
}

/// The publisher's fault rather than the server's.
fn malformed(e: ResignError) -> ResignError {
    match e {
        ResignError::Metadata(m) => ResignError::Malformed(m),
        other => other,
    }
}

/// A signed metadata file: its name and its `signed` object.
#[derive(Debug, Clone)]
pub struct Document {
    name: String,
    /// "published" (from the repository) or "uploaded" (from a
    /// publication): which one is wrong, in messages.
    origin: &'static str,
    signed: Map<String, Value>,
}

impl Document {
    /// A file of the published repository.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Document, ResignError> {
        Self::parse_from("published", name, bytes)
    }

    /// A file a publication uploaded: its problems are the publisher's
    /// ([`ResignError::Malformed`]), and it must be TUF metadata of `role`.
    pub fn parse_uploaded(name: &str, role: &str, bytes: &[u8]) -> Result<Document, ResignError> {
        let doc = Self::parse_from("uploaded", name, bytes).map_err(malformed)?;
        doc.check_well_formed(role).map_err(malformed)?;
        Ok(doc)
    }

    fn parse_from(origin: &'static str, name: &str, bytes: &[u8]) -> Result<Document, ResignError> {
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("{origin} {name} is not JSON: {e}")))?;
        let signed = doc
            .get("signed")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| bad(format!("{origin} {name} has no signed object")))?;
        if !doc.get("signatures").is_some_and(Value::is_array) {
            return Err(bad(format!("{origin} {name} has no signatures list")));
        }
        Ok(Document {
            name: name.to_owned(),
            origin,
            signed,
        })
    }

    /// The shape TUF requires of a timestamp or snapshot (section 4.4/4.5),
    /// checked before the server puts its signature on anything derived
    /// from it: `_type`, a major-1 `spec_version`, integer `version`, a
    /// valid `expires`, and `meta` entries each with an integer `version`
    /// (and, if given, an integer `length` and hex `hashes`).
    pub fn check_well_formed(&self, role: &str) -> Result<(), ResignError> {
        let what = format!("{} {}", self.origin, self.name);
        let ty = self.signed.get("_type").and_then(Value::as_str);
        if ty != Some(role) {
            return Err(bad(format!(
                "{what} has signed._type {ty:?}, expected {role:?}"
            )));
        }
        let spec = self
            .signed
            .get("spec_version")
            .and_then(Value::as_str)
            .unwrap_or("");
        if spec.split('.').next() != Some("1") {
            return Err(bad(format!(
                "{what} has spec_version {spec:?}; major version 1 is required"
            )));
        }
        self.version()?;
        self.expires()?;
        let meta = self
            .signed
            .get("meta")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(format!("{what} has no meta object")))?;
        if meta.is_empty() {
            return Err(bad(format!("{what} lists nothing in meta")));
        }
        if role == "timestamp" && !meta.contains_key("snapshot.json") {
            return Err(bad(format!("{what} has no meta[\"snapshot.json\"]")));
        }
        for (file, entry) in meta {
            let entry_bad = |detail: &str| bad(format!("{what}: meta[{file:?}] {detail}"));
            if entry.get("version").and_then(Value::as_u64).is_none() {
                return Err(entry_bad("has no integer version"));
            }
            if entry.get("length").is_some_and(|l| !l.is_u64()) {
                return Err(entry_bad("has a length that is not a non-negative integer"));
            }
            if let Some(hashes) = entry.get("hashes") {
                let ok = hashes.as_object().is_some_and(|h| {
                    h.values().all(|d| {
                        d.as_str().is_some_and(|d| {
                            !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit())
                        })
                    })
                });
                if !ok {
                    return Err(entry_bad("has hashes that are not hex digests"));
                }
            }
        }
        Ok(())
    }

    /// A snapshot's `meta`: file name (`targets.json`, ...) to version.
    pub fn meta_versions(&self) -> Result<Vec<(String, u64)>, ResignError> {
        let meta = self
            .signed
            .get("meta")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(format!("{} {} has no meta", self.origin, self.name)))?;
        meta.iter()
            .map(|(file, entry)| {
                entry
                    .get("version")
                    .and_then(Value::as_u64)
                    .map(|v| (file.clone(), v))
                    .ok_or_else(|| {
                        bad(format!(
                            "{} {}: meta[{file:?}] has no integer version",
                            self.origin, self.name
                        ))
                    })
            })
            .collect()
    }

    pub fn version(&self) -> Result<u64, ResignError> {
        self.signed
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                bad(format!(
                    "{} {} has no signed.version",
                    self.origin, self.name
                ))
            })
    }

    pub fn expires(&self) -> Result<chrono::DateTime<chrono::Utc>, ResignError> {
        self.signed
            .get("expires")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .ok_or_else(|| {
                bad(format!(
                    "{} {} has no valid signed.expires",
                    self.origin, self.name
                ))
            })
    }

    /// The `meta["snapshot.json"]` entry of a timestamp.
    fn snapshot_entry(&self) -> Result<&Map<String, Value>, ResignError> {
        self.signed
            .get("meta")
            .and_then(|m| m.get("snapshot.json"))
            .and_then(Value::as_object)
            .ok_or_else(|| {
                bad(format!(
                    "{} {} has no meta[\"snapshot.json\"]",
                    self.origin, self.name
                ))
            })
    }

    /// The snapshot version a timestamp names.
    pub fn snapshot_version(&self) -> Result<u64, ResignError> {
        self.snapshot_entry()?
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                bad(format!(
                    "{} {} names no snapshot version",
                    self.origin, self.name
                ))
            })
    }

    /// Replaces a timestamp's `meta["snapshot.json"]`.
    pub fn set_snapshot_meta(&mut self, entry: Value) -> Result<(), ResignError> {
        let meta = self
            .signed
            .get_mut("meta")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| bad(format!("{} {} has no meta", self.origin, self.name)))?;
        meta.insert("snapshot.json".to_owned(), entry);
        Ok(())
    }

    /// This document as `version` expiring at `expires`, everything else
    /// unchanged, signed by `key` under the key id root lists (`keyid`):
    /// the file, and the canonical bytes that were signed.
    pub async fn successor(
        &self,
        version: u64,
        expires: &str,
        keyid: &str,
        key: &OnlineKey,
    ) -> Result<(Vec<u8>, Vec<u8>), ResignError> {
        let mut signed = self.signed.clone();
        signed.insert("version".to_owned(), json!(version));
        signed.insert("expires".to_owned(), json!(expires));
        let signed = Value::Object(signed);
        let canonical = ota_common::tuf::canonicalize(&signed)
            .map_err(|e| bad(format!("{} has no canonical form: {e}", self.name)))?;
        let sig = key.sign(canonical.clone()).await?;
        let out = json!({
            "signed": signed,
            "signatures": [{"keyid": keyid, "sig": hex::encode(sig)}],
        });
        let file = serde_json::to_vec_pretty(&out).map_err(|e| bad(e.to_string()))?;
        Ok((file, canonical))
    }
}

/// The timestamp's description of a new snapshot file: its version, length
/// and the same hash algorithms the current entry lists (sha256 when none).
pub fn snapshot_meta(
    timestamp: &Document,
    version: u64,
    bytes: &[u8],
) -> Result<Value, ResignError> {
    let listed: Vec<String> = timestamp
        .snapshot_entry()?
        .get("hashes")
        .and_then(Value::as_object)
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default();
    let mut hashes = Map::new();
    for algorithm in &listed {
        let digest = match algorithm.as_str() {
            "sha256" => hex::encode(sha2::Sha256::digest(bytes)),
            "sha512" => hex::encode(sha2::Sha512::digest(bytes)),
            other => {
                return Err(bad(format!(
                    "timestamp.json hashes the snapshot with {other:?}, which the server cannot compute"
                )))
            }
        };
        hashes.insert(algorithm.clone(), json!(digest));
    }
    if hashes.is_empty() {
        hashes.insert(
            "sha256".to_owned(),
            json!(hex::encode(sha2::Sha256::digest(bytes))),
        );
    }
    Ok(json!({"version": version, "length": bytes.len(), "hashes": hashes}))
}

/// The newest published root.
#[derive(Debug)]
pub struct Root {
    version: u64,
    doc: Value,
}

impl Root {
    pub fn parse(version: u64, bytes: &[u8]) -> Result<Root, ResignError> {
        let doc = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("{version}.root.json is not JSON: {e}")))?;
        Ok(Root { version, doc })
    }

    /// The key id under which this root lists `key` for its role; an error
    /// naming the key and role when it does not (or the threshold is not 1).
    pub fn listed_keyid(&self, key: &OnlineKey) -> Result<String, ResignError> {
        let role = key.role();
        let not_listed = |detail: String| ResignError::NotListed {
            role,
            key_id: key.key_id().to_owned(),
            location: key.location().to_owned(),
            root: self.version,
            detail,
        };
        let Some(spec) = self.doc.pointer(&format!("/signed/roles/{role}")) else {
            return Err(not_listed(" (it has no such role)".to_owned()));
        };
        let threshold = spec.get("threshold").and_then(Value::as_u64).unwrap_or(0);
        let keyids: Vec<&str> = spec
            .get("keyids")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let found = keyids.iter().find(|id| {
            self.doc
                .pointer(&format!("/signed/keys/{id}"))
                .is_some_and(|k| key.is(id, k))
        });
        match found {
            None => Err(not_listed(format!(
                " (it lists {})",
                if keyids.is_empty() {
                    "no keys".to_owned()
                } else {
                    keyids.join(", ")
                }
            ))),
            Some(_) if threshold != 1 => Err(not_listed(format!(
                " with threshold 1 (the threshold is {threshold}; one online key needs 1)"
            ))),
            Some(id) => Ok((*id).to_owned()),
        }
    }
}
