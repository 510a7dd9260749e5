//! The repository on disk and publications into it.
//!
//! ```text
//! <data>/repository/metadata/*            what devices fetch: N.root.json, V.role.json, timestamp.json
//! <data>/repository/targets/<dir>/<hash>.<basename>   images under their consistent-snapshot names
//! <data>/staging/<id>/blobs/<sha256>      uploaded images, named by content
//! <data>/staging/<id>/staged/<h>.json     one StagedTarget per target name (h = sha256 of the name)
//! <data>/staging/<id>/metadata/<file>     uploaded metadata
//! ```
//!
//! Uploads are stored by content and described by a manifest written after
//! the content is durable, so a commit only ever sees complete uploads. A
//! commit checks every name for conflicts before it touches the repository,
//! then makes files visible in an order that keeps what devices see
//! consistent: images, then versioned metadata (new names, referenced by
//! nothing yet), then `root.json`, then `timestamp.json` by an atomic rename.
//!
//! The repository itself may instead live in an S3-compatible bucket
//! ([`object`]); staging stays on the local disk either way.

pub mod listed;
pub mod object;
pub mod published;

pub use object::{ObjectRepository, ObjectStoreConfig};
pub use published::{Lookup, MetadataFile};

use crate::paths::{MetadataName, TargetPath};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ota_common::atomic;
use ota_common::wire::StagedTarget;
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// Read buffer when copying a staged image (64 KiB: constant memory).
const UPLOAD_COPY_BUFFER: usize = 64 * 1024;

/// Staging directories untouched this long are abandoned publications.
pub const STALE_STAGING_AGE: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unknown publication {0:?}")]
    UnknownPublication(String),
    #[error("{0}")]
    Conflict(String),
    #[error("upload exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("upload interrupted: {0}")]
    Body(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
    let context = context.into();
    move |source| StorageError::Io { context, source }
}

/// The data directory's repository and staging areas.
#[derive(Debug)]
pub struct Storage {
    metadata_dir: PathBuf,
    targets_dir: PathBuf,
    staging_dir: PathBuf,
    /// One publication commits at a time: conflict checks and placement must
    /// see a repository nobody else is changing.
    commit_lock: tokio::sync::Mutex<()>,
    /// `Some`: the repository is in a bucket and the two directories above
    /// are unused.
    objects: Option<ObjectRepository>,
    /// The metadata devices poll, in memory ([`published`]).
    published: published::Published,
}

