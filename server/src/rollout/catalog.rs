//! The releases of the currently published targets metadata, with their
//! signed wave schedules: `timestamp.json` → its snapshot version →
//! `V.snapshot.json` → its targets version → `V.targets.json`, read from the
//! storage (directory or bucket) exactly as devices would find them.
//!
//! Releases in delegated targets roles are listed too, each resolved the
//! way the device's TUF client resolves a name (TUF's pre-order search):
//! top-level targets first, then its delegations in order, a role only for
//! the names its paths cover (checked on every delegation of the chain,
//! with the device's own matcher `ota_common::tuf::path_pattern_matches`),
//! the first role that lists a name wins, a terminating role ends the
//! search for the names it covers. So a role is never trusted here for a
//! name outside its paths, and the plan shown is the one devices follow.
//!
//! The server holds no keys and checks no signatures here: these are the
//! files it serves, published through the admin API (each publication is
//! checked as a fresh device would before it becomes visible).

use crate::storage::{Storage, StorageError};
use ota_common::rollout::RolloutPlan;
use ota_common::wire::ReleaseCustom;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Most delegated roles read for one catalog (a repository with more is
/// not ours to walk: the device client caps its search too).
const MAX_ROLES: usize = 256;
/// Deepest chain of delegations followed.
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the published metadata: {0}")]
    Storage(#[from] StorageError),
    #[error("published metadata: {0}")]
    Metadata(String),
}

/// One release as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub target: String,
    pub version: String,
    pub hardware_ids: Vec<String>,
    /// `None`: no staged rollout (devices install at once, never ask).
    pub plan: Option<RolloutPlan>,
    /// The signed length in bytes (0 if the entry lacks one: devices refuse it).
    pub length: u64,
    /// The signed digests, hex by algorithm name.
    pub hashes: BTreeMap<String, String>,
}

/// One signed role of the published repository and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleExpiry {
    /// `root`, `timestamp`, `snapshot`, `targets` or a delegated role's name.
    pub role: String,
    pub version: u64,
    /// `signed.expires` as written (RFC 3339), empty if missing.
    pub expires: String,
}

/// What the published metadata says: releases and the roles that sign them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub releases: Vec<Release>,
    pub roles: Vec<RoleExpiry>,
}

/// Every release of the current top-level targets metadata, by name; empty
/// before the first publication.
pub async fn published(storage: &Storage) -> Result<Vec<Release>, CatalogError> {
    Ok(catalog(storage).await?.releases)
}

