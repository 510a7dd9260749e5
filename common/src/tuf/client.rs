//! The client workflow of spec section 5: root chain, timestamp, snapshot,
//! top-level targets, the delegation search, and target download.

use super::keys::PublicKey;
use super::metadata::{
    Common, DelegatedRole, Envelope, MetaFile, RoleKeys, Root, Snapshot, Targets, Timestamp,
};
use super::store::{io_err, Store};
use super::{ClientOptions, FetchError, Fetched, Target, Transport, TufError};
use crate::hash::{Digests, StreamVerifier};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256, Sha512};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use url::Url;

const CHUNK: usize = 64 * 1024;

/// Whether a refresh changed the trusted metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The repository's timestamp is the one already trusted (and the root did not change).
    Unchanged,
    Updated,
}

/// Version and expiry of one trusted role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSummary {
    pub version: u64,
    pub expires: DateTime<Utc>,
}

impl From<&Common> for RoleSummary {
    fn from(c: &Common) -> Self {
        Self {
            version: c.version,
            expires: c.expires,
        }
    }
}

/// Read-only view of the trusted top-level metadata (for status display).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedMetadata {
    pub root: RoleSummary,
    pub timestamp: Option<RoleSummary>,
    pub snapshot: Option<RoleSummary>,
    pub targets: Option<RoleSummary>,
    pub consistent_snapshot: bool,
    /// Newest time vouched for by a successful refresh (see module docs).
    pub trusted_time: Option<DateTime<Utc>>,
}

/// A TUF client over a metadata directory and a transport.
#[derive(Debug)]
pub struct TufClient<T: Transport> {
    options: ClientOptions,
    transport: T,
    store: Store,
    root: Root,
    timestamp: Option<Timestamp>,
    snapshot: Option<Snapshot>,
    targets: Option<Targets>,
    /// Delegated roles verified against the current snapshot, by name and
    /// by the keys of the delegation they were verified under: a role
    /// delegated twice with other keys is verified under each, never
    /// trusted under one delegation because it passed another's keys.
    delegated: HashMap<String, Vec<(EdgeKeys, Targets)>>,
    trusted_time: Option<DateTime<Utc>>,
    view: TrustedMetadata,
}

/// A role waiting in the delegation search, with the keys its delegator gave it.
struct Pending {
    role: DelegatedRole,
    keys: Arc<HashMap<String, PublicKey>>,
}

/// What a delegation trusts to sign its role: the key ids and threshold,
/// and the public key each id stands for in the delegator's `keys`. One
/// role name delegated by two roles with other keys is verified twice.
#[derive(Debug, Clone, PartialEq)]
struct EdgeKeys {
    role_keys: RoleKeys,
    keys: Vec<Option<PublicKey>>,
}

impl EdgeKeys {
    fn new(role: &DelegatedRole, keys: &HashMap<String, PublicKey>) -> Self {
        Self {
            role_keys: role.keys.clone(),
            keys: role
                .keys
                .keyids
                .iter()
                .map(|id| keys.get(id).cloned())
                .collect(),
        }
    }

    fn of(p: &Pending) -> Self {
        Self::new(&p.role, &p.keys)
    }
}

/// Delegated roles loaded during one listing: (name, keys, role or `None`
/// when it could not be fetched or verified).
#[derive(Default)]
struct LoadedRoles {
    roles: Vec<(String, EdgeKeys, Option<Arc<Targets>>)>,
}

/// The roles a targets role delegates to, in its order, with its keys.
fn children_of(t: &Targets) -> Vec<Pending> {
    let Some(d) = &t.delegations else {
        return Vec::new();
    };
    let keys = Arc::new(d.keys.clone());
    d.roles
        .iter()
        .map(|r| Pending {
            role: r.clone(),
            keys: keys.clone(),
        })
        .collect()
}

impl<T: Transport> TufClient<T> {
    /// Verify `trusted_root` is a root signed by a threshold of its own keys
    /// (expiry NOT checked here) and store it as DIR/root.json (atomic). No network.
    pub fn init(metadata_dir: &Path, trusted_root: &[u8]) -> Result<(), TufError> {
        verify_root_self(trusted_root)?;
        crate::atomic::create_dir_all_durable(metadata_dir).map_err(|e| io_err(metadata_dir, e))?;
        Store::new(metadata_dir).write_role("root", trusted_root)
    }

