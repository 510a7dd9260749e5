//! The agent's persisted state, `state_dir/state.json`, written atomically
//! (a power cut leaves the old or the new state, never a mix).
//!
//! A missing or corrupt file is not fatal: the agent starts over from the
//! configuration (the booted slot runs `initial_version`) and says so in the
//! log. The worst this costs is installing a release again.

use crate::slot::SlotId;
use ota_common::hash::Digests;
use ota_common::payload::SlotImage;
use ota_common::tuf::Target;
use ota_common::wire::UpdateStatus;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Current format of state.json.
pub const STATE_FORMAT: u32 = 1;
/// Most rejected releases remembered (oldest forgotten first).
pub const MAX_REJECTED: usize = 64;
/// state.json is small; a larger file is not ours.
const MAX_STATE_BYTES: u64 = 1024 * 1024;

/// A release, as identified by signed targets metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    /// Target name in the TUF repository.
    pub name: String,
    pub version: semver::Version,
    pub length: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
}

impl TargetRef {
    /// The release `target` installs: named by its target name, identified
    /// by what the slot holds once installed (`image`: the target itself
    /// for a raw release, the decoded image for a compressed one), so
    /// checkpoints, `ota-agent verify` and a rebuilt state all compare the
    /// slot with the same length and digests.
    pub fn new(target: &Target, version: semver::Version, image: &SlotImage) -> Self {
        TargetRef {
            name: target.name.clone(),
            version,
            length: image.length,
            sha256: image.digests.sha256.map(hex::encode),
            sha512: image.digests.sha512.map(hex::encode),
        }
    }

    /// Same release: same name and same content.
    pub fn same_release(&self, other: &TargetRef) -> bool {
        self.name == other.name && self.sha256 == other.sha256 && self.sha512 == other.sha512
    }

    /// The digests, for verification (hex validated on load).
    pub fn digests(&self) -> Digests {
        fn decode<const N: usize>(s: &Option<String>) -> Option<[u8; N]> {
            let bytes = hex::decode(s.as_deref()?).ok()?;
            bytes.try_into().ok()
        }
        Digests {
            sha256: decode(&self.sha256),
            sha512: decode(&self.sha512),
        }
    }
}

/// What a slot holds, as far as the agent knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledRelease {
    pub version: semver::Version,
    /// The target it came from; `None` for the factory image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl InstalledRelease {
    pub fn factory(version: semver::Version) -> Self {
        InstalledRelease {
            version,
            target: None,
            sha256: None,
        }
    }

    pub fn from_target(t: &TargetRef) -> Self {
        InstalledRelease {
            version: t.version.clone(),
            target: Some(t.name.clone()),
            sha256: t.sha256.clone(),
        }
    }
}

/// Where the update cycle is. See `machine.rs` for every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case", deny_unknown_fields)]
pub enum Phase {
    /// Nothing in progress.
    Idle,
    /// Streaming `target` into `slot`; the slot's content is untrusted.
    /// Its first `checkpoint` bytes were written and fsynced before this
    /// state was saved, so a restart resumes there (after re-hashing them).
    Downloading {
        slot: SlotId,
        target: TargetRef,
        /// Durable offset; absent in files written before resumption existed.
        #[serde(default)]
        checkpoint: u64,
    },
    /// `target` written into `slot` and verified; the bootloader not yet armed.
    Installed { slot: SlotId, target: TargetRef },
    /// Bootloader armed to try `slot` once; reboot requested during boot `boot_id` of `previous`.
    Trying {
        slot: SlotId,
        previous: SlotId,
        target: TargetRef,
        boot_id: String,
    },
    /// `slot` failed its health checks during boot `boot_id`; going back to `previous`.
    RollingBack {
        slot: SlotId,
        previous: SlotId,
        target: TargetRef,
        reason: String,
        boot_id: String,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Downloading { .. } => "downloading",
            Phase::Installed { .. } => "installed",
            Phase::Trying { .. } => "trying",
            Phase::RollingBack { .. } => "rolling_back",
        }
    }
}

/// The last report the server acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastReport {
    pub status: UpdateStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Everything the agent remembers across restarts and reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    pub format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_a: Option<InstalledRelease>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_b: Option<InstalledRelease>,
    pub phase: Phase,
    /// Releases that failed on this device; never installed again.
    #[serde(default)]
    pub rejected: Vec<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report: Option<LastReport>,
}

impl AgentState {
    /// A fresh state: `booted` runs the factory image of `initial_version`.
    pub fn fresh(booted: SlotId, initial_version: &semver::Version) -> Self {
        let mut state = AgentState {
            format: STATE_FORMAT,
            slot_a: None,
            slot_b: None,
            phase: Phase::Idle,
            rejected: Vec::new(),
            last_report: None,
        };
        *state.slot_mut(booted) = Some(InstalledRelease::factory(initial_version.clone()));
        state
    }

