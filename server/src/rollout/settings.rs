//! `[rollouts]` in the server config: when the server pauses a staged
//! rollout by itself, and when a device counts as not seen.

use std::time::Duration;

pub const DEFAULT_MAX_FAILURE_RATE: f64 = 0.2;
pub const DEFAULT_MIN_DEVICES: u64 = 5;
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(86_400);
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// The resolved settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutSettings {
    /// A wave whose failure rate exceeds this fraction (0..=1) is paused.
    pub max_failure_rate: f64,
    /// No verdict on a wave until this many devices reported about the release.
    pub min_devices: u64,
    /// A device whose last report is older counts as `not_seen`.
    pub stale_after: Duration,
    /// How often the background job checks every active rollout.
    pub check_interval: Duration,
}

// The rate is checked to be a finite number in 0..=1 (never NaN), so
// equality is total and `Config` can stay `Eq`.
impl Eq for RolloutSettings {}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            max_failure_rate: DEFAULT_MAX_FAILURE_RATE,
            min_devices: DEFAULT_MIN_DEVICES,
            stale_after: DEFAULT_STALE_AFTER,
            check_interval: DEFAULT_CHECK_INTERVAL,
        }
    }
}

/// `[rollouts]` as written in the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutsFile {
    max_failure_rate: Option<f64>,
    min_devices: Option<u64>,
    stale_after_secs: Option<u64>,
    check_interval_secs: Option<u64>,
}

impl RolloutsFile {
    pub fn resolve(self) -> Result<RolloutSettings, String> {
        let max_failure_rate = self.max_failure_rate.unwrap_or(DEFAULT_MAX_FAILURE_RATE);
        if !(0.0..=1.0).contains(&max_failure_rate) {
            return Err(format!(
                "max_failure_rate must be a fraction from 0 to 1 (0.2 = 20 %), got {max_failure_rate}"
            ));
        }
        let min_devices = self.min_devices.unwrap_or(DEFAULT_MIN_DEVICES);
        if min_devices == 0 {
            return Err("min_devices must be at least 1".to_owned());
        }
        let secs = |name: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(format!("{name} must be at least 1")),
            Some(s) if s > 100 * 366 * 86_400 => Err(format!("{name} is over a hundred years")),
            Some(s) => Ok(Duration::from_secs(s)),
        };
        Ok(RolloutSettings {
            max_failure_rate,
            min_devices,
            stale_after: secs(
                "stale_after_secs",
                self.stale_after_secs,
                DEFAULT_STALE_AFTER,
            )?,
            check_interval: secs(
                "check_interval_secs",
                self.check_interval_secs,
                DEFAULT_CHECK_INTERVAL,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(
            RolloutsFile::default().resolve(),
            Ok(RolloutSettings::default())
        );
        let bad = |f: RolloutsFile| f.resolve().expect_err("must be refused");
        assert!(bad(RolloutsFile {
            max_failure_rate: Some(1.5),
            ..Default::default()
        })
        .contains("max_failure_rate"));
        assert!(bad(RolloutsFile {
            max_failure_rate: Some(f64::NAN),
            ..Default::default()
        })
        .contains("max_failure_rate"));
        assert!(bad(RolloutsFile {
            min_devices: Some(0),
            ..Default::default()
        })
        .contains("min_devices"));
        assert!(bad(RolloutsFile {
            stale_after_secs: Some(0),
            ..Default::default()
        })
        .contains("stale_after_secs"));
    }
}
