//! Staged rollouts, the server's side: it can only HOLD a release back.
//!
//! The signed plan in the targets metadata (`ota_common::rollout`) alone
//! decides which device may install when; each device computes its own
//! wave. Before starting a staged release a device asks
//! `GET /api/v1/rollouts/{target}` and starts only on `active`. Here:
//! the holds (pause, resume, abort, automatic pause on failures), the fleet
//! status per wave, and the periodic check. See docs/ROLLOUTS.md.
//!
//! * [`catalog`]: the published releases and their plans.
//! * [`fleet`]: counts per wave, and the automatic-pause verdict.
//! * [`settings`]: `[rollouts]` in the config.
//! * the queries live in `crate::db::rollout_store`.

pub mod catalog;
pub mod fleet;
pub mod settings;

pub use settings::{RolloutSettings, RolloutsFile};

use crate::db::rollout_store::{RolloutRecord, StateChange};
use crate::db::{Db, DbError};
use crate::metrics::Metrics;
use crate::storage::Storage;
use catalog::{CatalogError, Release};
use chrono::{SecondsFormat, Utc};
use ota_common::wire::{
    RolloutHold, RolloutState, RolloutStatus, RolloutSummary, UpdateStatus, WaveSchedule,
};
use std::sync::Arc;

/// Longest reason an operator may give, in characters.
pub const MAX_REASON_CHARS: usize = 1024;
/// Who the automatic pause is, in the state and history.
pub const AUTOMATIC: &str = "automatic";

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What an operator asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "abort" => Some(Action::Abort),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
        }
    }
}

