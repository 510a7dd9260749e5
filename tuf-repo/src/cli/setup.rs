//! `init`, `keygen`, `key`, `rotate` and `audit`: keys and the root of trust.

use super::args::*;
use super::util::*;
use anyhow::{bail, Context, Result};
use ota_repo::config::RepoConfig;
use ota_repo::init;
use ota_repo::key_ref::KeyRef;
use ota_repo::keys::KeyType;
use ota_repo::layout::Layout;
use ota_repo::pkcs11::Pkcs11Uri;
use ota_repo::role::{parse_role_pair, Role};
use ota_repo::rotate;
use std::collections::BTreeMap;

pub(crate) fn run(layout: Layout, command: Command) -> Result<()> {
    match command {
        Command::Init {
            key_type,
            keys,
            thresholds,
            expires,
            key_store,
            key_uris,
        } => {
            let mut uris: BTreeMap<Role, Vec<Pkcs11Uri>> = BTreeMap::new();
            for arg in &key_uris {
                let (role, value) =
                    parse_role_pair(arg).with_context(|| format!("--key-uri {arg}"))?;
                uris.entry(role).or_default().push(value.parse()?);
            }
            let options = init::InitOptions {
                key_type: key_type.parse::<KeyType>()?,
                keys: role_map(&keys, "keys", parse_count)?,
                thresholds: role_map(&thresholds, "threshold", parse_count)?,
                expires: role_map(&expires, "expires", parse_expiry)?,
                key_store: key_store
                    .as_deref()
                    .map(Pkcs11Uri::parse_token)
                    .transpose()?,
                key_uris: uris,
            };
            let config = runtime()?.block_on(init::init(&layout, &options))?;
            println!(
                "initialised {} ({} keys, consistent snapshots)",
                layout.root().display(),
                config.key_type,
            );
            for role in Role::ALL {
                for k in &config.role(role)?.keys {
                    println!("  {role}: {}", k.describe(Some(layout.root())));
                }
            }
        }
        Command::Keygen {
            key_type,
            out,
            key_uri,
        } => {
            let key_type = key_type.parse::<KeyType>()?;
            let key = match (out, key_uri) {
                (Some(path), _) => {
                    let pem = ota_repo::keys::generate_pem(key_type)?;
                    ota_common::atomic::write_atomic_with_mode(&path, pem.as_bytes(), 0o600)
                        .with_context(|| format!("writing {}", path.display()))?;
                    KeyRef::File(path)
                }
                (None, Some(uri)) => {
                    let uri: Pkcs11Uri = uri.parse()?;
                    uri.generate(key_type)?;
                    KeyRef::Pkcs11(uri)
                }
                (None, None) => bail!("pass --out FILE or --key-uri URI"),
            };
            let id = ota_repo::keys::key_id(&key.public_key(None)?)?;
            println!("{id} {}", key.describe(None));
        }
        Command::Key {
            action: KeyAction::ExportPub { key, key_uri, out },
        } => {
            let key = match (key, key_uri) {
                (Some(path), _) => KeyRef::File(path),
                (None, Some(uri)) => KeyRef::Pkcs11(uri.parse()?),
                (None, None) => bail!("pass --key FILE or --key-uri URI"),
            };
            // Where the holder stands: no repository is needed.
            let public = key.public_key(None)?;
            let id = ota_repo::keys::key_id(&public)?;
            let json = ota_repo::keys::public_key_json(&public)?;
            ota_common::atomic::write_atomic(&out, &json)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "public key {id} ({}) written to {}",
                ota_repo::keys::describe(&public),
                out.display()
            );
        }
        Command::Rotate {
            role,
            add_keys,
            remove_keys,
            threshold,
            expires,
        } => {
            let options = rotate::RotateOptions {
                role: role.parse()?,
                add_keys: add_keys
                    .iter()
                    .map(|k| k.parse::<KeyRef>())
                    .collect::<Result<_, _>>()?,
                remove_keys,
                threshold,
                expires: expires.as_deref().map(parse_expiry).transpose()?,
            };
            match runtime()?.block_on(rotate::rotate(&layout, &options))? {
                rotate::Rotated::Signed {
                    root_version,
                    resigned,
                } => {
                    println!("signed root version {root_version}");
                    for (r, v) in resigned {
                        println!("signed {r} version {v}");
                    }
                }
                rotate::Rotated::Staged {
                    root_version,
                    pending,
                    needs,
                } => {
                    println!(
                    "root version {root_version} staged in {}: the root keys are offline; it needs {}. Run `ota-repo ceremony export --role root --out FILE`, have key holders run `ota-repo sign`, then `ota-repo ceremony merge --role root SIG...`",
                    pending.display(),
                    needs.join(" and ")
                );
                }
            }
        }
        Command::Audit { action } => match action {
            AuditAction::Verify { log: Some(file) } => {
                // A missing file would verify as an empty log: refuse it.
                if !file.is_file() {
                    bail!("--log {}: no such file", file.display());
                }
                let n = ota_repo::audit::AuditLog::at_file(&file).verify()?;
                println!("audit log intact: {n} entries");
            }
            AuditAction::Verify { log: None } => {
                let config = RepoConfig::load(&layout)?;
                let n = ota_repo::editor::audit_log(&layout, &config).verify()?;
                println!("audit log intact: {n} entries");
            }
        },
        other => unreachable!("{other:?} is dispatched elsewhere"),
    }
    Ok(())
}
