//! The fleet's progress through one release, wave by wave, and the
//! automatic-pause verdict. Pure functions of what the database holds: each
//! device is placed with `RolloutPlan::wave_of`, the very function the
//! device runs, on the groups of its latest report.

use super::catalog::Release;
use crate::db::rollout_store::{FleetDevice, TargetReport};
use chrono::{DateTime, SecondsFormat, Utc};
use ota_common::rollout::RolloutPlan;
use ota_common::wire::{RolloutProblem, UpdateStatus, WaveStatus};
use std::collections::HashMap;
use std::time::Duration;

/// The bucket of devices no wave holds.
pub const OUTSIDE: &str = "(outside any wave)";
/// The one implicit wave of a release without a plan.
pub const IMPLICIT_WAVE: &str = "all";

/// The wave buckets of a release (without the outside bucket).
fn wave_buckets(plan: Option<&RolloutPlan>, now: DateTime<Utc>) -> Vec<WaveStatus> {
    match plan {
        Some(plan) => plan
            .waves
            .iter()
            .map(|w| WaveStatus {
                name: w.name.clone(),
                not_before: Some(w.not_before.to_rfc3339_opts(SecondsFormat::Secs, true)),
                open: now >= w.not_before,
                ..WaveStatus::default()
            })
            .collect(),
        None => vec![WaveStatus {
            name: IMPLICIT_WAVE.to_owned(),
            open: true,
            ..WaveStatus::default()
        }],
    }
}

/// The index of the device's wave; a release without a plan has one wave
/// holding everybody.
pub fn wave_index(plan: Option<&RolloutPlan>, device_id: &str, groups: &[String]) -> Option<usize> {
    match plan {
        Some(plan) => plan.wave_of(device_id, groups),
        None => Some(0),
    }
}

/// Counts per wave (the outside bucket last) and the failed devices.
/// `release` is `None` for a target no longer published: then only devices
/// that reported about it are counted.
pub fn fleet_status(
    release: Option<&Release>,
    devices: &[FleetDevice],
    reports: &[TargetReport],
    now: DateTime<Utc>,
    stale_after: Duration,
) -> (Vec<WaveStatus>, Vec<RolloutProblem>) {
    let plan = release.and_then(|r| r.plan.as_ref());
    let mut buckets = wave_buckets(plan, now);
    buckets.push(WaveStatus {
        name: OUTSIDE.to_owned(),
        ..WaveStatus::default()
    });
    let outside = buckets.len() - 1;
    let by_device: HashMap<&str, &TargetReport> =
        reports.iter().map(|r| (r.device_id.as_str(), r)).collect();
    let stale_after = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    let mut problems = Vec::new();
    for device in devices {
        let report = by_device.get(device.device_id.as_str()).copied();
        let compatible = release.is_some_and(|r| r.hardware_ids.contains(&device.hardware_id));
        if report.is_none() && !compatible {
            continue;
        }
        let index = wave_index(plan, &device.device_id, &device.groups).unwrap_or(outside);
        let stale = DateTime::parse_from_rfc3339(&device.last_seen)
            .map(|t| now - t.with_timezone(&Utc) > stale_after)
            .unwrap_or(true);
        let bucket = &mut buckets[index];
        bucket.total += 1;
        let running = release.is_some_and(|r| r.version == device.installed_version);
        let in_progress = match report.map(|r| r.status) {
            None | Some(UpdateStatus::Idle) if running => {
                bucket.committed += 1;
                continue;
            }
            None | Some(UpdateStatus::Idle) => &mut bucket.pending,
            Some(UpdateStatus::Downloading) => &mut bucket.downloading,
            Some(UpdateStatus::Installed | UpdateStatus::Rebooting) => &mut bucket.installed,
            Some(UpdateStatus::Committed) => {
                bucket.committed += 1;
                continue;
            }
            Some(status @ (UpdateStatus::RolledBack | UpdateStatus::Failed)) => {
                if status == UpdateStatus::Failed {
                    bucket.failed += 1;
                } else {
                    bucket.rolled_back += 1;
                }
                if let Some(r) = report {
                    problems.push(RolloutProblem {
                        device_id: device.device_id.clone(),
                        wave: (index != outside).then(|| bucket.name.clone()),
                        status,
                        reason: r.reason.clone(),
                        at: r.at.clone(),
                    });
                }
                continue;
            }
        };
        // Terminal outcomes stay where they are; an unfinished device that
        // went silent is counted apart, it may never come back.
        if stale {
            bucket.not_seen += 1;
        } else {
            *in_progress += 1;
        }
    }
    (buckets, problems)
}

/// Why the rollout should be paused, if a wave's failure rate is over the
/// limit: `failed or rolled back / reported anything about the release`,
/// counted only once `min_devices` devices of the wave reported. With
/// `since` (when an operator last resumed it, RFC 3339 UTC), a wave also
/// needs a failure reported after that: the operator resumed knowing the
/// figures of then, so only a new failure reopens the question.
pub fn automatic_pause_reason(
    plan: Option<&RolloutPlan>,
    reports: &[TargetReport],
    max_failure_rate: f64,
    min_devices: u64,
    since: Option<&str>,
) -> Option<String> {
    let names: Vec<&str> = match plan {
        Some(p) => p.waves.iter().map(|w| w.name.as_str()).collect(),
        None => vec![IMPLICIT_WAVE],
    };
    let mut started = vec![0u64; names.len()];
    let mut failed = vec![0u64; names.len()];
    let since = since.map(|t| DateTime::parse_from_rfc3339(t).ok());
    let mut fresh = vec![since.is_none(); names.len()];
    for r in reports {
        let Some(i) = wave_index(plan, &r.device_id, &r.groups) else {
            continue;
        };
        started[i] += 1;
        if matches!(r.status, UpdateStatus::Failed | UpdateStatus::RolledBack) {
            failed[i] += 1;
            // An unreadable time counts as new: pausing is the safe side.
            let newer = match (&since, DateTime::parse_from_rfc3339(&r.at)) {
                (Some(Some(since)), Ok(at)) => at > *since,
                _ => true,
            };
            if newer {
                fresh[i] = true;
            }
        }
    }
    names.iter().enumerate().find_map(|(i, name)| {
        let (f, n) = (failed[i], started[i]);
        let over =
            fresh[i] && n >= min_devices && n > 0 && (f as f64) > max_failure_rate * (n as f64);
        over.then(|| {
            format!(
                "automatic: wave {name:?}: {f} of {n} devices failed or rolled back ({}% > {}%)",
                rate_percent(f as f64 / n as f64, max_failure_rate),
                percent(max_failure_rate)
            )
        })
    })
}

