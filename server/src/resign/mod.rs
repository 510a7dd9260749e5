//! Online re-signing (`[online_signing]` in the config): the server renews
//! `timestamp.json`, and optionally the snapshot, with its online keys
//! before they expire.
//!
//! The timestamp role exists to expire quickly (a frozen mirror is noticed in
//! hours, not months), which means it must be re-signed often: a job no
//! release engineer should run by hand. A background task checks the
//! published metadata and, once something expires within `resign_before`:
//!
//! * snapshot (only with `snapshot_key`): publishes `N+1.snapshot.json`
//!   with the same `meta` (same targets) and a new expiry, then
//! * timestamp: publishes version + 1 with a new expiry, pointing at the
//!   new snapshot (new length and hashes) or, when only the timestamp was
//!   due, at the same one.
//!
//! Rules:
//! * Each key must be listed by the newest root for its role, whose
//!   threshold must be 1; checked at start-up (the server refuses to start
//!   otherwise) and again before every signature (root may rotate). The
//!   signature carries the key id root lists for that public key.
//! * The signed bytes are the OLPC canonical JSON of `signed`
//!   ([`ota_common::tuf::canonicalize`], the very encoder clients verify with).
//! * The new files go through a publication commit, under the same locks as
//!   publications (this instance's commit lock, then PostgreSQL's advisory
//!   lock shared by all instances), and the decision whether to re-sign is
//!   taken under them: re-signing never races a publication, and of several
//!   instances only the first one re-signs (the others then see fresh
//!   metadata). The commit makes the snapshot visible before the timestamp
//!   that names it.
//! * Keys: see [`key`] (files or PKCS#11 tokens, through `ota-repo`'s code).
//! * Publications: the online roles are the server's to issue, so a
//!   publication's commit signs timestamp (and, with `snapshot_key`, a
//!   snapshot whose version is taken) with these keys, under the same locks
//!   ([`publication`]); `ota-repo`'s next publication works whatever the
//!   server re-signed meanwhile.

mod device_view;
mod key;
mod metadata;
mod publication;
mod settings;

pub use key::OnlineKey;
pub use publication::{Issued, PublicationIssue};
pub use settings::{
    parse_duration, OnlineSigning, OnlineSigningFile, SnapshotSigning, DEFAULT_RESIGN_BEFORE,
    DEFAULT_SNAPSHOT_EXPIRY, DEFAULT_TIMESTAMP_EXPIRY,
};

use crate::db::{Db, DbError};
use crate::metrics::{Metrics, SigningTrigger};
use crate::storage::{Storage, StorageError};
use metadata::{Document, Root};
use ota_signing::audit::{AuditLog, Event as AuditEvent};
use sha2::Digest;
use std::sync::Arc;
use std::time::Duration;

/// The `operator` of the server's audit log entries.
const AUDIT_OPERATOR: &str = "ota-server (online key)";
/// The `action` of the server's audit log entries.
const AUDIT_ACTION: &str = "online-sign";
/// Most root versions probed to find the newest.
const MAX_ROOT_VERSIONS: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ResignError {
    #[error("online {role} key ({location}): {message}")]
    Key {
        role: &'static str,
        location: String,
        message: String,
    },
    #[error(
        "online {role} key {key_id} ({location}) is not a {role} key of {root}.root.json{detail}; \
         refusing to sign with it (check the key URI, or rotate root to list this key)"
    )]
    NotListed {
        role: &'static str,
        key_id: String,
        location: String,
        root: u64,
        detail: String,
    },
    #[error("cannot re-sign: {0}")]
    Metadata(String),
    /// An uploaded file is not the TUF metadata it claims to be (the
    /// publisher's fault: 400).
    #[error("{0}")]
    Malformed(String),
    /// The publication cannot be made valid by the online keys (stale,
    /// a rollback, or devices would refuse it): 409, with what to do.
    #[error("{0}")]
    Refused(String),
    #[error("re-signing: {0}")]
    Storage(#[from] StorageError),
    #[error("re-signing: {0}")]
    Db(#[from] DbError),
}

impl ResignError {
    /// The role a failure is counted under: the key's role when a key
    /// failed, else timestamp, whose renewal every re-signing ends with and
    /// which did not happen.
    fn role(&self) -> &'static str {
        match self {
            ResignError::Key { role, .. } | ResignError::NotListed { role, .. } => role,
            _ => "timestamp",
        }
    }
}

