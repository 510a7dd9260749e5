//! Rollout queries (`migrations/0003_rollouts.sql`). Declared as a child of
//! `crate::db` (by a `#[path]` there) so the queries use its pool and its
//! `with_pool!` macro without widening what `db` exposes; callers reach them
//! as methods of [`Db`].

use super::{parse_status, Db, DbError, Pool};
use ota_common::wire::{RolloutChangeRecord, RolloutState, UpdateStatus};
use sqlx::{Postgres, Row, Transaction};

/// Arbitrary but fixed: the PostgreSQL advisory lock key under which one
/// instance at a time runs the periodic rollout check.
const ROLLOUT_JOB_LOCK_KEY: i64 = 0x6f74_615f_726f_6c6c; // "ota_roll"

/// The stored hold on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    pub target: String,
    pub state: RolloutState,
    pub reason: Option<String>,
    pub changed_by: String,
    pub changed_at: String,
}

/// What one device last said about one target, with what places it in a wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetReport {
    pub device_id: String,
    pub status: UpdateStatus,
    pub reason: Option<String>,
    pub at: String,
    /// From the device's latest report (any target).
    pub groups: Vec<String>,
}

/// What the fleet status needs of every device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDevice {
    pub device_id: String,
    pub hardware_id: String,
    pub installed_version: String,
    pub groups: Vec<String>,
    pub last_seen: String,
}

/// A requested state change and the states it may start from.
#[derive(Debug, Clone)]
pub struct StateChange<'a> {
    pub target: &'a str,
    pub from: &'a [RolloutState],
    pub to: RolloutState,
    pub reason: Option<&'a str>,
    pub by: &'a str,
    pub at: &'a str,
}

/// Held by the instance running the periodic check; see [`Db::try_lock_rollout_job`].
#[derive(Debug)]
pub struct RolloutJobLock {
    tx: Option<Transaction<'static, Postgres>>,
}

impl RolloutJobLock {
    pub async fn release(self) {
        if let Some(tx) = self.tx {
            if let Err(e) = tx.rollback().await {
                tracing::warn!("releasing the rollout job lock: {e}");
            }
        }
    }
}

fn parse_state(text: &str) -> Result<RolloutState, DbError> {
    match text {
        "active" => Ok(RolloutState::Active),
        "paused" => Ok(RolloutState::Paused),
        "aborted" => Ok(RolloutState::Aborted),
        other => Err(DbError::BadStatus(other.to_owned())),
    }
}