    /// Load trusted state from metadata_dir (root.json required;
    /// timestamp/snapshot/targets optional, each re-verified on load; a
    /// corrupt optional file is dropped with a warning). Expiry is not
    /// checked on load: a device whose clock went backwards still starts.
    pub fn open(
        metadata_dir: &Path,
        options: ClientOptions,
        transport: T,
    ) -> Result<Self, TufError> {
        let store = Store::new(metadata_dir);
        let root_bytes = store
            .read_role("root")?
            .ok_or_else(|| TufError::NoTrustedRoot {
                path: store.role_path("root").display().to_string(),
            })?;
        let root = verify_root_self(&root_bytes)?;
        let timestamp = load_optional(&store, "timestamp", |b| {
            let env = Envelope::parse("timestamp", "timestamp", b)?;
            env.verify(root.role("timestamp")?, &root.keys)?;
            env.timestamp()
        });
        let snapshot = load_optional(&store, "snapshot", |b| {
            let env = Envelope::parse("snapshot", "snapshot", b)?;
            env.verify(root.role("snapshot")?, &root.keys)?;
            env.snapshot()
        });
        let targets = load_optional(&store, "targets", |b| {
            let env = Envelope::parse("targets", "targets", b)?;
            env.verify(root.role("targets")?, &root.keys)?;
            env.targets()
        });
        let trusted_time = store.read_trusted_time();
        let view = TrustedMetadata {
            root: (&root.common).into(),
            timestamp: None,
            snapshot: None,
            targets: None,
            consistent_snapshot: root.consistent_snapshot,
            trusted_time,
        };
        let mut client = Self {
            options: ClientOptions::new(
                options.metadata_base.clone(),
                options.targets_base.clone(),
            ),
            transport,
            store,
            root,
            timestamp,
            snapshot,
            targets,
            delegated: HashMap::new(),
            trusted_time,
            view,
        };
        // Keep the caller's limits, with the base URLs normalized.
        client.options.max_root_rotations = options.max_root_rotations;
        client.options.max_delegations = options.max_delegations;
        client.options.limits = options.limits;
        client.update_view();
        Ok(client)
    }

    /// Full top-level refresh, spec 5.3-5.6. Returns whether anything changed.
    pub fn refresh(&mut self) -> Result<RefreshOutcome, TufError> {
        // 5.1: one fixed update start time for the whole refresh.
        let now = self.effective_now();
        let result = self.refresh_at(now);
        self.update_view();
        let outcome = result?;
        self.remember_time(now);
        Ok(outcome)
    }

    fn refresh_at(&mut self, now: DateTime<Utc>) -> Result<RefreshOutcome, TufError> {
        let root_changed = self.update_root(now)?;
        let timestamp_changed = self.update_timestamp(now)?;
        if !timestamp_changed && self.top_level_consistent() {
            // Same timestamp as trusted: snapshot and targets are the ones
            // it vouches for. They must still be fresh (freeze attack).
            if let Some(s) = &self.snapshot {
                check_expiry("snapshot", &s.common, now)?;
            }
            if let Some(t) = &self.targets {
                check_expiry("targets", &t.common, now)?;
            }
            return Ok(if root_changed {
                RefreshOutcome::Updated
            } else {
                RefreshOutcome::Unchanged
            });
        }
        self.update_snapshot(now)?;
        self.update_targets(now)?;
        Ok(RefreshOutcome::Updated)
    }

    /// Targets listed in the verified top-level targets role (no delegation walk).
    pub fn top_level_targets(&self) -> Result<Vec<Target>, TufError> {
        let targets = self.targets.as_ref().ok_or_else(|| not_loaded("targets"))?;
        Ok(targets
            .targets
            .iter()
            .map(|(name, t)| Target {
                name: name.clone(),
                length: t.length,
                digests: t.digests.clone(),
                custom: t.custom.clone(),
            })
            .collect())
    }

