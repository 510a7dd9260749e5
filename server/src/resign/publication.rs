//! The online roles at a publication's commit: the party that holds the
//! online keys issues what they sign.
//!
//! `ota-repo` signs targets, snapshot and timestamp at `add` time, taking
//! the next versions from its own copy of the repository. Once the server
//! has re-signed the timestamp (or snapshot) by itself, those versions are
//! taken, and a plain publication would be refused. So, with
//! `[online_signing]`, the commit replaces what was uploaded for the online
//! roles:
//!
//! * timestamp (always): version `max(uploaded, published + 1)`, `meta`
//!   naming the publication's snapshot (its length and hashes), expiry
//!   from `timestamp_expiry`, signed with the online timestamp key;
//! * snapshot (only with `snapshot_key`, and only when the uploaded one is
//!   not newer than the published one, or its name is taken by other
//!   content): re-issued as `published + 1` with the uploaded `meta`.
//!
//! Before signing, the uploaded files must be well-formed TUF metadata, a
//! snapshot must not roll back what the published one lists (devices would
//! refuse it), and everything it names must exist in the publication or the
//! repository. After signing, and before anything is visible, the result is
//! checked the way a freshly flashed device checks it ([`super::device_view`]).
//! The caller holds the commit locks, from this call to the commit.

use super::metadata::{snapshot_meta, Document, Root};
use super::{checked_next, expiry, observe_expiry, ResignError, Resigner, Signed};
use crate::metrics::{Metrics, SigningTrigger};
use crate::paths::MetadataName;
use sha2::Digest;

/// Most version numbers probed past a taken snapshot name.
const MAX_SNAPSHOT_PROBES: u64 = 1000;

/// What the server signed for a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    /// The timestamp version issued.
    pub timestamp: u64,
    /// The version the snapshot was re-issued as, when the uploaded one
    /// could not be published as it was.
    pub snapshot: Option<u64>,
    /// The uploaded timestamp's version (`None`: none was uploaded).
    pub uploaded_timestamp: Option<u64>,
    /// The uploaded snapshot's version (`None`: none was uploaded).
    pub uploaded_snapshot: Option<u64>,
}

/// The online signatures of one publication, staged in it and awaiting its
/// commit.
pub struct PublicationIssue<'a> {
    pub issued: Issued,
    signed: Vec<Signed<'a>>,
    metrics: &'a Metrics,
    /// The expiry of the snapshot the timestamp names, when the server
    /// holds the snapshot key (the snapshot is an online role then) but
    /// published it as uploaded.
    snapshot_expires: Option<chrono::DateTime<chrono::Utc>>,
}

impl std::fmt::Debug for PublicationIssue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicationIssue")
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

impl PublicationIssue<'_> {
    /// The evidence of each online signature, once the publication is
    /// visible: the same log line as the periodic re-signing, and the same
    /// metrics (signatures, expiries).
    pub fn log_committed(&self, publication: &str) {
        if let Some(at) = self.snapshot_expires {
            observe_expiry(self.metrics, "snapshot", at);
        }
        for s in &self.signed {
            self.metrics
                .online_signature(s.role, SigningTrigger::Publication);
            s.observe_expiry(self.metrics);
            tracing::info!(
                publication,
                role = s.role,
                version = s.version,
                expires = %s.expires,
                key_id = %s.keyid,
                key = s.key.location(),
                signed_sha256 = %hex::encode(sha2::Sha256::digest(&s.canonical)),
                "{} signed with the online key for a publication",
                s.role
            );
        }
    }
}

/// The snapshot the timestamp will name.
struct NamedSnapshot {
    version: u64,
    bytes: Vec<u8>,
    doc: Document,
}

fn refused(message: String) -> ResignError {
    ResignError::Refused(message)
}

