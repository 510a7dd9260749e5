//! The published metadata, held in memory and answered from there.
//!
//! Every device polls the same few small files (`timestamp.json`, the next
//! root version) around the clock. Each file is read once, with its body,
//! strong ETag (SHA-256 of the content), `Last-Modified` and
//! `Content-Length` prepared as header values; a poll is then a map look-up
//! and reference-counted clones, with no file system, object store or
//! database access.
//!
//! What is kept:
//! * the two names replaced in place (`timestamp.json`, `root.json`);
//! * versioned names (`N.root.json`, `V.snapshot.json`, ...) as they are
//!   asked for: they never change once published, so a copy is good forever
//!   (within [`VERSIONED_BUDGET_BYTES`]);
//! * `N.root.json` names found missing: a device probes for the next root
//!   version on every poll, and the answer is "not yet" nearly always.
//!
//! How it stays current: the whole view is replaced in one step (readers see
//! the old files or the new ones, never a mix) when this instance commits a
//! publication, and by [`Storage::refresh_published`] on a short period, which
//! picks up what other instances committed to the shared bucket or directory
//! (one `stat` or `HEAD` per mutable name). A device therefore sees another
//! instance's publication at most one refresh period late, which is also the
//! delay a CDN in front would add; the order devices depend on holds anyway:
//! a file a new `timestamp.json` references is in the store before that
//! `timestamp.json` is, and it is never among the names cached as missing.

use super::object::MAX_METADATA_OBJECT_BYTES;
use super::{blocking, io_err, Storage, StorageError};
use crate::paths::MetadataName;
use axum::http::HeaderValue;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Versioned files kept beyond this total are dropped (oldest first is not
/// worth tracking: the whole versioned set is dropped and refilled from what
/// devices ask for, which is the newest versions).
pub const VERSIONED_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// Missing root names remembered, at most (a client probing random versions
/// cannot grow the set without bound).
const ABSENT_MAX: usize = 1024;

/// How often an instance looks for publications committed elsewhere.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);

/// The names replaced in place, refreshed on every commit and period.
const MUTABLE: [&str; 2] = ["timestamp.json", "root.json"];

/// One metadata file, ready to be sent.
#[derive(Debug)]
pub struct MetadataFile {
    pub bytes: Bytes,
    /// `"<sha256 hex>"`.
    pub etag: HeaderValue,
    pub modified: SystemTime,
    pub last_modified: HeaderValue,
    pub content_length: HeaderValue,
    /// What the store said about the file, to tell whether it changed.
    source: SourceId,
}

/// A file's identity in its store, cheap to obtain without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceId {
    File {
        ino: u64,
        size: u64,
        mtime_ns: i128,
    },
    /// Without a store ETag, size and time could miss a same-second,
    /// same-size replacement: such an object always counts as changed.
    Object {
        store_etag: Option<String>,
        size: u64,
        modified: SystemTime,
    },
}

impl SourceId {
    fn same(&self, other: &SourceId) -> bool {
        match (self, other) {
            (
                SourceId::Object {
                    store_etag: None, ..
                },
                _,
            )
            | (
                _,
                SourceId::Object {
                    store_etag: None, ..
                },
            ) => false,
            _ => self == other,
        }
    }

