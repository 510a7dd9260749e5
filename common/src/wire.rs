//! JSON exchanged over HTTP between devices, the server and `ota-repo`,
//! and the custom fields a release carries in signed targets metadata.
//!
//! Endpoints (see docs/ARCHITECTURE.md for the full protocol):
//! * `GET  /metadata/{file}`, `GET /targets/{path}`: the TUF repository (public).
//! * `POST /api/v1/devices/{device_id}/reports`: a [`DeviceReport`].
//! * `POST /admin/v1/publications` → [`PublicationCreated`];
//!   `PUT /admin/v1/publications/{id}/targets/{target path}` (image body) → [`StagedTarget`];
//!   `PUT /admin/v1/publications/{id}/metadata/{file}`;
//!   `POST /admin/v1/publications/{id}/commit` → [`PublicationCommitted`].
//! * `GET  /admin/v1/devices` → `Vec<DeviceRecord>`;
//!   `GET /admin/v1/devices/{device_id}/events` → `Vec<DeviceEvent>`.
//!
//! Admin endpoints take `Authorization: Bearer <token>`.

use serde::{Deserialize, Serialize};

// Ids are checked by the rollout plan too, so they live below both.
pub use crate::id::is_valid_id;

/// Largest device report the server accepts, in bytes.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Longest free-text reason a device may report, in characters.
pub const MAX_REASON_CHARS: usize = 2048;

/// The custom fields `ota-repo add` puts on a target, which the agent reads
/// from *verified* targets metadata to decide what to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseCustom {
    /// Semantic version of the image.
    pub version: semver::Version,
    /// Hardware ids the image may be installed on.
    pub hardware_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_notes: Option<String>,
    /// Staged rollout: which devices may install when (signed with the
    /// targets role, so no server or proxy can advance it). Absent: every
    /// compatible device, at once. A malformed plan makes the whole target
    /// invalid, so a device never installs on a schedule it cannot read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutPlan>,
    /// How the target's bytes become the slot image. Absent: the target is
    /// the image itself (raw). Parsed and checked by
    /// [`crate::payload::Payload::of`]; a payload the agent cannot read
    /// makes the whole target invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadCustom>,
    /// A delta release: the signed chunk index that lets a device build the
    /// slot image from its running slot plus the chunks it lacks. Optional
    /// for the device (an agent that ignores it installs the full payload);
    /// parsed by [`crate::delta::IndexRef::parse`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaCustom>,
}

/// `custom.delta`: where a release's chunk index is and what it hashes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaCustom {
    /// SHA-256 of the index file, lowercase hex (also its name in the
    /// chunk store: `chunks/index/<sha256>.<sha256>.cidx`).
    pub index_sha256: String,
    pub index_length: u64,
}

/// `custom.payload`: the target is an encoded (compressed) slot image.
///
/// The target's own TUF `length` and `hashes` sign the encoded bytes as
/// served; these fields sign what the slot must hold once decoded. Unknown
/// fields are refused, so a later encoding (a delta's chunk index beside
/// these fields) is never mistaken for one an older agent understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadCustom {
    /// `zstd`, `gzip` or `xz`.
    pub encoding: String,
    /// Length of the decoded slot image, in bytes.
    pub image_length: u64,
    /// SHA-256 of the decoded slot image, lowercase hex.
    pub image_sha256: String,
    /// zstd only: the independent frames the target is made of, in order.
    /// With them a download resumes at a frame boundary; without them it
    /// starts over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<FrameCustom>,
}

/// One independent zstd frame of an encoded target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameCustom {
    /// Encoded bytes of the frame.
    pub length: u64,
    /// Slot image bytes it decodes to.
    pub image_length: u64,
    /// SHA-256 of the frame's encoded bytes, lowercase hex.
    pub sha256: String,
}

/// Where a device is in the update cycle, as reported to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStatus {
    /// Polled; nothing to do.
    Idle,
    /// Streaming an image into the inactive slot.
    Downloading,
    /// Image written and verified in the inactive slot.
    Installed,
    /// Bootloader told to try the new slot once; reboot requested.
    Rebooting,
    /// New slot booted, health checks passed, made permanent.
    Committed,
    /// New slot failed (health checks, or never came up); back on the previous slot.
    RolledBack,
    /// Something failed before the bootloader was touched; the device keeps running its slot.
    Failed,
}