impl Resigner {
    /// Issues the online roles for publication `id` and stages them in it
    /// (see the module docs). `None` when the publication carries neither
    /// a timestamp nor a snapshot (e.g. root only): nothing to sign. The
    /// caller must hold the commit locks until the commit is done.
    pub async fn issue_for_publication(
        &self,
        id: &str,
    ) -> Result<Option<PublicationIssue<'_>>, ResignError> {
        self.issue(id).await.inspect_err(|e| {
            // A refused upload is the publisher's to fix, not a failure
            // of the online keys.
            if !matches!(e, ResignError::Malformed(_) | ResignError::Refused(_)) {
                self.metrics.online_signing_failure(e.role());
            }
        })
    }

    async fn issue(&self, id: &str) -> Result<Option<PublicationIssue<'_>>, ResignError> {
        let now = chrono::Utc::now();
        let staged = self.storage.staged_metadata_names(id).await?;
        let mut staged_snapshots = Vec::new();
        let mut staged_roots = Vec::new();
        let mut staged_timestamp = false;
        for (name, kind) in &staged {
            match kind {
                MetadataName::Timestamp => staged_timestamp = true,
                MetadataName::Versioned { version, role } if role == "snapshot" => {
                    staged_snapshots.push((*version, name.clone()))
                }
                MetadataName::Versioned { version, role } if role == "root" => {
                    staged_roots.push(*version)
                }
                _ => {}
            }
        }
        if staged_snapshots.len() > 1 {
            return Err(ResignError::Malformed(format!(
                "the publication uploads {} snapshots ({}); one is expected",
                staged_snapshots.len(),
                staged_snapshots
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let staged_snapshot = staged_snapshots.pop();
        if staged_snapshot.is_none() && !staged_timestamp {
            return Ok(None);
        }

        let uploaded_ts = match staged_timestamp {
            true => Some(Document::parse_uploaded(
                "timestamp.json",
                "timestamp",
                &self.staged(id, "timestamp.json").await?,
            )?),
            false => None,
        };
        let published_ts = match self.storage.read_metadata("timestamp.json").await? {
            Some(bytes) => Some(Document::parse("timestamp.json", &bytes)?),
            None => None,
        };
        let published_snapshot = match &published_ts {
            Some(ts) => {
                let version = ts.snapshot_version()?;
                let name = format!("{version}.snapshot.json");
                let bytes = self.storage.read_metadata(&name).await?.ok_or_else(|| {
                    ResignError::Metadata(format!(
                        "the published timestamp.json names {name}, which is not published"
                    ))
                })?;
                Some((version, Document::parse(&name, &bytes)?))
            }
            None => None,
        };

        // The snapshot this publication is about.
        let named = match &staged_snapshot {
            Some((version, name)) => {
                let bytes = self.staged(id, name).await?;
                let doc = Document::parse_uploaded(name, "snapshot", &bytes)?;
                if doc.version()? != *version {
                    return Err(ResignError::Malformed(format!(
                        "uploaded {name} has signed.version {}",
                        doc.version()?
                    )));
                }
                NamedSnapshot {
                    version: *version,
                    bytes,
                    doc,
                }
            }
            None => {
                // A timestamp alone: it names a snapshot that must exist.
                let template = uploaded_ts.as_ref().ok_or_else(|| {
                    ResignError::Malformed("the publication has no timestamp.json".to_owned())
                })?;
                let version = template.snapshot_version().map_err(to_malformed)?;
                let name = format!("{version}.snapshot.json");
                let bytes = self.storage.read_metadata(&name).await?.ok_or_else(|| {
                    ResignError::Malformed(format!(
                        "uploaded timestamp.json names {name}, which is neither in the \
                         publication nor published"
                    ))
                })?;
                let doc = Document::parse(&name, &bytes)?;
                NamedSnapshot {
                    version,
                    bytes,
                    doc,
                }
            }
        };

        // Devices refuse a snapshot that drops or rolls back what the one
        // they trust lists: say so now, with what to do.
        if let Some((published_version, published)) = &published_snapshot {
            let offered: std::collections::HashMap<String, u64> =
                named.doc.meta_versions()?.into_iter().collect();
            for (file, version) in published.meta_versions()? {
                match offered.get(&file) {
                    None => {
                        return Err(refused(format!(
                            "{}.snapshot.json does not list {file}, which the published \
                             {published_version}.snapshot.json lists; devices would refuse it",
                            named.version
                        )))
                    }
                    Some(v) if *v < version => {
                        return Err(refused(format!(
                            "{}.snapshot.json names {file} version {v}, older than version \
                             {version} in the published {published_version}.snapshot.json: \
                             your repository is behind the server (someone else published \
                             since); update it from the server, sign again and publish",
                            named.version
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        // What the snapshot names must exist, or devices stop at it.
        for (file, version) in named.doc.meta_versions()? {
            let role = file.strip_suffix(".json").unwrap_or(&file);
            let name = format!("{version}.{role}.json");
            if MetadataName::parse(&name).is_err()
                || (self
                    .storage
                    .read_staged_metadata(id, &name)
                    .await?
                    .is_none()
                    && self.storage.read_metadata(&name).await?.is_none())
            {
                return Err(refused(format!(
                    "{}.snapshot.json names {name}, which is neither in the publication nor \
                     published",
                    named.version
                )));
            }
        }

        // Probed once: every root read costs a request with an object store.
        let published_root = self.newest_root_bytes().await?;
        let (root_version, root_bytes) = self
            .newest_root_for(id, published_root.clone(), &staged_roots)
            .await?;
        let root = Root::parse(root_version, &root_bytes)?;
        let mut signed = Vec::new();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();

        // Snapshot: published as uploaded unless it cannot be.
        let published_snapshot_version = published_snapshot.as_ref().map(|(v, _)| *v);
        let name = format!("{}.snapshot.json", named.version);
        let taken = match &staged_snapshot {
            Some(_) => self
                .storage
                .read_metadata(&name)
                .await?
                .is_some_and(|existing| existing != named.bytes),
            None => false,
        };
        let behind = published_snapshot_version.is_some_and(|p| named.version < p);
        let mut reissued = None;
        let final_snapshot = if taken || behind {
            let (Some(key), Some(settings)) = (&self.snapshot_key, &self.settings.snapshot) else {
                return Err(refused(format!(
                    "{name} {}; the server holds no online snapshot key (snapshot_key), so \
                     sign a snapshot newer than version {} in your repository and publish again",
                    if taken {
                        "is already published with other content"
                    } else {
                        "is older than the published snapshot"
                    },
                    published_snapshot_version.unwrap_or(named.version)
                )));
            };
            let mut next = checked_next(
                published_snapshot_version
                    .unwrap_or(named.version)
                    .max(named.version),
                "snapshot",
            )?;
            let mut probes = 0;
            while self
                .storage
                .read_metadata(&format!("{next}.snapshot.json"))
                .await?
                .is_some()
            {
                probes += 1;
                if probes > MAX_SNAPSHOT_PROBES {
                    return Err(ResignError::Metadata(format!(
                        "no free snapshot version found up to {next}"
                    )));
                }
                next = checked_next(next, "snapshot")?;
            }
            let keyid = root.listed_keyid(key)?;
            let expires = expiry(now, settings.expiry)?;
            let (bytes, canonical) = named.doc.successor(next, &expires, &keyid, key).await?;
            signed.push(Signed {
                role: "snapshot",
                version: next,
                expires,
                keyid,
                key,
                canonical,
            });
            files.push((format!("{next}.snapshot.json"), bytes.clone()));
            reissued = Some(next);
            NamedSnapshot {
                version: next,
                doc: Document::parse(&format!("{next}.snapshot.json"), &bytes)?,
                bytes,
            }
        } else {
            named
        };

        let snapshot_expires = match (&self.snapshot_key, reissued) {
            (Some(_), None) => Some(final_snapshot.doc.expires()?),
            _ => None,
        };

        // Timestamp: always, past the published one.
        let template = uploaded_ts
            .as_ref()
            .or(published_ts.as_ref())
            .ok_or_else(|| {
                ResignError::Malformed(
                    "the publication has a snapshot but no timestamp.json, and none is \
                     published"
                        .to_owned(),
                )
            })?;
        let uploaded_version = uploaded_ts.as_ref().map(Document::version).transpose()?;
        let after_published = match &published_ts {
            Some(ts) => Some(checked_next(ts.version()?, "timestamp")?),
            None => None,
        };
        let version = uploaded_version
            .into_iter()
            .chain(after_published)
            .max()
            .unwrap_or(1);
        let key = &self.timestamp_key;
        let keyid = root.listed_keyid(key)?;
        let expires = expiry(now, self.settings.timestamp_expiry)?;
        let mut timestamp = template.clone();
        let entry = snapshot_meta(template, final_snapshot.version, &final_snapshot.bytes)
            // An uploaded timestamp hashing with an algorithm the server
            // cannot compute is the publisher's to fix, not a server fault.
            .map_err(|e| {
                if uploaded_ts.is_some() {
                    to_malformed(e)
                } else {
                    e
                }
            })?;
        timestamp.set_snapshot_meta(entry)?;
        let (ts_bytes, canonical) = timestamp.successor(version, &expires, &keyid, key).await?;
        signed.push(Signed {
            role: "timestamp",
            version,
            expires,
            keyid,
            key,
            canonical,
        });

        // What a device would do with it, before anything is visible.
        let anchor = match published_root {
            Some(published) => published,
            // The first publication: devices are flashed with its 1.root.json.
            None => (1, self.staged(id, "1.root.json").await?),
        };
        let mut view = vec![
            ("timestamp.json".to_owned(), ts_bytes.clone()),
            (
                format!("{}.snapshot.json", final_snapshot.version),
                final_snapshot.bytes.clone(),
            ),
        ];
        for n in staged_roots.iter().filter(|n| **n > anchor.0) {
            let name = format!("{n}.root.json");
            view.push((name.clone(), self.staged(id, &name).await?));
        }
        for (file, v) in final_snapshot.doc.meta_versions()? {
            if file == "targets.json" {
                let name = format!("{v}.targets.json");
                let bytes = match self.storage.read_staged_metadata(id, &name).await? {
                    Some(b) => b,
                    None => self.storage.read_metadata(&name).await?.ok_or_else(|| {
                        refused(format!(
                            "{name} is neither in the publication nor published"
                        ))
                    })?,
                };
                view.push((name, bytes));
            }
        }
        super::device_view::check(&self.storage, id, anchor.1, view).await?;

        // Recorded (and fsynced) before anything is visible, as the
        // periodic re-signing does.
        self.record(&signed).await?;
        if let (Some(_), Some((_, uploaded_name))) = (reissued, &staged_snapshot) {
            // Superseded by the re-issued version; never referenced.
            self.storage.unstage_metadata(id, uploaded_name).await?;
        }
        for (name, bytes) in files {
            self.storage.stage_metadata(id, &name, bytes.into()).await?;
        }
        self.storage
            .stage_metadata(id, "timestamp.json", ts_bytes.into())
            .await?;
        Ok(Some(PublicationIssue {
            issued: Issued {
                timestamp: version,
                snapshot: reissued,
                uploaded_timestamp: uploaded_version,
                uploaded_snapshot: staged_snapshot.map(|(v, _)| v),
            },
            signed,
            metrics: &self.metrics,
            snapshot_expires,
        }))
    }

    /// A staged file that must be there.
    async fn staged(&self, id: &str, name: &str) -> Result<Vec<u8>, ResignError> {
        self.storage
            .read_staged_metadata(id, name)
            .await?
            .ok_or_else(|| ResignError::Malformed(format!("the publication has no {name}")))
    }

    /// The newest root, staged in the publication or published: the one
    /// whose keys the new signatures must be listed by.
    async fn newest_root_for(
        &self,
        id: &str,
        published: Option<(u64, Vec<u8>)>,
        staged_roots: &[u64],
    ) -> Result<(u64, Vec<u8>), ResignError> {
        if let Some(s) = staged_roots.iter().copied().max() {
            if published.as_ref().is_none_or(|(p, _)| s > *p) {
                return Ok((s, self.staged(id, &format!("{s}.root.json")).await?));
            }
        }
        published.ok_or_else(|| {
            ResignError::Malformed(
                "nothing is published yet and the publication has no root".to_owned(),
            )
        })
    }
}

fn to_malformed(e: ResignError) -> ResignError {
    match e {
        ResignError::Metadata(m) => ResignError::Malformed(m),
        other => other,
    }
}
