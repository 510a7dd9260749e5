//! Staged rollouts on the release engineer's side: turning `--wave` specs
//! into the signed [`RolloutPlan`] a target carries in `custom.rollout`,
//! showing a plan (and where one device stands in it), and changing or
//! removing the plan of a published target with the targets key.
//!
//! A spec is `NAME=WHO@WHEN`: WHO is a comma list of group names and at
//! most one cumulative percentage (`10%`), WHEN is `+<n>m|h|d` after the
//! rollout start or an RFC 3339 time. Every rule of a plan is checked by
//! [`RolloutPlan::new`], the same code devices run on the signed plan, so
//! `ota-repo` can never sign a plan a device would reject.

use crate::add;
use crate::config::RepoConfig;
use crate::error::{RepoError, Result};
use crate::layout::Layout;
use crate::state::RepoState;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use chrono::{DateTime, SecondsFormat, Utc};
use ota_common::rollout::{PlanError, RolloutPlan, Wave, WaveDecision, POSITION_SCALE};
use ota_common::wire::{is_valid_id, ReleaseCustom};
use serde::Serialize;
use std::fmt::Write as _;
use tough::schema::Target;

/// The custom field of a target that holds its plan.
pub const CUSTOM_FIELD: &str = "rollout";

/// Hex digits of a generated seed (8 random bytes).
const SEED_BYTES: usize = 8;

/// Longest relative offset accepted (`+<n>m|h|d`): ten years keeps the
/// arithmetic far from overflow and is well past any real rollout.
const MAX_OFFSET_SECS: i64 = 10 * 366 * 86_400;

/// The rollout flags of `add` and `rollout set`, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct RolloutArgs {
    /// `NAME=WHO@WHEN`, in wave order.
    pub waves: Vec<String>,
    /// RFC 3339; relative WHENs count from here (default: now, to the second).
    pub start: Option<String>,
    /// 8 to 64 lowercase hex digits (default: random, or the plan's current seed).
    pub seed: Option<String>,
}

impl RolloutArgs {
    /// The plan these flags describe, or `None` without `--wave`.
    /// `keep_seed` is used when no `--rollout-seed` is given (so devices keep
    /// their positions when a plan is changed); otherwise a fresh random seed.
    pub fn plan(&self, keep_seed: Option<&str>, now: DateTime<Utc>) -> Result<Option<RolloutPlan>> {
        if self.waves.is_empty() {
            if self.start.is_some() || self.seed.is_some() {
                return Err(RepoError::InvalidArgument(
                    "--rollout-start and --rollout-seed need at least one --wave".to_owned(),
                ));
            }
            return Ok(None);
        }
        let start = match &self.start {
            Some(s) => parse_time(s).map_err(|detail| {
                RepoError::InvalidArgument(format!("--rollout-start {s:?}: {detail}"))
            })?,
            None => truncate_to_second(now),
        };
        let mut waves = Vec::with_capacity(self.waves.len());
        for spec in &self.waves {
            waves.push(parse_wave(spec, start)?);
        }
        let seed = match (&self.seed, keep_seed) {
            (Some(s), _) => s.trim().to_owned(),
            (None, Some(s)) => s.to_owned(),
            (None, None) => random_seed()?,
        };
        let names: Vec<String> = waves.iter().map(|w| w.name.clone()).collect();
        RolloutPlan::new(seed, waves)
            .map(Some)
            .map_err(|source| RepoError::RolloutPlan {
                spec: spec_at_fault(&source, &names, &self.waves),
                source,
            })
    }
}

/// The `--wave` spec a plan error is about (the later one for a
/// duplicate name), so the message points at what to fix.
fn spec_at_fault(e: &PlanError, names: &[String], specs: &[String]) -> Option<String> {
    let index = match e {
        PlanError::Name { index, .. } => Some(*index),
        PlanError::DuplicateName(n)
        | PlanError::Empty(n)
        | PlanError::Percent(n)
        | PlanError::TooManyGroups(n)
        | PlanError::TimeOrder(n)
        | PlanError::PercentOrder(n)
        | PlanError::Group { name: n, .. } => names.iter().rposition(|name| name == n),
        // Seed, wave count, and any rule added later: about no one spec.
        _ => None,
    };
    index.and_then(|i| specs.get(i)).cloned()
}

