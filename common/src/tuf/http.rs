//! The blocking HTTP(S) transport.

use super::transport::{FetchError, Fetched, Transport};
use std::io::Read;
use std::time::Duration;
use url::Url;

/// HTTP(S) transport: reqwest (blocking) over rustls with the aws-lc-rs provider.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::blocking::Client,
}

impl HttpTransport {
    pub fn new(timeout: Duration, user_agent: &str) -> Result<Self, FetchError> {
        let _ = (timeout, user_agent);
        Err(FetchError::Transport("not yet implemented".into()))
    }
}

impl Transport for HttpTransport {
    fn fetch(
        &self,
        _url: &Url,
        _max_len: u64,
        _if_none_match: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        let _ = &self.client;
        Err(FetchError::Transport("not yet implemented".into()))
    }

    fn fetch_stream(&self, _url: &Url, _offset: u64) -> Result<Box<dyn Read + Send>, FetchError> {
        Err(FetchError::Transport("not yet implemented".into()))
    }
}
