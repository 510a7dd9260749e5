//! `ota-repo status`: what is signed, by which keys, until when, and which
//! releases are listed.

use crate::config::RepoConfig;
use crate::error::Result;
use crate::keys;
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use ota_common::wire::ReleaseCustom;
use std::collections::HashMap;
use std::fmt::Write as _;

pub async fn status(layout: &Layout) -> Result<String> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let now = jiff::Timestamp::now();

    // Key id -> configured key file, so each listed key shows where it lives.
    let mut files = HashMap::new();
    for role in Role::ALL {
        for rel in &config.role(role)?.keys {
            let path = layout.resolve(rel);
            if let Ok(id) = keys::public_key(&path).and_then(|k| keys::key_id(&k)) {
                files.insert(id, path);
            }
        }
    }

    let mut out = String::new();
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
        let expired = if expires <= now { "  EXPIRED" } else { "" };
        let policy = config
            .role(role)
            .map(|r| r.expires.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\n{role}: version {version}, expires {expires}{expired} (policy {policy})"
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
                let location = match files.get(&id_hex) {
                    Some(path) => {
                        format!("software key file (development only): {}", path.display())
                    }
                    None => "no key file in repo.json".to_owned(),
                };
                let _ = writeln!(out, "  key {id_hex} {kind}\n      {location}");
            }
        }
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
    Ok(out)
}