/// Parses one `--wave NAME=WHO@WHEN`. Name and group syntax are left to
/// [`RolloutPlan::new`], which names the wave at fault.
pub fn parse_wave(spec: &str, start: DateTime<Utc>) -> Result<Wave> {
    let bad = |detail: String| RepoError::InvalidWave {
        spec: spec.to_owned(),
        detail,
    };
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| bad("no '=' after the wave name".to_owned()))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(bad("the wave name is empty".to_owned()));
    }
    // WHEN never contains '@', so the last one separates it from WHO.
    let (who, when) = rest
        .rsplit_once('@')
        .ok_or_else(|| bad("no '@WHEN' (e.g. @+24h or @2026-12-01T08:00:00Z)".to_owned()))?;

    let mut groups = Vec::new();
    let mut percent = None;
    for item in who.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(bad(
                "an empty entry in WHO (expected group names and at most one N%)".to_owned(),
            ));
        }
        if let Some(number) = item.strip_suffix('%') {
            let p = number
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| {
                    bad(format!(
                        "{item:?} is not a whole percentage from 1% to 100%"
                    ))
                })?;
            if percent.replace(p).is_some() {
                return Err(bad("more than one percentage in one wave".to_owned()));
            }
        } else if groups.iter().any(|g| g == item) {
            return Err(bad(format!("group {item:?} is named twice")));
        } else {
            groups.push(item.to_owned());
        }
    }
    let not_before = parse_when(when.trim(), start).map_err(bad)?;
    Ok(Wave {
        name: name.to_owned(),
        groups,
        percent,
        not_before,
    })
}

fn parse_when(when: &str, start: DateTime<Utc>) -> std::result::Result<DateTime<Utc>, String> {
    let Some(offset) = when.strip_prefix('+') else {
        return parse_time(when).map_err(|e| format!("WHEN {when:?}: {e}"));
    };
    let invalid = || {
        format!(
            "WHEN {when:?} is not +<n>m, +<n>h or +<n>d (minutes, hours, days after --rollout-start)"
        )
    };
    let unit = offset.chars().last().ok_or_else(invalid)?;
    let number = &offset[..offset.len() - unit.len_utf8()];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let factor = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(invalid()),
    };
    let secs = number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|s| *s <= MAX_OFFSET_SECS)
        .ok_or_else(|| format!("WHEN {when:?} is more than ten years after the start"))?;
    start
        .checked_add_signed(chrono::TimeDelta::seconds(secs))
        .ok_or_else(invalid)
}

/// An RFC 3339 time, to the whole second (what the plan carries).
fn parse_time(s: &str) -> std::result::Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| truncate_to_second(t.with_timezone(&Utc)))
        .map_err(|e| format!("not an RFC 3339 time such as 2026-12-01T08:00:00Z ({e})"))
}

fn truncate_to_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// 16 random lowercase hex digits from the OS RNG.
pub fn random_seed() -> Result<String> {
    let mut bytes = [0u8; SEED_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RepoError::InvalidArgument("the OS random generator failed".to_owned()))?;
    Ok(hex::encode(bytes))
}

/// What the operator should hear about a plan that is valid but probably
/// not what was meant.
pub fn warnings(plan: &RolloutPlan) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(last) = plan.waves.last() {
        if last.percent != Some(100) {
            out.push(format!(
                "the last wave {:?} does not reach 100%: devices outside every wave never install this release",
                last.name
            ));
        }
    }
    out
}

/// The rollout plan signed into `target`, if any.
pub fn plan_of(name: &str, target: &Target) -> Result<Option<RolloutPlan>> {
    match target.custom.get(CUSTOM_FIELD) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            RepoError::Inconsistent(format!("target {name}: custom.rollout is invalid: {e}"))
        }),
    }
}

/// The target of that name, in top-level targets or the delegated role
/// that lists it.
fn find_target<'a>(state: &'a RepoState, name: &str) -> Result<&'a Target> {
    crate::delegated::locate(state, name)
        .map(|(_, t)| t)
        .ok_or_else(|| RepoError::UnknownTarget {
            name: name.to_owned(),
        })
}

/// A device to place in a plan (`rollout show --device-id`).
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub device_id: String,
    pub groups: Vec<String>,
}

