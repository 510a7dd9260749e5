//! Payload files: what a signer needs, and the summary of what changes.

use super::*;

impl Payload {
    /// The canonical bytes, checked against `sha256` and against the
    /// readable `metadata` (so what a signer reviews is what they sign).
    pub fn signed_bytes(&self) -> Result<Vec<u8>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.canonical)
            .map_err(|e| ceremony_err(format!("payload canonical bytes are not base64: {e}")))?;
        if sha256_hex(&bytes) != self.sha256 {
            return Err(ceremony_err(
                "payload sha256 does not match its canonical bytes",
            ));
        }
        let meta = self.meta()?;
        if meta.canonical()? != bytes {
            return Err(ceremony_err(
                "payload metadata differs from its canonical bytes",
            ));
        }
        if meta.version().get() != self.version {
            return Err(ceremony_err("payload version differs from its metadata"));
        }
        Ok(bytes)
    }

    pub fn meta(&self) -> Result<RoleMeta> {
        RoleMeta::from_value(self.role, self.metadata.clone())
    }

    pub fn root(&self) -> Result<Root> {
        match self.meta()? {
            RoleMeta::Root(root) => Ok(root),
            other => Err(ceremony_err(format!(
                "payload holds {} metadata, not root",
                other.role()
            ))),
        }
    }

    pub(crate) fn from_meta(
        meta: &RoleMeta,
        keys: BTreeMap<String, Key>,
        requirements: Vec<Requirement>,
        summary: Vec<String>,
    ) -> Result<Self> {
        let bytes = meta.canonical()?;
        Ok(Payload {
            format: PAYLOAD_FORMAT,
            role: meta.role(),
            version: meta.version().get(),
            sha256: sha256_hex(&bytes),
            canonical: base64::engine::general_purpose::STANDARD.encode(&bytes),
            metadata: meta.to_value()?,
            keys,
            requirements,
            summary,
            delegated: None,
            delegating_targets: None,
        })
    }

    /// A signature of this payload by key `keyid`, as a signer returns it.
    pub(crate) fn detached(&self, keyid: String, sig: &[u8]) -> DetachedSignature {
        DetachedSignature {
            role: self.role,
            version: self.version,
            payload_sha256: self.sha256.clone(),
            keyid,
            sig: hex::encode(sig),
            delegated: self.delegated.clone(),
        }
    }

    /// Signatures made here while staging, kept in the ceremony as if returned.
    pub(crate) fn detached_all(&self, signatures: &[Signature]) -> Vec<DetachedSignature> {
        signatures
            .iter()
            .map(|s| self.detached(hex::encode(&*s.keyid), &s.sig))
            .collect()
    }
}

/// The keys of `role` in `root` and the threshold they must reach.
pub(super) fn role_requirement(
    what: String,
    role: Role,
    root: &Root,
) -> Result<(Requirement, BTreeMap<String, Key>)> {
    let rk = root
        .roles
        .get(&role.role_type())
        .ok_or_else(|| RepoError::Inconsistent(format!("root lists no {role} role")))?;
    let mut keys = BTreeMap::new();
    for id in &rk.keyids {
        let key = root.keys.get(id).cloned().ok_or_else(|| {
            RepoError::Inconsistent(format!(
                "root lists {role} key {} without its public key",
                hex::encode(&**id)
            ))
        })?;
        keys.insert(hex::encode(&**id), key);
    }
    Ok((
        Requirement {
            what,
            threshold: rk.threshold.get(),
            keyids: keys.keys().cloned().collect(),
        },
        keys,
    ))
}

/// What a non-root role's signatures must meet under `root`.
pub(super) fn requirements_under(
    role: Role,
    root: &Root,
) -> Result<(Vec<Requirement>, BTreeMap<String, Key>)> {
    let (req, keys) = role_requirement(
        format!("{role} keys of root version {}", root.version),
        role,
        root,
    )?;
    Ok((vec![req], keys))
}

/// Builds the payload for `new_root`, which follows `current`.
pub fn payload_for(current: &Root, new_root: &Root) -> Result<Payload> {
    let (old_req, old_keys) = role_requirement(
        format!("current root keys (version {})", current.version),
        Role::Root,
        current,
    )?;
    let (new_req, new_keys) = role_requirement(
        format!("new root keys (version {})", new_root.version),
        Role::Root,
        new_root,
    )?;
    let keys = old_keys.into_iter().chain(new_keys).collect();
    let meta = RoleMeta::Root(new_root.clone());
    Payload::from_meta(
        &meta,
        keys,
        vec![old_req, new_req],
        summarize_root(current, new_root),
    )
}

