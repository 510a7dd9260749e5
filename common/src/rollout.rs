//! Staged rollouts: the wave schedule a release carries in its *signed*
//! targets metadata, and which wave a device belongs to.
//!
//! Why the schedule is signed: whether a device may install must not rest
//! on one server's memory, and a tampered proxy or server must not be able
//! to push a device early. The release engineer signs, with the targets
//! key, *when* each wave opens and *who* is in it. The device alone decides
//! its wave from its own id and groups (its config) and the signed plan, and
//! never installs before its wave opens. The server can only hold a rollout
//! back (pause, abort, automatic pause on failures): a compromised server or
//! proxy can delay an update, which it could always do by dropping traffic,
//! but never advance one.
//!
//! A device's position is `SHA-256("ota-rollout-v1\0" || seed || "\0" ||
//! device_id)` reduced to a number in `0..10_000` (basis points). The seed
//! is random per release, so each release picks different early devices,
//! and a device keeps its position across polls, restarts and servers.
//!
//! Wave `i` holds the devices in one of its `groups`, plus the devices whose
//! position is below `percent` × 100. Percentages are cumulative (a later
//! wave's share includes the earlier ones); a device belongs to the first
//! wave that holds it. A device in no wave never installs this release.
//!
//! In the custom fields of a target:
//!
//! ```json
//! "rollout": {
//!   "seed": "5f0c2a9e41d7b3a8",
//!   "waves": [
//!     {"name": "canary", "groups": ["bench"], "not_before": "2026-12-01T00:00:00Z"},
//!     {"name": "early",  "percent": 10,       "not_before": "2026-12-02T00:00:00Z"},
//!     {"name": "all",    "percent": 100,      "not_before": "2026-12-04T00:00:00Z"}
//!   ]
//! }
//! ```
//!
//! Percentages are integers because canonical JSON (what TUF signs) has no
//! floating point numbers; use a group for canaries smaller than 1 %.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Most waves a plan may have.
pub const MAX_WAVES: usize = 32;
/// Most groups one wave may name.
pub const MAX_GROUPS: usize = 64;
/// Positions are in `0..POSITION_SCALE` (basis points of the fleet).
pub const POSITION_SCALE: u32 = 10_000;

/// The wave schedule of one release (`custom.rollout` of its target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutPlan {
    /// Random per release, 8 to 64 lowercase hex digits.
    pub seed: String,
    /// In order; each opens no earlier than the one before.
    pub waves: Vec<Wave>,
}

/// One wave of a [`RolloutPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Short name for status and logs (an id: `[A-Za-z0-9._:-]`).
    pub name: String,
    /// Device groups (from each device's config) that belong to this wave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Cumulative share of the fleet, 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Devices of this wave may install from this time on.
    #[serde(serialize_with = "ser_time", deserialize_with = "de_time")]
    pub not_before: DateTime<Utc>,
}

/// Why a rollout plan is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("rollout seed must be 8 to 64 lowercase hex digits, got {0:?}")]
    Seed(String),
    #[error("a rollout needs 1 to {MAX_WAVES} waves, got {0}")]
    WaveCount(usize),
    #[error("wave {index}: name {name:?} is not an id ([A-Za-z0-9._:-], 1-128 characters)")]
    Name { index: usize, name: String },
    #[error("wave name {0:?} is used twice")]
    DuplicateName(String),
    #[error("wave {0:?} names neither groups nor a percent: nobody would be in it")]
    Empty(String),
    #[error("wave {0:?}: percent must be 1 to 100")]
    Percent(String),
    #[error("wave {name:?}: group {group:?} is not an id ([A-Za-z0-9._:-], 1-128 characters)")]
    Group { name: String, group: String },
    #[error("wave {0:?}: at most {MAX_GROUPS} groups")]
    TooManyGroups(String),
    #[error("wave {0:?} opens before the wave ahead of it")]
    TimeOrder(String),
    #[error("wave {0:?}: percent is smaller than an earlier wave's (percentages are cumulative)")]
    PercentOrder(String),
}

