//! `GET /admin/v1/fleet`: the fleet overview the dashboard polls: counts
//! by status, hardware id and installed version, and the devices matching
//! the filters. Answered with a strong ETag so a poll that finds nothing
//! new costs a 304 and no body.
//!
//! The query string is untrusted: it is parsed into [`FleetQuery`] here,
//! and anything else (unknown or repeated names, bad percent-encoding,
//! control characters, overlong values, limits out of range) is a 400
//! naming what is wrong. Filtering happens in memory on parsed values,
//! never by building SQL.

use crate::api::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ota_common::wire::{is_valid_id, DeviceRecord, UpdateStatus};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Longest query string accepted, in bytes (before decoding).
pub const MAX_QUERY_BYTES: usize = 1024;
/// Longest free-text search, in characters.
pub const MAX_SEARCH_CHARS: usize = 128;
/// Devices listed when the query names no limit, and the most it may ask.
pub const DEFAULT_LIMIT: usize = 200;
pub const MAX_LIMIT: usize = 5000;

const STATUSES: [UpdateStatus; 7] = [
    UpdateStatus::Idle,
    UpdateStatus::Downloading,
    UpdateStatus::Installed,
    UpdateStatus::Rebooting,
    UpdateStatus::Committed,
    UpdateStatus::RolledBack,
    UpdateStatus::Failed,
];

/// The filters of one overview request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetQuery {
    pub status: Option<UpdateStatus>,
    pub hardware_id: Option<String>,
    pub version: Option<String>,
    /// Case-insensitive substring of the device id, hardware id, versions,
    /// target or reason.
    pub search: Option<String>,
    pub limit: usize,
}

impl FleetQuery {
    /// Parses a raw (still percent-encoded) query string.
    pub fn parse(raw: Option<&str>) -> Result<FleetQuery, String> {
        let mut query = FleetQuery {
            limit: DEFAULT_LIMIT,
            ..FleetQuery::default()
        };
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(query);
        };
        if raw.len() > MAX_QUERY_BYTES {
            return Err(format!(
                "query string is {} bytes long; at most {MAX_QUERY_BYTES} are accepted",
                raw.len()
            ));
        }
        if !percent_escapes_are_whole(raw) {
            return Err("query string has a % not followed by two hex digits".into());
        }
        let mut seen = Vec::new();
        for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            // The decoder replaces bytes that are not UTF-8 with U+FFFD.
            if name.contains('\u{FFFD}') || value.contains('\u{FFFD}') {
                return Err("query string is not valid UTF-8 after percent-decoding".into());
            }
            if value.chars().any(char::is_control) {
                return Err(format!(
                    "query parameter {name:?} contains control characters"
                ));
            }
            if seen.contains(&name) {
                return Err(format!("query parameter {name:?} is given more than once"));
            }
            seen.push(name.clone());
            if value.is_empty() {
                continue;
            }
            match name.as_ref() {
                "status" => {
                    query.status = Some(
                        STATUSES
                            .into_iter()
                            .find(|s| s.as_str() == value)
                            .ok_or_else(|| {
                                format!(
                                    "unknown status {value:?} (expected one of {})",
                                    STATUSES.map(UpdateStatus::as_str).join(", ")
                                )
                            })?,
                    );
                }
                "hardware_id" => {
                    if !is_valid_id(&value) {
                        return Err(format!("invalid hardware_id {value:?}"));
                    }
                    query.hardware_id = Some(value.into_owned());
                }
                "version" => {
                    if value.len() > 128 || !value.chars().all(|c| c.is_ascii_graphic()) {
                        return Err(format!("invalid version {value:?}"));
                    }
                    query.version = Some(value.into_owned());
                }
                "q" => {
                    if value.chars().count() > MAX_SEARCH_CHARS {
                        return Err(format!(
                            "search text is longer than {MAX_SEARCH_CHARS} characters"
                        ));
                    }
                    query.search = Some(value.to_lowercase());
                }
                "limit" => {
                    query.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            format!("limit must be a number from 1 to {MAX_LIMIT}, not {value:?}")
                        })?;
                }
                other => {
                    return Err(format!(
                        "unknown query parameter {other:?} (expected status, hardware_id, \
                         version, q, limit)"
                    ))
                }
            }
        }
        Ok(query)
    }

    fn matches(&self, d: &DeviceRecord) -> bool {
        self.status.is_none_or(|s| d.status == s)
            && self
                .hardware_id
                .as_ref()
                .is_none_or(|h| *h == d.hardware_id)
            && self
                .version
                .as_ref()
                .is_none_or(|v| *v == d.installed_version)
            && self.search.as_ref().is_none_or(|q| {
                [
                    Some(d.device_id.as_str()),
                    Some(d.hardware_id.as_str()),
                    Some(d.installed_version.as_str()),
                    d.target.as_deref(),
                    d.target_version.as_deref(),
                    d.reason.as_deref(),
                ]
                .into_iter()
                .flatten()
                .any(|field| field.to_lowercase().contains(q.as_str()))
            })
    }
}

