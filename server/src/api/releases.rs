//! `GET /admin/v1/releases`: every target the published (signed) metadata
//! lists, with its version, hardware ids, length and digests, and every
//! role with its version and expiry; a role that expires soon (or has) is
//! flagged, because devices refuse expired metadata and stop updating.
//!
//! Read-only: the server shows what was signed, it signs nothing here.

use crate::api::fleet::json_with_etag;
use crate::api::ApiError;
use crate::rollout::catalog::{self, RoleExpiry};
use crate::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// How long before its expiry a role is flagged: ahead of `ota-repo
/// status`'s 14 days for the offline roles (root more), and for the
/// short-lived online roles long enough to notice that re-signing stalled
/// without flagging every normal day (`ota-repo` gives timestamp 7 days).
pub fn warning_period(role: &str) -> Duration {
    match role {
        "timestamp" => Duration::days(1),
        "snapshot" => Duration::days(7),
        "root" => Duration::days(30),
        _ => Duration::days(14),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleView {
    pub role: String,
    pub version: u64,
    pub expires: String,
    /// Within [`warning_period`] of its expiry, or past it.
    pub expires_soon: bool,
    pub expired: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseView {
    pub target: String,
    pub version: String,
    pub hardware_ids: Vec<String>,
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    /// Whether the release carries a signed staged-rollout plan.
    pub staged: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Releases {
    pub roles: Vec<RoleView>,
    pub releases: Vec<ReleaseView>,
}

pub fn role_view(r: RoleExpiry, now: DateTime<Utc>) -> RoleView {
    // An unparseable expiry is refused by devices: as good as expired.
    let at = DateTime::parse_from_rfc3339(&r.expires)
        .ok()
        .map(|t| t.with_timezone(&Utc));
    let expired = at.is_none_or(|t| t <= now);
    let expires_soon = at.is_none_or(|t| t - now <= warning_period(&r.role));
    RoleView {
        role: r.role,
        version: r.version,
        expires: r.expires,
        expires_soon,
        expired,
    }
}

pub async fn releases(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let found = catalog::catalog(&state.storage)
        .await
        .map_err(|e| ApiError::internal("read published metadata", e))?;
    let now = Utc::now();
    let answer = Releases {
        roles: found.roles.into_iter().map(|r| role_view(r, now)).collect(),
        releases: found
            .releases
            .into_iter()
            .map(|r| ReleaseView {
                staged: r.plan.is_some(),
                target: r.target,
                version: r.version,
                hardware_ids: r.hardware_ids,
                length: r.length,
                hashes: r.hashes,
            })
            .collect(),
    };
    json_with_etag(&headers, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, expires: &str) -> RoleExpiry {
        RoleExpiry {
            role: name.into(),
            version: 1,
            expires: expires.into(),
        }
    }

    #[test]
    fn roles_near_or_past_expiry_are_flagged() {
        let now: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().expect("time");
        let v = role_view(role("targets", "2026-06-10T00:00:00Z"), now);
        assert!(v.expires_soon && !v.expired);
        let v = role_view(role("targets", "2026-09-01T00:00:00Z"), now);
        assert!(!v.expires_soon && !v.expired);
        // The timestamp's short life is normal: not flagged two days out.
        let v = role_view(role("timestamp", "2026-06-03T00:00:00Z"), now);
        assert!(!v.expires_soon);
        let v = role_view(role("timestamp", "2026-06-01T12:00:00Z"), now);
        assert!(v.expires_soon);
        let v = role_view(role("root", "2026-05-01T00:00:00Z"), now);
        assert!(v.expires_soon && v.expired);
        let v = role_view(role("snapshot", "garbage"), now);
        assert!(v.expired);
    }
}
