//! Prometheus metrics, counted with atomics and written in the text
//! exposition format by hand (a few counters do not justify a metrics stack).
//!
//! Label values come from a closed set (route templates, not raw paths;
//! status codes; report statuses), so a client cannot grow the label space.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Every counter the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Route template → status → requests. Two levels, so that counting a
    /// request looks up a borrowed `&str` and allocates nothing.
    requests: RwLock<BTreeMap<String, BTreeMap<u16, AtomicU64>>>,
    body_bytes_sent: AtomicU64,
    /// Reported status → reports recorded.
    device_reports: RwLock<BTreeMap<String, AtomicU64>>,
    publications_committed: AtomicU64,
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    /// Staged releases by rollout state (active, paused, aborted): a gauge,
    /// set from the shared database by the rollout job and after changes.
    rollouts: RwLock<BTreeMap<String, u64>>,
    /// Operator changes by action (pause, resume, abort).
    rollout_changes: RwLock<BTreeMap<String, AtomicU64>>,
    rollout_automatic_pauses: AtomicU64,
    /// (role, trigger) → signatures made with the online keys and published.
    online_signatures: RwLock<BTreeMap<(&'static str, &'static str), AtomicU64>>,
    /// Role → attempts to sign with an online key that failed.
    online_signing_failures: RwLock<BTreeMap<&'static str, AtomicU64>>,
    /// Role → `signed.expires` (Unix seconds) of the published online role.
    metadata_expires: RwLock<BTreeMap<&'static str, i64>>,
}

/// Why an online role was signed: the periodic re-signing, or a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningTrigger {
    Schedule,
    Publication,
}

impl SigningTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningTrigger::Schedule => "schedule",
            SigningTrigger::Publication => "publication",
        }
    }
}