impl Storage {
    /// Creates the layout under `data_dir` if missing (repository on the local disk).
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        Storage::open_with(data_dir, None)
    }

    /// Like [`Self::open`]; with `object_store`, the repository is kept in
    /// that bucket and only staging stays under `data_dir`.
    pub fn open_with(
        data_dir: &Path,
        object_store: Option<&ObjectStoreConfig>,
    ) -> Result<Storage, StorageError> {
        let repo = data_dir.join("repository");
        let objects = object_store.map(ObjectRepository::open).transpose()?;
        let storage = Storage {
            metadata_dir: repo.join("metadata"),
            targets_dir: repo.join("targets"),
            staging_dir: data_dir.join("staging"),
            commit_lock: tokio::sync::Mutex::new(()),
            objects,
            published: published::Published::default(),
        };
        let mut dirs = vec![&storage.staging_dir];
        if storage.objects.is_none() {
            dirs.extend([&storage.metadata_dir, &storage.targets_dir]);
        }
        for dir in dirs {
            atomic::create_dir_all_durable(dir)
                .map_err(io_err(format!("create {}", dir.display())))?;
        }
        Ok(storage)
    }

    /// The bucket, when the repository is kept in an object store.
    pub fn objects(&self) -> Option<&ObjectRepository> {
        self.objects.as_ref()
    }

    /// Whether the repository can be served: both directories listable, or
    /// the bucket answering.
    pub async fn check_ready(&self) -> Result<(), StorageError> {
        match &self.objects {
            Some(objects) => objects.check_readable().await,
            None => {
                let dirs = [self.metadata_dir.clone(), self.targets_dir.clone()];
                blocking(move || {
                    for dir in &dirs {
                        fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    /// [`Self::check_ready`] for a blocking thread of the Tokio runtime
    /// (`spawn_blocking`), where waiting on the bucket is allowed.
    pub fn check_readable(&self) -> Result<(), StorageError> {
        if let Some(objects) = &self.objects {
            let handle = tokio::runtime::Handle::try_current().map_err(|e| StorageError::Io {
                context: "check the object store outside the runtime".into(),
                source: io::Error::other(e),
            })?;
            return handle.block_on(objects.check_readable());
        }
        for dir in [&self.metadata_dir, &self.targets_dir] {
            fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
        }
        Ok(())
    }

    pub fn metadata_path(&self, name: &str) -> PathBuf {
        self.metadata_dir.join(name)
    }

    pub fn target_path(&self, path: &TargetPath) -> PathBuf {
        self.targets_dir.join(path.as_str())
    }

    /// A published metadata file's bytes, from the directory or the bucket;
    /// `None` if there is none of that name.
    pub async fn read_metadata(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(objects) = &self.objects {
            let found = objects.get_small(&format!("metadata/{name}")).await?;
            return Ok(found.map(|(_, bytes)| bytes.to_vec()));
        }
        let path = self.metadata_path(name);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
        }
    }

    /// Removes staging directories of publications abandoned more than `max_age` ago.
    pub fn clean_stale_staging(&self, max_age: Duration) -> Result<usize, StorageError> {
        let now = SystemTime::now();
        let mut removed = 0;
        let entries = fs::read_dir(&self.staging_dir)
            .map_err(io_err(format!("read {}", self.staging_dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read staging directory"))?;
            let path = entry.path();
            let newest = newest_mtime(&path);
            let age = now.duration_since(newest).unwrap_or(Duration::ZERO);
            if age > max_age {
                match fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path)) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed abandoned staging directory");
                        removed += 1;
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "cannot remove stale staging: {e}")
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Opens a publication: a fresh random id and its staging directory.
    pub fn create_publication(&self) -> Result<String, StorageError> {
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let dir = self.staging_dir.join(&id);
        for sub in ["blobs", "staged", "metadata"] {
            atomic::create_dir_all_durable(&dir.join(sub))
                .map_err(io_err(format!("create {}", dir.display())))?;
        }
        Ok(id)
    }

    /// The staging directory of an open publication.
    fn publication_dir(&self, id: &str) -> Result<PathBuf, StorageError> {
        // Ids are ours (32 hex digits); anything else cannot name a directory.
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(StorageError::UnknownPublication(id.to_owned()));
        }
        let dir = self.staging_dir.join(id);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(StorageError::UnknownPublication(id.to_owned()))
        }
    }

    /// Streams an image into the publication, hashing it on the way, and
    /// refuses it as soon as it passes `limit` bytes.
    ///
    /// `names`: the digest names to place it under when no staged metadata
    /// lists it (see [`listed`]); `None` for both.
    pub async fn stage_target<S, E>(
        &self,
        id: &str,
        target: &TargetPath,
        mut body: S,
        limit: u64,
        names: Option<Vec<String>>,
    ) -> Result<StagedTarget, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let dir = self.publication_dir(id)?;
        let tmp = dir
            .join("blobs")
            .join(format!(".upload-{}", random_suffix()));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(|e| match e.kind() {
                // The publication was committed or cleaned meanwhile.
                io::ErrorKind::NotFound => StorageError::UnknownPublication(id.to_owned()),
                _ => io_err(format!("create {}", tmp.display()))(e),
            })?;
        let result = async {
            let mut sha256 = Sha256::new();
            let mut sha512 = Sha512::new();
            let mut length = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StorageError::Body(e.to_string()))?;
                length = length.saturating_add(chunk.len() as u64);
                if length > limit {
                    return Err(StorageError::TooLarge(limit));
                }
                sha256.update(&chunk);
                sha512.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(io_err(format!("write {}", tmp.display())))?;
            }
            file.sync_all()
                .await
                .map_err(io_err(format!("fsync {}", tmp.display())))?;
            Ok(StagedTarget {
                target: target.as_str().to_owned(),
                length,
                sha256: hex::encode(sha256.finalize()),
                sha512: hex::encode(sha512.finalize()),
            })
        }
        .await;
        drop(file);
        let staged = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };

        // Content first, then the manifest that points at it: a manifest
        // always describes a complete, durable blob.
        let blob = dir.join("blobs").join(&staged.sha256);
        let manifest = dir.join("staged").join(format!(
            "{}.json",
            ota_common::hash::sha256_hex(staged.target.as_bytes())
        ));
        let json = serde_json::to_vec(&Manifest {
            staged: staged.clone(),
            names,
        })
        .map_err(|e| StorageError::Io {
            context: "encode staged target".into(),
            source: io::Error::other(e),
        })?;
        let tmp2 = tmp.clone();
        blocking(move || {
            atomic::rename_durable(&tmp2, &blob)
                .map_err(io_err(format!("rename {}", tmp2.display())))?;
            atomic::write_atomic(&manifest, &json)
                .map_err(io_err(format!("write {}", manifest.display())))
        })
        .await
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        Ok(staged)
    }

    /// Stores a validated metadata file in the publication.
    pub async fn stage_metadata(
        &self,
        id: &str,
        name: &str,
        content: Bytes,
    ) -> Result<(), StorageError> {
        let path = self.publication_dir(id)?.join("metadata").join(name);
        blocking(move || {
            atomic::write_atomic(&path, &content)
                .map_err(io_err(format!("write {}", path.display())))
        })
        .await
    }

    /// The metadata files staged in a publication, by name (temporary
    /// files of interrupted uploads left out).
    pub async fn staged_metadata_names(
        &self,
        id: &str,
    ) -> Result<Vec<(String, MetadataName)>, StorageError> {
        let dir = self.publication_dir(id)?.join("metadata");
        let found = blocking(move || staged_metadata(&dir)).await?;
        Ok(found
            .into_iter()
            .map(|(name, kind, _)| (name, kind))
            .collect())
    }

    /// A staged metadata file's bytes; `None` if the publication has none of
    /// that name.
    pub async fn read_staged_metadata(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        MetadataName::parse(name).map_err(|e| StorageError::Io {
            context: "staged metadata name".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let path = self.publication_dir(id)?.join("metadata").join(name);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
        }
    }

    /// Takes a staged metadata file out of the publication (the server
    /// re-issued it under another version).
    pub async fn unstage_metadata(&self, id: &str, name: &str) -> Result<(), StorageError> {
        MetadataName::parse(name).map_err(|e| StorageError::Io {
            context: "staged metadata name".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let dir = self.publication_dir(id)?.join("metadata");
        let path = dir.join(name);
        blocking(move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
            }
            atomic::fsync_dir(&dir).map_err(io_err(format!("fsync {}", dir.display())))
        })
        .await
    }

    /// A fresh, empty working directory inside the publication's staging
    /// area (removed with it), for checks that need files on disk.
    pub async fn publication_workdir(&self, id: &str, name: &str) -> Result<PathBuf, StorageError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            return Err(StorageError::Io {
                context: format!("work directory name {name:?}"),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        // Beside blobs/, staged/ and metadata/, which a commit reads; a
        // commit ignores anything else.
        let dir = self.publication_dir(id)?.join(name);
        blocking(move || {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("remove {}", dir.display()))(e)),
            }
            atomic::create_dir_all_durable(&dir)
                .map_err(io_err(format!("create {}", dir.display())))?;
            Ok(dir)
        })
        .await
    }

    /// Makes a publication visible (see the module docs for the order) and
    /// removes its staging directory. Returns the repository paths made
    /// visible, in order. On a conflict nothing is changed.
    pub async fn commit(self: &Arc<Self>, id: &str) -> Result<Vec<String>, StorageError> {
        let guard = self.lock_commits().await;
        self.commit_locked(&guard, id).await
    }

    /// Waits for this instance's other commits. Callers that must also take
    /// a lock shared between instances take it after this one, so waiting
    /// requests of one instance queue here and not on database connections.
    pub async fn lock_commits(&self) -> CommitGuard<'_> {
        CommitGuard(self.commit_lock.lock().await)
    }

    /// [`Self::commit`] for a caller already holding [`Self::lock_commits`].
    pub async fn commit_locked(
        self: &Arc<Self>,
        _guard: &CommitGuard<'_>,
        id: &str,
    ) -> Result<Vec<String>, StorageError> {
        let files = self.place(id).await?;
        // Devices see the publication from memory from here on. A failure
        // here leaves the commit done and the view one refresh period late.
        if let Err(e) = self.refresh_published(&files).await {
            tracing::warn!("committed, but cannot refresh the published metadata: {e}");
        }
        Ok(files)
    }

    async fn place(self: &Arc<Self>, id: &str) -> Result<Vec<String>, StorageError> {
        let dir = self.publication_dir(id)?;
        if let Some(objects) = &self.objects {
            let files = objects.commit(&dir).await?;
            let staging = dir.clone();
            if let Err(e) = blocking(move || {
                fs::remove_dir_all(&staging)
                    .map_err(io_err(format!("remove {}", staging.display())))
            })
            .await
            {
                tracing::warn!("cannot remove committed staging: {e}");
            }
            return Ok(files);
        }
        let this = Arc::clone(self);
        let files = blocking(move || {
            let plan = this.plan_commit(&dir)?;
            let files = this.apply(&plan)?;
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), "cannot remove committed staging: {e}");
            }
            Ok(files)
        })
        .await?;
        Ok(files)
    }

    /// Reads the publication and checks every destination name. Touches nothing.
    fn plan_commit(&self, dir: &Path) -> Result<Vec<Placement>, StorageError> {
        let mut conflicts = Vec::new();
        let mut targets = Vec::new();
        let listed = listed_digests(&staged_metadata(&dir.join("metadata"))?)?;
        for Manifest { staged, names } in read_manifests(&dir.join("staged"))? {
            let target =
                TargetPath::parse_decoded(&staged.target).map_err(|e| StorageError::Io {
                    context: "corrupt staging manifest".into(),
                    source: io::Error::other(e),
                })?;
            let blob = dir.join("blobs").join(&staged.sha256);
            let (sub, base) = target.split();
            for (algorithm, hash) in [("sha256", &staged.sha256), ("sha512", &staged.sha512)] {
                if !listed.wants(&staged.target, names.as_deref(), algorithm) {
                    continue;
                }
                let rel = if sub.is_empty() {
                    format!("{hash}.{base}")
                } else {
                    format!("{sub}/{hash}.{base}")
                };
                let dst = self.targets_dir.join(&rel);
                // Names are content-addressed, so an existing file of the
                // right length is this very image, uploaded before.
                match fs::metadata(&dst) {
                    Ok(m) if m.is_file() && m.len() == staged.length => continue,
                    Ok(_) => conflicts.push(format!("targets/{rel}")),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("stat {}", dst.display()))(e)),
                }
                targets.push(Placement {
                    src: blob.clone(),
                    dst,
                    shown: format!("targets/{rel}"),
                    replace: false,
                });
            }
        }
        targets.sort_by(|a, b| a.shown.cmp(&b.shown));

        let mut versioned = Vec::new();
        let mut root = None;
        let mut timestamp = None;
        let meta_dir = dir.join("metadata");
        let entries =
            fs::read_dir(&meta_dir).map_err(io_err(format!("read {}", meta_dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read staged metadata"))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Temporary files of an interrupted write_atomic start with '.'.
            let Ok(kind) = MetadataName::parse(&name) else {
                continue;
            };
            let src = entry.path();
            let dst = self.metadata_dir.join(&name);
            let placement = Placement {
                src,
                dst,
                shown: format!("metadata/{name}"),
                replace: !kind.is_immutable(),
            };
            match kind {
                MetadataName::Versioned { version, role } => {
                    match same_content(&placement.src, &placement.dst)? {
                        Some(true) => continue,
                        Some(false) => conflicts.push(placement.shown.clone()),
                        None => {}
                    }
                    versioned.push((role_rank(&role), version, placement));
                }
                MetadataName::Root => root = Some(placement),
                MetadataName::Timestamp => {
                    check_timestamp_newer(&placement.src, &placement.dst, &mut conflicts)?;
                    timestamp = Some(placement);
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(conflict(&conflicts));
        }
        // Root versions first (a client walks them in order), snapshot last.
        versioned.sort_by(|a, b| (a.0, a.1, &a.2.shown).cmp(&(b.0, b.1, &b.2.shown)));

        let mut plan = targets;
        plan.extend(versioned.into_iter().map(|(_, _, p)| p));
        plan.extend(root);
        plan.extend(timestamp);
        Ok(plan)
    }

    fn apply(&self, plan: &[Placement]) -> Result<Vec<String>, StorageError> {
        let mut shown = Vec::with_capacity(plan.len());
        for p in plan {
            let parent = p.dst.parent().unwrap_or(&self.targets_dir);
            atomic::create_dir_all_durable(parent)
                .map_err(io_err(format!("create {}", parent.display())))?;
            if p.replace {
                // The one step that changes what devices see: atomic and durable.
                atomic::rename_durable(&p.src, &p.dst)
                    .map_err(io_err(format!("rename to {}", p.dst.display())))?;
            } else {
                // A hard link makes the complete, already fsynced file appear
                // under its new name in one step; the staging name goes away
                // with the staging directory.
                match fs::hard_link(&p.src, &p.dst) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(format!("link {}", p.dst.display()))(e)),
                }
                atomic::fsync_dir(parent).map_err(io_err(format!("fsync {}", parent.display())))?;
            }
            shown.push(p.shown.clone());
        }
        Ok(shown)
    }
}

