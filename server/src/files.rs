//! Static file answers for the repository: conditional requests (ETag,
//! Last-Modified, 304), byte ranges (206/416), HEAD, and bodies streamed from
//! disk in 64 KiB chunks so memory stays constant whatever the file size.
//!
//! [`serve_repository`] answers from wherever the repository is kept: the
//! local directories (the fast path above), or an object store, where a HEAD
//! describes the object and a ranged GET is streamed through as it arrives.

use crate::error::ApiError;
use crate::paths::TargetPath;
use crate::storage::{is_not_found, MetadataFile, ObjectRepository, Storage};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

const CHUNK: usize = 64 * 1024;

/// Read size when streaming a file body. Every read of a tokio file is a
/// hop to the blocking pool; at 64 KiB that was 16 384 hops per GiB and the
/// server alone took longer to send an image over loopback than `dd` took
/// to copy it to disk (docs/BENCHMARKS.md, "Install at the speed of the
/// disk"). The cost is this much memory per download in flight.
const BODY_CHUNK: usize = 256 * 1024;

/// `Cache-Control` for files whose name is never reused with other content.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` for files replaced in place (timestamp.json, root.json):
/// caches must revalidate every time, which is a cheap 304 here.
pub const NO_CACHE: &str = "no-cache";

/// How a file's strong ETag is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtagKind {
    /// SHA-256 of the content (small metadata files; cached by identity).
    ContentHash,
    /// (inode, size, mtime nanos): no read of a multi-GiB image needed.
    FileIdentity,
}

/// Caches content-hash ETags by (path, inode, size, mtime) for metadata too
/// large to be held in memory (the rest is answered by
/// [`serve_prepared`]), so a 304 costs one `open` + `fstat` and a look-up.
#[derive(Debug, Default)]
pub struct EtagCache {
    entries: RwLock<HashMap<PathBuf, (FileId, String)>>,
}

/// Bounds the cache: metadata versions accumulate over the years.
const ETAG_CACHE_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

impl EtagCache {
    fn get(&self, path: &Path, id: FileId) -> Option<String> {
        let map = self.entries.read().ok()?;
        match map.get(path) {
            Some((cached, etag)) if *cached == id => Some(etag.clone()),
            _ => None,
        }
    }

    fn put(&self, path: &Path, id: FileId, etag: String) {
        if let Ok(mut map) = self.entries.write() {
            if map.len() >= ETAG_CACHE_MAX {
                map.clear();
            }
            map.insert(path.to_owned(), (id, etag));
        }
    }
}

/// How to answer for one file.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions<'a> {
    pub etag: EtagKind,
    pub cache_control: &'static str,
    pub etag_cache: Option<&'a EtagCache>,
}

/// Answers `GET`/`HEAD` for the file at `path` (already validated to lie inside
/// the repository). `what` names the file in a 404.
pub async fn serve_file(
    path: &Path,
    what: &str,
    method: &Method,
    headers: &HeaderMap,
    opts: ServeOptions<'_>,
) -> Response {
    match serve_file_inner(path, what, method, headers, opts).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve_file_inner(
    path: &Path,
    what: &str,
    method: &Method,
    headers: &HeaderMap,
    opts: ServeOptions<'_>,
) -> Result<Response, ApiError> {
    // Open first and describe the open handle: if the name is replaced by a
    // rename meanwhile (timestamp.json at a commit), the headers still match
    // the bytes we send.
    // One trip to the blocking pool for both (not one each): the idle poll
    // of a whole fleet is this open and fstat, then a 304.
    let owned = path.to_owned();
    let opened = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&owned)?;
        let meta = file.metadata()?;
        Ok::<_, std::io::Error>((file, meta))
    })
    .await
    .map_err(|e| ApiError::internal(&format!("open {}", path.display()), e))?;
    let (file, meta) = match opened {
        Ok(pair) => pair,
        Err(e) if is_not_found(&e) => return Err(ApiError::not_found(format!("{what} not found"))),
        Err(e) => return Err(ApiError::internal(&format!("open {}", path.display()), e)),
    };
    let mut file = tokio::fs::File::from_std(file);
    if !meta.is_file() {
        return Err(ApiError::not_found(format!("{what} not found")));
    }
    let id = FileId::of(&meta);
    let size = id.size;

    let etag = match opts.etag {
        EtagKind::FileIdentity => format!("\"{:x}-{:x}-{:x}\"", id.ino, id.size, id.mtime_ns),
        EtagKind::ContentHash => match opts.etag_cache.and_then(|c| c.get(path, id)) {
            Some(etag) => etag,
            None => {
                let etag = hash_etag(&mut file)
                    .await
                    .map_err(|e| ApiError::internal(&format!("read {}", path.display()), e))?;
                if let Some(cache) = opts.etag_cache {
                    cache.put(path, id, etag.clone());
                }
                etag
            }
        },
    };
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let described = Described {
        etag: header_value(&etag),
        last_modified: header_value(&httpdate::fmt_http_date(modified)),
        modified,
        content_length: None,
        size,
        what: What("", what),
        cache_control: opts.cache_control,
        json: is_json(path.to_str().unwrap_or_default()),
    };
    let (status, base, start, len) = match answer(method, headers, &described) {
        Answer::Done(response) => return Ok(response),
        Answer::Send {
            status,
            headers,
            start,
            len,
        } => (status, headers, start, len),
    };
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::internal(&format!("seek {}", path.display()), e))?;
    let stream = ReaderStream::with_capacity(file.take(len), BODY_CHUNK);
    Ok((status, base, Body::from_stream(stream)).into_response())
}