impl UpdateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStatus::Idle => "idle",
            UpdateStatus::Downloading => "downloading",
            UpdateStatus::Installed => "installed",
            UpdateStatus::Rebooting => "rebooting",
            UpdateStatus::Committed => "committed",
            UpdateStatus::RolledBack => "rolled_back",
            UpdateStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for UpdateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device tells the server at each stage (`POST /api/v1/devices/{id}/reports`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceReport {
    pub hardware_id: String,
    /// Version running now (the booted slot's).
    pub installed_version: String,
    /// Slot booted now ("A" or "B").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booted_slot: Option<String>,
    pub status: UpdateStatus,
    /// Target name the status is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Version of that target, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// Why (for failed and rolled_back), in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rollout groups from the device's config (`rollout_groups`), so the
    /// server can place the device in the same wave the device does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// The server's view of one device (`GET /admin/v1/devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: String,
    pub hardware_id: String,
    pub installed_version: String,
    pub booted_slot: Option<String>,
    pub status: UpdateStatus,
    pub target: Option<String>,
    pub target_version: Option<String>,
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub last_seen: String,
}

/// One report as recorded (`GET /admin/v1/devices/{id}/events`), oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEvent {
    pub device_id: String,
    pub installed_version: String,
    pub booted_slot: Option<String>,
    pub status: UpdateStatus,
    pub target: Option<String>,
    pub target_version: Option<String>,
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationCreated {
    pub id: String,
}

/// The server's account of an uploaded image, computed while it streamed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedTarget {
    pub target: String,
    pub length: u64,
    pub sha256: String,
    pub sha512: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationCommitted {
    pub id: String,
    /// Files made visible, in the order they were made visible (timestamp last).
    pub files: Vec<String>,
    /// Set when the server (`[online_signing]`) signed `timestamp.json`
    /// itself at this commit, in place of the uploaded one: its version.
    /// Absent from servers without online signing (and older servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_timestamp_version: Option<u64>,
    /// Set when the server re-issued the snapshot with its online key
    /// because the uploaded version was not newer than the published one:
    /// the version it was published as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_snapshot_version: Option<u64>,
}

/// Error body of every 4xx/5xx answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_restricted_to_safe_characters() {
        assert!(is_valid_id("dev-01.hospital_a:ward3"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("../etc"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id(&"x".repeat(129)));
    }

    #[test]
    fn report_rejects_unknown_fields_and_statuses() {
        let ok = r#"{"hardware_id":"hw","installed_version":"1.0.0","status":"rolled_back","reason":"health check app failed"}"#;
        let r: DeviceReport = serde_json::from_str(ok).expect("valid report");
        assert_eq!(r.status, UpdateStatus::RolledBack);
        assert!(serde_json::from_str::<DeviceReport>(
            r#"{"hardware_id":"hw","installed_version":"1","status":"exploded"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<DeviceReport>(
            r#"{"hardware_id":"hw","installed_version":"1","status":"idle","admin":true}"#
        )
        .is_err());
    }

    #[test]
    fn release_custom_round_trips() {
        let c: ReleaseCustom = serde_json::from_str(
            r#"{"version":"1.2.0","hardware_ids":["board-a"],"release_notes":"fixes"}"#,
        )
        .expect("parse");
        assert_eq!(c.version, semver::Version::new(1, 2, 0));
        assert!(
            serde_json::from_str::<ReleaseCustom>(r#"{"version":"one","hardware_ids":[]}"#)
                .is_err()
        );
    }
}

/// The server's word on a staged rollout (`GET /api/v1/rollouts/{target}`).
/// It can only hold a release back: the signed [`crate::rollout::RolloutPlan`]
/// alone decides who may install when, so a lying server can delay an
/// update but never advance one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutHold {
    /// The target name asked about.
    pub target: String,
    pub state: RolloutState,
    /// Why it is paused or aborted (operator's words, or the automatic
    /// pause's failure figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether the server lets a rollout proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Devices install as their signed wave opens.
    Active,
    /// Held: no device starts it until an operator resumes.
    Paused,
    /// Stopped for good: no device starts it (publish a fix instead).
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Active => "active",
            RolloutState::Paused => "paused",
            RolloutState::Aborted => "aborted",
        }
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /admin/v1/rollouts`: one release of the published targets metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub target: String,
    pub version: String,
    pub hardware_ids: Vec<String>,
    /// The signed wave schedule; empty for a release without one (every
    /// compatible device installs it at once and never asks the server).
    pub waves: Vec<WaveSchedule>,
    /// The server's hold (always `active` for a release without waves).
    pub state: RolloutState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Admin token name, `cli:USER`, or `automatic`; absent if never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
}

/// One wave of a signed plan, as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveSchedule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// RFC 3339, UTC.
    pub not_before: String,
    /// Whether `not_before` has passed by the server's clock.
    pub open: bool,
}

/// `GET /admin/v1/rollouts/{target}`: the fleet's progress through one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub target: String,
    /// Absent when the target is no longer in the published targets metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub hardware_ids: Vec<String>,
    pub state: RolloutState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
    /// One entry per signed wave, in order (a release without waves has one
    /// implicit wave `all`), then the bucket `(outside any wave)`.
    pub waves: Vec<WaveStatus>,
    /// Devices whose latest report about this target is failed or rolled_back.
    pub problems: Vec<RolloutProblem>,
    /// State changes, oldest first.
    pub history: Vec<RolloutChangeRecord>,
}

/// Device counts of one wave. Every counted device is in exactly one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveStatus {
    pub name: String,
    /// RFC 3339, UTC; absent for the implicit wave and the outside bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    pub open: bool,
    pub total: u64,
    /// Compatible, no report about this target yet, not running its version.
    pub pending: u64,
    pub downloading: u64,
    /// Installed or rebooting into it.
    pub installed: u64,
    /// Reported committed, or already running this version.
    pub committed: u64,
    pub rolled_back: u64,
    pub failed: u64,
    /// Would be pending, downloading or installed, but not seen for
    /// `stale_after_secs`.
    pub not_seen: u64,
}

/// A device that failed or rolled back this release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutProblem {
    pub device_id: String,
    /// Its wave, `None` when outside every wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
    pub status: UpdateStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub at: String,
}

/// One change of a rollout's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutChangeRecord {
    pub state: RolloutState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub by: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// Body of `POST /admin/v1/rollouts/{target}/pause|resume|abort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutChange {
    /// Required for pause and abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
