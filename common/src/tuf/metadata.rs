//! Signed metadata: the envelope, signature thresholds and typed views of
//! the four top-level roles and of delegations.
//!
//! `signed` is kept as a [`serde_json::Value`] so that the canonical bytes
//! the signatures cover include fields this client does not know; the typed
//! views are read from it afterwards.

use super::canonical::canonicalize;
use super::keys::PublicKey;
use super::TufError;
use crate::hash::Digests;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A parsed `{"signed": ..., "signatures": [...]}` document.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub role: String,
    pub signed: Value,
    canonical: Vec<u8>,
    signatures: Vec<(String, String)>,
}

impl Envelope {
    /// Parses `bytes` as metadata of `role` whose `_type` must be `expected_type`.
    pub(crate) fn parse(role: &str, expected_type: &str, bytes: &[u8]) -> Result<Self, TufError> {
        let malformed = |detail: String| TufError::Malformed {
            role: role.to_owned(),
            detail,
        };
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let Value::Object(mut doc) = doc else {
            return Err(malformed("not a JSON object".into()));
        };
        let signed = doc
            .remove("signed")
            .ok_or_else(|| malformed("no \"signed\" object".into()))?;
        if !signed.is_object() {
            return Err(malformed("\"signed\" is not an object".into()));
        }
        let sigs = match doc.remove("signatures") {
            Some(Value::Array(a)) => a,
            _ => return Err(malformed("no \"signatures\" array".into())),
        };
        let mut signatures: Vec<(String, String)> = Vec::with_capacity(sigs.len());
        for s in sigs {
            let keyid = s.get("keyid").and_then(Value::as_str);
            let sig = s.get("sig").and_then(Value::as_str);
            let (Some(keyid), Some(sig)) = (keyid, sig) else {
                return Err(malformed("a signature without keyid or sig".into()));
            };
            // The specification makes a key id unique within `signatures`.
            // Counting a repeated key id once would be safe for the
            // threshold, but the document is invalid all the same, and
            // accepting it would make this client disagree with others on
            // which metadata is valid. Signature lists are short (one entry
            // per key of a role), so the quadratic scan costs nothing.
            if signatures.iter().any(|(k, _)| k == keyid) {
                return Err(TufError::DuplicateSignature {
                    role: role.to_owned(),
                    keyid: keyid.to_owned(),
                });
            }
            signatures.push((keyid.to_owned(), sig.to_owned()));
        }
        let found = signed.get("_type").and_then(Value::as_str).unwrap_or("");
        if found != expected_type {
            return Err(TufError::WrongType {
                role: role.to_owned(),
                expected: expected_type.to_owned(),
                found: found.to_owned(),
            });
        }
        let canonical = canonicalize(&signed).map_err(malformed)?;
        Ok(Self {
            role: role.to_owned(),
            signed,
            canonical,
            signatures,
        })
    }

    /// Checks that a threshold of `role_keys`' keys (looked up in `keys`)
    /// signed this document. [`Envelope::parse`] already refused a key id
    /// that signs twice; key ids are trusted as the delegator lists them.
    pub(crate) fn verify(
        &self,
        role_keys: &RoleKeys,
        keys: &HashMap<String, PublicKey>,
    ) -> Result<(), TufError> {
        let mut valid = 0u32;
        for keyid in &role_keys.keyids {
            let Some(key) = keys.get(keyid) else { continue };
            let signed_by_it = self
                .signatures
                .iter()
                .find(|(k, _)| k == keyid)
                .and_then(|(_, sig)| hex::decode(sig).ok())
                .is_some_and(|sig| key.verify(&self.canonical, &sig));
            if signed_by_it {
                valid += 1;
            }
        }
        if valid < role_keys.threshold {
            return Err(TufError::ThresholdNotMet {
                role: self.role.clone(),
                valid,
                threshold: role_keys.threshold,
            });
        }
        Ok(())
    }