/// Names a file in error messages, put together only when one is written
/// (not on every poll): a prefix and a name.
#[derive(Debug, Clone, Copy)]
pub struct What<'a>(pub &'static str, pub &'a str);

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.0, self.1)
    }
}

/// What the conditional and range logic needs to know about a file.
#[derive(Debug)]
struct Described<'a> {
    etag: HeaderValue,
    last_modified: HeaderValue,
    modified: SystemTime,
    size: u64,
    /// Names the file in a 416.
    what: What<'a>,
    cache_control: &'static str,
    json: bool,
    /// The whole size as a header value, when prepared in advance.
    content_length: Option<HeaderValue>,
}

/// The answer decided from the request's headers alone.
#[derive(Debug)]
enum Answer {
    /// 304, 416, or the headers of a HEAD.
    Done(Response),
    /// Send `len` bytes from `start` with these headers.
    Send {
        status: StatusCode,
        headers: HeaderMap,
        start: u64,
        len: u64,
    },
}

fn answer(method: &Method, headers: &HeaderMap, d: &Described<'_>) -> Answer {
    let size = d.size;
    let mut base = HeaderMap::with_capacity(8);
    base.insert(header::ETAG, d.etag.clone());
    base.insert(header::LAST_MODIFIED, d.last_modified.clone());
    base.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(d.cache_control),
    );
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Every ETag here is built from ASCII we control.
    let etag = d.etag.to_str().unwrap_or_default();

    if not_modified(headers, etag, d.modified) {
        return Answer::Done((StatusCode::NOT_MODIFIED, base).into_response());
    }

    let range = match headers.get(header::RANGE) {
        Some(v) if if_range_allows(headers, etag) => parse_range(v.as_bytes(), size),
        _ => RangeRequest::Full,
    };
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial { start, end } => {
            insert(
                &mut base,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{size}"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            insert(&mut base, header::CONTENT_RANGE, &format!("bytes */{size}"));
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!(
                    "requested range not satisfiable for {} of {size} bytes",
                    d.what
                ),
            )
            .into_response();
            resp.headers_mut().extend(base);
            return Answer::Done(resp);
        }
    };
    base.insert(
        header::CONTENT_LENGTH,
        match &d.content_length {
            Some(prepared) if len == size => prepared.clone(),
            _ => HeaderValue::from(len),
        },
    );
    base.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if d.json {
            "application/json"
        } else {
            "application/octet-stream"
        }),
    );
    if method == Method::HEAD {
        return Answer::Done((status, base, Body::empty()).into_response());
    }
    Answer::Send {
        status,
        headers: base,
        start,
        len,
    }
}

/// Answers `GET`/`HEAD` for a metadata file held in memory: everything
/// but the header map and the response itself is prepared in advance.
pub fn serve_prepared(
    file: &MetadataFile,
    what: What<'_>,
    method: &Method,
    headers: &HeaderMap,
    cache_control: &'static str,
) -> Response {
    let described = Described {
        etag: file.etag.clone(),
        last_modified: file.last_modified.clone(),
        modified: file.modified,
        content_length: Some(file.content_length.clone()),
        size: file.bytes.len() as u64,
        what,
        cache_control,
        json: true,
    };
    match answer(method, headers, &described) {
        Answer::Done(response) => response,
        Answer::Send {
            status,
            headers,
            start,
            len,
        } => {
            // start + len <= size (checked by parse_range).
            let body = file.bytes.slice(start as usize..(start + len) as usize);
            (status, headers, Body::from(body)).into_response()
        }
    }
}