/// Groups are stored as a JSON array; anything unreadable counts as none
/// (the column only ever holds what [`encode_groups`] wrote).
pub fn decode_groups(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub fn encode_groups(groups: &[String]) -> String {
    serde_json::to_string(groups).unwrap_or_else(|_| "[]".to_owned())
}

impl Db {
    /// The hold on `target` (`None`: never changed, i.e. active). One
    /// primary-key lookup: this answers every device's question.
    pub async fn rollout_hold(
        &self,
        target: &str,
    ) -> Result<Option<(RolloutState, Option<String>)>, DbError> {
        with_pool!(self, p => {
            let row = sqlx::query("SELECT state, reason FROM rollouts WHERE target = $1")
                .bind(target)
                .fetch_optional(p)
                .await?;
            row.map(|r| {
                let state: String = r.try_get("state")?;
                Ok((parse_state(&state)?, r.try_get("reason")?))
            })
            .transpose()
        })
    }

    /// Every stored hold, by target.
    pub async fn rollout_records(&self) -> Result<Vec<RolloutRecord>, DbError> {
        with_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT target, state, reason, changed_by, changed_at FROM rollouts ORDER BY target",
            )
            .fetch_all(p)
            .await?;
            rows.iter().map(record_of).collect()
        })
    }

    /// The stored hold on one target.
    pub async fn rollout_record(&self, target: &str) -> Result<Option<RolloutRecord>, DbError> {
        with_pool!(self, p => {
            let row = sqlx::query(
                "SELECT target, state, reason, changed_by, changed_at FROM rollouts WHERE target = $1",
            )
            .bind(target)
            .fetch_optional(p)
            .await?;
            row.as_ref().map(record_of).transpose()
        })
    }

    /// A target's state changes, oldest first.
    pub async fn rollout_history(&self, target: &str) -> Result<Vec<RolloutChangeRecord>, DbError> {
        with_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT state, reason, changed_by, at FROM rollout_events WHERE target = $1 ORDER BY seq",
            )
            .bind(target)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    let state: String = r.try_get("state")?;
                    Ok(RolloutChangeRecord {
                        state: parse_state(&state)?,
                        reason: r.try_get("reason")?,
                        by: r.try_get("changed_by")?,
                        at: r.try_get("at")?,
                    })
                })
                .collect()
        })
    }

    /// Applies `change` if the target is in one of `change.from` (a target
    /// without a row is active) and records the event, atomically. Returns
    /// `None` when applied, else the state that stopped it. The conditional
    /// write locks the row, so two instances (or the report path and the
    /// periodic job) cannot both apply a change from the same state.
    pub async fn change_rollout_state(
        &self,
        change: &StateChange<'_>,
    ) -> Result<Option<RolloutState>, DbError> {
        let from = |i: usize| {
            change
                .from
                .get(i)
                .or(change.from.first())
                .map_or("none", |s| s.as_str())
        };
        let may_insert = change.from.contains(&RolloutState::Active);
        let write = if may_insert {
            "INSERT INTO rollouts (target, state, reason, changed_by, changed_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (target) DO UPDATE SET \
             state = excluded.state, reason = excluded.reason, \
             changed_by = excluded.changed_by, changed_at = excluded.changed_at \
             WHERE rollouts.state = $6 OR rollouts.state = $7"
        } else {
            "UPDATE rollouts SET state = $2, reason = $3, changed_by = $4, changed_at = $5 \
             WHERE target = $1 AND (state = $6 OR state = $7)"
        };
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let applied = sqlx::query(write)
                .bind(change.target)
                .bind(change.to.as_str())
                .bind(change.reason)
                .bind(change.by)
                .bind(change.at)
                .bind(from(0))
                .bind(from(1))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if !applied {
                let row = sqlx::query("SELECT state FROM rollouts WHERE target = $1")
                    .bind(change.target)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.rollback().await?;
                let current = match row {
                    Some(r) => parse_state(&r.try_get::<String, _>("state")?)?,
                    None => RolloutState::Active,
                };
                return Ok(Some(current));
            }
            sqlx::query(
                "INSERT INTO rollout_events (target, seq, state, reason, changed_by, at) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 \
                 FROM rollout_events WHERE target = $1",
            )
            .bind(change.target)
            .bind(change.to.as_str())
            .bind(change.reason)
            .bind(change.by)
            .bind(change.at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(None)
    }

    /// Each device's latest report about `target`, with its groups.
    pub async fn target_reports(&self, target: &str) -> Result<Vec<TargetReport>, DbError> {
        with_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT e.device_id, e.status, e.reason, e.at, d.rollout_groups \
                 FROM device_events e \
                 JOIN (SELECT device_id, MAX(seq) AS seq FROM device_events \
                       WHERE target = $1 GROUP BY device_id) m \
                   ON e.device_id = m.device_id AND e.seq = m.seq \
                 JOIN devices d ON d.device_id = e.device_id \
                 ORDER BY e.device_id",
            )
            .bind(target)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    let groups: String = r.try_get("rollout_groups")?;
                    Ok(TargetReport {
                        device_id: r.try_get("device_id")?,
                        status: parse_status(r.try_get("status")?)?,
                        reason: r.try_get("reason")?,
                        at: r.try_get("at")?,
                        groups: decode_groups(&groups),
                    })
                })
                .collect()
        })
    }

    /// Every device, with what places it in a wave.
    pub async fn fleet(&self) -> Result<Vec<FleetDevice>, DbError> {
        with_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT device_id, hardware_id, installed_version, rollout_groups, last_seen \
                 FROM devices ORDER BY device_id",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    let groups: String = r.try_get("rollout_groups")?;
                    Ok(FleetDevice {
                        device_id: r.try_get("device_id")?,
                        hardware_id: r.try_get("hardware_id")?,
                        installed_version: r.try_get("installed_version")?,
                        groups: decode_groups(&groups),
                        last_seen: r.try_get("last_seen")?,
                    })
                })
                .collect()
        })
    }

    /// PostgreSQL: takes the rollout job's advisory lock if no other
    /// instance holds it (`None`: another instance is checking now, skip
    /// this round). SQLite: one instance, always granted.
    pub async fn try_lock_rollout_job(&self) -> Result<Option<RolloutJobLock>, DbError> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(Some(RolloutJobLock { tx: None })),
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let got: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS got")
                    .bind(ROLLOUT_JOB_LOCK_KEY)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("got")?;
                if got {
                    Ok(Some(RolloutJobLock { tx: Some(tx) }))
                } else {
                    tx.rollback().await?;
                    Ok(None)
                }
            }
        }
    }
}

fn record_of<R: Row>(r: &R) -> Result<RolloutRecord, DbError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'c> String: sqlx::Decode<'c, R::Database> + sqlx::Type<R::Database>,
    for<'c> Option<String>: sqlx::Decode<'c, R::Database> + sqlx::Type<R::Database>,
{
    let state: String = r.try_get("state")?;
    Ok(RolloutRecord {
        target: r.try_get("target")?,
        state: parse_state(&state)?,
        reason: r.try_get("reason")?,
        changed_by: r.try_get("changed_by")?,
        changed_at: r.try_get("changed_at")?,
    })
}
