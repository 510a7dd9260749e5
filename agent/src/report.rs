//! Status reports to the server (`POST {server_url}/api/v1/devices/{device_id}/reports`).
//!
//! Reports are best effort: a failed report is logged and the update goes
//! on, because a device must never stop updating (or rolling back) because
//! the reporting endpoint is down.

use crate::config::ReportConfig;
use ota_common::wire::{DeviceReport, MAX_REASON_CHARS};
use std::path::Path;
use std::time::Duration;
use url::Url;

/// Why a report was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("device credential {path}: {detail}")]
    Credential { path: String, detail: String },
    #[error("POST {url}: {detail}")]
    Send { url: String, detail: String },
}

/// Where reports go.
pub trait ReportSink: std::fmt::Debug {
    fn send(&self, report: &DeviceReport) -> Result<(), ReportError>;
}

/// Cuts a reason to what the server accepts, on a character boundary.
pub fn clamp_reason(reason: &str) -> String {
    reason.chars().take(MAX_REASON_CHARS).collect()
}

/// Reports over HTTP(S) with a short timeout.
#[derive(Clone)]
pub struct HttpReporter {
    client: reqwest::blocking::Client,
    url: Url,
    token: Option<String>,
}

impl std::fmt::Debug for HttpReporter {
    // The token is a credential: never in logs or debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReporter")
            .field("url", &self.url.as_str())
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl HttpReporter {
    pub fn new(url: Url, timeout: Duration) -> Result<Self, ReportError> {
        Self::with_credentials(url, timeout, &ReportConfig::default(), &[])
    }

    /// A reporter that authenticates as configured in `[report]`: a bearer
    /// token, a client certificate (mutual TLS), both or neither. With
    /// `anchors` (the agent's `ca_cert`), an https server must present a
    /// certificate from them instead of the built-in web roots.
    pub fn with_credentials(
        url: Url,
        timeout: Duration,
        credentials: &ReportConfig,
        anchors: &[reqwest::Certificate],
    ) -> Result<Self, ReportError> {
        crate::install_crypto_provider();
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(crate::USER_AGENT)
            // A report is one small request: HTTP/1.1 whatever the server offers.
            .http1_only()
            .redirect(reqwest::redirect::Policy::none());
        if !anchors.is_empty() {
            builder = builder.tls_built_in_root_certs(false);
            for anchor in anchors {
                builder = builder.add_root_certificate(anchor.clone());
            }
        }
        if let (Some(cert), Some(key)) = (&credentials.client_cert, &credentials.client_key) {
            let mut pem = read_credential(cert, 64 * 1024)?;
            pem.push(b'\n');
            pem.extend_from_slice(&read_credential(key, 64 * 1024)?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| ReportError::Credential {
                    path: format!("{} + {}", cert.display(), key.display()),
                    detail: format!("not a PEM certificate and private key: {e}"),
                })?;
            builder = builder.identity(identity);
        }
        let token = match &credentials.device_token_file {
            None => None,
            Some(path) => {
                let raw = read_credential(path, 4096)?;
                let token = String::from_utf8(raw)
                    .ok()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or_else(|| ReportError::Credential {
                        path: path.display().to_string(),
                        detail: "empty, or not a single printable token".into(),
                    })?;
                Some(token)
            }
        };
        let client = builder
            .build()
            .map_err(|e| ReportError::Client(e.to_string()))?;
        Ok(HttpReporter { client, url, token })
    }

    /// The configured client (TLS identity included), for other small
    /// requests to the same server such as rollout holds.
    pub fn http_client(&self) -> reqwest::blocking::Client {
        self.client.clone()
    }
}

/// Reads a small credential file; its content never appears in an error.
fn read_credential(path: &Path, limit: u64) -> Result<Vec<u8>, ReportError> {
    let err = |detail: String| ReportError::Credential {
        path: path.display().to_string(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(err(format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

impl ReportSink for HttpReporter {
    fn send(&self, report: &DeviceReport) -> Result<(), ReportError> {
        let err = |detail: String| ReportError::Send {
            url: self.url.to_string(),
            detail,
        };
        let mut request = self.client.post(self.url.clone()).json(report);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().map_err(|e| err(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The error body is the server's word on why; keep it short in the log.
        // Untrusted text: read at most 4 KiB, log one short line without control characters.
        let mut raw = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(response, 4096), &mut raw);
        let body: String = String::from_utf8_lossy(&raw)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        Err(err(format!("HTTP {status}: {body}")))
    }
}

/// Collects reports in memory (for tests and dry runs).
#[derive(Debug, Default)]
pub struct MemoryReporter {
    pub reports: std::sync::Mutex<Vec<DeviceReport>>,
}

impl MemoryReporter {
    pub fn taken(&self) -> Vec<DeviceReport> {
        match self.reports.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }
}

impl ReportSink for MemoryReporter {
    fn send(&self, report: &DeviceReport) -> Result<(), ReportError> {
        match self.reports.lock() {
            Ok(mut r) => r.push(report.clone()),
            Err(p) => p.into_inner().push(report.clone()),
        }
        Ok(())
    }
}

impl<T: ReportSink + ?Sized> ReportSink for std::sync::Arc<T> {
    fn send(&self, report: &DeviceReport) -> Result<(), ReportError> {
        (**self).send(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_clamped_on_char_boundaries() {
        let long = "é".repeat(MAX_REASON_CHARS + 10);
        assert_eq!(clamp_reason(&long).chars().count(), MAX_REASON_CHARS);
        assert_eq!(clamp_reason("short"), "short");
    }

    #[test]
    fn unreachable_server_is_an_error_not_a_panic() {
        // Port 9 on loopback: nothing listens, so the connection is refused at once.
        let url = Url::parse("http://127.0.0.1:9/api/v1/devices/d/reports").expect("url");
        let r = HttpReporter::new(url, Duration::from_secs(2)).expect("client");
        let report = DeviceReport {
            hardware_id: "hw".into(),
            installed_version: "1.0.0".into(),
            booted_slot: Some("A".into()),
            status: ota_common::wire::UpdateStatus::Idle,
            target: None,
            target_version: None,
            reason: None,
            groups: Vec::new(),
        };
        assert!(matches!(r.send(&report), Err(ReportError::Send { .. })));
    }
}