    /// Spec 5.6.7 search: pre-order depth-first through delegations,
    /// fetching only the delegated metadata needed; None if no role lists it.
    pub fn find_target(&mut self, name: &str) -> Result<Option<Target>, TufError> {
        let now = self.effective_now();
        let top = self.targets.clone().ok_or_else(|| not_loaded("targets"))?;
        check_expiry("targets", &top.common, now)?;
        let mut visited: HashSet<String> = HashSet::new();
        let mut stack: Vec<Pending> = Vec::new();
        let mut current: Option<(String, Targets)> = Some(("targets".to_owned(), top));
        let mut budget = self.options.max_delegations;
        loop {
            let (role_name, role) = match current.take() {
                Some(c) => c,
                None => {
                    let Some(next) = stack.pop() else {
                        return Ok(None);
                    };
                    if visited.contains(&next.role.name) {
                        continue;
                    }
                    if budget == 0 {
                        tracing::warn!(
                            target = name,
                            "delegation search stopped after {} roles",
                            self.options.max_delegations
                        );
                        return Ok(None);
                    }
                    let t = self.load_delegated(&next.role, &next.keys, now)?;
                    (next.role.name.clone(), t)
                }
            };
            budget = budget.saturating_sub(1);
            visited.insert(role_name.clone());
            if let Some(t) = role.targets.get(name) {
                return Ok(Some(Target {
                    name: name.to_owned(),
                    length: t.length,
                    digests: t.digests.clone(),
                    custom: t.custom.clone(),
                }));
            }
            if let Some(d) = &role.delegations {
                let keys = Arc::new(d.keys.clone());
                let mut children = Vec::new();
                for child in &d.roles {
                    if child.is_delegated_path(name) {
                        children.push(Pending {
                            role: child.clone(),
                            keys: keys.clone(),
                        });
                        if child.terminating {
                            // A terminating role ends the search past it:
                            // nothing still waiting is consulted.
                            stack.clear();
                            break;
                        }
                    }
                }
                stack.extend(children.into_iter().rev());
            }
        }
    }

