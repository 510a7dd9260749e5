//! `ota-repo evidence`: the record an auditor asks for under IEC 81001-5-1
//! for one release, written as Markdown (to read) and JSON (to archive and
//! check by machine). Every item names the clause it serves:
//!
//! * §5.8.3 (integrity of every release file): each file with its length,
//!   SHA-256 and SHA-512; the signatures on every role (valid ones counted
//!   against the threshold, as a device counts them); expiry dates; and an
//!   independent verification of the *published* repository by our device
//!   TUF client from a fresh trusted root, which downloads and hash-checks
//!   every file of the release.
//! * §5.8.4 (protection of private signing keys): the key inventory, with
//!   the protection attributes of each PKCS#11 key read back from the token
//!   (not what was asked for when it was generated), and the signing audit
//!   log's entries for the release with the result of checking its chain.
//!
//! The evidence is written even when a check fails, so the failure is on
//! record; [`Evidence::passed`] says whether it did.

use crate::audit::AuditEntry;
use crate::config::RepoConfig;
use crate::error::{RepoError, Result};
use crate::key_ref::KeyRef;
use crate::keys;
use crate::layout::Layout;
use crate::pkcs11::KeyProtection;
use crate::role::Role;
use crate::state::{dir_url, RepoState};
use ota_common::hash::{Digests, StreamVerifier};
use ota_common::tuf::{ClientOptions, FileTransport, Transport, TufClient};
use ota_common::wire::ReleaseCustom;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use tough::schema::{Root, Signed};
use url::Url;

/// IEC 81001-5-1 §5.8.3: integrity check for every release file.
pub const CLAUSE_INTEGRITY: &str = "IEC 81001-5-1 5.8.3";
/// IEC 81001-5-1 §5.8.4: protection of private signing keys.
pub const CLAUSE_KEYS: &str = "IEC 81001-5-1 5.8.4";
/// Largest metadata file read while looking for the release's audit entries.
const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

mod audit;
mod collect;
mod model;
mod report;
mod verify;

use audit::*;
use collect::*;
pub use model::*;
use verify::*;

/// Builds the evidence. Runs blocking I/O (and, for [`Published::Url`],
/// a blocking HTTP client): call it outside an async runtime.
pub fn build(layout: &Layout, state: &RepoState, options: &EvidenceOptions) -> Result<Evidence> {
    let config = RepoConfig::load(layout)?;
    let now = jiff::Timestamp::now();
    let mut failures = Vec::new();
    let mut warnings = Vec::new();

    let release =
        semver::Version::parse(&options.release).map_err(|e| RepoError::InvalidVersion {
            value: options.release.clone(),
            detail: e.to_string(),
        })?;
    let files = release_files(layout, state, &release)?;

    let root = &state.root.signed;
    let roles = vec![
        role_evidence(Role::Root, &state.root, root, now)?,
        role_evidence(Role::Targets, &state.targets, root, now)?,
        role_evidence(Role::Snapshot, &state.snapshot, root, now)?,
        role_evidence(Role::Timestamp, &state.timestamp, root, now)?,
    ];
    let mut roles = roles;
    let signing_roles: BTreeSet<&str> = files.iter().map(|f| f.signed_by.as_str()).collect();
    for role in crate::delegation::roles(state) {
        if signing_roles.contains(role.name.as_str()) {
            roles.push(delegated_role_evidence(state, role, now)?);
        }
    }
    for r in &roles {
        if !r.threshold_met {
            failures.push(format!(
                "{} metadata has {} valid signature(s) of the {} required",
                r.role, r.valid_signatures, r.threshold
            ));
        }
        if r.expired {
            failures.push(format!("{} metadata expired at {}", r.role, r.expires));
        }
    }

    let keys = key_inventory(layout, &config, root, &mut warnings)?;
    let audit = audit_evidence(layout, &config, state, &files)?;
    if !audit.intact {
        failures.push(format!("audit log: {}", audit.verify_result));
    }
    let online_audit = match &options.online_audit {
        Some(file) => {
            let online =
                online_audit_evidence(file, &crate::editor::audit_log(layout, &config), &audit)?;
            if !online.intact {
                failures.push(format!("online audit log: {}", online.verify_result));
            }
            if online.entries.is_empty() {
                warnings.push(format!(
                    "the online audit log {} has no timestamp or snapshot signature made while release {} was current",
                    online.log, options.release
                ));
            }
            Some(online)
        }
        None => None,
    };

    let verification = verify_published(layout, options, &files);
    if !verification.passed {
        failures.push(match &verification.error {
            Some(e) => format!("independent verification failed: {e}"),
            None => {
                "independent verification failed for: ".to_owned()
                    + &verification
                        .targets
                        .iter()
                        .filter(|t| !t.passed)
                        .map(|t| format!("{} ({})", t.name, t.detail))
                        .collect::<Vec<_>>()
                        .join(", ")
            }
        });
    }

    Ok(Evidence {
        standard: "IEC 81001-5-1",
        generated_at: now.round(jiff::Unit::Second).unwrap_or(now).to_string(),
        repository: layout.root().display().to_string(),
        // Normalised, so it is safe in the file names.
        release: release.to_string(),
        passed: failures.is_empty(),
        failures,
        warnings,
        files,
        roles,
        keys,
        audit,
        online_audit,
        verification,
    })
}
