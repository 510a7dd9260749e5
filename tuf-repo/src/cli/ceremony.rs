//! `sign` and `ceremony`: signatures made offline.

use super::args::*;
use super::util::*;
use anyhow::{bail, Result};
use ota_repo::ceremony;
use ota_repo::config::RepoConfig;
use ota_repo::key_ref::KeyRef;
use ota_repo::layout::Layout;

pub(crate) fn run(layout: Layout, command: Command) -> Result<()> {
    match command {
        Command::Sign {
            payload,
            key,
            key_uri,
            out,
        } => {
            let key = match (key, key_uri) {
                (Some(path), _) => KeyRef::File(path),
                (None, Some(uri)) => KeyRef::Pkcs11(uri.parse()?),
                (None, None) => bail!("pass --key FILE or --key-uri URI"),
            };
            // The signing machine may keep a repository (and its audit log) or not.
            let log = RepoConfig::load(&layout)
                .ok()
                .map(|c| ota_repo::editor::audit_log(&layout, &c));
            // What the holder signs, before the signature is made.
            for line in ceremony::read_payload(&payload)?.summary {
                println!("  {line}");
            }
            let sig = ceremony::sign_payload(&payload, &key, &out, log.as_ref())?;
            println!(
                "signed {} version {} (payload sha256 {}) with key {}; signature in {}",
                sig.delegated
                    .clone()
                    .unwrap_or_else(|| sig.role.to_string()),
                sig.version,
                sig.payload_sha256,
                sig.keyid,
                out.display()
            );
            if log.is_none() {
                eprintln!("ota-repo: note: no repository at --repo, so this signature is recorded in the audit log only when merged");
            }
        }
        Command::Ceremony { action } => match action {
            CeremonyAction::Export { role, out, expires } => {
                let expires = expires.as_deref().map(parse_expiry).transpose()?;
                let role = ceremony_role(&role)?;
                let p = runtime()?.block_on(ceremony::export(&layout, &role, expires, &out))?;
                println!(
                    "exported {} version {} to {} (sha256 {}); needs: {}",
                    p.role_name(),
                    p.version,
                    out.display(),
                    p.sha256,
                    p.requirements
                        .iter()
                        .map(|r| format!("{} of the {}", r.threshold, r.what))
                        .collect::<Vec<_>>()
                        .join(" and ")
                );
                for line in &p.summary {
                    println!("  {line}");
                }
            }
            CeremonyAction::Merge { role, signatures } => {
                let role = ceremony_role(&role)?;
                let m = runtime()?.block_on(ceremony::merge(&layout, &role, &signatures))?;
                for r in &m.not_counted {
                    eprintln!("ota-repo: warning: not counted: {r}");
                }
                println!(
                    "signed {} version {} with {} key(s): {}",
                    m.role,
                    m.version,
                    m.counted.len(),
                    m.counted.join(", ")
                );
                for (r, v) in &m.progress.signed {
                    println!("signed {r} version {v}");
                }
                print_pending(m.progress.pending.as_ref());
            }
            CeremonyAction::Abandon { role } => {
                let v = runtime()?.block_on(ceremony::abandon(&layout, &ceremony_role(&role)?))?;
                println!("abandoned the {role} version {v} ceremony");
            }
        },
        other => unreachable!("{other:?} is dispatched elsewhere"),
    }
    Ok(())
}