/// Adds one to the counter under `key`, creating it on first use. The write
/// lock is taken only the first time a key is seen.
fn bump<K: Ord + Clone>(map: &RwLock<BTreeMap<K, AtomicU64>>, key: &K) {
    if let Ok(read) = map.read() {
        if let Some(counter) = read.get(key) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    if let Ok(mut write) = map.write() {
        write
            .entry(key.clone())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(read) = self.requests.read() {
            if let Some(counter) = read.get(route).and_then(|by| by.get(&status)) {
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut write) = self.requests.write() {
            write
                .entry(route.to_owned())
                .or_default()
                .entry(status)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn body_bytes_sent(&self, n: u64) {
        self.body_bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn device_report(&self, status: &str) {
        bump(&self.device_reports, &status.to_owned());
    }

    pub fn publication_committed(&self) {
        self.publications_committed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set_rollout_states(&self, counts: &[(&str, u64)]) {
        if let Ok(mut map) = self.rollouts.write() {
            for (state, n) in counts {
                map.insert((*state).to_owned(), *n);
            }
        }
    }

    pub fn rollout_change(&self, action: &str) {
        bump(&self.rollout_changes, &action.to_owned());
    }

    pub fn rollout_automatic_pause(&self) {
        self.rollout_automatic_pauses
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One `role` (timestamp, snapshot) signature with an online key,
    /// counted once what it signed is published.
    pub fn online_signature(&self, role: &'static str, trigger: SigningTrigger) {
        bump(&self.online_signatures, &(role, trigger.as_str()));
    }

    pub fn online_signing_failure(&self, role: &'static str) {
        bump(&self.online_signing_failures, &role);
    }

    /// The expiry of the published `role`, so an alert can fire on
    /// `ota_metadata_expires_timestamp_seconds - time() < X`.
    pub fn set_metadata_expiry(&self, role: &'static str, unix_seconds: i64) {
        if let Ok(mut map) = self.metadata_expires.write() {
            map.insert(role, unix_seconds);
        }
    }

    /// The text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        header(
            &mut out,
            "ota_http_requests_total",
            "counter",
            "HTTP requests answered, by route template and status",
        );
        if let Ok(map) = self.requests.read() {
            for (route, by_status) in map.iter() {
                for (status, n) in by_status {
                    let _ = writeln!(
                        out,
                        "ota_http_requests_total{{route=\"{}\",status=\"{status}\"}} {}",
                        escape(route),
                        load(n)
                    );
                }
            }
        }
        single(
            &mut out,
            "ota_http_response_body_bytes_total",
            "counter",
            "Response body bytes sent (metadata and images)",
            load(&self.body_bytes_sent),
        );
        header(
            &mut out,
            "ota_device_reports_total",
            "counter",
            "Device reports recorded, by reported status",
        );
        if let Ok(map) = self.device_reports.read() {
            for (status, n) in map.iter() {
                let _ = writeln!(
                    out,
                    "ota_device_reports_total{{status=\"{}\"}} {}",
                    escape(status),
                    load(n)
                );
            }
        }
        single(
            &mut out,
            "ota_publications_committed_total",
            "counter",
            "Publications committed by this instance",
            load(&self.publications_committed),
        );
        single(
            &mut out,
            "ota_http_connections_open",
            "gauge",
            "Client connections open now",
            load(&self.connections_open),
        );
        single(
            &mut out,
            "ota_http_connections_total",
            "counter",
            "Client connections accepted",
            load(&self.connections_total),
        );
        header(
            &mut out,
            "ota_rollouts",
            "gauge",
            "Published staged releases by rollout state",
        );
        if let Ok(map) = self.rollouts.read() {
            for (state, n) in map.iter() {
                let _ = writeln!(out, "ota_rollouts{{state=\"{}\"}} {n}", escape(state));
            }
        }
        header(
            &mut out,
            "ota_rollout_changes_total",
            "counter",
            "Rollout pauses, resumes and aborts made by operators through this instance",
        );
        if let Ok(map) = self.rollout_changes.read() {
            for (action, n) in map.iter() {
                let _ = writeln!(
                    out,
                    "ota_rollout_changes_total{{action=\"{}\"}} {}",
                    escape(action),
                    load(n)
                );
            }
        }
        single(
            &mut out,
            "ota_rollout_automatic_pauses_total",
            "counter",
            "Rollouts this instance paused because a wave failed too often",
            load(&self.rollout_automatic_pauses),
        );
        header(
            &mut out,
            "ota_online_signatures_total",
            "counter",
            "Online-key signatures published by this instance, by role and by trigger \
             (schedule: periodic re-signing; publication: at a commit)",
        );
        if let Ok(map) = self.online_signatures.read() {
            for ((role, trigger), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "ota_online_signatures_total{{role=\"{role}\",trigger=\"{trigger}\"}} {}",
                    load(n)
                );
            }
        }
        header(
            &mut out,
            "ota_online_signing_failures_total",
            "counter",
            "Periodic re-signings and publication signings with the online keys that failed, by role",
        );
        if let Ok(map) = self.online_signing_failures.read() {
            for (role, n) in map.iter() {
                let _ = writeln!(
                    out,
                    "ota_online_signing_failures_total{{role=\"{role}\"}} {}",
                    load(n)
                );
            }
        }
        header(
            &mut out,
            "ota_metadata_expires_timestamp_seconds",
            "gauge",
            "Expiry (Unix time) of the published metadata of each online-signed role",
        );
        if let Ok(map) = self.metadata_expires.read() {
            for (role, at) in map.iter() {
                let _ = writeln!(
                    out,
                    "ota_metadata_expires_timestamp_seconds{{role=\"{role}\"}} {at}"
                );
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Label value escaping of the exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.request("/metadata/{file}", 200);
        m.request("/metadata/{file}", 200);
        m.request("/targets/{*path}", 404);
        m.body_bytes_sent(10);
        m.device_report("idle");
        m.publication_committed();
        m.connection_opened();
        let text = m.render();
        assert!(
            text.contains("ota_http_requests_total{route=\"/metadata/{file}\",status=\"200\"} 2\n")
        );
        assert!(
            text.contains("ota_http_requests_total{route=\"/targets/{*path}\",status=\"404\"} 1\n")
        );
        assert!(text.contains("ota_http_response_body_bytes_total 10\n"));
        assert!(text.contains("ota_device_reports_total{status=\"idle\"} 1\n"));
        assert!(text.contains("ota_publications_committed_total 1\n"));
        assert!(text.contains("ota_http_connections_open 1\n"));
        assert!(text.contains("# TYPE ota_http_requests_total counter\n"));
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }

    #[test]
    fn renders_online_signing() {
        let m = Metrics::default();
        m.online_signature("timestamp", SigningTrigger::Schedule);
        m.online_signature("timestamp", SigningTrigger::Schedule);
        m.online_signature("snapshot", SigningTrigger::Publication);
        m.online_signing_failure("timestamp");
        m.set_metadata_expiry("timestamp", 1_800_000_000);
        m.set_metadata_expiry("timestamp", 1_800_000_060);
        let text = m.render();
        assert!(text
            .contains("ota_online_signatures_total{role=\"timestamp\",trigger=\"schedule\"} 2\n"));
        assert!(text.contains(
            "ota_online_signatures_total{role=\"snapshot\",trigger=\"publication\"} 1\n"
        ));
        assert!(text.contains("ota_online_signing_failures_total{role=\"timestamp\"} 1\n"));
        assert!(text
            .contains("ota_metadata_expires_timestamp_seconds{role=\"timestamp\"} 1800000060\n"));
        assert!(text.contains("# TYPE ota_metadata_expires_timestamp_seconds gauge\n"));
    }
}
