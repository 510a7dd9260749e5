//! `ota-repo`: command-line front end; the work is in the `ota_repo` library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ota_repo::expiry::Expiry;
use ota_repo::keys::KeyType;
use ota_repo::layout::Layout;
use ota_repo::role::{parse_role_pair, Role};
use ota_repo::{add, init, publish, resign, state::RepoState, status};
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
    },
    /// Re-sign roles with new versions and expiry dates (default: timestamp).
    Resign {
        #[arg(long = "role", value_parser = ["root", "targets", "snapshot", "timestamp"])]
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
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show roles, keys, expiry dates and targets.
    Status,
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
        } => {
            let options = init::InitOptions {
                key_type: key_type.parse::<KeyType>()?,
                keys: role_map(&keys, "keys", parse_count)?,
                thresholds: role_map(&thresholds, "threshold", parse_count)?,
                expires: role_map(&expires, "expires", parse_expiry)?,
            };
            let config = runtime()?.block_on(init::init(&layout, &options))?;
            println!(
                "initialised {} ({} keys, consistent snapshots); key files are in {} (mode 0600, development only)",
                layout.root().display(),
                config.key_type,
                layout.keys_dir().display()
            );
        }
        Command::Add {
            image,
            version,
            hardware_ids,
            notes,
            name,
        } => {
            let options = add::AddOptions {
                image,
                version,
                hardware_ids,
                notes,
                name,
            };
            let added = runtime()?.block_on(add::add(&layout, &options))?;
            println!(
                "added {} ({} bytes, sha256 {}); signed targets version {}",
                added.name, added.length, added.sha256, added.targets_version
            );
        }
        Command::Resign {
            roles,
            expires,
            allow_expired,
        } => {
            let options = resign::ResignOptions {
                roles: roles.iter().map(|r| r.parse()).collect::<Result<_, _>>()?,
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
            dir,
        } => {
            // Load (and verify) with tough on a runtime that is gone before
            // the blocking HTTP client runs.
            let state = runtime()?.block_on(RepoState::load(&layout))?;
            let set = publish::collect(&layout, &state)?;
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
                    let client = publish::AdminClient::new(server.clone(), token)?;
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
        Command::Status => {
            print!("{}", runtime()?.block_on(status::status(&layout))?);
        }
    }
    Ok(())
}