/// Whether every `%` starts an escape of two hex digits (the decoder would
/// pass a stray one through as text, hiding a client's encoding bug).
fn percent_escapes_are_whole(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// The answer of `GET /admin/v1/fleet`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetOverview {
    /// Devices that ever reported.
    pub total: usize,
    /// Whole-fleet counts (the filters do not change them).
    pub by_status: BTreeMap<String, usize>,
    pub by_hardware_id: BTreeMap<String, usize>,
    pub by_version: BTreeMap<String, usize>,
    /// Devices matching the filters (before the limit).
    pub matched: usize,
    /// The first `limit` of them, by device id.
    pub devices: Vec<DeviceRecord>,
}

pub fn overview(all: Vec<DeviceRecord>, query: &FleetQuery) -> FleetOverview {
    let mut by_status: BTreeMap<String, usize> = STATUSES
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let mut by_hardware_id = BTreeMap::new();
    let mut by_version = BTreeMap::new();
    for d in &all {
        *by_status.entry(d.status.as_str().to_owned()).or_default() += 1;
        *by_hardware_id.entry(d.hardware_id.clone()).or_default() += 1;
        *by_version.entry(d.installed_version.clone()).or_default() += 1;
    }
    let total = all.len();
    let matching: Vec<DeviceRecord> = all.into_iter().filter(|d| query.matches(d)).collect();
    let matched = matching.len();
    FleetOverview {
        total,
        by_status,
        by_hardware_id,
        by_version,
        matched,
        devices: matching.into_iter().take(query.limit).collect(),
    }
}

/// The strong ETag of a JSON body.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Sha256::digest(body)))
}

/// Whether `If-None-Match` names `etag` (or is `*`).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// A JSON answer with its ETag, or 304 when the client has it already.
pub fn json_with_etag(headers: &HeaderMap, value: &impl Serialize) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::internal("encode answer", e))?;
    let etag = etag_of(&body);
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| ApiError::internal("etag", e))?;
    // Admin data: a shared cache must not keep it; the browser revalidates.
    let cache = HeaderValue::from_static("private, no-cache");
    if not_modified(headers, &etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag_value), (header::CACHE_CONTROL, cache)],
        )
            .into_response());
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag_value),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response())
}

pub async fn fleet(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = FleetQuery::parse(uri.query()).map_err(ApiError::bad_request)?;
    let devices = state
        .db
        .devices()
        .await
        .map_err(|e| ApiError::internal("list devices", e))?;
    json_with_etag(&headers, &overview(devices, &query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_hostile_queries_are_named() {
        let q = FleetQuery::parse(Some(
            "status=rolled_back&hardware_id=board-a&q=Canary&limit=5",
        ))
        .expect("parse");
        assert_eq!(q.status, Some(UpdateStatus::RolledBack));
        assert_eq!(q.hardware_id.as_deref(), Some("board-a"));
        assert_eq!(q.search.as_deref(), Some("canary"));
        assert_eq!(q.limit, 5);
        assert_eq!(FleetQuery::parse(None).expect("empty").limit, DEFAULT_LIMIT);
        for (bad, says) in [
            ("status=exploded", "unknown status"),
            ("limit=0", "limit"),
            ("limit=99999999999999999999999", "limit"),
            ("limit=-1", "limit"),
            ("q=%ff%fe", "UTF-8"),
            ("q=a%00b", "control"),
            ("hardware_id=x'%20OR%201=1--", "hardware_id"),
            ("q=a&q=b", "more than once"),
            ("q=a%", "two hex digits"),
            ("q=%zz", "two hex digits"),
            ("sort=1", "unknown query parameter"),
        ] {
            let e = FleetQuery::parse(Some(bad)).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("q={}", "a".repeat(MAX_QUERY_BYTES));
        assert!(FleetQuery::parse(Some(&long)).is_err());
    }

    #[test]
    fn if_none_match_lists_are_understood() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", W/\"b\""),
        );
        assert!(not_modified(&h, "\"b\""));
        assert!(!not_modified(&h, "\"c\""));
    }
}