impl RolloutPlan {
    /// Checks every rule of the plan; the only way to build one from
    /// untrusted input (deserialization calls it too).
    pub fn new(seed: String, waves: Vec<Wave>) -> Result<Self, PlanError> {
        let seed_ok = (8..=64).contains(&seed.len())
            && seed
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !seed_ok {
            return Err(PlanError::Seed(seed));
        }
        if waves.is_empty() || waves.len() > MAX_WAVES {
            return Err(PlanError::WaveCount(waves.len()));
        }
        let mut last_time: Option<DateTime<Utc>> = None;
        let mut last_percent = 0u8;
        for (index, wave) in waves.iter().enumerate() {
            if !crate::id::is_valid_id(&wave.name) {
                return Err(PlanError::Name {
                    index,
                    name: wave.name.clone(),
                });
            }
            if waves[..index].iter().any(|w| w.name == wave.name) {
                return Err(PlanError::DuplicateName(wave.name.clone()));
            }
            if wave.groups.is_empty() && wave.percent.is_none() {
                return Err(PlanError::Empty(wave.name.clone()));
            }
            if wave.groups.len() > MAX_GROUPS {
                return Err(PlanError::TooManyGroups(wave.name.clone()));
            }
            if let Some(group) = wave.groups.iter().find(|g| !crate::id::is_valid_id(g)) {
                return Err(PlanError::Group {
                    name: wave.name.clone(),
                    group: group.clone(),
                });
            }
            if let Some(p) = wave.percent {
                if !(1..=100).contains(&p) {
                    return Err(PlanError::Percent(wave.name.clone()));
                }
                if p < last_percent {
                    return Err(PlanError::PercentOrder(wave.name.clone()));
                }
                last_percent = p;
            }
            if last_time.is_some_and(|t| wave.not_before < t) {
                return Err(PlanError::TimeOrder(wave.name.clone()));
            }
            last_time = Some(wave.not_before);
        }
        Ok(RolloutPlan { seed, waves })
    }

    /// The device's position in this rollout, in `0..POSITION_SCALE`.
    pub fn position(&self, device_id: &str) -> u32 {
        position(&self.seed, device_id)
    }

    /// The index of the first wave that holds the device, if any.
    pub fn wave_of(&self, device_id: &str, groups: &[String]) -> Option<usize> {
        let position = self.position(device_id);
        self.waves.iter().position(|wave| {
            wave.groups.iter().any(|g| groups.contains(g))
                || wave
                    .percent
                    .is_some_and(|p| position < u32::from(p) * (POSITION_SCALE / 100))
        })
    }

    /// What the plan says about this device at `now`.
    pub fn decide(&self, device_id: &str, groups: &[String], now: DateTime<Utc>) -> WaveDecision {
        match self.wave_of(device_id, groups) {
            None => WaveDecision::NotIncluded,
            Some(index) => {
                let wave = &self.waves[index];
                if now >= wave.not_before {
                    WaveDecision::Open {
                        index,
                        wave: wave.name.clone(),
                    }
                } else {
                    WaveDecision::NotYet {
                        index,
                        wave: wave.name.clone(),
                        opens: wave.not_before,
                    }
                }
            }
        }
    }
}

/// A device's standing in a rollout at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaveDecision {
    /// Its wave is open: it may install (unless the server holds the rollout).
    Open { index: usize, wave: String },
    /// Its wave opens at `opens`.
    NotYet {
        index: usize,
        wave: String,
        opens: DateTime<Utc>,
    },
    /// No wave holds it: this release is not for this device.
    NotIncluded,
}

/// `SHA-256("ota-rollout-v1\0" || seed || "\0" || device_id)`, its first
/// eight bytes as a big-endian integer, modulo [`POSITION_SCALE`].
pub fn position(seed: &str, device_id: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(b"ota-rollout-v1\0");
    h.update(seed.as_bytes());
    h.update(b"\0");
    h.update(device_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The modulo bias of 2^64 mod 10_000 is below 1e-15: irrelevant.
    (u64::from_be_bytes(first) % u64::from(POSITION_SCALE)) as u32
}

impl<'de> Deserialize<'de> for RolloutPlan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            seed: String,
            waves: Vec<Wave>,
        }
        let raw = Raw::deserialize(d)?;
        RolloutPlan::new(raw.seed, raw.waves).map_err(serde::de::Error::custom)
    }
}

