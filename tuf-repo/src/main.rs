//! `ota-repo`: command-line front end; the work is in the `ota_repo` library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ota_repo::config::RepoConfig;
use ota_repo::expiry::Expiry;
use ota_repo::key_ref::KeyRef;
use ota_repo::keys::KeyType;
use ota_repo::layout::Layout;
use ota_repo::pkcs11::Pkcs11Uri;
use ota_repo::role::{parse_role_pair, Role};
use ota_repo::{
    add, ceremony, evidence, init, publish, resign, rollout, rotate, state::RepoState, status,
};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ota-repo",
    version,
    about = "Create, sign and publish the OTA TUF repository"
)]
struct Cli {
    /// Repository directory.
    #[arg(
        long,
        global = true,
        env = "OTA_REPO_DIR",
        default_value = "./ota-repository"
    )]
    repo: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum KeyAction {
    /// Write a key's public half as TUF key JSON (what `delegate --key-pub` reads).
    ExportPub {
        #[arg(long, conflicts_with = "key_uri", required_unless_present = "key_uri")]
        key: Option<PathBuf>,
        #[arg(long)]
        key_uri: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create keys and sign version 1 of every role.
    Init {
        #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "ecdsa", "rsa"])]
        key_type: String,
        /// Number of keys of a role, ROLE=N (default 1).
        #[arg(long = "keys", value_name = "ROLE=N")]
        keys: Vec<String>,
        /// Signatures a role needs, ROLE=M (default 1).
        #[arg(long = "threshold", value_name = "ROLE=M")]
        thresholds: Vec<String>,
        /// Expiry policy, ROLE=WHEN (30d, 12h, 90s or RFC 3339).
        #[arg(long = "expires", value_name = "ROLE=WHEN")]
        expires: Vec<String>,
        /// Generate every key inside this PKCS#11 token instead of in key
        /// files: pkcs11:token=LABEL?module-path=/path/module.so (PIN from
        /// pin-source=file:PATH in the URI or env OTA_PKCS11_PIN).
        #[arg(long, value_name = "PKCS11_URI")]
        key_store: Option<String>,
        /// Generate this role's key in the token at this URI (repeat for
        /// several keys): ROLE=pkcs11:token=...;object=...?module-path=...
        #[arg(long = "key-uri", value_name = "ROLE=PKCS11_URI")]
        key_uris: Vec<String>,
    },
    /// Generate one signing key (for offline keys and rotation) and print its key id.
    Keygen {
        #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "ecdsa", "rsa"])]
        key_type: String,
        /// Software key file to create (mode 0600; development only).
        #[arg(long, conflicts_with = "key_uri", required_unless_present = "key_uri")]
        out: Option<PathBuf>,
        /// Generate inside a PKCS#11 token, non-extractable.
        #[arg(long)]
        key_uri: Option<String>,
    },
    /// Key files and tokens: what a key holder hands over.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Sign a ceremony payload with one key, writing a detached signature.
    Sign {
        #[arg(long)]
        payload: PathBuf,
        #[arg(long, conflicts_with = "key_uri", required_unless_present = "key_uri")]
        key: Option<PathBuf>,
        #[arg(long)]
        key_uri: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// M-of-N signing of root with offline keys.
    Ceremony {
        #[command(subcommand)]
        action: CeremonyAction,
    },
    /// Change a role's keys or threshold: new root signed by old and new root keys.
    Rotate {
        #[arg(long, value_parser = ["root", "targets", "snapshot", "timestamp"])]
        role: String,
        /// Key to add: a key file or a pkcs11: URI (repeatable).
        #[arg(long = "add-key", value_name = "FILE|PKCS11_URI")]
        add_keys: Vec<String>,
        /// Key id to remove (revoke) (repeatable).
        #[arg(long = "remove-key", value_name = "KEYID")]
        remove_keys: Vec<String>,
        #[arg(long)]
        threshold: Option<u64>,
        /// Expiry of the new root (default: the root policy in repo.json).
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
    },
    /// The signing audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Add an image as a target and sign new targets, snapshot and timestamp.
    Add {
        image: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long = "hardware-id", required = true)]
        hardware_ids: Vec<String>,
        #[arg(long)]
        notes: Option<String>,
        /// Target name (default: the image's file name).
        #[arg(long)]
        name: Option<String>,
        /// Add to this delegated targets role (signed by its keys; the name
        /// must be inside its paths) instead of top-level targets.
        #[arg(long, value_name = "ROLE")]
        role: Option<String>,
        #[command(flatten)]
        rollout: RolloutFlags,
    },
    /// Delegate target paths to a targets role with its own keys:
    /// top-level targets lists it (signed by the targets keys), its
    /// version 1 is signed by its keys, snapshot and timestamp follow.
    /// For an existing role: its paths, keys, threshold and terminating
    /// become the ones given, and its next version is signed by the new keys.
    Delegate {
        /// Role name: a-z, 0-9, '-', '_'.
        #[arg(long)]
        name: String,
        /// Target path pattern the role is trusted for (repeatable), e.g.
        /// 'board-a/*' ('*' does not match '/').
        #[arg(long = "paths", value_name = "PATTERN", required = true)]
        paths: Vec<String>,
        /// An existing key file of the role (repeatable).
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
        /// A key in a PKCS#11 token (repeatable).
        #[arg(long = "key-uri", value_name = "PKCS11_URI")]
        key_uris: Vec<String>,
        /// The public key of a holder who signs elsewhere (repeatable): TUF
        /// key JSON as `ota-repo key export-pub` writes. With fewer than
        /// --threshold private keys here, version 1 of a new role waits in
        /// `ceremony export/merge --role NAME`.
        #[arg(long = "key-pub", value_name = "FILE")]
        key_pubs: Vec<PathBuf>,
        /// Generate a key file keys/<name>-1.pem.
        #[arg(long)]
        generate_key: bool,
        #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "ecdsa", "rsa"])]
        key_type: String,
        /// Signatures the role needs.
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        /// Devices search no further than this role for the paths it covers.
        #[arg(long)]
        terminating: bool,
        /// Expiry policy of the role's metadata (default 90d).
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
    },
    /// Stop delegating to a role: top-level targets drops it (signed by the
    /// targets keys), so devices no longer trust what it lists.
    Undelegate {
        #[arg(long)]
        name: String,
    },
    /// Staged rollouts: show, change or remove a target's signed wave schedule.
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
    },
    /// Re-sign roles with new versions and expiry dates (default: timestamp).
    Resign {
        /// root, targets, snapshot, timestamp, or a delegated role's name
        /// (its next version; then snapshot and timestamp).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// One-off expiry, ROLE=WHEN; the role is re-signed too.
        #[arg(long = "expires", value_name = "ROLE=WHEN")]
        expires: Vec<String>,
        /// Allow an expiry in the past (to create expired metadata for tests).
        #[arg(long)]
        allow_expired: bool,
    },
    /// Publish to the server's admin API or into a directory.
    Publish {
        #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
        server: Option<url::Url>,
        /// File holding the admin token (else env OTA_ADMIN_TOKEN).
        #[arg(long, requires = "server")]
        token_file: Option<PathBuf>,
        /// PEM file of the CA certificate(s) that sign the server's TLS
        /// certificate (a private fleet CA); replaces the public web roots.
        #[arg(long, value_name = "FILE", requires = "server")]
        ca_cert: Option<PathBuf>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write IEC 81001-5-1 evidence for a release (files and hashes,
    /// signatures, key protection read back from tokens, audit log, an
    /// independent verification of the published repository) as
    /// evidence-VERSION.md and evidence-VERSION.json. Exit 3 when a check
    /// failed (the evidence is still written), 1 on error.
    Evidence {
        /// The release version (targets with this custom version).
        #[arg(long)]
        release: String,
        /// Directory the two files are written into.
        #[arg(long)]
        out: PathBuf,
        /// The root devices ship with (default: metadata/1.root.json).
        #[arg(long, value_name = "FILE")]
        trusted_root: Option<PathBuf>,
        /// Verify this `publish --dir` directory instead of the repository.
        #[arg(long, value_name = "DIR", conflicts_with = "published_url")]
        published_dir: Option<PathBuf>,
        /// Verify this server (URL/metadata/, URL/targets/) over HTTP(S).
        #[arg(long, value_name = "URL")]
        published_url: Option<url::Url>,
        /// The server's online-signing log (`<audit_dir>/audit.jsonl` of
        /// `[online_signing]`): its chain is verified and its timestamp and
        /// snapshot signatures made while the release was current are listed.
        #[arg(long, value_name = "FILE")]
        online_audit: Option<PathBuf>,
    },
    /// Show roles, keys, expiry dates, targets and open ceremonies ("k of n
    /// signatures"). Exit 2 if anything expires within --warn-within or a
    /// ceremony is open (an unfinished release: publish refuses it), 1 on
    /// error, 0 otherwise.
    Status {
        /// Flag every role expiring within this duration. Default: per role,
        /// a third of its lifetime (repo.json policy), at most 14d, so a
        /// fresh repository with a 7d timestamp passes.
        #[arg(long, value_name = "DURATION")]
        warn_within: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CeremonyAction {
    /// Write a role's unsigned version for signers: the one pending
    /// signatures (from `add`, `rotate` or an earlier merge), or else the
    /// next version with a fresh expiry.
    Export {
        /// root, targets, snapshot, timestamp, or a delegated role's name.
        #[arg(long)]
        role: String,
        #[arg(long)]
        out: PathBuf,
        /// Expiry of a new version (default: the role's policy).
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
    },
    /// Verify detached signatures (kept for the next merge while below the
    /// threshold); at the threshold write the role and sign what depends on it.
    Merge {
        /// root, targets, snapshot, timestamp, or a delegated role's name.
        #[arg(long)]
        role: String,
        #[arg(required = true)]
        signatures: Vec<PathBuf>,
    },
    /// Close a role's open ceremony without signing it.
    Abandon {
        /// root, targets, snapshot, timestamp, or a delegated role's name.
        #[arg(long)]
        role: String,
    },
}

/// The wave schedule flags of `add` and `rollout set`.
#[derive(Debug, clap::Args)]
struct RolloutFlags {
    /// A rollout wave, NAME=WHO@WHEN, in order (repeatable): WHO is group
    /// names and at most one cumulative N% (comma-separated), WHEN is
    /// +<n>m|h|d after --rollout-start or an RFC 3339 time. Example:
    /// --wave canary=bench@+0h --wave early=10%@+24h --wave all=100%@+3d.
    /// Without --wave every compatible device may install at once.
    #[arg(long = "wave", value_name = "NAME=WHO@WHEN")]
    waves: Vec<String>,
    /// RFC 3339 time relative WHENs count from (default: now).
    #[arg(long, value_name = "TIME")]
    rollout_start: Option<String>,
    /// Seed of the devices' positions, 8-64 lowercase hex digits (default:
    /// random for `add`, the current seed for `rollout set`).
    #[arg(long, value_name = "HEX")]
    rollout_seed: Option<String>,
}

impl RolloutFlags {
    fn into_args(self) -> rollout::RolloutArgs {
        rollout::RolloutArgs {
            waves: self.waves,
            start: self.rollout_start,
            seed: self.rollout_seed,
        }
    }
}

#[derive(Debug, Subcommand)]
enum RolloutAction {
    /// Print a target's waves (who, when, open now?) and where a device stands.
    Show {
        target: String,
        /// Place this device in the plan (its position, wave, and whether it may install now).
        #[arg(long)]
        device_id: Option<String>,
        /// The device's rollout groups, comma-separated.
        #[arg(long, value_delimiter = ',', requires = "device_id")]
        groups: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Replace a target's plan and sign new targets, snapshot and timestamp
    /// (keeps the seed unless --rollout-seed, so devices keep their positions).
    Set {
        target: String,
        #[command(flatten)]
        rollout: RolloutFlags,
    },
    /// Remove a target's plan (every compatible device may install at once) and sign.
    Clear { target: String },
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Check the hash chain of the repository's audit.jsonl, or of --log.
    Verify {
        /// Verify this log instead (no repository needed), e.g. the
        /// server's online-signing log `<audit_dir>/audit.jsonl`; its head
        /// file is read beside it (`audit.head`).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OTA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("ota-repo: error: {}", message(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message already contains (our errors often quote their source).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Tells the release engineer that a role version waits for offline
/// signatures, and how to collect them.
fn print_pending(pending: Option<&ceremony::PendingRole>) {
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
fn targets_outcome(version: u64, pending: Option<&ceremony::PendingRole>) -> String {
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
fn role_outcome(role: &str, version: u64, progress: &ceremony::Progress) -> String {
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

/// A top-level role (`Ok`) or a delegated role's name (`Err`), as given
/// to `ceremony --role`.
fn ceremony_role(arg: &str) -> Result<std::result::Result<Role, String>> {
    if let Ok(role) = arg.parse::<Role>() {
        return Ok(Ok(role));
    }
    ota_repo::delegation::validate_name(arg).map_err(|e| {
        anyhow::anyhow!(
            "--role {arg}: neither root, targets, snapshot, timestamp nor a delegated role ({e})"
        )
    })?;
    Ok(Err(arg.to_owned()))
}

fn role_map<T>(
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

fn parse_count(s: &str) -> Result<u64> {
    s.parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a whole number"))
}

fn parse_expiry(s: &str) -> Result<Expiry> {
    Ok(s.parse::<Expiry>()?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> Result<()> {
    let layout = Layout::new(cli.repo);
    match cli.command {
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
                let p = match ceremony_role(&role)? {
                    Ok(top) => {
                        runtime()?.block_on(ceremony::export(&layout, top, expires, &out))?
                    }
                    Err(name) => runtime()?.block_on(ota_repo::ceremony::delegated::export(
                        &layout, &name, expires, &out,
                    ))?,
                };
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
                let top = match ceremony_role(&role)? {
                    Ok(top) => top,
                    Err(name) => {
                        let m = runtime()?.block_on(ota_repo::ceremony::delegated::merge(
                            &layout,
                            &name,
                            &signatures,
                        ))?;
                        for r in &m.not_counted {
                            eprintln!("ota-repo: warning: not counted: {r}");
                        }
                        println!(
                            "signed {} version {} with {} key(s): {}",
                            m.name,
                            m.version,
                            m.counted.len(),
                            m.counted.join(", ")
                        );
                        for (r, v) in &m.progress.signed {
                            println!("signed {r} version {v}");
                        }
                        print_pending(m.progress.pending.as_ref());
                        return Ok(());
                    }
                };
                let m = runtime()?.block_on(ceremony::merge(&layout, top, &signatures))?;
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
                for (r, v) in m.progress.signed.iter().skip(1) {
                    println!("signed {r} version {v}");
                }
                print_pending(m.progress.pending.as_ref());
            }
            CeremonyAction::Abandon { role } => {
                let v = match ceremony_role(&role)? {
                    Ok(top) => runtime()?.block_on(ceremony::abandon(&layout, top))?,
                    Err(name) => runtime()?
                        .block_on(ota_repo::ceremony::delegated::abandon(&layout, &name))?,
                };
                println!("abandoned the {role} version {v} ceremony");
            }
        },
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
            role: Some(role),
            rollout,
        } => {
            let options = add::AddOptions {
                image,
                version,
                hardware_ids,
                notes,
                name,
            };
            let plan = rollout.into_args().plan(None, chrono::Utc::now())?;
            for w in plan.iter().flat_map(rollout::warnings) {
                eprintln!("ota-repo: warning: {w}");
            }
            let (added, progress) = runtime()?.block_on(ota_repo::delegation::add(
                &layout,
                &role,
                &options,
                plan.clone(),
            ))?;
            let outcome = role_outcome(&role, added.targets_version, &progress);
            println!(
                "added {} ({} bytes, sha256 {}) to delegated role {role}; {outcome}",
                added.name, added.length, added.sha256
            );
            print_pending(progress.pending.as_ref());
        }
        Command::Add {
            image,
            version,
            hardware_ids,
            notes,
            name,
            role: None,
            rollout,
        } => {
            let options = add::AddOptions {
                image,
                version,
                hardware_ids,
                notes,
                name,
            };
            // Built (and refused) before the image is copied or anything signed.
            let plan = rollout.into_args().plan(None, chrono::Utc::now())?;
            for w in plan.iter().flat_map(rollout::warnings) {
                eprintln!("ota-repo: warning: {w}");
            }
            let added =
                runtime()?.block_on(add::add_with_rollout(&layout, &options, plan.clone()))?;
            let pending = ceremony::pending(&layout)?;
            println!(
                "added {} ({} bytes, sha256 {}); {}",
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
        }
        Command::Rollout { action } => match action {
            RolloutAction::Show {
                target,
                device_id,
                groups,
                json,
            } => {
                let query = device_id.map(|device_id| rollout::DeviceQuery { device_id, groups });
                let view = runtime()?.block_on(rollout::show(
                    &layout,
                    &target,
                    query.as_ref(),
                    chrono::Utc::now(),
                ))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&view)?);
                } else {
                    print!("{}", view.text());
                }
            }
            RolloutAction::Set { target, rollout } => {
                let args = rollout.into_args();
                let (changed, plan) = runtime()?.block_on(rollout::change(
                    &layout,
                    &target,
                    Some(&args),
                    chrono::Utc::now(),
                ))?;
                for w in plan.iter().flat_map(rollout::warnings) {
                    eprintln!("ota-repo: warning: {w}");
                }
                match changed {
                    rollout::Changed::Signed { targets_version } => {
                        let pending = ceremony::pending(&layout)?;
                        println!(
                            "rollout of {target} changed; {}",
                            targets_outcome(targets_version, pending.first())
                        );
                        print_pending(pending.first());
                    }
                    rollout::Changed::SignedRole {
                        role,
                        version,
                        progress,
                    } => {
                        println!(
                            "rollout of {target} changed; {}",
                            role_outcome(&role, version, &progress)
                        );
                        print_pending(progress.pending.as_ref());
                    }
                    rollout::Changed::Unchanged => {
                        println!("{target} already has this rollout plan; nothing signed")
                    }
                }
            }
            RolloutAction::Clear { target } => {
                let (changed, _) = runtime()?.block_on(rollout::change(
                    &layout,
                    &target,
                    None,
                    chrono::Utc::now(),
                ))?;
                match changed {
                    rollout::Changed::Signed { targets_version } => {
                        let pending = ceremony::pending(&layout)?;
                        println!(
                            "rollout plan of {target} removed (every compatible device may install now); {}"
                        , targets_outcome(targets_version, pending.first()));
                        print_pending(pending.first());
                    }
                    rollout::Changed::SignedRole {
                        role,
                        version,
                        progress,
                    } => {
                        println!(
                            "rollout plan of {target} removed (every compatible device may install now); {}",
                            role_outcome(&role, version, &progress)
                        );
                        print_pending(progress.pending.as_ref());
                    }
                    rollout::Changed::Unchanged => {
                        println!("{target} has no rollout plan; nothing signed")
                    }
                }
            }
        },
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
        Command::Publish {
            server,
            token_file,
            ca_cert,
            dir,
        } => {
            // Load (and verify) with tough on a runtime that is gone before
            // the blocking HTTP client runs.
            let state = runtime()?.block_on(RepoState::load(&layout))?;
            let mut set = publish::collect(&layout, &state)?;
            ota_repo::delegation::extend_publish_set(&layout, &state, &mut set)?;
            if !set.expired_roles.is_empty() {
                eprintln!(
                    "ota-repo: warning: publishing expired metadata ({}); devices will refuse it",
                    set.expired_roles.join(", ")
                );
            }
            match (server, dir) {
                (Some(server), _) => {
                    let token = publish::read_token(
                        token_file.as_deref(),
                        std::env::var("OTA_ADMIN_TOKEN").ok(),
                    )?;
                    let anchors = match &ca_cert {
                        Some(path) => publish::read_ca_file(path)?,
                        None => Vec::new(),
                    };
                    let client = publish::AdminClient::trusting(server.clone(), token, anchors)?;
                    let done = publish::publish_server(&layout, &set, &client)?;
                    println!(
                        "published to {server} (publication {}): {} image(s) uploaded, {} already there; visible: {}",
                        done.id,
                        done.uploaded.len(),
                        done.skipped.len(),
                        done.committed.files.join(", ")
                    );
                }
                (None, Some(dir)) => {
                    let written = publish::publish_dir(&layout, &set, &dir)?;
                    println!(
                        "published to {}: {} file(s) written",
                        dir.display(),
                        written.len()
                    );
                }
                (None, None) => bail!("pass --server URL or --dir DIR"),
            }
        }
        Command::Evidence {
            release,
            out,
            trusted_root,
            published_dir,
            published_url,
            online_audit,
        } => {
            // Load on a runtime that is gone before the blocking HTTP client runs.
            let state = runtime()?.block_on(RepoState::load(&layout))?;
            let options = evidence::EvidenceOptions {
                release,
                trusted_root,
                published: match (published_dir, published_url) {
                    (Some(dir), _) => evidence::Published::Dir(dir),
                    (None, Some(url)) => evidence::Published::Url(url),
                    (None, None) => evidence::Published::Repository,
                },
                online_audit,
            };
            let ev = evidence::build(&layout, &state, &options)?;
            let (md, json) = ev.write(&out)?;
            println!(
                "evidence for release {}: {} file(s); written to {} and {}",
                ev.release,
                ev.files.len(),
                md.display(),
                json.display()
            );
            for w in &ev.warnings {
                eprintln!("ota-repo: warning: {w}");
            }
            if !ev.passed {
                for f in &ev.failures {
                    eprintln!("ota-repo: FAILED: {f}");
                }
                // Distinct from errors (1): the evidence exists and records the failure.
                std::process::exit(3);
            }
            println!("all checks passed");
        }
        Command::Status { warn_within } => {
            let window = match warn_within.as_deref().map(parse_expiry).transpose()? {
                None => status::WarnWindow::Scaled,
                Some(Expiry::After(secs)) => status::WarnWindow::Within(secs),
                Some(Expiry::At(_)) => bail!(
                    "--warn-within {}: expected a duration such as 14d",
                    warn_within.unwrap_or_default()
                ),
            };
            let report = runtime()?.block_on(status::status(&layout, window))?;
            print!("{}", report.text);
            if !report.warnings.is_empty() || !report.pending.is_empty() {
                for w in report.warnings.iter().chain(&report.pending) {
                    eprintln!("ota-repo: warning: {w}");
                }
                // Distinct from errors (1) so scripts can alert on it.
                std::process::exit(2);
            }
        }
    }
    Ok(())
}
