//! `delegate`, `undelegate`, `add` and `resign`: new metadata.

use super::args::*;
use super::util::*;
use anyhow::{bail, Context, Result};
use ota_common::rollout::RolloutPlan;
use ota_common::wire::PayloadCustom;
use ota_repo::add;
use ota_repo::ceremony;
use ota_repo::key_ref::KeyRef;
use ota_repo::keys::KeyType;
use ota_repo::layout::Layout;
use ota_repo::resign;
use ota_repo::role::Role;
use ota_repo::rollout;

pub(crate) fn run(layout: Layout, command: Command) -> Result<()> {
    match command {
        Command::Delegate {
            name,
            paths,
            keys,
            key_uris,
            key_pubs,
            generate_key,
            key_type,
            threshold,
            terminating,
            expires,
        } => {
            // A key file given here is where the user stands, not relative
            // to the repository (as paths in repo.json are): store it absolute.
            let mut key_refs: Vec<KeyRef> = keys
                .iter()
                .map(|p| {
                    std::path::absolute(p)
                        .map(KeyRef::File)
                        .with_context(|| format!("--key {}", p.display()))
                })
                .collect::<Result<_>>()?;
            for uri in key_uris {
                key_refs.push(KeyRef::Pkcs11(uri.parse()?));
            }
            let options = ota_repo::delegation::DelegateOptions {
                name,
                paths,
                keys: key_refs,
                public_keys: key_pubs,
                generate_key: generate_key
                    .then(|| key_type.parse::<KeyType>())
                    .transpose()?,
                threshold,
                terminating,
                expires: expires.as_deref().map(parse_expiry).transpose()?,
            };
            let d = runtime()?.block_on(ota_repo::delegation::delegate(&layout, &options))?;
            let pending = d.progress.pending.as_ref();
            let outcome = match pending {
                // `--key-pub`: the targets is signed but waits with version 1.
                Some(p) if p.delegated.as_deref() == Some(d.name.as_str()) && p.version == 1 => {
                    format!(
                    "targets version {} and {} version 1 are NOT committed yet: {} version 1 waits for offline signatures",
                    d.targets_version, d.name, d.name
                )
                }
                _ => targets_outcome(d.targets_version, pending),
            };
            println!(
                "delegated {} to role {} ({} key(s), threshold {}); {outcome}",
                options.paths.join(", "),
                d.name,
                d.keys.len(),
                options.threshold,
            );
            for (id, location) in &d.keys {
                println!("  {} key {id}\n      {location}", d.name);
            }
            print_pending(pending);
        }
        Command::Undelegate { name } => {
            let u = runtime()?.block_on(ota_repo::delegation::undelegate(&layout, &name))?;
            let pending = u.progress.pending.as_ref();
            println!(
                "removed the delegation to {name}; {}",
                targets_outcome(u.targets_version, pending)
            );
            print_pending(pending);
        }
        Command::Add {
            image,
            version,
            hardware_ids,
            notes,
            name,
            role,
            compress,
            frame_size,
            compress_level,
            delta,
            hashes,
            rollout,
        } => {
            let options = add::AddOptions {
                image,
                version,
                hardware_ids,
                notes,
                name,
            };
            let compression = match &compress {
                Some(c) => c.parse::<add::Compression>()?,
                None => add::Compression::Zstd,
            };
            let packing = add::Packing {
                compression,
                frame_size: frame_size.unwrap_or(add::pack::DEFAULT_FRAME_SIZE),
                level: compress_level,
                delta,
                list_sha512: lists_sha512(&hashes)?,
            };
            // Built (and refused) before the image is copied or anything signed.
            let plan = rollout.into_args().plan(None, chrono::Utc::now())?;
            for w in plan.iter().flat_map(rollout::warnings) {
                eprintln!("ota-repo: warning: {w}");
            }
            match role {
                Some(role) => add_to_role(&layout, &role, &options, plan, &packing)?,
                None => add_top_level(&layout, &options, plan, &packing)?,
            }
        }
        Command::Resign {
            roles,
            expires,
            allow_expired,
        } => {
            let (top, delegated): (Vec<String>, Vec<String>) = roles
                .into_iter()
                .partition(|r| Role::ALL.iter().any(|t| t.as_str() == r));
            if !delegated.is_empty() {
                if delegated.len() > 1 || !top.is_empty() || !expires.is_empty() {
                    bail!("re-sign one delegated role at a time, alone (its snapshot and timestamp follow)");
                }
                let (v, exp, progress) = runtime()?.block_on(ota_repo::delegation::resign(
                    &layout,
                    &delegated[0],
                    None,
                    allow_expired,
                ))?;
                println!("signed {} version {v}, expires {exp}", delegated[0]);
                for (r, v) in &progress.signed {
                    println!("signed {r} version {v}");
                }
                print_pending(progress.pending.as_ref());
                return Ok(());
            }
            let options = resign::ResignOptions {
                roles: top.iter().map(|r| r.parse()).collect::<Result<_, _>>()?,
                expires: role_map(&expires, "expires", parse_expiry)?,
                allow_expired,
            };
            let done = runtime()?.block_on(resign::resign(&layout, &options))?;
            for (role, version, expires) in done.roles {
                println!("signed {role} version {version}, expires {expires}");
            }
        }
        other => unreachable!("{other:?} is dispatched elsewhere"),
    }
    Ok(())
}