    fn of_file(meta: &std::fs::Metadata) -> SourceId {
        SourceId::File {
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    fn of_object(meta: &object_store::ObjectMeta) -> SourceId {
        SourceId::Object {
            store_etag: meta.e_tag.clone(),
            size: meta.size,
            modified: SystemTime::from(meta.last_modified),
        }
    }
}

impl MetadataFile {
    fn new(bytes: Bytes, modified: SystemTime, source: SourceId) -> MetadataFile {
        let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
        MetadataFile {
            // Hex digits and quotes, an HTTP date, digits: always valid.
            etag: HeaderValue::from_maybe_shared(Bytes::from(etag))
                .unwrap_or_else(|_| HeaderValue::from_static("\"\"")),
            last_modified: HeaderValue::from_maybe_shared(Bytes::from(httpdate::fmt_http_date(
                modified,
            )))
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            content_length: HeaderValue::from(bytes.len()),
            modified,
            bytes,
            source,
        }
    }
}

/// What the memory knows about a name.
#[derive(Debug)]
pub enum Cached {
    Present(Arc<MetadataFile>),
    /// Known not to be published (a root version not yet issued).
    Absent,
    /// Not known: ask the store.
    Unknown,
}

/// One consistent set of files, replaced whole.
#[derive(Debug, Default, Clone)]
struct View {
    files: HashMap<String, Arc<MetadataFile>>,
    absent: HashSet<String>,
    versioned_bytes: usize,
    /// Bumped at every replacement: a file read from the store before a
    /// replacement must not be put into the view after it.
    generation: u64,
}

/// The in-memory metadata of one instance.
#[derive(Debug, Default)]
pub struct Published {
    view: RwLock<Arc<View>>,
    /// One refresh at a time (commit and period), so they cannot interleave.
    refreshing: tokio::sync::Mutex<()>,
}

impl Published {
    pub fn get(&self, name: &str) -> Cached {
        let Ok(view) = self.view.read() else {
            return Cached::Unknown;
        };
        match view.files.get(name) {
            Some(file) => Cached::Present(Arc::clone(file)),
            None if view.absent.contains(name) => Cached::Absent,
            None => Cached::Unknown,
        }
    }

    fn snapshot(&self) -> Arc<View> {
        match self.view.read() {
            Ok(v) => Arc::clone(&v),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace(&self, view: View) {
        match self.view.write() {
            Ok(mut v) => *v = Arc::new(view),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(view),
        }
    }

    /// Adds what a miss read from the store, unless the view was replaced
    /// meanwhile (the read may then be older than what the view holds).
    fn remember(&self, generation: u64, name: &str, found: Option<&Arc<MetadataFile>>) {
        let Ok(mut guard) = self.view.write() else {
            return;
        };
        if guard.generation != generation {
            return;
        }
        let view = Arc::make_mut(&mut guard);
        match found {
            Some(file) => {
                let size = file.bytes.len();
                let versioned = !MUTABLE.contains(&name);
                if versioned && view.versioned_bytes + size > VERSIONED_BUDGET_BYTES {
                    view.files.retain(|n, _| MUTABLE.contains(&n.as_str()));
                    view.versioned_bytes = 0;
                }
                if versioned {
                    view.versioned_bytes += size;
                }
                view.files.insert(name.to_owned(), Arc::clone(file));
            }
            None => {
                // Only root probes are remembered as missing: any other
                // versioned name is asked for because a timestamp or
                // snapshot names it, and must be found the moment it exists.
                if is_root_version(name) {
                    if view.absent.len() >= ABSENT_MAX {
                        view.absent.clear();
                    }
                    view.absent.insert(name.to_owned());
                }
            }
        }
    }
}

fn is_root_version(name: &str) -> bool {
    matches!(MetadataName::parse(name), Ok(MetadataName::Versioned { ref role, .. }) if role == "root")
}

/// A published metadata file, for an answer.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<MetadataFile>),
    Missing,
    /// Larger than metadata may be in memory: stream it from the store.
    TooLarge,
}

/// A metadata file read whole, or why it is not served from memory.
enum Whole {
    Found(Arc<MetadataFile>),
    Missing,
    /// Larger than metadata may be in memory: streamed from disk instead.
    TooLarge,
}

/// Whether `name` is one replaced in place (revalidated by every cache),
/// as opposed to a versioned, immutable one.
pub fn is_mutable(name: &str) -> bool {
    MUTABLE.contains(&name)
}

impl Storage {
    /// What memory holds for `name`, without asking the store.
    pub fn cached_metadata(&self, name: &str) -> Cached {
        self.published.get(name)
    }

    /// `name` from memory, or from the store (then remembered).
    pub async fn published_metadata(&self, name: &str) -> Result<Lookup, StorageError> {
        match self.published.get(name) {
            Cached::Present(file) => return Ok(Lookup::Found(file)),
            Cached::Absent => return Ok(Lookup::Missing),
            Cached::Unknown => {}
        }
        let generation = self.published.snapshot().generation;
        match self.read_whole(name).await? {
            Whole::Found(file) => {
                self.published.remember(generation, name, Some(&file));
                Ok(Lookup::Found(file))
            }
            Whole::Missing => {
                self.published.remember(generation, name, None);
                Ok(Lookup::Missing)
            }
            Whole::TooLarge => Ok(Lookup::TooLarge),
        }
    }

    /// Brings the in-memory view up to date with the store: re-reads the
    /// mutable names that changed and `committed` (names this instance just
    /// made visible, `metadata/...`), forgets missing roots, and replaces the
    /// view in one step. Returns whether anything changed.
    pub async fn refresh_published(&self, committed: &[String]) -> Result<bool, StorageError> {
        let _one_at_a_time = self.published.refreshing.lock().await;
        let old = self.published.snapshot();
        let mut next = View {
            generation: old.generation.wrapping_add(1),
            ..View::default()
        };
        let mut changed = !old.absent.is_empty();
        for name in MUTABLE {
            let current = old.files.get(name);
            let unchanged = match (current, self.source_id(name).await?) {
                (Some(file), Some(id)) => file.source.same(&id),
                (None, None) => true,
                _ => false,
            };
            let file = if unchanged {
                current.cloned()
            } else {
                changed = true;
                match self.read_whole(name).await? {
                    Whole::Found(file) => Some(file),
                    // Deleted from under the server: keep what devices had
                    // (readiness reports the unreadable repository).
                    Whole::Missing | Whole::TooLarge => current.cloned(),
                }
            };
            if let Some(file) = file {
                next.files.insert(name.to_owned(), file);
            }
        }
        for (name, file) in &old.files {
            if !MUTABLE.contains(&name.as_str()) {
                next.versioned_bytes += file.bytes.len();
                next.files.insert(name.clone(), Arc::clone(file));
            }
        }
        for shown in committed {
            let Some(name) = shown.strip_prefix("metadata/") else {
                continue;
            };
            if MUTABLE.contains(&name) || next.files.contains_key(name) {
                continue;
            }
            if let Whole::Found(file) = self.read_whole(name).await? {
                changed = true;
                next.versioned_bytes += file.bytes.len();
                next.files.insert(name.to_owned(), file);
            }
        }
        if next.versioned_bytes > VERSIONED_BUDGET_BYTES {
            next.files.retain(|n, _| MUTABLE.contains(&n.as_str()));
            next.versioned_bytes = 0;
        }
        if changed {
            self.published.replace(next);
        }
        Ok(changed)
    }

    /// Refreshes every `period` until the task is aborted; a failure (the
    /// bucket unreachable) is logged and the last view kept.
    pub fn spawn_published_refresh(
        self: &Arc<Self>,
        period: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let storage = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = storage.refresh_published(&[]).await {
                    tracing::warn!("cannot refresh the published metadata: {e}");
                }
            }
        })
    }