fn ser_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            serde::de::Error::custom(format!(
                "not_before {s:?} is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z): {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn plan() -> RolloutPlan {
        serde_json::from_value(json!({
            "seed": "5f0c2a9e41d7b3a8",
            "waves": [
                {"name": "canary", "groups": ["bench"], "not_before": "2026-12-01T00:00:00Z"},
                {"name": "early", "percent": 10, "not_before": "2026-12-02T00:00:00Z"},
                {"name": "all", "percent": 100, "not_before": "2026-12-04T00:00:00Z"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn position_is_stable_and_known() {
        // Pinned so agent, server and ota-repo (and other implementations) agree forever.
        assert_eq!(
            position("5f0c2a9e41d7b3a8", "device-1"),
            position("5f0c2a9e41d7b3a8", "device-1")
        );
        let p = position("5f0c2a9e41d7b3a8", "device-1");
        let mut h = Sha256::new();
        h.update(b"ota-rollout-v1\x005f0c2a9e41d7b3a8\x00device-1");
        let d = h.finalize();
        let expected = u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000;
        assert_eq!(u64::from(p), expected);
        assert_ne!(
            position("00000000", "device-1"),
            position("11111111", "device-1")
        );
    }

    #[test]
    fn positions_spread_evenly() {
        let n = 20_000;
        let below_10 = (0..n)
            .filter(|i| position("abcdef01", &format!("dev-{i}")) < 1_000)
            .count();
        // 10 % of 20k = 2000; a fair hash stays well within ±15 %.
        assert!((1_700..=2_300).contains(&below_10), "{below_10}");
    }

    #[test]
    fn groups_then_percent_then_nothing() {
        let p = plan();
        let bench = vec!["bench".to_string()];
        assert_eq!(p.wave_of("anything", &bench), Some(0));
        let in_early = (0..1000)
            .map(|i| format!("d{i}"))
            .find(|d| p.position(d) < 1000)
            .unwrap();
        let later = (0..1000)
            .map(|i| format!("d{i}"))
            .find(|d| p.position(d) >= 1000)
            .unwrap();
        assert_eq!(p.wave_of(&in_early, &[]), Some(1));
        assert_eq!(p.wave_of(&later, &[]), Some(2));

        let partial = RolloutPlan::new(
            "5f0c2a9e41d7b3a8".into(),
            vec![Wave {
                name: "early".into(),
                groups: vec![],
                percent: Some(10),
                not_before: t("2026-12-01T00:00:00Z"),
            }],
        )
        .unwrap();
        assert_eq!(partial.wave_of(&later, &[]), None);
        assert_eq!(
            partial.decide(&later, &[], t("2030-01-01T00:00:00Z")),
            WaveDecision::NotIncluded
        );
    }

    #[test]
    fn decide_follows_the_signed_times() {
        let p = plan();
        let bench = vec!["bench".to_string()];
        assert_eq!(
            p.decide("x", &bench, t("2026-11-30T23:59:59Z")),
            WaveDecision::NotYet {
                index: 0,
                wave: "canary".into(),
                opens: t("2026-12-01T00:00:00Z")
            }
        );
        assert_eq!(
            p.decide("x", &bench, t("2026-12-01T00:00:00Z")),
            WaveDecision::Open {
                index: 0,
                wave: "canary".into()
            }
        );
    }

    #[test]
    fn serializes_canonically_and_round_trips() {
        let p = plan();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["waves"][0]["not_before"], "2026-12-01T00:00:00Z");
        assert!(v["waves"][0].get("percent").is_none());
        let back: RolloutPlan = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn bad_plans_are_named() {
        let bad = |v: serde_json::Value| -> String {
            serde_json::from_value::<RolloutPlan>(v)
                .unwrap_err()
                .to_string()
        };
        let w = |name: &str, extra: serde_json::Value| {
            let mut o = json!({"name": name, "not_before": "2026-12-01T00:00:00Z"});
            for (k, v) in extra.as_object().unwrap() {
                o[k] = v.clone();
            }
            o
        };
        assert!(
            bad(json!({"seed": "XYZ", "waves": [w("a", json!({"percent": 5}))]})).contains("seed")
        );
        assert!(bad(json!({"seed": "abcdef01", "waves": []})).contains("1 to 32 waves"));
        assert!(bad(json!({"seed": "abcdef01", "waves": [w("a", json!({}))]})).contains("nobody"));
        assert!(
            bad(json!({"seed": "abcdef01", "waves": [w("a", json!({"percent": 0}))]}))
                .contains("1 to 100")
        );
        assert!(
            bad(json!({"seed": "abcdef01", "waves": [w("a", json!({"percent": 101}))]}))
                .contains("1 to 100")
        );
        assert!(
            bad(json!({"seed": "abcdef01", "waves": [w("a/b", json!({"percent": 5}))]}))
                .contains("not an id")
        );
        assert!(
            bad(json!({"seed": "abcdef01", "waves": [w("a", json!({"groups": ["x y"]}))]}))
                .contains("group")
        );
        assert!(bad(json!({"seed": "abcdef01", "waves": [w("a", json!({"percent": 5})), w("a", json!({"percent": 6}))]})).contains("twice"));
        assert!(bad(json!({"seed": "abcdef01", "waves": [w("a", json!({"percent": 50})), w("b", json!({"percent": 10}))]})).contains("cumulative"));
        let mut late = w("a", json!({"percent": 5}));
        late["not_before"] = json!("2026-12-09T00:00:00Z");
        assert!(
            bad(json!({"seed": "abcdef01", "waves": [late, w("b", json!({"percent": 6}))]}))
                .contains("opens before")
        );
        let mut garbled = w("a", json!({"percent": 5}));
        garbled["not_before"] = json!("tomorrow");
        assert!(bad(json!({"seed": "abcdef01", "waves": [garbled]})).contains("RFC 3339"));
        assert!(bad(
            json!({"seed": "abcdef01", "waves": [w("a", json!({"percent": 5, "extra": 1}))]})
        )
        .contains("unknown field"));
    }
}