/// `rollout show`: the plan of one target as of `now`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub target: String,
    /// `custom.version`, when the target has release fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub now: String,
    /// `null`: no plan, every compatible device may install at once.
    pub seed: Option<String>,
    pub waves: Vec<WaveView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaveView {
    pub name: String,
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    pub not_before: String,
    pub open: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    pub device_id: String,
    pub groups: Vec<String>,
    /// In `0..10000` (basis points); absent without a plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// The first wave that holds the device (absent: none does, or no plan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave_index: Option<usize>,
    /// Whether the signed plan lets it install at `now` (the server may
    /// still hold the rollout).
    pub may_install_now: bool,
    /// When its wave opens, if that is still ahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens: Option<String>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub async fn show(
    layout: &Layout,
    target_name: &str,
    device: Option<&DeviceQuery>,
    now: DateTime<Utc>,
) -> Result<PlanView> {
    let state = RepoState::load(layout).await?;
    let target = find_target(&state, target_name)?;
    let plan = plan_of(target_name, target)?;
    let version = target
        .custom
        .get("version")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let device = match device {
        None => None,
        Some(q) => Some(place(plan.as_ref(), q, now)?),
    };
    Ok(PlanView {
        target: target_name.to_owned(),
        version,
        now: rfc3339(now),
        seed: plan.as_ref().map(|p| p.seed.clone()),
        waves: plan
            .iter()
            .flat_map(|p| p.waves.iter())
            .map(|w| WaveView {
                name: w.name.clone(),
                groups: w.groups.clone(),
                percent: w.percent,
                not_before: rfc3339(w.not_before),
                open: now >= w.not_before,
            })
            .collect(),
        device,
    })
}

fn place(plan: Option<&RolloutPlan>, q: &DeviceQuery, now: DateTime<Utc>) -> Result<DeviceView> {
    if !is_valid_id(&q.device_id) {
        return Err(RepoError::InvalidArgument(format!(
            "--device-id {:?}: expected 1 to 128 characters of letters, digits, '.', '_', ':' or '-'",
            q.device_id
        )));
    }
    if let Some(g) = q.groups.iter().find(|g| !is_valid_id(g)) {
        return Err(RepoError::InvalidArgument(format!(
            "--groups: {g:?} is not a group id (letters, digits, '.', '_', ':' or '-')"
        )));
    }
    let mut view = DeviceView {
        device_id: q.device_id.clone(),
        groups: q.groups.clone(),
        position: None,
        wave: None,
        wave_index: None,
        may_install_now: true,
        opens: None,
    };
    let Some(plan) = plan else {
        return Ok(view);
    };
    view.position = Some(plan.position(&q.device_id));
    match plan.decide(&q.device_id, &q.groups, now) {
        WaveDecision::Open { index, wave } => {
            view.wave = Some(wave);
            view.wave_index = Some(index);
        }
        WaveDecision::NotYet { index, wave, opens } => {
            view.wave = Some(wave);
            view.wave_index = Some(index);
            view.may_install_now = false;
            view.opens = Some(rfc3339(opens));
        }
        WaveDecision::NotIncluded => view.may_install_now = false,
    }
    Ok(view)
}

impl PlanView {
    /// The human-readable form of `rollout show`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let version = self
            .version
            .as_deref()
            .map(|v| format!(" (version {v})"))
            .unwrap_or_default();
        let _ = writeln!(out, "target {}{version}", self.target);
        match &self.seed {
            None => {
                let _ = writeln!(
                    out,
                    "no rollout plan: every compatible device may install at once"
                );
            }
            Some(seed) => {
                let _ = writeln!(
                    out,
                    "rollout seed {seed}, {} wave(s); now {}",
                    self.waves.len(),
                    self.now
                );
                for (i, w) in self.waves.iter().enumerate() {
                    let mut who: Vec<String> =
                        w.groups.iter().map(|g| format!("group {g}")).collect();
                    if let Some(p) = w.percent {
                        who.push(format!("{p}% of the fleet"));
                    }
                    let _ = writeln!(
                        out,
                        "  {}. {}: {}; opens {} ({})",
                        i + 1,
                        w.name,
                        who.join(", "),
                        w.not_before,
                        if w.open { "open" } else { "not yet open" }
                    );
                }
            }
        }
        if let Some(d) = &self.device {
            let groups = if d.groups.is_empty() {
                "no groups".to_owned()
            } else {
                format!("groups {}", d.groups.join(","))
            };
            let _ = write!(out, "device {} ({groups}): ", d.device_id);
            match (d.position, &d.wave) {
                (None, _) => {
                    let _ = writeln!(out, "may install now (no rollout plan)");
                }
                (Some(pos), None) => {
                    let _ = writeln!(
                        out,
                        "position {pos} of {POSITION_SCALE} basis points; in no wave: never installs this release"
                    );
                }
                (Some(pos), Some(wave)) => {
                    let when = match &d.opens {
                        None => "may install now".to_owned(),
                        Some(t) => format!("may install from {t}"),
                    };
                    let _ = writeln!(
                        out,
                        "position {pos} of {POSITION_SCALE} basis points; wave {wave}; {when}"
                    );
                }
            }
        }
        out
    }
}

