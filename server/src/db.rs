//! The device database (SQLite through sqlx). SQL is kept portable so the
//! same migrations and queries can later run on PostgreSQL: `$N` parameters,
//! `ON CONFLICT` upserts, TEXT/BIGINT columns.

use ota_common::wire::{DeviceEvent, DeviceRecord, DeviceReport, UpdateStatus};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database holds an unknown status {0:?}")]
    BadStatus(String),
}

/// A pool of connections to `<data>/ota.db`.
#[derive(Debug, Clone)]
pub struct Db {
    pool: SqlitePool,
}

impl Db {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // WAL: readers (admin listings) never block the writer (reports).
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Db { pool })
    }

    /// Records a report: the device's latest state and one more event.
    /// `at` is RFC 3339 UTC.
    pub async fn record_report(
        &self,
        device_id: &str,
        report: &DeviceReport,
        at: &str,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO devices (device_id, hardware_id, installed_version, booted_slot, status, \
             target, target_version, reason, last_seen) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (device_id) DO UPDATE SET \
             hardware_id = excluded.hardware_id, installed_version = excluded.installed_version, \
             booted_slot = excluded.booted_slot, status = excluded.status, target = excluded.target, \
             target_version = excluded.target_version, reason = excluded.reason, \
             last_seen = excluded.last_seen",
        )
        .bind(device_id)
        .bind(&report.hardware_id)
        .bind(&report.installed_version)
        .bind(&report.booted_slot)
        .bind(report.status.as_str())
        .bind(&report.target)
        .bind(&report.target_version)
        .bind(&report.reason)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO device_events (device_id, seq, hardware_id, installed_version, booted_slot, \
             status, target, target_version, reason, at) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9 \
             FROM device_events WHERE device_id = $1",
        )
        .bind(device_id)
        .bind(&report.hardware_id)
        .bind(&report.installed_version)
        .bind(&report.booted_slot)
        .bind(report.status.as_str())
        .bind(&report.target)
        .bind(&report.target_version)
        .bind(&report.reason)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every device's latest state, by device id.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT device_id, hardware_id, installed_version, booted_slot, status, target, \
             target_version, reason, last_seen FROM devices ORDER BY device_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceRecord {
                    device_id: r.try_get("device_id")?,
                    hardware_id: r.try_get("hardware_id")?,
                    installed_version: r.try_get("installed_version")?,
                    booted_slot: r.try_get("booted_slot")?,
                    status: parse_status(r.try_get("status")?)?,
                    target: r.try_get("target")?,
                    target_version: r.try_get("target_version")?,
                    reason: r.try_get("reason")?,
                    last_seen: r.try_get("last_seen")?,
                })
            })
            .collect()
    }

    /// Whether a device has ever reported.
    pub async fn device_exists(&self, device_id: &str) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT 1 FROM devices WHERE device_id = $1")
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// A device's reports, oldest first.
    pub async fn events(&self, device_id: &str) -> Result<Vec<DeviceEvent>, DbError> {
        let rows = sqlx::query(
            "SELECT device_id, installed_version, booted_slot, status, target, target_version, \
             reason, at FROM device_events WHERE device_id = $1 ORDER BY seq",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceEvent {
                    device_id: r.try_get("device_id")?,
                    installed_version: r.try_get("installed_version")?,
                    booted_slot: r.try_get("booted_slot")?,
                    status: parse_status(r.try_get("status")?)?,
                    target: r.try_get("target")?,
                    target_version: r.try_get("target_version")?,
                    reason: r.try_get("reason")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn parse_status(text: String) -> Result<UpdateStatus, DbError> {
    serde_json::from_value(serde_json::Value::String(text.clone()))
        .map_err(|_| DbError::BadStatus(text))
}