    fn malformed(&self, detail: impl Into<String>) -> TufError {
        TufError::Malformed {
            role: self.role.clone(),
            detail: detail.into(),
        }
    }

    fn obj(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        self.signed
            .as_object()
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }

    /// The fields every role has: spec_version (major 1), version, expires.
    pub(crate) fn common(&self) -> Result<Common, TufError> {
        let o = self.obj();
        let spec = o
            .get("spec_version")
            .and_then(Value::as_str)
            .ok_or_else(|| self.malformed("no spec_version"))?;
        let mut parts = spec.split('.');
        let major = parts.next().unwrap_or("");
        let well_formed = spec.split('.').count() >= 2
            && spec
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !well_formed || major != "1" {
            return Err(TufError::UnsupportedSpecVersion {
                role: self.role.clone(),
                version: spec.to_owned(),
            });
        }
        let version = o
            .get("version")
            .and_then(Value::as_u64)
            .filter(|v| *v >= 1)
            .ok_or_else(|| self.malformed("version is not a positive integer"))?;
        let expires = o
            .get("expires")
            .and_then(Value::as_str)
            .ok_or_else(|| self.malformed("no expires"))?;
        let expires = DateTime::parse_from_rfc3339(expires)
            .map_err(|e| self.malformed(format!("expires {expires:?}: {e}")))?
            .with_timezone(&Utc);
        Ok(Common { version, expires })
    }