/// `--hash` values: whether the target lists sha512 beside sha256.
fn lists_sha512(hashes: &[String]) -> Result<bool> {
    let mut sha512 = false;
    for h in hashes {
        match h.to_ascii_lowercase().as_str() {
            "sha256" => {}
            "sha512" => sha512 = true,
            other => bail!("--hash {other}: a target lists sha256 and optionally sha512"),
        }
    }
    Ok(sha512)
}

/// `add --role ROLE`: the image as a target of a delegated role.
fn add_to_role(
    layout: &Layout,
    role: &str,
    options: &add::AddOptions,
    plan: Option<RolloutPlan>,
    packing: &add::Packing,
) -> Result<()> {
    let (added, payload, progress) = runtime()?.block_on(ota_repo::delegation::add(
        layout, role, options, plan, packing,
    ))?;
    let outcome = role_outcome(role, added.targets_version, &progress);
    println!(
        "added {} ({} bytes, sha256 {}{}) to delegated role {role}; {outcome}",
        added.name,
        added.length,
        added.sha256,
        encoding_note(payload.as_ref())
    );
    print_pending(progress.pending.as_ref());
    Ok(())
}

/// What a compressed target holds, for the `added ...` line (nothing for
/// a raw target).
fn encoding_note(payload: Option<&PayloadCustom>) -> String {
    match payload {
        Some(p) => format!(
            ", {} of a {}-byte image with sha256 {}{}",
            p.encoding,
            p.image_length,
            p.image_sha256,
            match p.frames.len() {
                0 => String::new(),
                n => format!(" in {n} frames"),
            }
        ),
        None => String::new(),
    }
}

/// `add`: the image as a target of top-level targets.
fn add_top_level(
    layout: &Layout,
    options: &add::AddOptions,
    plan: Option<RolloutPlan>,
    packing: &add::Packing,
) -> Result<()> {
    let (added, payload) =
        runtime()?.block_on(add::add_packed(layout, options, plan.clone(), packing))?;
    let pending = ceremony::pending(layout)?;
    let encoded = encoding_note(payload.as_ref());
    println!(
        "added {} ({} bytes, sha256 {}{encoded}); {}",
        added.name,
        added.length,
        added.sha256,
        targets_outcome(added.targets_version, pending.first())
    );
    print_pending(pending.first());
    if let Some(p) = &plan {
        println!(
            "rollout seed {}, waves {}",
            p.seed,
            p.waves
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