    pub fn slot(&self, id: SlotId) -> Option<&InstalledRelease> {
        match id {
            SlotId::A => self.slot_a.as_ref(),
            SlotId::B => self.slot_b.as_ref(),
        }
    }

    pub fn slot_mut(&mut self, id: SlotId) -> &mut Option<InstalledRelease> {
        match id {
            SlotId::A => &mut self.slot_a,
            SlotId::B => &mut self.slot_b,
        }
    }

    /// Version `slot` runs: what the state recorded, else `initial_version`.
    pub fn version_of(&self, slot: SlotId, initial_version: &semver::Version) -> semver::Version {
        self.slot(slot)
            .map(|r| r.version.clone())
            .unwrap_or_else(|| initial_version.clone())
    }

    pub fn is_rejected(&self, target: &TargetRef) -> bool {
        self.rejected.iter().any(|r| r.same_release(target))
    }

    pub fn reject(&mut self, target: &TargetRef) {
        if !self.is_rejected(target) {
            self.rejected.push(target.clone());
        }
        let excess = self.rejected.len().saturating_sub(MAX_REJECTED);
        self.rejected.drain(..excess);
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != STATE_FORMAT {
            return Err(format!("format {} is not {STATE_FORMAT}", self.format));
        }
        let check = |t: &TargetRef| -> Result<(), String> {
            let d = t.digests();
            if t.sha256.is_some() != d.sha256.is_some() || t.sha512.is_some() != d.sha512.is_some()
            {
                return Err(format!("target {} has a malformed digest", t.name));
            }
            if d.is_empty() {
                return Err(format!("target {} has no digest", t.name));
            }
            Ok(())
        };
        match &self.phase {
            Phase::Idle => {}
            Phase::Downloading {
                target, checkpoint, ..
            } => {
                check(target)?;
                if *checkpoint > target.length {
                    return Err(format!(
                        "download checkpoint {checkpoint} is past the length {} of target {}",
                        target.length, target.name
                    ));
                }
            }
            Phase::Installed { target, .. } => check(target)?,
            Phase::Trying {
                slot,
                previous,
                target,
                ..
            }
            | Phase::RollingBack {
                slot,
                previous,
                target,
                ..
            } => {
                if slot == previous {
                    return Err(format!("phase {} has slot == previous", self.phase.name()));
                }
                check(target)?;
            }
        }
        Ok(())
    }
}

/// Why state.json could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// Reads and writes state.json.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(path: PathBuf) -> Self {
        StateStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored state; `Ok(None)` when there is none yet.
    pub fn load(&self) -> Result<Option<AgentState>, StateError> {
        use std::io::Read;
        let io_err = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        let corrupt = |detail: String| StateError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(corrupt(format!("larger than {MAX_STATE_BYTES} bytes")));
        }
        let state: AgentState =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        state.validate().map_err(corrupt)?;
        Ok(Some(state))
    }

    /// The stored state, or a fresh one when it is missing or unusable
    /// (logged at warn: the agent then knows nothing of earlier updates).
    pub fn load_or_recover(&self, booted: SlotId, initial_version: &semver::Version) -> AgentState {
        match self.load() {
            Ok(Some(state)) => state,
            Ok(None) => {
                tracing::info!(path = %self.path.display(), slot = %booted, version = %initial_version,
                    "no agent state yet; starting fresh with the booted slot at initial_version");
                AgentState::fresh(booted, initial_version)
            }
            Err(e) => {
                tracing::warn!(error = %e, slot = %booted, version = %initial_version,
                    "agent state unusable; starting fresh with the booted slot at initial_version");
                AgentState::fresh(booted, initial_version)
            }
        }
    }

    /// Replaces state.json atomically and durably.
    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let io_err = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let mut bytes =
            serde_json::to_vec_pretty(state).map_err(|e| io_err(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        ota_common::atomic::write_atomic(&self.path, &bytes).map_err(io_err)
    }
}