    pub(crate) fn root(&self) -> Result<Root, TufError> {
        let common = self.common()?;
        let o = self.obj();
        let consistent_snapshot = match o.get("consistent_snapshot") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(self.malformed("consistent_snapshot is not a boolean")),
        };
        let keys = self.keys(o.get("keys"))?;
        let roles_obj = o
            .get("roles")
            .and_then(Value::as_object)
            .ok_or_else(|| self.malformed("no roles object"))?;
        let mut roles = HashMap::new();
        for name in ["root", "timestamp", "snapshot", "targets"] {
            let r = roles_obj
                .get(name)
                .ok_or_else(|| self.malformed(format!("no {name} role")))?;
            roles.insert(name.to_owned(), self.role_keys(name, r)?);
        }
        Ok(Root {
            common,
            consistent_snapshot,
            keys,
            roles,
        })
    }

    pub(crate) fn timestamp(&self) -> Result<Timestamp, TufError> {
        let common = self.common()?;
        let meta = self.meta()?;
        let snapshot = meta
            .get("snapshot.json")
            .cloned()
            .ok_or_else(|| TufError::MissingMeta {
                role: self.role.clone(),
                missing: "snapshot.json".into(),
            })?;
        Ok(Timestamp { common, snapshot })
    }

    pub(crate) fn snapshot(&self) -> Result<Snapshot, TufError> {
        Ok(Snapshot {
            common: self.common()?,
            meta: self.meta()?,
        })
    }

    pub(crate) fn targets(&self) -> Result<Targets, TufError> {
        let common = self.common()?;
        let o = self.obj();
        let list = o
            .get("targets")
            .and_then(Value::as_object)
            .ok_or_else(|| self.malformed("no targets object"))?;
        let mut targets = BTreeMap::new();
        for (name, t) in list {
            let length = t
                .get("length")
                .and_then(Value::as_u64)
                .ok_or_else(|| self.malformed(format!("target {name:?} has no length")))?;
            let digests = self.hashes(t.get("hashes"), &format!("target {name:?}"))?;
            if digests.is_empty() {
                return Err(self.malformed(format!("target {name:?} has no sha256 or sha512")));
            }
            let custom = t.get("custom").cloned().unwrap_or(Value::Null);
            targets.insert(
                name.clone(),
                TargetEntry {
                    length,
                    digests,
                    custom,
                },
            );
        }
        let delegations = match o.get("delegations") {
            None | Some(Value::Null) => None,
            Some(d) => Some(self.delegations(d)?),
        };
        Ok(Targets {
            common,
            targets,
            delegations,
        })
    }

    fn delegations(&self, d: &Value) -> Result<Delegations, TufError> {
        let keys = self.keys(d.get("keys"))?;
        let list = d
            .get("roles")
            .and_then(Value::as_array)
            .ok_or_else(|| self.malformed("delegations without a roles array"))?;
        let mut roles = Vec::with_capacity(list.len());
        let mut names = BTreeSet::new();
        for r in list {
            let name = r
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| self.malformed("delegated role without a name"))?;
            if name.is_empty() || ["root", "timestamp", "snapshot", "targets"].contains(&name) {
                return Err(self.malformed(format!("delegated role named {name:?}")));
            }
            if !names.insert(name.to_owned()) {
                return Err(self.malformed(format!("delegated role {name:?} listed twice")));
            }
            let keys = self.role_keys(name, r)?;
            let terminating = r
                .get("terminating")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let strings = |field: &str| -> Result<Option<Vec<String>>, TufError> {
                match r.get(field) {
                    None => Ok(None),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|p| {
                            p.as_str().map(str::to_owned).ok_or_else(|| {
                                self.malformed(format!("role {name:?}: {field} holds a non-string"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some),
                    Some(_) => {
                        Err(self.malformed(format!("role {name:?}: {field} is not an array")))
                    }
                }
            };
            let paths = strings("paths")?;
            let path_hash_prefixes = strings("path_hash_prefixes")?;
            if paths.is_some() && path_hash_prefixes.is_some() {
                return Err(self.malformed(format!(
                    "role {name:?} has both paths and path_hash_prefixes"
                )));
            }
            roles.push(DelegatedRole {
                name: name.to_owned(),
                keys,
                terminating,
                paths,
                path_hash_prefixes,
            });
        }
        Ok(Delegations { keys, roles })
    }

    fn keys(&self, v: Option<&Value>) -> Result<HashMap<String, PublicKey>, TufError> {
        let obj = v
            .and_then(Value::as_object)
            .ok_or_else(|| self.malformed("no keys object"))?;
        let mut keys = HashMap::new();
        for (id, k) in obj {
            let key = PublicKey::from_json(k);
            if let PublicKey::Unusable(reason) = &key {
                tracing::warn!(role = %self.role, keyid = %id, "ignoring key: {reason}");
            }
            keys.insert(id.clone(), key);
        }
        Ok(keys)
    }

    fn role_keys(&self, name: &str, r: &Value) -> Result<RoleKeys, TufError> {
        let ids = r
            .get("keyids")
            .and_then(Value::as_array)
            .ok_or_else(|| self.malformed(format!("role {name:?} has no keyids")))?;
        let mut keyids = Vec::new();
        for id in ids {
            let id = id
                .as_str()
                .ok_or_else(|| self.malformed(format!("role {name:?} has a non-string keyid")))?;
            // A key id listed twice must not count twice.
            if !keyids.iter().any(|k| k == id) {
                keyids.push(id.to_owned());
            }
        }
        let threshold = r
            .get("threshold")
            .and_then(Value::as_u64)
            .filter(|t| *t >= 1)
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| {
                self.malformed(format!(
                    "role {name:?}: threshold is not a positive integer"
                ))
            })?;
        Ok(RoleKeys { keyids, threshold })
    }

    fn meta(&self) -> Result<BTreeMap<String, MetaFile>, TufError> {
        let obj = self
            .obj()
            .get("meta")
            .and_then(Value::as_object)
            .ok_or_else(|| self.malformed("no meta object"))?;
        let mut meta = BTreeMap::new();
        for (name, m) in obj {
            let version = m
                .get("version")
                .and_then(Value::as_u64)
                .filter(|v| *v >= 1)
                .ok_or_else(|| self.malformed(format!("meta {name:?}: no positive version")))?;
            let length = match m.get("length") {
                None => None,
                Some(l) => Some(
                    l.as_u64()
                        .ok_or_else(|| self.malformed(format!("meta {name:?}: bad length")))?,
                ),
            };
            let hashes = match m.get("hashes") {
                None => None,
                Some(h) => Some(self.hashes(Some(h), &format!("meta {name:?}"))?),
            };
            meta.insert(
                name.clone(),
                MetaFile {
                    version,
                    length,
                    hashes,
                },
            );
        }
        Ok(meta)
    }

    /// Reads a `hashes` object. Every listed algorithm must be one this
    /// client can check, since every listed hash is checked.
    fn hashes(&self, v: Option<&Value>, what: &str) -> Result<Digests, TufError> {
        let obj = v
            .and_then(Value::as_object)
            .ok_or_else(|| self.malformed(format!("{what}: no hashes object")))?;
        let mut d = Digests::default();
        for (alg, h) in obj {
            let h = h
                .as_str()
                .and_then(|s| hex::decode(s).ok())
                .ok_or_else(|| self.malformed(format!("{what}: {alg} is not hex")))?;
            let bad_len = || self.malformed(format!("{what}: {alg} of {} bytes", h.len()));
            match alg.as_str() {
                "sha256" => d.sha256 = Some(h.as_slice().try_into().map_err(|_| bad_len())?),
                "sha512" => d.sha512 = Some(h.as_slice().try_into().map_err(|_| bad_len())?),
                other => {
                    return Err(
                        self.malformed(format!("{what}: unsupported hash algorithm {other:?}"))
                    )
                }
            }
        }
        if d.is_empty() {
            return Err(self.malformed(format!("{what}: empty hashes")));
        }
        Ok(d)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Common {
    pub version: u64,
    pub expires: DateTime<Utc>,
}

/// Who may sign a role: key ids (distinct) and how many must sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Root {
    pub common: Common,
    pub consistent_snapshot: bool,
    pub keys: HashMap<String, PublicKey>,
    pub roles: HashMap<String, RoleKeys>,
}

impl Root {
    /// The keys of a top-level role (always present: `root()` requires all four).
    pub(crate) fn role(&self, name: &str) -> Result<&RoleKeys, TufError> {
        self.roles.get(name).ok_or_else(|| TufError::Malformed {
            role: "root".into(),
            detail: format!("no {name} role"),
        })
    }
}

/// A `meta` entry: what timestamp says of snapshot, or snapshot of a targets role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaFile {
    pub version: u64,
    pub length: Option<u64>,
    pub hashes: Option<Digests>,
}

#[derive(Debug, Clone)]
pub(crate) struct Timestamp {
    pub common: Common,
    pub snapshot: MetaFile,
}

#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub common: Common,
    pub meta: BTreeMap<String, MetaFile>,
}

#[derive(Debug, Clone)]
pub(crate) struct TargetEntry {
    pub length: u64,
    pub digests: Digests,
    pub custom: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct Targets {
    pub common: Common,
    pub targets: BTreeMap<String, TargetEntry>,
    pub delegations: Option<Delegations>,
}

#[derive(Debug, Clone)]
pub(crate) struct Delegations {
    pub keys: HashMap<String, PublicKey>,
    pub roles: Vec<DelegatedRole>,
}

#[derive(Debug, Clone)]
pub(crate) struct DelegatedRole {
    pub name: String,
    pub keys: RoleKeys,
    pub terminating: bool,
    pub paths: Option<Vec<String>>,
    pub path_hash_prefixes: Option<Vec<String>>,
}

impl DelegatedRole {
    /// Whether this role is trusted for `target` (spec 5.6.7.2 / 4.5).
    pub(crate) fn is_delegated_path(&self, target: &str) -> bool {
        if let Some(patterns) = &self.paths {
            return patterns.iter().any(|p| super::pattern::matches(p, target));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let hash = crate::hash::sha256_hex(target.as_bytes());
            return prefixes
                .iter()
                .any(|p| hash.starts_with(&p.to_ascii_lowercase()));
        }
        false
    }
}