/// What one re-signing published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resigned {
    pub timestamp: u64,
    /// The new snapshot version, when the snapshot was renewed too.
    pub snapshot: Option<u64>,
}

/// The re-signing job of one server.
#[derive(Debug)]
pub struct Resigner {
    settings: OnlineSigning,
    timestamp_key: OnlineKey,
    snapshot_key: Option<OnlineKey>,
    storage: Arc<Storage>,
    db: Db,
    /// Where signatures, failures and expiries are counted.
    metrics: Arc<Metrics>,
}

impl Resigner {
    /// Opens the keys and checks them against the published root: a key
    /// that cannot be opened, or that root does not list for its role,
    /// stops the server from starting.
    pub async fn new(
        settings: &OnlineSigning,
        storage: Arc<Storage>,
        db: Db,
    ) -> Result<Resigner, ResignError> {
        let timestamp_key = OnlineKey::open("timestamp", &settings.key).await?;
        let snapshot_key = match &settings.snapshot {
            Some(s) => Some(OnlineKey::open("snapshot", &s.key).await?),
            None => None,
        };
        let resigner = Resigner {
            settings: settings.clone(),
            timestamp_key,
            snapshot_key,
            storage,
            db,
            metrics: Arc::new(Metrics::default()),
        };
        match resigner.newest_root().await? {
            Some(root) => {
                for key in resigner.keys() {
                    root.listed_keyid(key)?;
                }
            }
            None => tracing::warn!(
                "no root published yet: the online keys are checked against root \
                 before their first signature"
            ),
        }
        for key in resigner.keys() {
            tracing::info!(
                role = key.role(),
                key_id = key.key_id(),
                key = key.location(),
                "online {} signing enabled",
                key.role()
            );
        }
        Ok(resigner)
    }