    async fn source_id(&self, name: &str) -> Result<Option<SourceId>, StorageError> {
        if let Some(objects) = &self.objects {
            let meta = objects.head(&format!("metadata/{name}")).await?;
            return Ok(meta.as_ref().map(SourceId::of_object));
        }
        let path = self.metadata_path(name);
        blocking(move || match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(SourceId::of_file(&meta))),
            Ok(_) => Ok(None),
            Err(e) if crate::storage::is_not_found(&e) => Ok(None),
            Err(e) => Err(io_err(format!("stat {}", path.display()))(e)),
        })
        .await
    }

    async fn read_whole(&self, name: &str) -> Result<Whole, StorageError> {
        if let Some(objects) = &self.objects {
            return Ok(
                match objects.get_small(&format!("metadata/{name}")).await? {
                    Some((meta, bytes)) => Whole::Found(Arc::new(MetadataFile::new(
                        bytes,
                        SystemTime::from(meta.last_modified),
                        SourceId::of_object(&meta),
                    ))),
                    None => Whole::Missing,
                },
            );
        }
        let path = self.metadata_path(name);
        blocking(move || {
            // The bytes and the identity from one open handle: a rename
            // meanwhile cannot pair one file's content with another's stat.
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if crate::storage::is_not_found(&e) => return Ok(Whole::Missing),
                Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
            };
            let meta = file
                .metadata()
                .map_err(io_err(format!("stat {}", path.display())))?;
            if !meta.is_file() {
                return Ok(Whole::Missing);
            }
            if meta.len() > MAX_METADATA_OBJECT_BYTES {
                return Ok(Whole::TooLarge);
            }
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            (&mut file)
                .take(MAX_METADATA_OBJECT_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(io_err(format!("read {}", path.display())))?;
            if bytes.len() as u64 > MAX_METADATA_OBJECT_BYTES {
                return Ok(Whole::TooLarge);
            }
            let modified = meta.modified().unwrap_or(UNIX_EPOCH);
            Ok(Whole::Found(Arc::new(MetadataFile::new(
                Bytes::from(bytes),
                modified,
                SourceId::of_file(&meta),
            ))))
        })
        .await
    }
}
