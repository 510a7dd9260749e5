//! What the subcommands share: outcome messages, argument parsing, the runtime.

use anyhow::{bail, Context, Result};
use ota_repo::ceremony;
use ota_repo::expiry::Expiry;
use ota_repo::role::{parse_role_pair, Role};
use std::collections::BTreeMap;

/// Tells the release engineer that a role version waits for offline
/// signatures, and how to collect them.
pub(crate) fn print_pending(pending: Option<&ceremony::PendingRole>) {
    if let Some(p) = pending {
        println!(
            "{}; publish refuses until it is complete: {}",
            p.describe(),
            p.next_steps()
        );
    }
}

/// What happened to the new targets version: signed, or waiting for
/// offline signatures (then it is not signed, whatever else was).
pub(crate) fn targets_outcome(version: u64, pending: Option<&ceremony::PendingRole>) -> String {
    match pending {
        Some(p) if p.role == Role::Targets && p.delegated.is_none() && p.version == version => {
            format!("targets version {version} is NOT signed yet (waiting for offline signatures)")
        }
        Some(p) => format!(
            "signed targets version {version}; {} version {} is NOT signed yet (waiting for offline signatures)",
            p.name(),
            p.version
        ),
        None => format!("signed targets version {version}"),
    }
}

/// What happened to a delegated role's new version: signed (and what
/// followed), or waiting for offline signatures.
pub(crate) fn role_outcome(role: &str, version: u64, progress: &ceremony::Progress) -> String {
    match &progress.pending {
        Some(p) if p.delegated.as_deref() == Some(role) => {
            format!("{role} version {version} is NOT signed yet (waiting for offline signatures)")
        }
        _ => {
            let mut out = format!("signed {role} version {version}");
            for (r, v) in &progress.signed {
                out.push_str(&format!(", {r} version {v}"));
            }
            out
        }
    }
}

/// The role `ceremony --role` names: a top-level role or a delegated one.
pub(crate) fn ceremony_role(arg: &str) -> Result<ceremony::CeremonyRole> {
    ceremony::CeremonyRole::parse(arg).map_err(|e| {
        anyhow::anyhow!(
            "--role {arg}: neither root, targets, snapshot, timestamp nor a delegated role ({e})"
        )
    })
}

pub(crate) fn role_map<T>(
    args: &[String],
    flag: &str,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<BTreeMap<Role, T>> {
    let mut map = BTreeMap::new();
    for arg in args {
        let (role, value) = parse_role_pair(arg).with_context(|| format!("--{flag} {arg}"))?;
        let v = parse(&value).with_context(|| format!("--{flag} {arg}"))?;
        if map.insert(role, v).is_some() {
            bail!("--{flag} given twice for {role}");
        }
    }
    Ok(map)
}

pub(crate) fn parse_count(s: &str) -> Result<u64> {
    s.parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a whole number"))
}

pub(crate) fn parse_expiry(s: &str) -> Result<Expiry> {
    Ok(s.parse::<Expiry>()?)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
