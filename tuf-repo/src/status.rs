//! `ota-repo status`: what is signed, by which keys, where each key lives,
//! until when, and which releases are listed; flags metadata that expires
//! within a warning window so a cron job or CI can alert in time.

use crate::config::RepoConfig;
use crate::error::Result;
use crate::keys;
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use ota_common::wire::ReleaseCustom;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Default warning window of `status --warn-within`.
pub const DEFAULT_WARN_WITHIN: &str = "14d";

#[derive(Debug, Clone)]
pub struct StatusReport {
    pub text: String,
    /// One line per role that has expired or expires within the window.
    pub warnings: Vec<String>,
}

pub async fn status(layout: &Layout, warn_within_secs: i64) -> Result<StatusReport> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let now = jiff::Timestamp::now();
    let horizon = now
        .checked_add(jiff::SignedDuration::from_secs(warn_within_secs))
        .unwrap_or(now);

    // Key id -> where the key lives, from repo.json. A token's public key is
    // read without a PIN; a key that cannot be reached is reported as such.
    let mut locations: HashMap<String, String> = HashMap::new();
    let mut unreachable = Vec::new();
    for role in Role::ALL {
        for key_ref in &config.role(role)?.keys {
            match key_ref
                .public_key(Some(layout))
                .and_then(|k| keys::key_id(&k))
            {
                Ok(id) => {
                    locations.insert(id, key_ref.describe(Some(layout)));
                }
                Err(e) => unreachable.push(format!("{role}: {e}")),
            }
        }
    }

    let mut out = String::new();
    let mut warnings = Vec::new();
    let _ = writeln!(out, "repository {}", layout.root().display());
    let root = &state.root.signed;
    let rows = [
        (Role::Root, root.version.get(), root.expires),
        (
            Role::Targets,
            state.targets.signed.version.get(),
            state.targets.signed.expires,
        ),
        (
            Role::Snapshot,
            state.snapshot.signed.version.get(),
            state.snapshot.signed.expires,
        ),
        (
            Role::Timestamp,
            state.timestamp.signed.version.get(),
            state.timestamp.signed.expires,
        ),
    ];
    for (role, version, expires) in rows {
        let flag = if expires <= now {
            warnings.push(format!("{role} metadata EXPIRED at {expires}"));
            "  EXPIRED"
        } else if expires <= horizon {
            warnings.push(format!("{role} metadata expires soon, at {expires}"));
            "  EXPIRES SOON"
        } else {
            ""
        };
        let policy = config
            .role(role)
            .map(|r| r.expires.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\n{role}: version {version}, expires {expires}{flag} (policy {policy})"
        );
        if let Some(rk) = root.roles.get(&role.role_type()) {
            let _ = writeln!(
                out,
                "  threshold {} of {} key(s)",
                rk.threshold,
                rk.keyids.len()
            );
            for id in &rk.keyids {
                let id_hex = hex::encode(&**id);
                let kind = root
                    .keys
                    .get(id)
                    .map(keys::describe)
                    .unwrap_or_else(|| "?".to_owned());
                let location = locations
                    .get(&id_hex)
                    .cloned()
                    .unwrap_or_else(|| "offline (not in repo.json)".to_owned());
                let _ = writeln!(out, "  key {id_hex} {kind}\n      {location}");
            }
        }
    }
    for problem in unreachable {
        let _ = writeln!(out, "\nkey not reachable: {problem}");
    }

    let mut targets: Vec<_> = state.targets.signed.targets.iter().collect();
    targets.sort_by(|a, b| a.0.raw().cmp(b.0.raw()));
    let _ = writeln!(out, "\ntargets ({}):", targets.len());
    for (name, target) in targets {
        let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
        match serde_json::from_value::<ReleaseCustom>(custom) {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "  {}  version {}  hardware ids {}  {} bytes",
                    name.raw(),
                    r.version,
                    r.hardware_ids.join(","),
                    target.length
                );
            }
            Err(_) => {
                let _ = writeln!(
                    out,
                    "  {}  (no release fields)  {} bytes",
                    name.raw(),
                    target.length
                );
            }
        }
    }
    Ok(StatusReport {
        text: out,
        warnings,
    })
}
