//! The command line, as clap parses it.

use clap::{Parser, Subcommand};
use ota_repo::rollout;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ota-repo",
    version,
    about = "Create, sign and publish the OTA TUF repository"
)]
pub(crate) struct Cli {
    /// Repository directory.
    #[arg(
        long,
        global = true,
        env = "OTA_REPO_DIR",
        default_value = "./ota-repository"
    )]
    pub(crate) repo: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyAction {
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
pub(crate) enum Command {
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
        /// How the target stores the image: zstd (independent frames a
        /// device resumes at), gzip, xz, or none (the image as it is). An
        /// input that is already zstd-, gzip- or xz-compressed is kept as it is. The
        /// decoded image's length and sha256 are signed with the target.
        /// Default: zstd (none with --role).
        #[arg(long, value_name = "zstd|gzip|xz|none")]
        compress: Option<String>,
        /// zstd: image bytes per independent frame, the most a device
        /// downloads again after a power cut (default 8 MiB).
        #[arg(long, value_name = "BYTES")]
        frame_size: Option<u64>,
        /// zstd 1..=19 (default 9), gzip and xz 1..=9 (default 6).
        #[arg(long, value_name = "N")]
        compress_level: Option<u32>,
        /// Also sign a chunk index of the image and store its chunks
        /// (compressed, named by hash, under targets/chunks/), so a device
        /// fetches only the chunks its running slot lacks. Needs the raw image.
        #[arg(long)]
        delta: bool,
        /// Digests the target lists (repeatable). sha256 is always listed;
        /// `--hash sha512` lists sha512 too, for repositories whose clients
        /// want it (every device then computes it, at about 2.4 CPU-seconds
        /// per GiB where the CPU has no SHA-512 instructions).
        #[arg(long = "hash", value_name = "sha256|sha512")]
        hashes: Vec<String>,
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
pub(crate) enum CeremonyAction {
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
pub(crate) struct RolloutFlags {
    /// A rollout wave, NAME=WHO@WHEN, in order (repeatable): WHO is group
    /// names and at most one cumulative N% (comma-separated), WHEN is
    /// +<n>m|h|d after --rollout-start or an RFC 3339 time. Example:
    /// --wave canary=bench@+0h --wave early=10%@+24h --wave all=100%@+3d.
    /// Without --wave every compatible device may install at once.
    #[arg(long = "wave", value_name = "NAME=WHO@WHEN")]
    pub(crate) waves: Vec<String>,
    /// RFC 3339 time relative WHENs count from (default: now).
    #[arg(long, value_name = "TIME")]
    pub(crate) rollout_start: Option<String>,
    /// Seed of the devices' positions, 8-64 lowercase hex digits (default:
    /// random for `add`, the current seed for `rollout set`).
    #[arg(long, value_name = "HEX")]
    pub(crate) rollout_seed: Option<String>,
}

impl RolloutFlags {
    pub(crate) fn into_args(self) -> rollout::RolloutArgs {
        rollout::RolloutArgs {
            waves: self.waves,
            start: self.rollout_start,
            seed: self.rollout_seed,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutAction {
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
pub(crate) enum AuditAction {
    /// Check the hash chain of the repository's audit.jsonl, or of --log.
    Verify {
        /// Verify this log instead (no repository needed), e.g. the
        /// server's online-signing log `<audit_dir>/audit.jsonl`; its head
        /// file is read beside it (`audit.head`).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
}
