//! `ota-repo status`: what is signed, by which keys, where each key lives,
//! until when, and which releases are listed; flags metadata that expires
//! within a warning window so a cron job or CI can alert in time.
//!
//! The default window is meant for a daily cron job on an unchanged
//! repository: one fixed window cannot fit both root (a year) and
//! timestamp (a week, re-signed daily or online by the server), so each
//! role is flagged when less than a third of its lifetime (its expiry
//! policy in repo.json) remains, and never more than 14 days ahead. A
//! 7-day timestamp is flagged with under 2d 8h left (its daily re-signing
//! has missed about four runs), a 30-day snapshot with under 10 days, root
//! and targets with under 14 days; a fresh repository passes. An explicit
//! `--warn-within` applies as given to every role.

use crate::config::RepoConfig;
use crate::error::Result;
use crate::expiry::Expiry;
use crate::keys;
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use ota_common::wire::ReleaseCustom;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Longest default warning window (`status` without `--warn-within`).
pub const DEFAULT_WARN_WITHIN: &str = "14d";
const DEFAULT_WARN_WITHIN_SECS: i64 = 14 * 86_400;
/// Without `--warn-within`, a role is flagged once less than
/// 1/`LIFETIME_DIVISOR` of its lifetime remains (capped at 14 days).
pub const LIFETIME_DIVISOR: i64 = 3;

/// How far ahead `status` looks for expiring metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarnWindow {
    /// Per role: a third of its lifetime, at most 14 days (the default).
    Scaled,
    /// The same window for every role (`--warn-within`), in seconds.
    Within(i64),
}

impl WarnWindow {
    /// The window for a role whose expiry policy is `policy`. A fixed
    /// expiry instant says nothing of the lifetime: 14 days then.
    pub fn for_policy(self, policy: Option<Expiry>) -> i64 {
        match (self, policy) {
            (WarnWindow::Within(secs), _) => secs,
            (WarnWindow::Scaled, Some(Expiry::After(lifetime))) => {
                (lifetime / LIFETIME_DIVISOR).min(DEFAULT_WARN_WITHIN_SECS)
            }
            (WarnWindow::Scaled, _) => DEFAULT_WARN_WITHIN_SECS,
        }
    }
}