pub(super) fn header(meta: &RoleMeta) -> String {
    format!(
        "{} version {}, expires {}",
        meta.role(),
        meta.version(),
        meta.expires()
    )
}

pub(super) fn describe_metafile(name: &str, m: &Metafile) -> String {
    let sha = m
        .hashes
        .as_ref()
        .map(|h| hex::encode(&*h.sha256))
        .unwrap_or_else(|| "(no hash)".to_owned());
    let len = m
        .length
        .map(|l| format!("{l} bytes"))
        .unwrap_or_else(|| "no length".to_owned());
    format!("{name}: version {}, {len}, sha256 {sha}", m.version)
}

pub(super) fn summarize_root(current: &Root, new_root: &Root) -> Vec<String> {
    let mut lines = vec![header(&RoleMeta::Root(new_root.clone()))];
    for role in Role::ALL {
        let ids = |root: &Root| -> (u64, BTreeSet<String>) {
            root.roles
                .get(&role.role_type())
                .map(|rk| {
                    (
                        rk.threshold.get(),
                        rk.keyids.iter().map(|id| hex::encode(&**id)).collect(),
                    )
                })
                .unwrap_or_default()
        };
        let (old_t, old_ids) = ids(current);
        let (new_t, new_ids) = ids(new_root);
        let mut line = format!("{role}: threshold {new_t} of {} key(s)", new_ids.len());
        if old_t != new_t {
            line.push_str(&format!(" (was {old_t})"));
        }
        for id in new_ids.difference(&old_ids) {
            line.push_str(&format!("; key added {id}"));
        }
        for id in old_ids.difference(&new_ids) {
            line.push_str(&format!("; key removed {id}"));
        }
        lines.push(line);
    }
    lines
}

pub(super) fn describe_target(name: &str, t: &tough::schema::Target) -> String {
    let sha512 = t
        .hashes
        ._extra
        .get("sha512")
        .and_then(|v| v.as_str())
        .unwrap_or("(none)");
    let custom = |k: &str| {
        t.custom
            .get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".to_owned())
    };
    format!(
        "{name}: {} bytes, sha256 {}, sha512 {sha512}, version {}, hardware ids {}{}",
        t.length,
        hex::encode(&*t.hashes.sha256),
        custom("version"),
        custom("hardware_ids"),
        if t.custom.contains_key("rollout") {
            ", staged rollout"
        } else {
            ""
        }
    )
}

/// The summary a signer reads: for targets, every target added, removed
/// or changed relative to the repository's current targets.
pub(super) fn summarize(meta: &RoleMeta, state: &RepoState) -> Vec<String> {
    let mut lines = vec![header(meta)];
    match meta {
        RoleMeta::Root(root) => return summarize_root(&state.root.signed, root),
        RoleMeta::Targets(new) => {
            lines.extend(summarize_targets(&state.targets.signed.targets, new));
        }
        RoleMeta::Snapshot(s) => {
            for (name, m) in &s.meta {
                lines.push(describe_metafile(name, m));
            }
        }
        RoleMeta::Timestamp(t) => {
            for (name, m) in &t.meta {
                lines.push(describe_metafile(name, m));
            }
        }
    }
    lines
}

/// Every target `new` adds, removes or changes relative to `old`.
pub(crate) fn summarize_targets(
    old: &std::collections::HashMap<tough::TargetName, tough::schema::Target>,
    new: &Targets,
) -> Vec<String> {
    let mut lines = Vec::new();
    {
        {
            let mut names: Vec<_> = old.keys().chain(new.targets.keys()).collect();
            names.sort_by(|a, b| a.raw().cmp(b.raw()));
            names.dedup();
            let mut changes = 0;
            for name in names {
                match (old.get(name), new.targets.get(name)) {
                    (None, Some(t)) => {
                        lines.push(format!("added {}", describe_target(name.raw(), t)))
                    }
                    (Some(t), None) => {
                        lines.push(format!("removed {}", describe_target(name.raw(), t)))
                    }
                    (Some(a), Some(b)) if a != b => {
                        lines.push(format!("changed {}", describe_target(name.raw(), b)))
                    }
                    _ => continue,
                }
                changes += 1;
            }
            if changes == 0 {
                lines.push("no target added, removed or changed (a re-signing)".to_owned());
            }
            lines.push(format!("{} target(s) listed in all", new.targets.len()));
            lines.push(match &new.delegations {
                Some(d) => format!(
                    "delegations: {}",
                    d.roles
                        .iter()
                        .map(|r| format!(
                            "{} (paths {}; threshold {} of {} key(s))",
                            r.name,
                            crate::delegated::paths_of(r).join(", "),
                            r.threshold,
                            r.keyids.len()
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                None => "delegations: none".to_owned(),
            });
        }
    }
    lines
}
