//! The blocking HTTP(S) transport: reqwest over rustls with the aws-lc-rs
//! provider. Connect and read timeouts (a stalled server is cut off), no
//! automatic decompression (the bytes verified are the bytes sent), size
//! limits enforced while the body arrives.

use super::transport::{read_limited, FetchError, Fetched, Transport};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_NONE_MATCH, RANGE};
use reqwest::StatusCode;
use std::io::Read;
use std::time::Duration;
use url::Url;

#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::blocking::Client,
}

impl HttpTransport {
    /// `timeout` bounds connecting and each wait for data (not a whole
    /// image download, which may legitimately take long on a slow link).
    pub fn new(timeout: Duration, user_agent: &str) -> Result<Self, FetchError> {
        // Err only means a provider is already installed, which is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(timeout)
            .timeout(timeout)
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| FetchError::Transport(format!("building the HTTP client: {e}")))?;
        Ok(Self { client })
    }
}

fn request_error(url: &Url, e: reqwest::Error) -> FetchError {
    FetchError::Transport(format!("{url}: {e}"))
}

fn status_error(status: StatusCode) -> FetchError {
    if status == StatusCode::NOT_FOUND {
        FetchError::NotFound
    } else {
        FetchError::Http {
            status: status.as_u16(),
        }
    }
}

impl Transport for HttpTransport {
    fn fetch(
        &self,
        url: &Url,
        max_len: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        let mut req = self.client.get(url.clone());
        if let Some(etag) = if_none_match {
            req = req.header(IF_NONE_MATCH, etag);
        }
        let mut resp = req.send().map_err(|e| request_error(url, e))?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED && if_none_match.is_some() {
            return Ok(Fetched::NotModified);
        }
        if status != StatusCode::OK {
            return Err(status_error(status));
        }
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_len) {
            return Err(FetchError::TooLarge { limit: max_len });
        }
        let etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_limited(&mut resp, max_len)
            .map_err(|e| FetchError::Transport(format!("{url}: {e}")))??;
        Ok(Fetched::Body { bytes, etag })
    }

    fn fetch_stream(&self, url: &Url, offset: u64) -> Result<Box<dyn Read + Send>, FetchError> {
        let mut req = self.client.get(url.clone());
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().map_err(|e| request_error(url, e))?;
        let status = resp.status();
        if offset > 0 {
            // A server that ignores Range would send the image from byte 0,
            // which appended at `offset` would corrupt it.
            if status != StatusCode::PARTIAL_CONTENT {
                return Err(if status.is_success() {
                    FetchError::Transport(format!(
                        "{url}: server ignored the Range request (status {status})"
                    ))
                } else {
                    status_error(status)
                });
            }
            let starts_at_offset = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok())
                == Some(offset);
            if !starts_at_offset {
                return Err(FetchError::Transport(format!(
                    "{url}: partial content does not start at byte {offset}"
                )));
            }
        } else if status != StatusCode::OK {
            return Err(status_error(status));
        }
        Ok(Box::new(resp))
    }
}