/// The rollout service: shared by the API, the CLI and the periodic job.
#[derive(Debug, Clone)]
pub struct Rollouts {
    pub db: Db,
    pub storage: Arc<Storage>,
    pub metrics: Arc<Metrics>,
    pub settings: RolloutSettings,
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Rollouts {
    /// The device's answer: one primary-key lookup, no metadata read.
    pub async fn hold(&self, target: &str) -> Result<RolloutHold, RolloutError> {
        let (state, reason) = self
            .db
            .rollout_hold(target)
            .await?
            .unwrap_or((RolloutState::Active, None));
        Ok(RolloutHold {
            target: target.to_owned(),
            state,
            reason,
        })
    }

    /// Every published release with its plan and hold.
    pub async fn list(&self) -> Result<Vec<RolloutSummary>, RolloutError> {
        let releases = catalog::published(&self.storage).await?;
        let records = self.db.rollout_records().await?;
        let now = Utc::now();
        Ok(releases
            .into_iter()
            .map(|r| {
                let record = records.iter().find(|x| x.target == r.target);
                RolloutSummary {
                    waves: r
                        .plan
                        .iter()
                        .flat_map(|p| p.waves.iter())
                        .map(|w| WaveSchedule {
                            name: w.name.clone(),
                            groups: w.groups.clone(),
                            percent: w.percent,
                            not_before: w.not_before.to_rfc3339_opts(SecondsFormat::Secs, true),
                            open: now >= w.not_before,
                        })
                        .collect(),
                    target: r.target,
                    version: r.version,
                    hardware_ids: r.hardware_ids,
                    state: record.map_or(RolloutState::Active, |x| x.state),
                    reason: record.and_then(|x| x.reason.clone()),
                    changed_by: record.map(|x| x.changed_by.clone()),
                    changed_at: record.map(|x| x.changed_at.clone()),
                }
            })
            .collect())
    }

    /// The fleet's progress through one release (published, or at least
    /// once held by the server).
    pub async fn status(&self, target: &str) -> Result<RolloutStatus, RolloutError> {
        let release = catalog::release(&self.storage, target).await?;
        let record = self.db.rollout_record(target).await?;
        if release.is_none() && record.is_none() {
            return Err(not_published(target));
        }
        let devices = self.db.fleet().await?;
        let reports = self.db.target_reports(target).await?;
        let (waves, problems) = fleet::fleet_status(
            release.as_ref(),
            &devices,
            &reports,
            Utc::now(),
            self.settings.stale_after,
        );
        Ok(RolloutStatus {
            target: target.to_owned(),
            version: release.as_ref().map(|r| r.version.clone()),
            hardware_ids: release.map(|r| r.hardware_ids).unwrap_or_default(),
            state: record.as_ref().map_or(RolloutState::Active, |x| x.state),
            reason: record.as_ref().and_then(|x| x.reason.clone()),
            changed_by: record.as_ref().map(|x| x.changed_by.clone()),
            changed_at: record.map(|x| x.changed_at),
            waves,
            problems,
            history: self.db.rollout_history(target).await?,
        })
    }

    /// Pause, resume or abort, on behalf of `by`. Repeating a change that
    /// is already in effect changes nothing and is not an error; resuming an
    /// aborted rollout is (abort is final).
    pub async fn change(
        &self,
        target: &str,
        action: Action,
        reason: Option<&str>,
        by: &str,
    ) -> Result<RolloutHold, RolloutError> {
        let reason = check_reason(action, reason)?;
        let release = catalog::release(&self.storage, target).await?;
        let record = self.db.rollout_record(target).await?;
        match (&release, &record) {
            (None, None) => return Err(not_published(target)),
            (Some(r), None) if r.plan.is_none() => {
                return Err(RolloutError::Conflict(format!(
                    "target {target:?} has no rollout plan: devices install it without asking \
                     the server, so it cannot be held back (publish a release with waves)"
                )))
            }
            _ => {}
        }
        use RolloutState::{Aborted, Active, Paused};
        let (from, to): (&[RolloutState], RolloutState) = match action {
            Action::Pause => (&[Active], Paused),
            Action::Resume => (&[Paused], Active),
            Action::Abort => (&[Active, Paused], Aborted),
        };
        let at = now_text();
        let change = StateChange {
            target,
            from,
            to,
            reason: reason.as_deref(),
            by,
            at: &at,
        };
        match self.db.change_rollout_state(&change).await? {
            None => {
                tracing::warn!(target, action = action.as_str(), by, reason = reason.as_deref().unwrap_or(""), state = %to, "rollout state changed");
                self.metrics.rollout_change(action.as_str());
                self.refresh_gauge().await;
            }
            Some(current) if current == to => {}
            Some(Aborted) => {
                return Err(RolloutError::Conflict(format!(
                    "rollout of {target:?} was aborted, and abort is final: it cannot be {}d \
                     (publish a fixed release instead)",
                    action.as_str()
                )))
            }
            Some(current) => {
                return Err(RolloutError::Conflict(format!(
                    "rollout of {target:?} is {current}; cannot {} it",
                    action.as_str()
                )))
            }
        }
        self.hold(target).await
    }

    /// Checks one release's failure rates and pauses it if a wave is over
    /// the limit; returns the reason when it paused. Only active rollouts
    /// of published releases with a plan are touched.
    pub async fn evaluate(&self, target: &str) -> Result<Option<String>, RolloutError> {
        // The hold first (one primary-key lookup): once a rollout is held,
        // the failure reports that keep coming read no metadata.
        let record = self.db.rollout_record(target).await?;
        if !is_active(record.as_ref()) {
            return Ok(None);
        }
        let Some(release) = catalog::release(&self.storage, target).await? else {
            return Ok(None);
        };
        let paused = self.evaluate_release(&release, record.as_ref()).await?;
        if paused.is_some() {
            self.refresh_gauge().await;
        }
        Ok(paused)
    }

    /// [`Self::evaluate`] for a release whose hold (`record`) is active.
    /// The caller refreshes the gauge.
    async fn evaluate_release(
        &self,
        release: &Release,
        record: Option<&RolloutRecord>,
    ) -> Result<Option<String>, RolloutError> {
        if release.plan.is_none() {
            return Ok(None);
        }
        let reports = self.db.target_reports(&release.target).await?;
        let Some(reason) = fleet::automatic_pause_reason(
            release.plan.as_ref(),
            &reports,
            self.settings.max_failure_rate,
            self.settings.min_devices,
            record.map(|r| r.changed_at.as_str()),
        ) else {
            return Ok(None);
        };
        let at = now_text();
        let change = StateChange {
            target: &release.target,
            from: &[RolloutState::Active],
            to: RolloutState::Paused,
            reason: Some(&reason),
            by: AUTOMATIC,
            at: &at,
        };
        // Another instance (or the other path) may have paused it first.
        if self.db.change_rollout_state(&change).await?.is_some() {
            return Ok(None);
        }
        tracing::warn!(target = %release.target, reason, "rollout paused automatically");
        self.metrics.rollout_automatic_pause();
        Ok(Some(reason))
    }

    /// After a device reported `status` about `target`: a failure may tip
    /// its wave over the limit. Errors are logged, never passed on (the
    /// report itself is recorded).
    pub async fn after_report(&self, target: Option<&str>, status: UpdateStatus) {
        let Some(target) = target else { return };
        if !matches!(status, UpdateStatus::Failed | UpdateStatus::RolledBack) {
            return;
        }
        if let Err(e) = self.evaluate(target).await {
            tracing::warn!(target, "checking the rollout after a failure report: {e}");
        }
    }

    /// One round of the periodic job: every active staged rollout, on one
    /// instance at a time (PostgreSQL advisory lock; the others skip).
    pub async fn check_all(&self) -> Result<usize, RolloutError> {
        let Some(lock) = self.db.try_lock_rollout_job().await? else {
            tracing::debug!("rollout check running on another instance; skipped");
            return Ok(0);
        };
        let result = async {
            let mut paused = 0;
            let records = self.db.rollout_records().await?;
            for release in catalog::published(&self.storage).await? {
                let record = records.iter().find(|r| r.target == release.target);
                if is_active(record) && self.evaluate_release(&release, record).await?.is_some() {
                    paused += 1;
                }
            }
            Ok(paused)
        }
        .await;
        lock.release().await;
        self.refresh_gauge().await;
        result
    }

    /// Runs [`Self::check_all`] every `check_interval` until aborted.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.settings.check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_error = String::new();
            loop {
                tick.tick().await;
                match self.check_all().await {
                    Ok(_) => last_error.clear(),
                    Err(e) => {
                        // Once per distinct problem, not at every tick.
                        let text = e.to_string();
                        if text != last_error {
                            tracing::error!("rollout check: {text}");
                            last_error = text;
                        }
                    }
                }
            }
        })
    }

    /// Sets the `ota_rollouts` gauge: published staged releases by state.
    async fn refresh_gauge(&self) {
        let counts = async {
            let releases = catalog::published(&self.storage).await?;
            let records = self.db.rollout_records().await?;
            let mut counts = [0u64; 3];
            for r in releases.iter().filter(|r| r.plan.is_some()) {
                let state = records
                    .iter()
                    .find(|x| x.target == r.target)
                    .map_or(RolloutState::Active, |x| x.state);
                let slot = match state {
                    RolloutState::Active => 0,
                    RolloutState::Paused => 1,
                    RolloutState::Aborted => 2,
                };
                counts[slot] += 1;
            }
            Ok::<_, RolloutError>(counts)
        }
        .await;
        match counts {
            Ok([active, paused, aborted]) => self.metrics.set_rollout_states(&[
                ("active", active),
                ("paused", paused),
                ("aborted", aborted),
            ]),
            Err(e) => tracing::debug!("rollout gauge not updated: {e}"),
        }
    }
}

/// A target without a stored hold is active.
fn is_active(record: Option<&RolloutRecord>) -> bool {
    record.is_none_or(|r| r.state == RolloutState::Active)
}

fn not_published(target: &str) -> RolloutError {
    RolloutError::NotFound(format!(
        "target {target:?} is not in the published targets metadata (delegated roles are not \
         read) and has never been held"
    ))
}

/// Pause and abort need a reason; every reason is one bounded line.
fn check_reason(action: Action, reason: Option<&str>) -> Result<Option<String>, RolloutError> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    let Some(reason) = reason else {
        if action == Action::Resume {
            return Ok(None);
        }
        return Err(RolloutError::Invalid(format!(
            "{} needs a reason (JSON body {{\"reason\": \"...\"}}, or --reason)",
            action.as_str()
        )));
    };
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(RolloutError::Invalid(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    if reason.chars().any(char::is_control) {
        return Err(RolloutError::Invalid(
            "reason contains control characters (it must be one line)".to_owned(),
        ));
    }
    Ok(Some(reason.to_owned()))
}
