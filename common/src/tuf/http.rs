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
    /// An https server must present a certificate from the built-in web roots.
    pub fn new(timeout: Duration, user_agent: &str) -> Result<Self, FetchError> {
        Self::trusting(timeout, user_agent, &[])
    }

    /// [`Self::new`], trusting only `anchors` for an https server when there
    /// are any (a fleet's private CA, see [`ca_certificates`]).
    pub fn trusting(
        timeout: Duration,
        user_agent: &str,
        anchors: &[reqwest::Certificate],
    ) -> Result<Self, FetchError> {
        // Err only means a provider is already installed, which is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::blocking::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(timeout)
            .timeout(timeout)
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            // One request at a time: HTTP/2 would add nothing but another
            // code path, and this keeps the protocol the same whatever
            // reqwest features a workspace build happens to enable.
            .http1_only()
            .redirect(reqwest::redirect::Policy::limited(5));
        if !anchors.is_empty() {
            builder = builder.tls_built_in_root_certs(false);
            for anchor in anchors {
                builder = builder.add_root_certificate(anchor.clone());
            }
        }
        let client = builder
            .build()
            .map_err(|e| FetchError::Transport(format!("building the HTTP client: {e}")))?;
        Ok(Self { client })
    }
}

/// The CA certificates in a PEM bundle, as TLS trust anchors. Errs (with a
/// reason, never the content) when there is none or one does not parse.
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block in it".to_owned());
    }
    Ok(certs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    #[test]
    fn a_ca_bundle_without_certificates_is_refused() {
        assert!(ca_certificates(b"").is_err());
        assert!(ca_certificates(b"not pem at all\n").is_err());
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(ca_certificates(broken).is_err());
    }

    /// Serves one connection with `respond(request_head, stream)` on a thread.
    fn serve_once(
        respond: impl FnOnce(String, &mut std::net::TcpStream) + Send + 'static,
    ) -> (Url, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("read") == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            respond(head, &mut stream);
        });
        let url =
            Url::parse(&format!("http://127.0.0.1:{port}/metadata/timestamp.json")).expect("url");
        (url, handle)
    }

    fn transport() -> HttpTransport {
        HttpTransport::new(Duration::from_secs(5), "test").expect("transport")
    }

    #[test]
    fn declared_length_over_the_limit_is_refused_before_reading() {
        let (url, h) = serve_once(|_, s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nabc");
        });
        let err = transport().fetch(&url, 100, None).expect_err("too large");
        assert!(matches!(err, FetchError::TooLarge { limit: 100 }), "{err}");
        h.join().expect("server");
    }

    #[test]
    fn endless_body_is_cut_off_at_the_limit() {
        let (url, h) = serve_once(|_, s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            // Bounded "forever": stops when the client hangs up.
            for _ in 0..10_000 {
                if s.write_all(b"400\r\n")
                    .and_then(|()| s.write_all(&[b'x'; 1024]))
                    .and_then(|()| s.write_all(b"\r\n"))
                    .is_err()
                {
                    break;
                }
            }
        });
        let err = transport()
            .fetch(&url, 50_000, None)
            .expect_err("too large");
        assert!(
            matches!(err, FetchError::TooLarge { limit: 50_000 }),
            "{err}"
        );
        h.join().expect("server");
    }

    #[test]
    fn etag_and_not_modified() {
        let (url, h) = serve_once(|head, s| {
            assert!(
                head.to_ascii_lowercase().contains("if-none-match: \"v1\""),
                "{head}"
            );
            let _ = s.write_all(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n");
        });
        assert_eq!(
            transport().fetch(&url, 100, Some("\"v1\"")).expect("fetch"),
            Fetched::NotModified
        );
        h.join().expect("server");

        let (url, h) = serve_once(|_, s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nETag: \"v2\"\r\nContent-Length: 2\r\n\r\n{}");
        });
        assert_eq!(
            transport().fetch(&url, 100, None).expect("fetch"),
            Fetched::Body {
                bytes: b"{}".to_vec(),
                etag: Some("\"v2\"".into())
            }
        );
        h.join().expect("server");

        let (url, h) = serve_once(|_, s| {
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        });
        assert!(matches!(
            transport().fetch(&url, 100, None),
            Err(FetchError::NotFound)
        ));
        h.join().expect("server");
    }

    #[test]
    fn ignored_range_request_is_an_error() {
        let (url, h) = serve_once(|head, s| {
            assert!(
                head.to_ascii_lowercase().contains("range: bytes=5-"),
                "{head}"
            );
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
        });
        assert!(transport().fetch_stream(&url, 5).is_err());
        h.join().expect("server");
    }

    #[test]
    fn stalled_server_is_cut_off() {
        let (url, h) = serve_once(|_, s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01");
            std::thread::sleep(Duration::from_millis(1500));
        });
        let t = HttpTransport::new(Duration::from_millis(300), "test").expect("transport");
        let err = t.fetch(&url, 100, None).expect_err("stalled");
        assert!(matches!(err, FetchError::Transport(_)), "{err}");
        h.join().expect("server");
    }
}
