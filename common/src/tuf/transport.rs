//! How metadata and targets are fetched.

use std::io::{Read, Seek, SeekFrom};
use url::Url;

/// Fetches bytes for the client. Implementations must enforce `max_len`
/// while the bytes arrive, never after.
pub trait Transport {
    /// GET url. Must fail with FetchError::TooLarge as soon as more than max_len bytes arrive (never buffer more), and when Content-Length exceeds max_len.
    fn fetch(
        &self,
        url: &Url,
        max_len: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, FetchError>;
    /// GET url streaming (for images) starting at byte `offset` (Range request when offset > 0; a server that ignores Range => FetchError). Caller enforces the signed length.
    fn fetch_stream(&self, url: &Url, offset: u64) -> Result<Box<dyn Read + Send>, FetchError>;
}

/// What a metadata GET answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
    /// 304: the stored copy (named by the etag sent) is current.
    NotModified,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not found")]
    NotFound,
    #[error("more than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("HTTP status {status}")]
    Http { status: u16 },
    #[error("{0}")]
    Transport(String),
}

/// Reads `file://` URLs: for tests and local repositories.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileTransport;

impl Transport for FileTransport {
    fn fetch(
        &self,
        url: &Url,
        max_len: u64,
        _if_none_match: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        let mut file = open_file(url)?;
        let size = file
            .metadata()
            .map_err(|e| FetchError::Transport(format!("{url}: {e}")))?
            .len();
        if size > max_len {
            return Err(FetchError::TooLarge { limit: max_len });
        }
        let bytes = read_limited(&mut file, max_len)
            .map_err(|e| FetchError::Transport(format!("{url}: {e}")))??;
        Ok(Fetched::Body { bytes, etag: None })
    }

    fn fetch_stream(&self, url: &Url, offset: u64) -> Result<Box<dyn Read + Send>, FetchError> {
        let mut file = open_file(url)?;
        if offset > 0 {
            let size = file
                .metadata()
                .map_err(|e| FetchError::Transport(format!("{url}: {e}")))?
                .len();
            if offset > size {
                return Err(FetchError::Http { status: 416 });
            }
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| FetchError::Transport(format!("{url}: {e}")))?;
        }
        Ok(Box::new(file))
    }
}

fn open_file(url: &Url) -> Result<std::fs::File, FetchError> {
    if url.scheme() != "file" {
        return Err(FetchError::Transport(format!("{url}: not a file:// URL")));
    }
    let path = url
        .to_file_path()
        .map_err(|()| FetchError::Transport(format!("{url}: not a local file path")))?;
    match std::fs::File::open(&path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FetchError::NotFound),
        Err(e) => Err(FetchError::Transport(format!("{url}: {e}"))),
    }
}

/// Reads at most `max_len` bytes; more than that is `TooLarge`, detected at
/// the first extra byte without buffering it.
pub(crate) fn read_limited<R: Read>(
    reader: &mut R,
    max_len: u64,
) -> std::io::Result<Result<Vec<u8>, FetchError>> {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(Ok(bytes)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 + n as u64 > max_len {
            return Ok(Err(FetchError::TooLarge { limit: max_len }));
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}
