//! The repository in an S3-compatible object store (`[object_store]` in the
//! configuration), for fleets served by several instances without a shared
//! file system.
//!
//! ```text
//! s3://<bucket>/<prefix>/metadata/*                    what devices fetch
//! s3://<bucket>/<prefix>/targets/<dir>/<hash>.<name>   images under both consistent names
//! ```
//!
//! Uploads are still staged on the local disk (see the parent module); only a
//! commit writes to the bucket. The order is the one of the local backend:
//! every name is checked first (HEAD for images, GET and compare for
//! metadata) and nothing is written on a conflict; then images (a streamed
//! multipart upload of the staged blob under its SHA-256 name, and a
//! server-side copy to its SHA-512 name), then versioned metadata
//! (new names nobody references yet), then `root.json`, and `timestamp.json`
//! last: a single PUT, which S3 makes visible atomically. Uniqueness does not
//! rely on conditional PUTs (not every S3 implementation has them): commits
//! are serialized by the instance's mutex and, between instances, the
//! database's publication lock, exactly as for the local backend.

use super::{
    blocking, listed_digests, read_manifests, role_rank, staged_metadata, timestamp_conflict,
};
use super::{StorageError, UPLOAD_COPY_BUFFER};
use crate::paths::{MetadataName, TargetPath};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Part size of multipart uploads, and so the most of an image held in memory
/// per upload (S3 wants parts of at least 5 MiB).
const UPLOAD_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight per upload: memory stays at most this many parts.
const UPLOAD_CONCURRENCY: usize = 2;
/// Largest object S3 copies in one request (CopyObject); larger images are
/// uploaded again under their second name instead.
const MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Largest metadata object read whole (what a publication may upload).
pub const MAX_METADATA_OBJECT_BYTES: u64 = 16 * 1024 * 1024;

/// `[object_store]`: where the repository lives.
#[derive(Clone, PartialEq, Eq)]
pub struct ObjectStoreConfig {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// The S3 API's base URL (MinIO, Garage, Ceph, s3s-fs, ...); `None`: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Plain `http://` endpoints (loopback, tests); off by default.
    pub allow_http: bool,
}

impl std::fmt::Debug for ObjectStoreConfig {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl ObjectStoreConfig {
    /// The configuration for `url` with nothing else set.
    pub fn new(url: impl Into<String>) -> Self {
        ObjectStoreConfig {
            url: url.into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        }
    }

    /// Splits `s3://bucket/prefix` into the bucket and the key prefix
    /// (without slashes at either end; empty for the bucket's root).
    pub fn bucket_and_prefix(&self) -> Result<(String, String), String> {
        let rest = self.url.strip_prefix("s3://").ok_or_else(|| {
            format!(
                "object_store url {:?} must start with s3:// (s3://bucket/prefix)",
                self.url
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'));
        if !valid_bucket {
            return Err(format!(
                "object_store url {:?}: bucket name {bucket:?} must be 3 to 63 characters of a-z 0-9 - .",
                self.url
            ));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            ObjectPath::parse(&prefix)
                .map_err(|e| format!("object_store url {:?}: bad prefix: {e}", self.url))?;
        }
        Ok((bucket.to_owned(), prefix))
    }

    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<(), String> {
        self.bucket_and_prefix()?;
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(
                "object_store access_key_id and secret_access_key must be given together"
                    .to_owned(),
            );
        }
        if let Some(endpoint) = &self.endpoint {
            let http = endpoint.starts_with("http://");
            if !http && !endpoint.starts_with("https://") {
                return Err(format!(
                    "object_store endpoint {endpoint:?} must be an http:// or https:// URL"
                ));
            }
            if http && !self.allow_http {
                return Err(format!(
                    "object_store endpoint {endpoint:?} is plain HTTP: set allow_http = true \
                     (only for loopback or a trusted network)"
                ));
            }
        }
        Ok(())
    }
}

fn store_err(context: impl Into<String>) -> impl FnOnce(object_store::Error) -> StorageError {
    let context = context.into();
    move |e| StorageError::Io {
        context,
        source: io::Error::other(e),
    }
}

/// One image name to create.
#[derive(Debug)]
struct ImagePlacement {
    rel: String,
    blob: std::path::PathBuf,
    /// Copy this existing (or just written) name instead of uploading.
    copy_from: Option<String>,
}

fn sorted_by_target(mut manifests: Vec<super::Manifest>) -> Vec<super::Manifest> {
    manifests.sort_by(|a, b| a.staged.target.cmp(&b.staged.target));
    manifests
}

/// The repository's bucket (and prefix).
#[derive(Debug)]
pub struct ObjectRepository {
    store: Arc<dyn ObjectStore>,
    /// Key prefix, without slashes at either end; empty for the bucket root.
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    url: String,
}

impl ObjectRepository {
    /// Builds the client; does not touch the network (see [`Self::check_readable`]).
    pub fn open(config: &ObjectStoreConfig) -> Result<ObjectRepository, StorageError> {
        let invalid = |msg: String| StorageError::Io {
            context: "object_store configuration".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, msg),
        };
        config.validate().map_err(invalid)?;
        let (bucket, prefix) = config.bucket_and_prefix().map_err(invalid)?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_allow_http(config.allow_http)
            .with_region(config.region.as_deref().unwrap_or("us-east-1"));
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(store_err(format!("object store {}", config.url)))?;
        Ok(ObjectRepository {
            store: Arc::new(store),
            prefix,
            url: config.url.clone(),
        })
    }

    /// The object key of a repository-relative name (`metadata/...`, `targets/...`).
    fn key(&self, rel: &str) -> Result<ObjectPath, StorageError> {
        let full = if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        };
        ObjectPath::parse(&full).map_err(|e| StorageError::Io {
            context: format!("object key for {rel}"),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })
    }