/// The releases and every role of the current metadata with its expiry;
/// empty before the first publication.
pub async fn catalog(storage: &Storage) -> Result<Catalog, CatalogError> {
    let Some(timestamp) = read(storage, "timestamp.json").await? else {
        return Ok(Catalog::default());
    };
    let snapshot_version = meta_version(&timestamp, "timestamp.json", "snapshot.json")?;
    let snapshot_name = format!("{snapshot_version}.snapshot.json");
    let snapshot = read(storage, &snapshot_name)
        .await?
        .ok_or_else(|| missing(&snapshot_name, "timestamp.json"))?;
    let targets_version = meta_version(&snapshot, &snapshot_name, "targets.json")?;
    let targets_name = format!("{targets_version}.targets.json");
    let targets = read(storage, &targets_name)
        .await?
        .ok_or_else(|| missing(&targets_name, &snapshot_name))?;
    let roles = load_roles(storage, &snapshot, &snapshot_name, &targets).await?;
    let mut names = BTreeSet::new();
    for doc in std::iter::once(&targets).chain(roles.values()) {
        names.extend(listed(doc).keys().cloned());
    }
    let mut releases = Vec::new();
    for name in names {
        let mut budget = MAX_ROLES;
        let Some(target) = resolve(&name, &targets, &roles, 0, &mut budget) else {
            // Listed only by a role that is not trusted for it.
            continue;
        };
        let custom = target.get("custom").cloned().unwrap_or(Value::Null);
        match serde_json::from_value::<ReleaseCustom>(custom) {
            Ok(c) => releases.push(Release {
                target: name.clone(),
                version: c.version.to_string(),
                hardware_ids: c.hardware_ids,
                plan: c.rollout,
                length: target.get("length").and_then(Value::as_u64).unwrap_or(0),
                hashes: target
                    .get("hashes")
                    .and_then(Value::as_object)
                    .map(|h| {
                        h.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            // Devices refuse such a target too; it is nobody's rollout.
            Err(e) => tracing::warn!(target = %name, "{targets_name}: target not listed: {e}"),
        }
    }
    releases.sort_by(|a, b| a.target.cmp(&b.target));
    let mut expiries = Vec::new();
    if let Some(root) = newest_root(storage).await? {
        expiries.push(role_expiry("root", &root));
    }
    expiries.push(role_expiry("timestamp", &timestamp));
    expiries.push(role_expiry("snapshot", &snapshot));
    expiries.push(role_expiry("targets", &targets));
    let mut delegated: Vec<_> = roles.iter().collect();
    delegated.sort_by(|a, b| a.0.cmp(b.0));
    expiries.extend(delegated.into_iter().map(|(n, d)| role_expiry(n, d)));
    Ok(Catalog {
        releases,
        roles: expiries,
    })
}

/// Most root versions walked to find the newest (as the device's client
/// bounds its root rotation).
const MAX_ROOT_VERSIONS: u64 = 1024;

/// The newest root: `root.json` where the publisher uploaded it, else the
/// last of `1.root.json`, `2.root.json`, ... (what devices walk too).
async fn newest_root(storage: &Storage) -> Result<Option<Value>, CatalogError> {
    if let Some(root) = read(storage, "root.json").await? {
        return Ok(Some(root));
    }
    let mut newest = None;
    for version in 1..=MAX_ROOT_VERSIONS {
        match read(storage, &format!("{version}.root.json")).await? {
            Some(doc) => newest = Some(doc),
            None => break,
        }
    }
    Ok(newest)
}

fn role_expiry(role: &str, doc: &Value) -> RoleExpiry {
    RoleExpiry {
        role: role.to_owned(),
        version: doc
            .pointer("/signed/version")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        expires: doc
            .pointer("/signed/expires")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    }
}

fn listed(doc: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    doc.pointer("/signed/targets")
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// The delegations a targets document makes, in search order.
fn delegations(doc: &Value) -> &[Value] {
    doc.pointer("/signed/delegations/roles")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Whether delegation `d` trusts its role for `name`: a `paths` pattern
/// matches it (the device's matcher) or a `path_hash_prefixes` entry
/// prefixes the SHA-256 of the name. Neither listed: trusted for nothing.
fn covers(d: &Value, name: &str) -> bool {
    if let Some(paths) = d.get("paths").and_then(Value::as_array) {
        return paths
            .iter()
            .filter_map(Value::as_str)
            .any(|p| ota_common::tuf::path_pattern_matches(p, name));
    }
    if let Some(prefixes) = d.get("path_hash_prefixes").and_then(Value::as_array) {
        let hash = ota_common::hash::sha256_hex(name.as_bytes());
        return prefixes
            .iter()
            .filter_map(Value::as_str)
            .any(|p| hash.starts_with(&p.to_ascii_lowercase()));
    }
    false
}

/// A role name that is safe as part of a metadata file name.
fn safe_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Every delegated role reachable from top-level targets that the snapshot
/// lists, by name, read from the storage (`V.ROLE.json`).
async fn load_roles(
    storage: &Storage,
    snapshot: &Value,
    snapshot_name: &str,
    targets: &Value,
) -> Result<HashMap<String, Value>, CatalogError> {
    let mut roles: HashMap<String, Value> = HashMap::new();
    let mut queue: Vec<(String, usize)> = delegations(targets)
        .iter()
        .filter_map(|d| d.get("name").and_then(Value::as_str))
        .map(|n| (n.to_owned(), 1))
        .collect();
    queue.reverse();
    while let Some((name, depth)) = queue.pop() {
        if roles.contains_key(&name) || depth > MAX_DEPTH {
            continue;
        }
        if roles.len() >= MAX_ROLES {
            tracing::warn!("more than {MAX_ROLES} delegated roles; the rest are not listed");
            break;
        }
        if !safe_role_name(&name) {
            tracing::warn!(role = %name, "delegated role name not usable as a file name; not listed");
            continue;
        }
        let Ok(version) = meta_version(snapshot, snapshot_name, &format!("{name}.json")) else {
            // Devices refuse a role the snapshot does not list.
            tracing::warn!(role = %name, "{snapshot_name} does not list the role; not listed");
            continue;
        };
        let file = format!("{version}.{name}.json");
        let doc = read(storage, &file)
            .await?
            .ok_or_else(|| missing(&file, snapshot_name))?;
        let mut children: Vec<(String, usize)> = delegations(&doc)
            .iter()
            .filter_map(|d| d.get("name").and_then(Value::as_str))
            .map(|n| (n.to_owned(), depth + 1))
            .collect();
        children.reverse();
        queue.extend(children);
        roles.insert(name, doc);
    }
    Ok(roles)
}

/// TUF's pre-order search for `name` from `doc`: its own entry, else each
/// delegation covering `name` in order (a terminating one ends the search).
/// `budget` bounds the roles visited, so delegation cycles stay cheap.
fn resolve<'a>(
    name: &str,
    doc: &'a Value,
    roles: &'a HashMap<String, Value>,
    depth: usize,
    budget: &mut usize,
) -> Option<&'a Value> {
    if let Some(t) = listed(doc).get(name) {
        return Some(t);
    }
    if depth >= MAX_DEPTH || *budget == 0 {
        return None;
    }
    *budget -= 1;
    for d in delegations(doc) {
        if !covers(d, name) {
            continue;
        }
        let child = d
            .get("name")
            .and_then(Value::as_str)
            .and_then(|n| roles.get(n));
        if let Some(found) = child.and_then(|c| resolve(name, c, roles, depth + 1, budget)) {
            return Some(found);
        }
        if d.get("terminating").and_then(Value::as_bool) == Some(true) {
            return None;
        }
    }
    None
}

/// The published release named `target`, if any.
pub async fn release(storage: &Storage, target: &str) -> Result<Option<Release>, CatalogError> {
    Ok(published(storage)
        .await?
        .into_iter()
        .find(|r| r.target == target))
}

async fn read(storage: &Storage, name: &str) -> Result<Option<Value>, CatalogError> {
    let Some(bytes) = storage.read_metadata(name).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CatalogError::Metadata(format!("{name} is not JSON: {e}")))
}

fn meta_version(doc: &Value, file: &str, entry: &str) -> Result<u64, CatalogError> {
    doc.pointer("/signed/meta")
        .and_then(|m| m.get(entry))
        .and_then(|m| m.get("version"))
        .and_then(Value::as_u64)
        .ok_or_else(|| CatalogError::Metadata(format!("{file} names no version of {entry}")))
}

fn missing(name: &str, referrer: &str) -> CatalogError {
    CatalogError::Metadata(format!("{name}, named by {referrer}, is not published"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(paths: &[&str], terminating: bool, name: &str) -> Value {
        json!({"name": name, "keyids": [], "threshold": 1, "paths": paths, "terminating": terminating})
    }

    fn doc(targets: &[&str], delegations: Vec<Value>) -> Value {
        let t: Map<String, Value> = targets
            .iter()
            .map(|n| ((*n).to_owned(), json!({"custom": {"from": n}})))
            .collect();
        json!({"signed": {"targets": t, "delegations": {"keys": {}, "roles": delegations}}})
    }

    #[test]
    fn a_role_counts_only_for_its_paths_and_the_first_match_wins() {
        let top = doc(
            &["top.img"],
            vec![
                role(&["board-a/*"], true, "a"),
                role(&["*"], false, "b"),
                role(&["board-a/*", "board-c/*"], false, "c"),
            ],
        );
        let roles = HashMap::from([
            // "a" lists a name outside its paths: never trusted for it.
            (
                "a".to_owned(),
                doc(&["board-a/fw.img", "board-b/x.img"], vec![]),
            ),
            ("b".to_owned(), doc(&["board-b/x.img"], vec![])),
            // Shadowed by terminating "a" for board-a/*.
            (
                "c".to_owned(),
                doc(&["board-a/other.img", "board-c/y.img"], vec![]),
            ),
        ]);
        let found = |name: &str| {
            let mut budget = MAX_ROLES;
            resolve(name, &top, &roles, 0, &mut budget).map(|t| t["custom"]["from"].clone())
        };
        assert!(found("top.img").is_some());
        assert!(found("board-a/fw.img").is_some());
        // Listed by a (outside its paths, refused) and b ('*' does not cross '/').
        assert_eq!(found("board-b/x.img"), None);
        // a terminates the search for board-a/*: c is never asked.
        assert_eq!(found("board-a/other.img"), None);
        assert!(found("board-c/y.img").is_some());
    }

    #[test]
    fn hostile_role_names_and_cycles_stay_bounded() {
        assert!(safe_role_name("board-a"));
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(!safe_role_name(bad), "{bad}");
        }
        let cyc = doc(&[], vec![role(&["*"], false, "x")]);
        let roles = HashMap::from([("x".to_owned(), cyc.clone())]);
        let mut budget = MAX_ROLES;
        assert_eq!(resolve("fw.img", &cyc, &roles, 0, &mut budget), None);
    }
}