/// A fraction as a percentage with at most one decimal (`0.125` → `12.5`).
fn percent(fraction: f64) -> String {
    let tenths = (fraction * 1000.0).round() / 10.0;
    if tenths.fract() == 0.0 {
        format!("{tenths:.0}")
    } else {
        format!("{tenths:.1}")
    }
}

/// The observed rate in whole percent (`0.375` → `38`), unless rounding
/// would make it look no higher than the limit (`20.4` against `20`).
fn rate_percent(rate: f64, limit: f64) -> String {
    let whole = (rate * 100.0).round();
    if whole > (limit * 100.0) {
        format!("{whole:.0}")
    } else {
        percent(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan() -> RolloutPlan {
        serde_json::from_value(json!({
            "seed": "5f0c2a9e41d7b3a8",
            "waves": [
                {"name": "canary", "groups": ["bench"], "not_before": "2026-01-01T00:00:00Z"},
                {"name": "all", "percent": 100, "not_before": "2099-01-01T00:00:00Z"}
            ]
        }))
        .expect("plan")
    }

    fn report(id: &str, status: UpdateStatus, canary: bool) -> TargetReport {
        TargetReport {
            device_id: id.to_owned(),
            status,
            reason: Some("boom".to_owned()),
            at: "2026-11-29T00:00:00Z".to_owned(),
            groups: if canary {
                vec!["bench".to_owned()]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn verdict_needs_min_devices_and_a_rate_over_the_limit() {
        let p = plan();
        let mut reports: Vec<TargetReport> = (0..3)
            .map(|i| report(&format!("c{i}"), UpdateStatus::Failed, true))
            .collect();
        // 3 of 3 failed, but fewer than 5 started: no verdict.
        assert_eq!(
            automatic_pause_reason(Some(&p), &reports, 0.2, 5, None),
            None
        );
        for i in 3..8 {
            reports.push(report(&format!("c{i}"), UpdateStatus::Committed, true));
        }
        assert_eq!(
            automatic_pause_reason(Some(&p), &reports, 0.2, 5, None).as_deref(),
            Some("automatic: wave \"canary\": 3 of 8 devices failed or rolled back (38% > 20%)")
        );
        // After a resume, only a newer failure counts.
        assert_eq!(
            automatic_pause_reason(Some(&p), &reports, 0.2, 5, Some("2026-11-29T00:00:00.000Z")),
            None
        );
        assert!(automatic_pause_reason(
            Some(&p),
            &reports,
            0.2,
            5,
            Some("2026-11-28T00:00:00.000Z")
        )
        .is_some());
        // Exactly at the limit is not over it.
        assert_eq!(
            automatic_pause_reason(Some(&p), &reports, 0.375, 5, None),
            None
        );
    }

    #[test]
    fn percentages_read_well() {
        assert_eq!(percent(0.2), "20");
        assert_eq!(percent(0.125), "12.5");
        assert_eq!(percent(0.05), "5");
        assert_eq!(rate_percent(0.375, 0.2), "38");
        assert_eq!(rate_percent(0.204, 0.2), "20.4");
    }

    #[test]
    fn devices_land_in_one_bucket_each() {
        let p = plan();
        let release = Release {
            target: "fw.img".into(),
            version: "2.0.0".into(),
            hardware_ids: vec!["hw".into()],
            plan: Some(p),
            length: 4,
            hashes: Default::default(),
        };
        let now = Utc::now();
        let fresh = now.to_rfc3339_opts(SecondsFormat::Secs, true);
        let dev = |id: &str, hw: &str, v: &str, canary: bool, seen: &str| FleetDevice {
            device_id: id.into(),
            hardware_id: hw.into(),
            installed_version: v.into(),
            groups: if canary { vec!["bench".into()] } else { vec![] },
            last_seen: seen.into(),
        };
        let devices = vec![
            dev("a", "hw", "1.0.0", true, &fresh),
            dev("b", "hw", "1.0.0", true, &fresh),
            dev("c", "hw", "2.0.0", true, &fresh),
            dev("d", "hw", "1.0.0", true, "2000-01-01T00:00:00Z"),
            dev("e", "other", "1.0.0", true, &fresh),
            dev("f", "hw", "1.0.0", false, &fresh),
        ];
        let reports = vec![report("b", UpdateStatus::RolledBack, true)];
        let (waves, problems) = fleet_status(
            Some(&release),
            &devices,
            &reports,
            now,
            Duration::from_secs(60),
        );
        let canary = &waves[0];
        assert_eq!(
            (
                canary.total,
                canary.pending,
                canary.rolled_back,
                canary.committed,
                canary.not_seen
            ),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(waves[1].total, 1);
        assert_eq!(waves[2].name, OUTSIDE);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].wave.as_deref(), Some("canary"));
    }
}