/// `2d 8h`, `14d`, `90s`: a window for people.
pub fn human_duration(secs: i64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let parts: Vec<String> = [(d, "d"), (h, "h"), (m, "m"), (s, "s")]
        .iter()
        .filter(|(n, _)| *n != 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

#[derive(Debug, Clone)]
pub struct StatusReport {
    pub text: String,
    /// One line per role that has expired or expires within its window
    /// (each line names the window).
    pub warnings: Vec<String>,
    /// One line per open ceremony: a role version that is not signed to
    /// its threshold yet, so a release is unfinished (publish refuses it).
    pub pending: Vec<String>,
}

pub async fn status(layout: &Layout, window: WarnWindow) -> Result<StatusReport> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let now = jiff::Timestamp::now();

    // Key id -> where the key lives, from repo.json. A token's public key is
    // read without a PIN; a key that cannot be reached is reported as such.
    let mut locations: HashMap<String, String> = HashMap::new();
    let mut unreachable = Vec::new();
    for role in Role::ALL {
        for key_ref in &config.role(role)?.keys {
            match key_ref
                .public_key(Some(layout.root()))
                .and_then(|k| keys::key_id(&k))
            {
                Ok(id) => {
                    locations.insert(id, key_ref.describe(Some(layout.root())));
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
        let policy = config
            .role(role)
            .map(|r| r.expires.clone())
            .unwrap_or_default();
        let window_secs = window.for_policy(policy.parse::<Expiry>().ok());
        let horizon = now
            .checked_add(jiff::SignedDuration::from_secs(window_secs))
            .unwrap_or(now);
        let within = human_duration(window_secs);
        let flag = if expires <= now {
            warnings.push(format!("{role} metadata EXPIRED at {expires}"));
            "  EXPIRED"
        } else if expires <= horizon {
            warnings.push(format!(
                "{role} metadata expires soon, at {expires} (within {within})"
            ));
            "  EXPIRES SOON"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\n{role}: version {version}, expires {expires}{flag} (policy {policy}, warn within {within})"
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
    for role in crate::delegation::roles(&state) {
        let Some(signed) = &role.targets else {
            continue;
        };
        let (version, expires) = (signed.signed.version.get(), signed.signed.expires);
        let policy = config
            .delegations
            .get(&role.name)
            .map(|r| r.expires.clone())
            .unwrap_or_default();
        let window_secs = window.for_policy(policy.parse::<Expiry>().ok());
        let horizon = now
            .checked_add(jiff::SignedDuration::from_secs(window_secs))
            .unwrap_or(now);
        let within = human_duration(window_secs);
        let name = &role.name;
        let flag = if expires <= now {
            warnings.push(format!(
                "delegated role {name} metadata EXPIRED at {expires}"
            ));
            "  EXPIRED"
        } else if expires <= horizon {
            warnings.push(format!(
                "delegated role {name} metadata expires soon, at {expires} (within {within})"
            ));
            "  EXPIRES SOON"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\ndelegated role {name}: version {version}, expires {expires}{flag} (policy {policy}, warn within {within})\n  paths {}{}",
            crate::delegation::paths_of(role).join(", "),
            if role.terminating { ", terminating" } else { "" }
        );
        let mut role_locations: HashMap<String, String> = HashMap::new();
        for key_ref in config
            .delegations
            .get(name)
            .map(|c| c.keys.as_slice())
            .unwrap_or(&[])
        {
            match key_ref
                .public_key(Some(layout.root()))
                .and_then(|k| keys::key_id(&k))
            {
                Ok(id) => {
                    role_locations.insert(id, key_ref.describe(Some(layout.root())));
                }
                Err(e) => {
                    let _ = writeln!(out, "  key not reachable: {e}");
                }
            }
        }
        let _ = writeln!(
            out,
            "  threshold {} of {} key(s)",
            role.threshold,
            role.keyids.len()
        );
        let delegation_keys = state.targets.signed.delegations.as_ref().map(|d| &d.keys);
        for id in &role.keyids {
            let id_hex = hex::encode(&**id);
            let kind = delegation_keys
                .and_then(|k| k.get(id))
                .map(keys::describe)
                .unwrap_or_else(|| "?".to_owned());
            let location = role_locations
                .get(&id_hex)
                .cloned()
                .unwrap_or_else(|| "offline (not in repo.json)".to_owned());
            let _ = writeln!(out, "  key {id_hex} {kind}\n      {location}");
        }
    }
    for problem in unreachable {
        let _ = writeln!(out, "\nkey not reachable: {problem}");
    }

    let mut targets: Vec<_> = state
        .targets
        .signed
        .targets
        .iter()
        .map(|(n, t)| (n, t, String::new()))
        .collect();
    for role in crate::delegation::roles(&state) {
        if let Some(signed) = &role.targets {
            targets.extend(
                signed
                    .signed
                    .targets
                    .iter()
                    .map(|(n, t)| (n, t, format!("  (role {})", role.name))),
            );
        }
    }
    targets.sort_by(|a, b| a.0.raw().cmp(b.0.raw()));
    let _ = writeln!(out, "\ntargets ({}):", targets.len());
    for (name, target, by) in targets {
        let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
        match serde_json::from_value::<ReleaseCustom>(custom) {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "  {}  version {}  hardware ids {}  {} bytes{by}",
                    name.raw(),
                    r.version,
                    r.hardware_ids.join(","),
                    target.length
                );
            }
            Err(_) => {
                let _ = writeln!(
                    out,
                    "  {}  (no release fields)  {} bytes{by}",
                    name.raw(),
                    target.length
                );
            }
        }
    }
    let open = crate::ceremony::pending(layout)?;
    let mut pending = Vec::new();
    if open.is_empty() {
        let _ = writeln!(out, "\nceremonies: none open");
    } else {
        let _ = writeln!(out, "\nceremonies open ({}):", open.len());
        for p in &open {
            let counts = p
                .counts
                .iter()
                .map(|(what, have, need, _)| format!("{have} of {need} signatures ({what})"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "  {} version {}: {counts}\n      payload {}",
                p.name(),
                p.version,
                p.payload.display()
            );
            pending.push(format!("{}; finish it: {}", p.describe(), p.next_steps()));
        }
    }
    Ok(StatusReport {
        text: out,
        warnings,
        pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_window_scales_with_short_lifetimes() {
        let w = WarnWindow::Scaled;
        // Default policies: root 365d, targets 90d, snapshot 30d, timestamp 7d.
        assert_eq!(w.for_policy(Some(Expiry::After(365 * 86_400))), 14 * 86_400);
        assert_eq!(w.for_policy(Some(Expiry::After(90 * 86_400))), 14 * 86_400);
        assert_eq!(w.for_policy(Some(Expiry::After(30 * 86_400))), 10 * 86_400);
        assert_eq!(w.for_policy(Some(Expiry::After(7 * 86_400))), 56 * 3600);
        assert_eq!(w.for_policy(None), 14 * 86_400);
        // Explicit windows stay strict.
        assert_eq!(
            WarnWindow::Within(86_400).for_policy(Some(Expiry::After(60))),
            86_400
        );
        assert_eq!(human_duration(56 * 3600), "2d 8h");
        assert_eq!(human_duration(14 * 86_400), "14d");
        assert_eq!(human_duration(0), "0s");
    }
}