    /// Every target a spec 5.6.7 search would find, i.e. every name
    /// [`find_target`](Self::find_target) would resolve, with the
    /// description the search would return (pre-order depth-first, the
    /// first role that lists a name wins; a role is trusted only for its
    /// `paths`/`path_hash_prefixes`, on the whole chain of delegations
    /// down to it; `terminating` ends the search past it; visited roles
    /// are skipped; at most `max_delegations` roles per search). Sorted by
    /// name.
    ///
    /// Two passes: first every delegated role reachable from top-level
    /// targets is loaded once per distinct (role, keys that delegate it)
    /// (at most `max_delegations` such loads, each file bounded by its
    /// snapshot length or [`Limits::targets`](super::Limits)), which
    /// gives every candidate name; then the search is replayed for each
    /// name over what was loaded. A delegated role is fetched only when
    /// the stored copy does not match the trusted snapshot's listing (its
    /// version changed), so an idle poll reads and verifies local files
    /// and makes no request. A delegated role that cannot be fetched or
    /// verified (expired, bad signature, missing from the snapshot) ends
    /// the search of each name that reaches it (spec 5.6.7.2.1: "report
    /// that the target cannot be found"), with a warning; names found
    /// before it, and every top-level target, are still listed.
    pub fn all_targets(&self) -> Result<Vec<Target>, TufError> {
        let now = self.effective_now();
        let top = self.targets.as_ref().ok_or_else(|| not_loaded("targets"))?;
        check_expiry("targets", &top.common, now)?;
        let mut loaded = LoadedRoles::default();
        let mut names: std::collections::BTreeSet<String> = top.targets.keys().cloned().collect();
        let mut stack: Vec<Pending> = children_of(top).into_iter().rev().collect();
        let mut seen: Vec<(String, EdgeKeys)> = Vec::new();
        while let Some(next) = stack.pop() {
            let edge = (next.role.name.clone(), EdgeKeys::of(&next));
            // Each distinct delegation once: a cycle ends here.
            if seen.contains(&edge) {
                continue;
            }
            seen.push(edge);
            if let Some(t) = self.load_for_listing(&mut loaded, &next, now) {
                names.extend(t.targets.keys().cloned());
                stack.extend(children_of(&t).into_iter().rev());
            }
        }
        let top = Arc::new(top.clone());
        let mut out = Vec::new();
        for name in names {
            if let Some(t) = self.search_loaded(&name, &top, &mut loaded, now) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Spec 5.6.7 for one name, like `find_target`, over `loaded` (loading
    /// what is missing within the listing's cap). `None`: not found, or the
    /// search reached a role that could not be loaded.
    fn search_loaded(
        &self,
        name: &str,
        top: &Arc<Targets>,
        loaded: &mut LoadedRoles,
        now: DateTime<Utc>,
    ) -> Option<Target> {
        let mut visited: HashSet<String> = HashSet::new();
        let mut stack: Vec<Pending> = Vec::new();
        let mut current: Option<(String, Arc<Targets>)> = Some(("targets".to_owned(), top.clone()));
        let mut budget = self.options.max_delegations;
        loop {
            let (role_name, role) = match current.take() {
                Some(c) => c,
                None => {
                    let next = stack.pop()?;
                    if visited.contains(&next.role.name) {
                        continue;
                    }
                    if budget == 0 {
                        return None;
                    }
                    let t = self.load_for_listing(loaded, &next, now)?;
                    (next.role.name.clone(), t)
                }
            };
            budget = budget.saturating_sub(1);
            visited.insert(role_name);
            if let Some(t) = role.targets.get(name) {
                return Some(Target {
                    name: name.to_owned(),
                    length: t.length,
                    digests: t.digests.clone(),
                    custom: t.custom.clone(),
                });
            }
            if let Some(d) = &role.delegations {
                let keys = Arc::new(d.keys.clone());
                let mut children = Vec::new();
                for child in &d.roles {
                    if child.is_delegated_path(name) {
                        children.push(Pending {
                            role: child.clone(),
                            keys: keys.clone(),
                        });
                        if child.terminating {
                            stack.clear();
                            break;
                        }
                    }
                }
                stack.extend(children.into_iter().rev());
            }
        }
    }

    /// A delegated role verified with the keys of this delegation, loaded
    /// once per listing; `None` (warned once) when it cannot be used.
    fn load_for_listing(
        &self,
        loaded: &mut LoadedRoles,
        pending: &Pending,
        now: DateTime<Utc>,
    ) -> Option<Arc<Targets>> {
        let keys = EdgeKeys::of(pending);
        let name = &pending.role.name;
        if let Some((_, _, t)) = loaded
            .roles
            .iter()
            .find(|(n, k, _)| n == name && *k == keys)
        {
            return t.clone();
        }
        let result = if loaded.roles.len() >= self.options.max_delegations as usize {
            tracing::warn!(
                role = %name,
                "delegated role not loaded: the listing already loaded {} roles (max_delegations)",
                self.options.max_delegations
            );
            None
        } else {
            match self.fetch_targets_role(name, &pending.role.keys, &pending.keys, now) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    tracing::warn!(role = %name, "delegated role not used, its targets are not listed: {e}");
                    None
                }
            }
        };
        loaded.roles.push((name.clone(), keys, result.clone()));
        result
    }

    /// URL of the target's consistent-snapshot file: targets_base +
    /// `dir/<hash>.<basename>` (sha256 if listed else sha512), or the plain
    /// path if consistent_snapshot is false.
    pub fn target_url(&self, target: &Target) -> Result<Url, TufError> {
        let segments = target_segments(&target.name)?;
        let mut url = self.options.targets_base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|()| TufError::Url {
                what: format!("target {}", target.name),
                detail: format!("{} cannot be a base", self.options.targets_base),
            })?;
            path.pop_if_empty();
            let (last, dirs) =
                segments
                    .split_last()
                    .ok_or_else(|| TufError::InvalidTargetName {
                        name: target.name.clone(),
                        detail: "empty".into(),
                    })?;
            path.extend(dirs);
            if self.root.consistent_snapshot {
                let hash = match (&target.digests.sha256, &target.digests.sha512) {
                    (Some(h), _) => hex::encode(h),
                    (None, Some(h)) => hex::encode(h),
                    (None, None) => {
                        return Err(TufError::InvalidTargetName {
                            name: target.name.clone(),
                            detail: "no sha256 or sha512 listed".into(),
                        })
                    }
                };
                path.push(&format!("{hash}.{last}"));
            } else {
                path.push(last);
            }
        }
        Ok(url)
    }

    /// Open a stream of the target's bytes from `offset` (the caller
    /// verifies with ota_common::hash::StreamVerifier). The stream ends at
    /// most one byte past the signed length, so an endless answer is cut
    /// off and the extra byte makes the verifier fail.
    pub fn open_target(
        &self,
        target: &Target,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, TufError> {
        if offset > target.length {
            return Err(TufError::LengthMismatch {
                what: format!("target {} (resume offset)", target.name),
                expected: target.length,
                actual: offset,
            });
        }
        let url = self.target_url(target)?;
        let stream =
            self.transport
                .fetch_stream(&url, offset)
                .map_err(|error| TufError::Fetch {
                    url: url.to_string(),
                    error,
                })?;
        Ok(Box::new(stream.take(target.length - offset + 1)))
    }

    /// Download to dest: stream into a temp file beside dest, verifying
    /// length and all hashes as bytes arrive, fsync, rename. If dest already
    /// exists with matching length and hashes, do nothing.
    pub fn download_target(&self, target: &Target, dest: &Path) -> Result<(), TufError> {
        if file_matches(target, dest)? {
            tracing::debug!(target = %target.name, "already downloaded");
            return Ok(());
        }
        let file_name = dest
            .file_name()
            .ok_or_else(|| io_err(dest, std::io::Error::other("destination has no file name")))?
            .to_string_lossy()
            .into_owned();
        let tmp = dest.with_file_name(format!(".{file_name}.part"));
        let result = self
            .download_into(target, &tmp)
            .and_then(|()| crate::atomic::rename_durable(&tmp, dest).map_err(|e| io_err(dest, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn download_into(&self, target: &Target, tmp: &Path) -> Result<(), TufError> {
        let verify_err = |error| TufError::TargetVerify {
            target: target.name.clone(),
            error,
        };
        let mut verifier =
            StreamVerifier::new(target.digests.clone(), target.length).map_err(verify_err)?;
        let mut reader = self.open_target(target, 0)?;
        let mut file = std::fs::File::create(tmp).map_err(|e| io_err(tmp, e))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(TufError::Fetch {
                        url: self
                            .target_url(target)
                            .map(|u| u.to_string())
                            .unwrap_or_default(),
                        error: FetchError::Transport(e.to_string()),
                    })
                }
            };
            verifier.update(&buf[..n]).map_err(verify_err)?;
            file.write_all(&buf[..n]).map_err(|e| io_err(tmp, e))?;
        }
        verifier.finish().map_err(verify_err)?;
        file.sync_all().map_err(|e| io_err(tmp, e))
    }

    /// The URL of `rel` under the targets base: files the signed metadata
    /// names by hash but does not list as targets (a delta release's chunk
    /// store). The caller checks what it fetches against those hashes.
    pub fn targets_file_url(&self, rel: &str) -> Result<Url, TufError> {
        let mut url = self.options.targets_base.clone();
        url.path_segments_mut()
            .map_err(|()| TufError::Url {
                what: rel.to_owned(),
                detail: format!("{} cannot be a base", self.options.targets_base),
            })?
            .pop_if_empty()
            .extend(rel.split('/'));
        Ok(url)
    }

    /// The transport, for fetches outside the metadata workflow (see
    /// [`Self::targets_file_url`]).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Read-only view: versions and expiries of the trusted roles.
    pub fn trusted(&self) -> &TrustedMetadata {
        &self.view
    }

    // ---- 5.3: root ----

    /// Walks the root chain N+1, N+2, ... Returns whether the root changed.
    fn update_root(&mut self, now: DateTime<Utc>) -> Result<bool, TufError> {
        let old_timestamp_keys = key_set(self.root.role("timestamp")?);
        let old_snapshot_keys = key_set(self.root.role("snapshot")?);
        let mut changed = false;
        for _ in 0..self.options.max_root_rotations {
            let Some(next) = self.root.common.version.checked_add(1) else {
                break;
            };
            let file = format!("{next}.root.json");
            let url = self.metadata_url(&file)?;
            let bytes = match self.transport.fetch(&url, self.options.limits.root, None) {
                Ok(Fetched::Body { bytes, .. }) => bytes,
                // No next version: the chain ends here (403 is what some
                // object stores answer for a missing file).
                Err(FetchError::NotFound) | Err(FetchError::Http { status: 403 }) => break,
                Ok(Fetched::NotModified) => {
                    return Err(fetch_err(&url, FetchError::Http { status: 304 }))
                }
                Err(e) => return Err(fetch_err(&url, e)),
            };
            check_size(&url, &bytes, self.options.limits.root)?;
            let env = Envelope::parse("root", "root", &bytes)?;
            // 5.3.5: signed by a threshold of the trusted root's keys, then of its own.
            env.verify(self.root.role("root")?, &self.root.keys)?;
            let new_root = env.root()?;
            env.verify(new_root.role("root")?, &new_root.keys)?;
            // 5.3.6: exactly N+1.
            let got = new_root.common.version;
            if got != next {
                return Err(if got <= self.root.common.version {
                    TufError::Rollback {
                        role: "root".into(),
                        trusted: self.root.common.version,
                        new: got,
                    }
                } else {
                    TufError::VersionMismatch {
                        role: "root".into(),
                        expected: next,
                        got,
                    }
                });
            }
            // 5.3.8: persist each step, as received.
            self.store.write_role("root", &bytes)?;
            tracing::info!(version = got, "trusted root rotated");
            self.root = new_root;
            changed = true;
        }
        // 5.3.10: the final root must not be expired.
        check_expiry("root", &self.root.common, now)?;
        // 5.3.11: fast-forward attack recovery.
        if changed
            && (key_set(self.root.role("timestamp")?) != old_timestamp_keys
                || key_set(self.root.role("snapshot")?) != old_snapshot_keys)
        {
            tracing::info!(
                "timestamp or snapshot keys rotated: dropping trusted timestamp and snapshot"
            );
            self.store.remove_role("timestamp")?;
            self.store.remove_role("snapshot")?;
            self.store.write_etag(None)?;
            self.timestamp = None;
            self.snapshot = None;
            self.delegated.clear();
        }
        Ok(changed)
    }

    // ---- 5.4: timestamp ----

    /// Returns whether a new timestamp became trusted.
    fn update_timestamp(&mut self, now: DateTime<Utc>) -> Result<bool, TufError> {
        let url = self.metadata_url("timestamp.json")?;
        let etag = match &self.timestamp {
            Some(_) => self.store.read_etag(),
            None => None,
        };
        let limit = self.options.limits.timestamp;
        let (bytes, new_etag) = match self
            .transport
            .fetch(&url, limit, etag.as_deref())
            .map_err(|e| fetch_err(&url, e))?
        {
            Fetched::Body { bytes, etag } => (bytes, etag),
            Fetched::NotModified => {
                let Some(trusted) = &self.timestamp else {
                    return Err(fetch_err(&url, FetchError::Http { status: 304 }));
                };
                check_expiry("timestamp", &trusted.common, now)?;
                return Ok(false);
            }
        };
        check_size(&url, &bytes, limit)?;
        let env = Envelope::parse("timestamp", "timestamp", &bytes)?;
        env.verify(self.root.role("timestamp")?, &self.root.keys)?;
        let new = env.timestamp()?;
        if let Some(trusted) = &self.timestamp {
            if new.common.version < trusted.common.version {
                return Err(TufError::Rollback {
                    role: "timestamp".into(),
                    trusted: trusted.common.version,
                    new: new.common.version,
                });
            }
            if new.common.version == trusted.common.version {
                // Same version: keep what is trusted (and its bytes).
                check_expiry("timestamp", &trusted.common, now)?;
                if new_etag.is_some() && new_etag != etag {
                    self.store.write_etag(new_etag.as_deref())?;
                }
                return Ok(false);
            }
            if new.snapshot.version < trusted.snapshot.version {
                return Err(TufError::Rollback {
                    role: "snapshot".into(),
                    trusted: trusted.snapshot.version,
                    new: new.snapshot.version,
                });
            }
        }
        check_expiry("timestamp", &new.common, now)?;
        self.store.write_role("timestamp", &bytes)?;
        self.store.write_etag(new_etag.as_deref())?;
        self.timestamp = Some(new);
        Ok(true)
    }

    /// Whether the trusted snapshot and targets are the ones the trusted timestamp vouches for.
    fn top_level_consistent(&self) -> bool {
        match (&self.timestamp, &self.snapshot, &self.targets) {
            (Some(ts), Some(s), Some(t)) => {
                s.common.version == ts.snapshot.version
                    && s.meta.get("targets.json").map(|m| m.version) == Some(t.common.version)
            }
            _ => false,
        }
    }

    // ---- 5.5: snapshot ----

    fn update_snapshot(&mut self, now: DateTime<Utc>) -> Result<(), TufError> {
        let meta = self
            .timestamp
            .as_ref()
            .ok_or_else(|| not_loaded("timestamp"))?
            .snapshot
            .clone();
        let file = self.meta_file_name("snapshot", meta.version);
        let url = self.metadata_url(&file)?;
        let bytes = self.fetch_meta(&url, meta.length.unwrap_or(self.options.limits.snapshot))?;
        check_meta_file("snapshot", &meta, &bytes)?;
        let env = Envelope::parse("snapshot", "snapshot", &bytes)?;
        env.verify(self.root.role("snapshot")?, &self.root.keys)?;
        let new = env.snapshot()?;
        if new.common.version != meta.version {
            return Err(TufError::VersionMismatch {
                role: "snapshot".into(),
                expected: meta.version,
                got: new.common.version,
            });
        }
        if let Some(trusted) = &self.snapshot {
            for (name, old) in &trusted.meta {
                match new.meta.get(name) {
                    None => {
                        return Err(TufError::RoleRemoved {
                            missing: name.clone(),
                            trusted: trusted.common.version,
                            new: new.common.version,
                        })
                    }
                    Some(m) if m.version < old.version => {
                        return Err(TufError::Rollback {
                            role: name.strip_suffix(".json").unwrap_or(name).to_owned(),
                            trusted: old.version,
                            new: m.version,
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        check_expiry("snapshot", &new.common, now)?;
        self.store.write_role("snapshot", &bytes)?;
        self.snapshot = Some(new);
        self.delegated.clear();
        Ok(())
    }

    // ---- 5.6: targets ----

    fn update_targets(&mut self, now: DateTime<Utc>) -> Result<(), TufError> {
        let role_keys = self.root.role("targets")?.clone();
        let keys = self.root.keys.clone();
        let new = self.fetch_targets_role("targets", &role_keys, &keys, now)?;
        self.targets = Some(new);
        self.delegated.clear();
        Ok(())
    }

    /// A delegated role for the search: verified this session already,
    /// or the stored copy if it still matches the snapshot, or fetched.
    fn load_delegated(
        &mut self,
        role: &DelegatedRole,
        keys: &HashMap<String, PublicKey>,
        now: DateTime<Utc>,
    ) -> Result<Targets, TufError> {
        let edge = EdgeKeys::new(role, keys);
        if let Some((_, t)) = self
            .delegated
            .get(&role.name)
            .and_then(|v| v.iter().find(|(k, _)| *k == edge))
        {
            return Ok(t.clone());
        }
        let t = self.fetch_targets_role(&role.name, &role.keys, keys, now)?;
        self.delegated
            .entry(role.name.clone())
            .or_default()
            .push((edge, t.clone()));
        Ok(t)
    }

    /// 5.6.1-5.6.6 for a targets role (top-level or delegated): the stored
    /// copy is used when it matches the snapshot's listing, else the file
    /// is fetched; either way it is checked against the snapshot (length,
    /// hashes, version), its delegator's keys, and expiry.
    fn fetch_targets_role(
        &self,
        role: &str,
        role_keys: &RoleKeys,
        keys: &HashMap<String, PublicKey>,
        now: DateTime<Utc>,
    ) -> Result<Targets, TufError> {
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or_else(|| not_loaded("snapshot"))?;
        let meta = snapshot
            .meta
            .get(&format!("{role}.json"))
            .cloned()
            .ok_or_else(|| TufError::MissingMeta {
                role: "snapshot".into(),
                missing: format!("{role}.json"),
            })?;
        let verify = |bytes: &[u8]| -> Result<Targets, TufError> {
            check_meta_file(role, &meta, bytes)?;
            let env = Envelope::parse(role, "targets", bytes)?;
            env.verify(role_keys, keys)?;
            let t = env.targets()?;
            if t.common.version != meta.version {
                return Err(TufError::VersionMismatch {
                    role: role.to_owned(),
                    expected: meta.version,
                    got: t.common.version,
                });
            }
            check_expiry(role, &t.common, now)?;
            Ok(t)
        };
        if let Ok(Some(stored)) = self.store.read_role(role) {
            if let Ok(t) = verify(&stored) {
                return Ok(t);
            }
        }
        let file = self.meta_file_name(role, meta.version);
        let url = self.metadata_url(&file)?;
        let bytes = self.fetch_meta(&url, meta.length.unwrap_or(self.options.limits.targets))?;
        let t = verify(&bytes)?;
        self.store.write_role(role, &bytes)?;
        Ok(t)
    }

    // ---- helpers ----

    fn meta_file_name(&self, role: &str, version: u64) -> String {
        if self.root.consistent_snapshot {
            format!("{version}.{role}.json")
        } else {
            format!("{role}.json")
        }
    }

    fn metadata_url(&self, file: &str) -> Result<Url, TufError> {
        let mut url = self.options.metadata_base.clone();
        url.path_segments_mut()
            .map_err(|()| TufError::Url {
                what: file.to_owned(),
                detail: format!("{} cannot be a base", self.options.metadata_base),
            })?
            .pop_if_empty()
            .push(file);
        Ok(url)
    }

    fn fetch_meta(&self, url: &Url, limit: u64) -> Result<Vec<u8>, TufError> {
        match self
            .transport
            .fetch(url, limit, None)
            .map_err(|e| fetch_err(url, e))?
        {
            Fetched::Body { bytes, .. } => {
                check_size(url, &bytes, limit)?;
                Ok(bytes)
            }
            Fetched::NotModified => Err(fetch_err(url, FetchError::Http { status: 304 })),
        }
    }

    /// max(system clock, newest trusted time seen): a device without a
    /// real-time clock that boots at 1970 cannot be fed expired metadata.
    fn effective_now(&self) -> DateTime<Utc> {
        let clock = Utc::now();
        match self.trusted_time {
            Some(t) if t > clock => t,
            _ => clock,
        }
    }

    fn remember_time(&mut self, now: DateTime<Utc>) {
        if self.trusted_time.is_some_and(|t| t >= now) {
            return;
        }
        match self.store.write_trusted_time(now) {
            Ok(()) => self.trusted_time = Some(now),
            Err(e) => tracing::warn!("could not persist the trusted time: {e}"),
        }
        self.update_view();
    }

    fn update_view(&mut self) {
        self.view = TrustedMetadata {
            root: (&self.root.common).into(),
            timestamp: self.timestamp.as_ref().map(|t| (&t.common).into()),
            snapshot: self.snapshot.as_ref().map(|s| (&s.common).into()),
            targets: self.targets.as_ref().map(|t| (&t.common).into()),
            consistent_snapshot: self.root.consistent_snapshot,
            trusted_time: self.trusted_time,
        };
    }
}

fn verify_root_self(bytes: &[u8]) -> Result<Root, TufError> {
    let env = Envelope::parse("root", "root", bytes)?;
    let root = env.root()?;
    env.verify(root.role("root")?, &root.keys)?;
    Ok(root)
}

fn load_optional<V>(
    store: &Store,
    role: &str,
    verify: impl FnOnce(&[u8]) -> Result<V, TufError>,
) -> Option<V> {
    let bytes = match store.read_role(role) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!("dropping stored {role} metadata: {e}");
            return None;
        }
    };
    match verify(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("dropping stored {role} metadata: {e}");
            if let Err(e) = store.remove_role(role) {
                tracing::warn!("could not remove stored {role} metadata: {e}");
            }
            None
        }
    }
}

fn key_set(r: &RoleKeys) -> (Vec<String>, u32) {
    let mut ids = r.keyids.clone();
    ids.sort();
    (ids, r.threshold)
}

fn not_loaded(role: &str) -> TufError {
    TufError::NotLoaded {
        role: role.to_owned(),
    }
}

fn fetch_err(url: &Url, error: FetchError) -> TufError {
    TufError::Fetch {
        url: url.to_string(),
        error,
    }
}

/// Defends against a transport that returned more than it was allowed to.
fn check_size(url: &Url, bytes: &[u8], limit: u64) -> Result<(), TufError> {
    if bytes.len() as u64 > limit {
        return Err(fetch_err(url, FetchError::TooLarge { limit }));
    }
    Ok(())
}

fn check_expiry(role: &str, common: &Common, now: DateTime<Utc>) -> Result<(), TufError> {
    if common.expires <= now {
        return Err(TufError::Expired {
            role: role.to_owned(),
            expires: common
                .expires
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
    }
    Ok(())
}

/// Length (when listed) and every listed hash of a metadata file.
fn check_meta_file(role: &str, meta: &MetaFile, bytes: &[u8]) -> Result<(), TufError> {
    let what = format!("{role} metadata");
    if let Some(len) = meta.length {
        if bytes.len() as u64 != len {
            return Err(TufError::LengthMismatch {
                what,
                expected: len,
                actual: bytes.len() as u64,
            });
        }
    }
    if let Some(h) = &meta.hashes {
        check_digests(&what, h, bytes)?;
    }
    Ok(())
}

fn check_digests(what: &str, d: &Digests, bytes: &[u8]) -> Result<(), TufError> {
    if let Some(want) = d.sha256 {
        let got: [u8; 32] = Sha256::digest(bytes).into();
        if got != want {
            return Err(TufError::HashMismatch {
                what: what.to_owned(),
                algorithm: "sha256",
                expected: hex::encode(want),
                actual: hex::encode(got),
            });
        }
    }
    if let Some(want) = d.sha512 {
        let got: [u8; 64] = Sha512::digest(bytes).into();
        if got != want {
            return Err(TufError::HashMismatch {
                what: what.to_owned(),
                algorithm: "sha512",
                expected: hex::encode(want),
                actual: hex::encode(got),
            });
        }
    }
    Ok(())
}

/// Splits a target path into URL path segments, refusing names that could
/// step outside the targets base (`..`, `.`, empty segments, a leading `/`).
fn target_segments(name: &str) -> Result<Vec<&str>, TufError> {
    let segments: Vec<&str> = name.split('/').collect();
    for s in &segments {
        if s.is_empty()
            || *s == "."
            || *s == ".."
            || s.contains('\\')
            || s.chars().any(char::is_control)
        {
            return Err(TufError::InvalidTargetName {
                name: name.to_owned(),
                detail: "empty, '.', '..' or backslash segment, or control character".into(),
            });
        }
    }
    Ok(segments)
}

/// Whether `dest` exists with exactly the target's length and hashes.
fn file_matches(target: &Target, dest: &Path) -> Result<bool, TufError> {
    let file = match std::fs::File::open(dest) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(dest, e)),
    };
    let len = file.metadata().map_err(|e| io_err(dest, e))?.len();
    if len != target.length {
        return Ok(false);
    }
    let Ok(mut verifier) = StreamVerifier::new(target.digests.clone(), target.length) else {
        return Ok(false);
    };
    let mut reader = file;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(dest, e)),
        };
        if verifier.update(&buf[..n]).is_err() {
            return Ok(false);
        }
    }
    Ok(verifier.finish().is_ok())
}