/// A file of the repository, by its public name.
#[derive(Debug, Clone, Copy)]
pub enum RepoFile<'a> {
    /// `metadata/{name}` (name already validated).
    Metadata(&'a str),
    Target(&'a TargetPath),
}

/// Answers `GET`/`HEAD` for a repository file from wherever the repository
/// is kept. Metadata gets content-hash ETags, images identity ETags.
pub async fn serve_repository(
    storage: &Storage,
    file: RepoFile<'_>,
    what: &str,
    method: &Method,
    headers: &HeaderMap,
    opts: ServeOptions<'_>,
) -> Response {
    let Some(objects) = storage.objects() else {
        let path = match file {
            RepoFile::Metadata(name) => storage.metadata_path(name),
            RepoFile::Target(target) => storage.target_path(target),
        };
        return serve_file(&path, what, method, headers, opts).await;
    };
    let result = match file {
        // Metadata in a bucket is always answered from memory
        // (`Storage::published_metadata`); only images are streamed.
        RepoFile::Metadata(name) => Err(ApiError::internal(
            "serve metadata",
            format!("metadata/{name} must be answered from memory"),
        )),
        RepoFile::Target(target) => {
            let rel = format!("targets/{}", target.as_str());
            serve_large_object(objects, &rel, what, method, headers, opts).await
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn object_modified(meta: &object_store::ObjectMeta) -> SystemTime {
    SystemTime::from(meta.last_modified)
}

/// Images from the bucket: described by a HEAD, the requested range streamed
/// from a ranged GET pinned to the same object version.
async fn serve_large_object(
    objects: &ObjectRepository,
    rel: &str,
    what: &str,
    method: &Method,
    headers: &HeaderMap,
    opts: ServeOptions<'_>,
) -> Result<Response, ApiError> {
    let storage_err = |e| ApiError::internal(&format!("object {rel}"), e);
    let Some(meta) = objects.head(rel).await.map_err(storage_err)? else {
        return Err(ApiError::not_found(format!("{what} not found")));
    };
    let modified = object_modified(&meta);
    let etag = identity_etag(meta.e_tag.as_deref(), meta.size, modified);
    let described = Described {
        etag: header_value(&etag),
        last_modified: header_value(&httpdate::fmt_http_date(modified)),
        modified,
        content_length: None,
        size: meta.size,
        what: What("", what),
        cache_control: opts.cache_control,
        json: is_json(rel),
    };
    match answer(method, headers, &described) {
        Answer::Done(response) => Ok(response),
        Answer::Send {
            status,
            headers,
            start,
            len,
        } => {
            if len == 0 {
                return Ok((status, headers, Body::empty()).into_response());
            }
            let stream = objects
                .get_range(rel, meta.e_tag.clone(), start..start + len)
                .await
                .map_err(storage_err)?;
            Ok((status, headers, Body::from_stream(stream)).into_response())
        }
    }
}

/// A strong ETag for an object from the store's own ETag (restricted to
/// characters safe in a header), size and time.
fn identity_etag(store_etag: Option<&str>, size: u64, modified: SystemTime) -> String {
    let tag: String = store_etag
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(128)
        .collect();
    let secs = modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    format!("\"{tag}-{size:x}-{secs:x}\"")
}

fn is_json(name: &str) -> bool {
    name.ends_with(".json")
}

/// A header value from text we built (ASCII we control); an impossible
/// failure gives an empty value rather than a panic.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    // Every value here is built from ASCII we control; a failure would be a
    // bug, and dropping the header is the harmless answer.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

async fn hash_etag(file: &mut tokio::fs::File) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    file.seek(SeekFrom::Start(0)).await?;
    Ok(format!("\"{}\"", hex::encode(hasher.finalize())))
}

/// RFC 9110 §13.1: If-None-Match wins over If-Modified-Since; the comparison
/// for If-None-Match is weak (a `W/` prefix is ignored).
fn not_modified(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else { return false };
        return inm
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag);
    }
    if let Some(ims) = headers.get(header::IF_MODIFIED_SINCE) {
        let Some(since) = ims
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
        else {
            return false;
        };
        // HTTP dates have whole seconds: compare at that resolution.
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs()
        };
        return secs(modified) <= secs(since);
    }
    false
}

/// A Range applies only if If-Range (when present) still names this version,
/// so a client resuming a download never splices two different files.
fn if_range_allows(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => v.to_str().map(|v| v.trim() == etag).unwrap_or(false),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    Full,
    /// Inclusive byte positions.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range. Syntax this
/// server does not handle (other units, several ranges) is ignored, as RFC 9110
/// allows, and the whole file is sent.
pub fn parse_range(value: &[u8], size: u64) -> RangeRequest {
    let Ok(text) = std::str::from_utf8(value) else {
        return RangeRequest::Full;
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            // Saturate: a position beyond u64 is beyond any file.
            Some(s.parse::<u64>().unwrap_or(u64::MAX))
        }
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        (first, last) => {
            let Some(start) = num(first) else {
                return RangeRequest::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match num(last) {
                    Some(e) => e,
                    None => return RangeRequest::Full,
                }
            };
            if start >= size || end < start {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(b"bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range(b"bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(b"bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(b"bytes=-1000", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range(b"bytes=50-1000", 100),
            Partial { start: 50, end: 99 }
        );
        assert_eq!(parse_range(b"bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=5-2", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-", 0), Unsatisfiable);
        assert_eq!(
            parse_range(b"bytes=99999999999999999999999-", 100),
            Unsatisfiable
        );
        assert_eq!(parse_range(b"bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range(b"items=0-1", 100), Full);
        assert_eq!(parse_range(b"bytes=x-1", 100), Full);
    }
}
