//! How metadata and targets are fetched.

use std::io::Read;
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
        _url: &Url,
        _max_len: u64,
        _if_none_match: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        Err(FetchError::Transport("not yet implemented".into()))
    }

    fn fetch_stream(&self, _url: &Url, _offset: u64) -> Result<Box<dyn Read + Send>, FetchError> {
        Err(FetchError::Transport("not yet implemented".into()))
    }
}