/// Which of `candidates` (releases from trusted metadata) the slot at
/// `slot_path` holds: the longest whose first `length` bytes have its sha256.
/// One pass over the slot, one buffer, however many candidates: a hasher is
/// snapshotted at each candidate's length. Used to rebuild a lost state.
pub fn identify_release(
    slot_path: &Path,
    candidates: &[TargetRef],
) -> std::io::Result<Option<TargetRef>> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut wanted: Vec<(&TargetRef, [u8; 32])> = candidates
        .iter()
        .filter_map(|t| t.digests().sha256.map(|d| (t, d)))
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    wanted.sort_by_key(|(t, _)| t.length);
    let mut file = std::fs::File::open(slot_path)?;
    let mut hasher = Sha256::new();
    let mut done: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    // The longest match wins: a shorter image can be a prefix of a longer
    // one, and a slot on a block device always has bytes after its image.
    let mut found = None;
    for (target, digest) in wanted {
        while done < target.length {
            let want = usize::try_from(target.length - done)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                // The slot is shorter than this (and every longer) candidate.
                return Ok(found);
            }
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        if hasher.clone().finalize()[..] == digest[..] {
            found = Some(target.clone());
        }
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn target_ref(name: &str, version: &str, data: &[u8]) -> TargetRef {
        let d = crate::slot::tests::digests_of(data);
        TargetRef {
            name: name.into(),
            version: semver::Version::parse(version).expect("version"),
            length: data.len() as u64,
            sha256: d.sha256.map(hex::encode),
            sha512: d.sha512.map(hex::encode),
        }
    }

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).expect("version")
    }

    #[test]
    fn round_trips_every_phase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(dir.path().join("state.json"));
        let t = target_ref("board/img-2.0.0", "2.0.0", b"image");
        let phases = [
            Phase::Idle,
            Phase::Downloading {
                slot: SlotId::B,
                target: t.clone(),
                checkpoint: 3,
            },
            Phase::Installed {
                slot: SlotId::B,
                target: t.clone(),
            },
            Phase::Trying {
                slot: SlotId::B,
                previous: SlotId::A,
                target: t.clone(),
                boot_id: "x".into(),
            },
            Phase::RollingBack {
                slot: SlotId::B,
                previous: SlotId::A,
                target: t.clone(),
                reason: "health check 'app' exited with status 1".into(),
                boot_id: "y".into(),
            },
        ];
        for phase in phases {
            let mut s = AgentState::fresh(SlotId::A, &v("1.0.0"));
            s.phase = phase;
            s.reject(&t);
            store.save(&s).expect("save");
            assert_eq!(store.load().expect("load"), Some(s));
        }
    }

    #[test]
    fn missing_state_starts_fresh_for_the_booted_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(dir.path().join("state.json"));
        assert_eq!(store.load().expect("load"), None);
        let s = store.load_or_recover(SlotId::B, &v("1.2.3"));
        assert_eq!(s.phase, Phase::Idle);
        assert_eq!(s.version_of(SlotId::B, &v("0.0.1")), v("1.2.3"));
        assert!(s.slot(SlotId::A).is_none());
    }

    #[test]
    fn corrupt_state_is_recovered_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let store = StateStore::new(path.clone());
        for garbage in [
            &b"{\"format\": 1, \"phase\": {\"phase\": \"exploded\"}}"[..],
            b"\x00\x01 not json",
            b"{\"format\": 99, \"phase\": {\"phase\": \"idle\"}}",
            b"",
        ] {
            std::fs::write(&path, garbage).expect("write");
            assert!(matches!(store.load(), Err(StateError::Corrupt { .. })));
            let s = store.load_or_recover(SlotId::A, &v("1.0.0"));
            assert_eq!(s, AgentState::fresh(SlotId::A, &v("1.0.0")));
        }
    }

    #[test]
    fn identifies_the_release_a_slot_holds_in_one_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slot = dir.path().join("slot");
        let one = vec![1u8; 100_000];
        let mut two = one.clone();
        two.extend_from_slice(&[2u8; 50_000]);
        let short = target_ref("short", "1.0.0", &one[..10]);
        let t1 = target_ref("one", "1.1.0", &one);
        let t2 = target_ref("two", "1.2.0", &two);
        // A block device is larger than the image: trailing bytes are ignored.
        let mut on_disk = two.clone();
        on_disk.extend_from_slice(&[9u8; 4096]);
        std::fs::write(&slot, &on_disk).expect("write");
        let found = identify_release(&slot, &[t1.clone(), t2.clone(), short.clone()]);
        assert_eq!(found.expect("read"), Some(t2.clone()));
        std::fs::write(&slot, &one).expect("write");
        assert_eq!(
            identify_release(&slot, &[t2.clone(), t1.clone()]).expect("read"),
            Some(t1)
        );
        std::fs::write(&slot, b"half-written").expect("write");
        assert_eq!(identify_release(&slot, &[t2, short]).expect("read"), None);
    }

    #[test]
    fn rejected_releases_match_by_name_and_content() {
        let mut s = AgentState::fresh(SlotId::A, &v("1.0.0"));
        let t = target_ref("img", "2.0.0", b"one");
        s.reject(&t);
        s.reject(&t);
        assert_eq!(s.rejected.len(), 1);
        assert!(s.is_rejected(&t));
        // Same name, new content (re-signed fix): not rejected.
        assert!(!s.is_rejected(&target_ref("img", "2.0.0", b"two")));
        for i in 0..100 {
            s.reject(&target_ref(&format!("img{i}"), "2.0.0", b"x"));
        }
        assert_eq!(s.rejected.len(), MAX_REJECTED);
    }
}