    /// Whether the bucket answers with our credentials (a missing
    /// `timestamp.json` is fine: nothing published yet).
    pub async fn check_readable(&self) -> Result<(), StorageError> {
        self.head("metadata/timestamp.json").await.map(|_| ())
    }

    /// The object's description, `None` if there is none under that name.
    pub async fn head(&self, rel: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let key = self.key(rel)?;
        match self.store.head(&key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(format!("HEAD {}/{rel}", self.url))(e)),
        }
    }

    /// A small object (metadata) read whole; refuses anything larger than
    /// [`MAX_METADATA_OBJECT_BYTES`].
    pub async fn get_small(&self, rel: &str) -> Result<Option<(ObjectMeta, Bytes)>, StorageError> {
        let key = self.key(rel)?;
        let result = match self.store.get(&key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_err(format!("GET {}/{rel}", self.url))(e)),
        };
        if result.meta.size > MAX_METADATA_OBJECT_BYTES {
            return Err(StorageError::Io {
                context: format!("GET {}/{rel}", self.url),
                source: io::Error::other(format!(
                    "{} bytes, more than the {MAX_METADATA_OBJECT_BYTES} allowed for metadata",
                    result.meta.size
                )),
            });
        }
        let meta = result.meta.clone();
        let bytes = result
            .bytes()
            .await
            .map_err(store_err(format!("GET {}/{rel}", self.url)))?;
        Ok(Some((meta, bytes)))
    }

    /// Streams `range` of the object as the store delivers it, never holding
    /// the whole. `e_tag` (from a HEAD) pins the version: a replaced object
    /// fails instead of splicing two contents.
    pub async fn get_range(
        &self,
        rel: &str,
        e_tag: Option<String>,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, io::Error>>, StorageError> {
        let key = self.key(rel)?;
        let options = GetOptions {
            if_match: e_tag,
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&key, options)
            .await
            .map_err(store_err(format!("GET {}/{rel}", self.url)))?;
        Ok(result
            .into_stream()
            .map(|r| r.map_err(io::Error::other))
            .boxed())
    }

    /// Publishes a staging directory (see the module docs for the order).
    /// Returns the repository names made visible, in order.
    pub(super) async fn commit(&self, dir: &Path) -> Result<Vec<String>, StorageError> {
        let staged_dir = dir.join("staged");
        let manifests = blocking(move || read_manifests(&staged_dir)).await?;
        let meta_dir = dir.join("metadata");
        let (metadata, listed) = blocking(move || {
            let metadata = staged_metadata(&meta_dir)?;
            let listed = listed_digests(&metadata)?;
            Ok((metadata, listed))
        })
        .await?;

        let mut conflicts = Vec::new();
        let mut images = Vec::new();
        for super::Manifest { staged, names } in sorted_by_target(manifests) {
            let target =
                TargetPath::parse_decoded(&staged.target).map_err(|e| StorageError::Io {
                    context: "corrupt staging manifest".into(),
                    source: io::Error::other(e),
                })?;
            let blob = dir.join("blobs").join(&staged.sha256);
            let (sub, base) = target.split();
            // A name in the bucket that already holds this content.
            let mut present: Option<String> = None;
            let mut missing = Vec::new();
            for (algorithm, hash) in [("sha256", &staged.sha256), ("sha512", &staged.sha512)] {
                if !listed.wants(&staged.target, names.as_deref(), algorithm) {
                    continue;
                }
                let rel = if sub.is_empty() {
                    format!("targets/{hash}.{base}")
                } else {
                    format!("targets/{sub}/{hash}.{base}")
                };
                // Names are content-addressed: an object of the right size
                // under this name is this very image, uploaded before.
                match self.head(&rel).await? {
                    Some(m) if m.size == staged.length => {
                        present.get_or_insert(rel);
                    }
                    Some(_) => conflicts.push(rel),
                    None => missing.push(rel),
                }
            }
            for rel in missing {
                // The second name is a server-side copy of the first: no
                // second upload of the bytes.
                let copy_from = present.clone().filter(|_| staged.length <= MAX_COPY_BYTES);
                present.get_or_insert(rel.clone());
                images.push(ImagePlacement {
                    rel,
                    blob: blob.clone(),
                    copy_from,
                });
            }
        }

        // (rank, version, name, content)
        let mut versioned = Vec::new();
        let mut root = None;
        let mut timestamp = None;
        for (name, kind, src) in metadata {
            let content = Bytes::from(
                tokio::fs::read(&src)
                    .await
                    .map_err(super::io_err(format!("read {}", src.display())))?,
            );
            let rel = format!("metadata/{name}");
            match kind {
                MetadataName::Versioned { version, role } => {
                    match self.get_small(&rel).await? {
                        Some((_, existing)) if existing == content => continue,
                        Some(_) => conflicts.push(rel.clone()),
                        None => {}
                    }
                    versioned.push((role_rank(&role), version, rel, content));
                }
                MetadataName::Root => root = Some((rel, content)),
                MetadataName::Timestamp => {
                    if let Some((_, current)) = self.get_small(&rel).await? {
                        if let Some(c) = timestamp_conflict(&current, &content) {
                            conflicts.push(c);
                        }
                    }
                    timestamp = Some((rel, content));
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(super::conflict(&conflicts));
        }
        versioned.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));

        let mut shown = Vec::new();
        for image in images {
            match &image.copy_from {
                Some(from) => {
                    let (from_key, to_key) = (self.key(from)?, self.key(&image.rel)?);
                    self.store
                        .copy(&from_key, &to_key)
                        .await
                        .map_err(store_err(format!(
                            "copy {}/{from} to {}",
                            self.url, image.rel
                        )))?;
                }
                None => self.upload_file(&image.blob, &image.rel).await?,
            }
            shown.push(image.rel);
        }
        let metadata = versioned
            .into_iter()
            .map(|(_, _, rel, content)| (rel, content))
            .chain(root)
            // The one write that changes what devices see, last.
            .chain(timestamp);
        for (rel, content) in metadata {
            let key = self.key(&rel)?;
            self.store
                .put(&key, PutPayload::from_bytes(content))
                .await
                .map_err(store_err(format!("PUT {}/{rel}", self.url)))?;
            shown.push(rel);
        }
        Ok(shown)
    }

    /// Streams a staged file into the bucket: one PUT when it fits in a
    /// part, else a multipart upload of [`UPLOAD_PART_BYTES`] parts read in
    /// 64 KiB chunks, at most [`UPLOAD_CONCURRENCY`] parts in flight. A
    /// multipart upload that fails while parts are sent is aborted so no part
    /// lingers (one whose completion fails is left to the bucket's lifecycle
    /// rule for incomplete uploads).
    async fn upload_file(&self, src: &Path, rel: &str) -> Result<(), StorageError> {
        let key = self.key(rel)?;
        let context = || format!("upload {}/{rel}", self.url);
        let mut file = tokio::fs::File::open(src)
            .await
            .map_err(super::io_err(format!("open {}", src.display())))?;
        let size = file
            .metadata()
            .await
            .map_err(super::io_err(format!("stat {}", src.display())))?
            .len();
        if size <= UPLOAD_PART_BYTES as u64 {
            let mut content = Vec::with_capacity(size as usize);
            file.read_to_end(&mut content)
                .await
                .map_err(super::io_err(format!("read {}", src.display())))?;
            self.store
                .put(&key, PutPayload::from(content))
                .await
                .map_err(store_err(context()))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(store_err(context()))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES);
        let mut buf = vec![0u8; UPLOAD_COPY_BUFFER];
        let sent: Result<(), StorageError> = async {
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(super::io_err(format!("read {}", src.display())))?;
                if n == 0 {
                    return Ok(());
                }
                writer
                    .wait_for_capacity(UPLOAD_CONCURRENCY)
                    .await
                    .map_err(store_err(context()))?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        if let Err(e) = sent {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(object = rel, "cannot abort the failed upload: {abort}");
            }
            return Err(e);
        }
        writer.finish().await.map_err(store_err(context()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_settings_are_checked_before_any_request() {
        let ok = ObjectStoreConfig::new("s3://ota-fleet/prod/repo/");
        assert_eq!(
            ok.bucket_and_prefix(),
            Ok(("ota-fleet".to_owned(), "prod/repo".to_owned()))
        );
        assert_eq!(
            ObjectStoreConfig::new("s3://ota-fleet").bucket_and_prefix(),
            Ok(("ota-fleet".to_owned(), String::new()))
        );
        for (url, needle) in [
            ("https://ota-fleet/x", "s3://"),
            ("s3://", "bucket name"),
            ("s3://Bad_Bucket/x", "bucket name"),
            ("s3://ota-fleet/a/../b", "prefix"),
        ] {
            let err = ObjectStoreConfig::new(url).validate().expect_err(url);
            assert!(err.contains(needle), "{url}: {err}");
        }
        let mut plain = ObjectStoreConfig::new("s3://ota-fleet");
        plain.endpoint = Some("http://127.0.0.1:9000".into());
        assert!(plain.validate().expect_err("http").contains("allow_http"));
        plain.allow_http = true;
        assert_eq!(plain.validate(), Ok(()));
        plain.access_key_id = Some("id".into());
        assert!(plain.validate().expect_err("half").contains("together"));
        plain.secret_access_key = Some("very secret".into());
        assert!(!format!("{plain:?}").contains("very secret"));
    }
}