/// What `rollout set` / `rollout clear` did.
#[derive(Debug, Clone)]
pub enum Changed {
    /// New targets (this version), snapshot and timestamp were signed.
    Signed { targets_version: u64 },
    /// The target is listed by delegated role `role`: its `version` was
    /// signed (then snapshot and timestamp), or waits in a ceremony
    /// (`progress.pending`) when the role's keys are offline.
    SignedRole {
        role: String,
        version: u64,
        progress: crate::ceremony::Progress,
    },
    /// The target already had exactly this plan (or none): nothing signed.
    Unchanged,
}

/// `rollout set` (`Some(args)`) or `rollout clear` (`None`): replaces the
/// target's plan and signs new targets, snapshot and timestamp the way
/// `add` does. `set` keeps the current seed unless `--rollout-seed` is
/// given, so devices keep their positions when the schedule changes.
pub async fn change(
    layout: &Layout,
    target_name: &str,
    args: Option<&RolloutArgs>,
    now: DateTime<Utc>,
) -> Result<(Changed, Option<RolloutPlan>)> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let target = find_target(&state, target_name)?;
    let current = plan_of(target_name, target)?;
    let new_plan = match args {
        None => None,
        Some(a) => {
            if a.waves.is_empty() {
                return Err(RepoError::InvalidArgument(
                    "rollout set needs at least one --wave (use `rollout clear` to remove the plan)"
                        .to_owned(),
                ));
            }
            a.plan(current.as_ref().map(|p| p.seed.as_str()), now)?
        }
    };
    if new_plan == current {
        return Ok((Changed::Unchanged, new_plan));
    }
    // A target whose custom fields no longer parse would be dropped by
    // every device: check before signing.
    let mut updated = target.clone();
    match &new_plan {
        Some(p) => {
            let value = serde_json::to_value(p).map_err(|e| {
                RepoError::Inconsistent(format!("serializing the rollout plan: {e}"))
            })?;
            updated.custom.insert(CUSTOM_FIELD.to_owned(), value);
        }
        None => {
            updated.custom.remove(CUSTOM_FIELD);
        }
    }
    let custom = serde_json::Value::Object(updated.custom.clone().into_iter().collect());
    serde_json::from_value::<ReleaseCustom>(custom).map_err(|e| {
        RepoError::Inconsistent(format!(
            "target {target_name}: its release fields do not parse with the new plan: {e}"
        ))
    })?;

    if let Some((Some(role), _)) = crate::delegated::locate(&state, target_name) {
        // Signed by the role that lists it (and only it: top-level targets
        // is untouched), then snapshot and timestamp.
        let role = role.name.clone();
        let (version, progress) =
            crate::delegation::replace_target(layout, &role, target_name, updated).await?;
        return Ok((
            Changed::SignedRole {
                role,
                version,
                progress,
            },
            new_plan,
        ));
    }
    let expires = add::signing_expiries(layout, &config, &state, jiff::Timestamp::now())?;
    let mut targets = state.targets.signed.clone();
    for (name, t) in targets.targets.iter_mut() {
        if name.raw() == target_name {
            *t = updated.clone();
        }
    }
    let targets_version = add::sign_targets(layout, &config, &state, targets, expires).await?;
    Ok((Changed::Signed { targets_version }, new_plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .expect("t")
            .with_timezone(&Utc)
    }

    #[test]
    fn parses_groups_percent_and_both_time_forms() {
        let w = parse_wave("canary=bench@+0h", start()).expect("canary");
        assert_eq!(w.groups, vec!["bench".to_owned()]);
        assert_eq!(w.percent, None);
        assert_eq!(w.not_before, start());
        let w = parse_wave("early=10%@+24h", start()).expect("early");
        assert_eq!(w.percent, Some(10));
        assert_eq!(rfc3339(w.not_before), "2026-11-30T10:00:00Z");
        let w = parse_wave("all=100%@+3d", start()).expect("all");
        assert_eq!(rfc3339(w.not_before), "2026-12-02T10:00:00Z");
        let w = parse_wave("m=5%@+90m", start()).expect("m");
        assert_eq!(rfc3339(w.not_before), "2026-11-29T11:30:00Z");
        let w = parse_wave("lab=lab-a,lab-b,5%@2026-12-01T08:00:00Z", start()).expect("lab");
        assert_eq!(w.groups, vec!["lab-a".to_owned(), "lab-b".to_owned()]);
        assert_eq!(w.percent, Some(5));
        assert_eq!(rfc3339(w.not_before), "2026-12-01T08:00:00Z");
        let w = parse_wave("tz=1%@2026-12-01T09:00:00.75+01:00", start()).expect("tz");
        assert_eq!(rfc3339(w.not_before), "2026-12-01T08:00:00Z");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| parse_wave(s, start()).expect_err(s).to_string();
        assert!(err("early10%@+1h").contains("no '='"));
        assert!(err("=10%@+1h").contains("name is empty"));
        assert!(err("early=10%").contains("no '@WHEN'"));
        assert!(err("early=0%@+1h").contains("1% to 100%"));
        assert!(err("early=101%@+1h").contains("1% to 100%"));
        assert!(err("early=2.5%@+1h").contains("1% to 100%"));
        assert!(err("early=5%,10%@+1h").contains("more than one percentage"));
        assert!(err("early=a,,b@+1h").contains("empty entry"));
        assert!(err("early=a,a@+1h").contains("named twice"));
        assert!(err("early=5%@+1w").contains("+<n>m"));
        assert!(err("early=5%@+h").contains("+<n>m"));
        assert!(err("early=5%@+99999999999999d").contains("ten years"));
        assert!(err("early=5%@tomorrow").contains("RFC 3339"));
        assert!(err("early=5%@tomorrow").contains("early=5%@tomorrow"));
    }

    #[test]
    fn plan_rules_come_from_the_shared_validator() {
        let args = |waves: &[&str]| RolloutArgs {
            waves: waves.iter().map(|s| s.to_string()).collect(),
            start: Some("2026-11-29T10:00:00Z".to_owned()),
            seed: Some("abcdef01".to_owned()),
        };
        let e = args(&["a=50%@+1h", "b=10%@+2h"])
            .plan(None, start())
            .expect_err("order")
            .to_string();
        assert!(e.contains("cumulative"), "{e}");
        let e = args(&["a=5%@+2h", "b=10%@+1h"])
            .plan(None, start())
            .expect_err("time")
            .to_string();
        assert!(e.contains("opens before"), "{e}");
        let e = args(&["a b=5%@+1h"])
            .plan(None, start())
            .expect_err("name")
            .to_string();
        assert!(e.contains("not an id"), "{e}");
        let p = args(&["a=5%@+1h"])
            .plan(None, start())
            .expect("ok")
            .expect("plan");
        assert_eq!(p.seed, "abcdef01");
        assert_eq!(warnings(&p).len(), 1);
    }

    #[test]
    fn seeds_are_kept_or_fresh() {
        let mut a = RolloutArgs {
            waves: vec!["all=100%@+0h".to_owned()],
            ..RolloutArgs::default()
        };
        let kept = a.plan(Some("0123abcd"), start()).expect("kept").expect("p");
        assert_eq!(kept.seed, "0123abcd");
        let fresh = a.plan(None, start()).expect("fresh").expect("p");
        assert_eq!(fresh.seed.len(), 16);
        assert_ne!(fresh.seed, random_seed().expect("seed"));
        assert_eq!(fresh.waves[0].not_before, start());
        assert!(warnings(&fresh).is_empty());
        a.seed = Some("NOTHEX".to_owned());
        assert!(a.plan(None, start()).is_err());
        let none = RolloutArgs {
            seed: Some("abcdef01".to_owned()),
            ..RolloutArgs::default()
        };
        assert!(none.plan(None, start()).is_err());
    }
}