/// Proof that the caller holds the commit lock of this instance.
#[derive(Debug)]
pub struct CommitGuard<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>);

/// One file to make visible.
#[derive(Debug)]
struct Placement {
    src: PathBuf,
    dst: PathBuf,
    /// Repository-relative name, as reported to the publisher.
    shown: String,
    /// Mutable names (timestamp.json, root.json) are replaced by rename.
    replace: bool,
}

fn role_rank(role: &str) -> u8 {
    match role {
        "root" => 0,
        "snapshot" => 2,
        _ => 1,
    }
}

/// What staging keeps of an uploaded target: the server's account of it
/// and the digest names its publisher asked for.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Manifest {
    #[serde(flatten)]
    pub staged: StagedTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

fn read_manifests(dir: &Path) -> Result<Vec<Manifest>, StorageError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read staged targets"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let bytes = fs::read(entry.path()).map_err(io_err(format!("read {name}")))?;
        let staged: Manifest = serde_json::from_slice(&bytes).map_err(|e| StorageError::Io {
            context: format!("corrupt staging manifest {name}"),
            source: io::Error::other(e),
        })?;
        out.push(staged);
    }
    Ok(out)
}

/// `None` if `dst` does not exist, else whether both files hold the same bytes.
fn same_content(src: &Path, dst: &Path) -> Result<Option<bool>, StorageError> {
    match fs::read(dst) {
        Ok(existing) => {
            let new = fs::read(src).map_err(io_err(format!("read {}", src.display())))?;
            Ok(Some(existing == new))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", dst.display()))(e)),
    }
}

/// The refusal of a commit whose names are taken, saying what to do about it.
pub(crate) fn conflict(conflicts: &[String]) -> StorageError {
    let mut message = format!(
        "already published with different content: {}",
        conflicts.join(", ")
    );
    if conflicts.iter().any(|c| c.starts_with("metadata/")) {
        // The usual cause: the server's metadata moved on since the
        // repository last signed (another publication, or a timestamp the
        // server re-signed), so the versions signed locally are taken.
        message.push_str(
            ". Each metadata version is published once and the server's is newer than \
             yours: copy the server's timestamp.json and the snapshot it names into your \
             repository's metadata/, sign again (ota-repo add, or ota-repo resign --role \
             snapshot --role timestamp) and publish; or configure [online_signing] on the \
             server so it issues the timestamp itself at each publication",
        );
    }
    StorageError::Conflict(message)
}

/// A timestamp that does not move forward would make every device reject the
/// repository as a rollback; refuse it here, with a clear word, instead.
fn check_timestamp_newer(
    src: &Path,
    dst: &Path,
    conflicts: &mut Vec<String>,
) -> Result<(), StorageError> {
    let current = match fs::read(dst) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("read {}", dst.display()))(e)),
    };
    let new = fs::read(src).map_err(io_err(format!("read {}", src.display())))?;
    conflicts.extend(timestamp_conflict(&current, &new));
    Ok(())
}