    /// Counts into `metrics` (the ones `/metrics` renders) instead of a
    /// private set nobody scrapes.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Resigner {
        self.metrics = metrics;
        self
    }

    fn keys(&self) -> impl Iterator<Item = &OnlineKey> {
        std::iter::once(&self.timestamp_key).chain(self.snapshot_key.as_ref())
    }

    /// How often the published metadata is checked: often enough that the
    /// margin is never missed by much, rarely enough to cost nothing.
    fn check_interval(&self) -> Duration {
        (self.settings.resign_before / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Runs [`Self::resign_if_due`] forever (until aborted).
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.check_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_error = String::new();
            loop {
                tick.tick().await;
                match self.resign_if_due().await {
                    Ok(_) => last_error.clear(),
                    Err(e) => {
                        // Once per distinct problem, not at every tick.
                        let text = e.to_string();
                        if text != last_error {
                            tracing::error!("{text}");
                            last_error = text;
                        }
                    }
                }
            }
        })
    }

    /// Re-signs what expires within `resign_before`; returns what was
    /// published, or `None` when nothing was due (or there is no repository
    /// yet).
    pub async fn resign_if_due(&self) -> Result<Option<Resigned>, ResignError> {
        self.resign_locked()
            .await
            .inspect_err(|e| self.metrics.online_signing_failure(e.role()))
    }

    async fn resign_locked(&self) -> Result<Option<Resigned>, ResignError> {
        let local = self.storage.lock_commits().await;
        let shared = self.db.lock_publications().await?;
        let result = async {
            let Some(plan) = self.plan(chrono::Utc::now()).await? else {
                return Ok(None);
            };
            let id = {
                let storage = Arc::clone(&self.storage);
                tokio::task::spawn_blocking(move || storage.create_publication())
                    .await
                    .map_err(|e| ResignError::Metadata(format!("background task: {e}")))??
            };
            // Recorded (and fsynced) before anything is visible, as ota-repo does.
            self.record(&plan.signed).await?;
            for (name, content) in plan.files {
                self.storage
                    .stage_metadata(&id, &name, content.into())
                    .await?;
            }
            self.storage.commit_locked(&local, &id).await?;
            // The evidence of every online signature: what, which key, until when.
            for s in &plan.signed {
                self.metrics
                    .online_signature(s.role, SigningTrigger::Schedule);
                s.observe_expiry(&self.metrics);
                tracing::info!(
                    publication = %id,
                    role = s.role,
                    version = s.version,
                    expires = %s.expires,
                    key_id = %s.keyid,
                    key = s.key.location(),
                    signed_sha256 = %hex::encode(sha2::Sha256::digest(&s.canonical)),
                    "{} re-signed with the online key",
                    s.role
                );
            }
            Ok(Some(plan.resigned))
        }
        .await;
        shared.release().await;
        drop(local);
        result
    }

    /// The files to publish, if anything is due.
    async fn plan(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Plan<'_>>, ResignError> {
        let Some(ts_bytes) = self.storage.read_metadata("timestamp.json").await? else {
            return Ok(None);
        };
        let timestamp = Document::parse("timestamp.json", &ts_bytes)?;
        // Read at every check: the gauge follows what is published, also
        // when another instance signed it.
        observe_expiry(&self.metrics, "timestamp", timestamp.expires()?);
        let margin = |d: Duration| {
            chrono::Duration::from_std(d).map_err(|e| ResignError::Metadata(e.to_string()))
        };
        let resign_before = margin(self.settings.resign_before)?;
        let mut files = Vec::new();
        let mut signed = Vec::new();
        let mut new_snapshot = None;
        let mut root = None;

        if let (Some(key), Some(settings)) = (&self.snapshot_key, &self.settings.snapshot) {
            let current = timestamp.snapshot_version()?;
            let name = format!("{current}.snapshot.json");
            let bytes = self.storage.read_metadata(&name).await?.ok_or_else(|| {
                ResignError::Metadata(format!(
                    "timestamp.json names {name}, which is not published"
                ))
            })?;
            let snapshot = Document::parse(&name, &bytes)?;
            observe_expiry(&self.metrics, "snapshot", snapshot.expires()?);
            if snapshot.expires()? - now <= resign_before {
                let next = checked_next(current, "snapshot")?;
                let next_name = format!("{next}.snapshot.json");
                if self.storage.read_metadata(&next_name).await?.is_some() {
                    return Err(ResignError::Metadata(format!(
                        "{next_name} is already published but timestamp.json names {name}; \
                         refusing to publish another {next_name}"
                    )));
                }
                let root = match &root {
                    Some(r) => r,
                    None => root.insert(self.required_root().await?),
                };
                let keyid = root.listed_keyid(key)?;
                let expires = expiry(now, settings.expiry)?;
                let (bytes, canonical) = snapshot.successor(next, &expires, &keyid, key).await?;
                new_snapshot = Some((next, metadata::snapshot_meta(&timestamp, next, &bytes)?));
                files.push((next_name, bytes));
                signed.push(Signed {
                    role: "snapshot",
                    version: next,
                    expires,
                    keyid,
                    key,
                    canonical,
                });
            }
        }

        if new_snapshot.is_none() && timestamp.expires()? - now > resign_before {
            return Ok(None);
        }
        let root = match &root {
            Some(r) => r,
            None => root.insert(self.required_root().await?),
        };
        let key = &self.timestamp_key;
        let keyid = root.listed_keyid(key)?;
        let next = checked_next(timestamp.version()?, "timestamp")?;
        let expires = expiry(now, self.settings.timestamp_expiry)?;
        let mut successor = timestamp.clone();
        if let Some((_, meta)) = &new_snapshot {
            successor.set_snapshot_meta(meta.clone())?;
        }
        let (bytes, canonical) = successor.successor(next, &expires, &keyid, key).await?;
        files.push(("timestamp.json".to_owned(), bytes));
        signed.push(Signed {
            role: "timestamp",
            version: next,
            expires,
            keyid,
            key,
            canonical,
        });
        Ok(Some(Plan {
            files,
            signed,
            resigned: Resigned {
                timestamp: next,
                snapshot: new_snapshot.map(|(v, _)| v),
            },
        }))
    }

    /// Appends each signature to the audit log of `audit_dir`, if set.
    async fn record(&self, signed: &[Signed<'_>]) -> Result<(), ResignError> {
        let Some(dir) = self.settings.audit_dir.clone() else {
            return Ok(());
        };
        let entries: Vec<_> = signed
            .iter()
            .map(|s| {
                (
                    s.role,
                    s.version,
                    s.canonical.clone(),
                    s.keyid.clone(),
                    s.key.location().to_owned(),
                )
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            ota_common::atomic::create_dir_all_durable(&dir)
                .map_err(|e| ResignError::Metadata(format!("audit_dir {}: {e}", dir.display())))?;
            let log = AuditLog::new(&dir, AUDIT_OPERATOR.to_owned());
            for (role, version, canonical, keyid, location) in &entries {
                log.record(&AuditEvent {
                    action: AUDIT_ACTION,
                    role,
                    version: *version,
                    signed_bytes: canonical,
                    keyid,
                    key_location: location,
                })
                .map_err(|e| ResignError::Metadata(format!("audit log: {e}")))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ResignError::Metadata(format!("background task: {e}")))?
    }

    async fn required_root(&self) -> Result<Root, ResignError> {
        self.newest_root()
            .await?
            .ok_or_else(|| ResignError::Metadata("no 1.root.json published".to_owned()))
    }

    /// The highest `N.root.json` published, by probing 1, 2, ... (the way
    /// clients walk them).
    async fn newest_root(&self) -> Result<Option<Root>, ResignError> {
        self.newest_root_bytes()
            .await?
            .map(|(n, bytes)| Root::parse(n, &bytes))
            .transpose()
    }

    /// The highest `N.root.json` published and its bytes.
    async fn newest_root_bytes(&self) -> Result<Option<(u64, Vec<u8>)>, ResignError> {
        let mut newest = None;
        for n in 1..=MAX_ROOT_VERSIONS {
            match self
                .storage
                .read_metadata(&format!("{n}.root.json"))
                .await?
            {
                Some(bytes) => newest = Some((n, bytes)),
                None => break,
            }
        }
        Ok(newest)
    }
}

/// Files to publish (in this order) and the signatures they carry.
struct Plan<'a> {
    files: Vec<(String, Vec<u8>)>,
    signed: Vec<Signed<'a>>,
    resigned: Resigned,
}

/// One online signature, for the logs.
struct Signed<'a> {
    role: &'static str,
    version: u64,
    expires: String,
    /// The key id root lists (the one in the signature).
    keyid: String,
    key: &'a OnlineKey,
    /// The canonical bytes signed.
    canonical: Vec<u8>,
}

impl Signed<'_> {
    /// Sets the expiry gauge of this role to what was signed (published by then).
    fn observe_expiry(&self, metrics: &Metrics) {
        match chrono::DateTime::parse_from_rfc3339(&self.expires) {
            Ok(at) => metrics.set_metadata_expiry(self.role, at.timestamp()),
            Err(e) => tracing::warn!(role = self.role, "unreadable expiry {}: {e}", self.expires),
        }
    }
}

/// Sets the expiry gauge of the published `role`.
fn observe_expiry(metrics: &Metrics, role: &'static str, at: chrono::DateTime<chrono::Utc>) {
    metrics.set_metadata_expiry(role, at.timestamp());
}

fn checked_next(version: u64, role: &str) -> Result<u64, ResignError> {
    version
        .checked_add(1)
        .ok_or_else(|| ResignError::Metadata(format!("{role} version overflow")))
}

/// `now + lifetime` as TUF writes it (RFC 3339, UTC, whole seconds).
fn expiry(now: chrono::DateTime<chrono::Utc>, lifetime: Duration) -> Result<String, ResignError> {
    let lifetime =
        chrono::Duration::from_std(lifetime).map_err(|e| ResignError::Metadata(e.to_string()))?;
    Ok((now + lifetime).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}