/// The conflict of replacing the published timestamp `current` by `new`, if any.
fn timestamp_conflict(current: &[u8], new: &[u8]) -> Option<String> {
    if new == current {
        return None;
    }
    let version = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .ok()
            .and_then(|v| v.pointer("/signed/version").and_then(|v| v.as_u64()))
    };
    match (version(current), version(new)) {
        (Some(old), Some(new)) if new <= old => Some(format!(
            "metadata/timestamp.json (version {new} is not newer than the published {old})"
        )),
        _ => None,
    }
}

/// Which digests the staged targets metadata names each target by (see
/// [`listed`]): reads the staged files (small: their upload is capped).
fn listed_digests(
    metadata: &[(String, MetadataName, PathBuf)],
) -> Result<listed::ListedDigests, StorageError> {
    let mut files = Vec::with_capacity(metadata.len());
    for (_, kind, path) in metadata {
        if matches!(kind, MetadataName::Versioned { .. }) {
            files.push((
                kind,
                fs::read(path).map_err(io_err(format!("read {}", path.display())))?,
            ));
        }
    }
    Ok(listed::ListedDigests::from_staged(
        files.iter().map(|(kind, bytes)| (*kind, bytes.as_slice())),
    ))
}

/// The staged metadata files: (name, kind, path), skipping temporary files.
fn staged_metadata(dir: &Path) -> Result<Vec<(String, MetadataName, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read staged metadata"))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Temporary files of an interrupted write_atomic start with '.'.
        let Ok(kind) = MetadataName::parse(&name) else {
            continue;
        };
        out.push((name, kind, entry.path()));
    }
    Ok(out)
}

/// The newest mtime of a staging directory and its direct subdirectories
/// (uploads land in subdirectories, which does not touch the top one).
fn newest_mtime(path: &Path) -> SystemTime {
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut newest = mtime(path).unwrap_or(SystemTime::UNIX_EPOCH);
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if let Some(t) = mtime(&entry.path()) {
                newest = newest.max(t);
            }
        }
    }
    newest
}

fn random_suffix() -> String {
    let mut raw = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Runs filesystem work (fsync, rename, directory walks) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io {
            context: "background file task".into(),
            source: io::Error::other(e),
        })?
}

/// "No such file", also when a path component is a file (ENOTDIR): both
/// mean the name is not in the repository.
pub(crate) fn is_not_found(e: &io::Error) -> bool {
    const ENOTDIR: i32 = 20;
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENOTDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let when = SystemTime::now() - by;
        fs::File::open(path)
            .and_then(|f| f.set_modified(when))
            .expect("set mtime");
    }

    #[test]
    fn abandoned_staging_is_cleaned_and_fresh_staging_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let old = storage.create_publication().expect("old");
        let fresh = storage.create_publication().expect("fresh");
        let old_dir = dir.path().join("staging").join(&old);
        for sub in ["blobs", "staged", "metadata", ""] {
            age(&old_dir.join(sub), Duration::from_secs(2 * 24 * 3600));
        }
        assert_eq!(
            storage
                .clean_stale_staging(STALE_STAGING_AGE)
                .expect("clean"),
            1
        );
        assert!(!old_dir.exists());
        assert!(dir.path().join("staging").join(&fresh).exists());
    }

    #[test]
    fn publication_ids_cannot_name_other_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        for id in [
            "..",
            "../repository",
            "",
            "ABCDEF00000000000000000000000000",
        ] {
            assert!(matches!(
                storage.publication_dir(id),
                Err(StorageError::UnknownPublication(_))
            ));
        }
    }
}
