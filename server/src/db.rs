//! The device database: SQLite (the default, one instance) or PostgreSQL
//! (several instances behind a load balancer sharing one database).
//!
//! Why an enum over the two pools rather than `sqlx::Any`: `Any` only speaks
//! what every driver shares, so the SQLite tuning (WAL, busy timeout,
//! synchronous=NORMAL) and PostgreSQL's advisory locks would be out of reach
//! or go through untyped escapes, and every value would pass through `Any`'s
//! conversion layer. With the enum each query is written once (the SQL is
//! portable: `$N` parameters, `ON CONFLICT` upserts, TEXT/BIGINT columns) and
//! compiled for each driver by [`with_pool!`], and the one migration set in
//! `migrations/` runs on both.

use ota_common::wire::{DeviceEvent, DeviceRecord, DeviceReport, UpdateStatus};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Row, SqlitePool, Transaction};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database holds an unknown status {0:?}")]
    BadStatus(String),
    #[error("invalid database_url {0}")]
    BadUrl(String),
}

/// Where the database lives, parsed from `database_url`. Its `Debug` and
/// `Display` never show a password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH` (or `sqlite:PATH`); relative paths are relative to the
    /// working directory, as for every other path in the config.
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`, kept verbatim for sqlx.
    Postgres(String),
}

impl DatabaseUrl {
    /// The default: `<data_dir>/ota.db`.
    pub fn default_for(data_dir: &Path) -> DatabaseUrl {
        DatabaseUrl::Sqlite(data_dir.join("ota.db"))
    }

    /// Parses a URL; the error names the problem, never the password.
    pub fn parse(text: &str) -> Result<DatabaseUrl, DbError> {
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            // Query parameters would be silently dropped: refuse them.
            if path.is_empty() || path.contains('?') {
                return Err(DbError::BadUrl(format!(
                    "{text:?}: expected sqlite://PATH without parameters"
                )));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            PgConnectOptions::from_str(text)
                .map_err(|e| DbError::BadUrl(format!("{}: {e}", redact(text))))?;
            return Ok(DatabaseUrl::Postgres(text.to_owned()));
        }
        let scheme = text.split_once(':').map_or("", |(s, _)| s);
        Err(DbError::BadUrl(format!(
            "with scheme {scheme:?}: expected sqlite://PATH or postgres://USER@HOST/DB"
        )))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable url>".to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// Arbitrary but fixed: every instance sharing the database serializes its
/// publication commits on this PostgreSQL advisory lock key.
const PUBLICATION_LOCK_KEY: i64 = 0x6f74_615f_7075_626c; // "ota_publ"

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool is in use; the body is
/// compiled once per driver, so the queries are written only once.
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match &$db.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// A pool of connections to the device database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: Pool,
}

/// Held while a publication commits; see [`Db::lock_publications`].
#[derive(Debug)]
pub struct PublicationLock {
    /// PostgreSQL: the transaction holding `pg_advisory_xact_lock`.
    tx: Option<Transaction<'static, Postgres>>,
}

impl PublicationLock {
    /// Releases the lock. Dropping it releases it too (the transaction rolls
    /// back when its connection is next used), this is just prompt.
    pub async fn release(self) {
        if let Some(tx) = self.tx {
            if let Err(e) = tx.rollback().await {
                tracing::warn!("releasing the publication lock: {e}");
            }
        }
    }
}

impl Db {
    /// Opens (creating an SQLite file if needed) the database and applies
    /// pending migrations.
    pub async fn open(url: &DatabaseUrl) -> Result<Db, DbError> {
        let pool = match url {
            DatabaseUrl::Sqlite(path) => {
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
                Pool::Sqlite(pool)
            }
            DatabaseUrl::Postgres(text) => {
                let options = PgConnectOptions::from_str(text)
                    .map_err(|e| DbError::BadUrl(format!("{url}: {e}")))?;
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    // A database that does not answer fails a request (and
                    // /readyz) in seconds, not after sqlx's 30 s default.
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?;
                Pool::Postgres(pool)
            }
        };
        let db = Db { pool };
        let migrator = sqlx::migrate!("./migrations");
        with_pool!(db, p => migrator.run(p).await?);
        Ok(db)
    }

    /// Whether this is PostgreSQL (shared by several instances).
    pub fn is_shared(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Serializes publication commits across every instance sharing a
    /// PostgreSQL database. On SQLite there is one instance, and its
    /// in-process lock (in `Storage`) is enough: this returns at once.
    pub async fn lock_publications(&self) -> Result<PublicationLock, DbError> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(PublicationLock { tx: None }),
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Transaction-scoped: released on commit, rollback, or when
                // the connection dies with the instance holding it.
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PUBLICATION_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                Ok(PublicationLock { tx: Some(tx) })
            }
        }
    }

    /// A round trip to the database (readiness).
    pub async fn ping(&self) -> Result<(), DbError> {
        // Reads a real table: proves the schema is there, not just a socket.
        with_pool!(self, p => {
            sqlx::query("SELECT COUNT(*) FROM devices WHERE device_id = ''")
                .fetch_one(p)
                .await?;
        });
        Ok(())
    }

    /// Records a report: the device's latest state and one more event.
    /// `at` is RFC 3339 UTC.
    pub async fn record_report(
        &self,
        device_id: &str,
        report: &DeviceReport,
        at: &str,
    ) -> Result<(), DbError> {
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            // The upsert locks the device's row, so concurrent reports of one
            // device (on PostgreSQL, maybe via two instances) take turns and
            // each sees the other's seq.
            sqlx::query(
                "INSERT INTO devices (device_id, hardware_id, installed_version, booted_slot, status, \
                 target, target_version, reason, last_seen, rollout_groups) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (device_id) DO UPDATE SET \
                 hardware_id = excluded.hardware_id, installed_version = excluded.installed_version, \
                 booted_slot = excluded.booted_slot, status = excluded.status, target = excluded.target, \
                 target_version = excluded.target_version, reason = excluded.reason, \
                 last_seen = excluded.last_seen, rollout_groups = excluded.rollout_groups",
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
            .bind(crate::db::rollout_store::encode_groups(&report.groups))
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
        });
        Ok(())
    }

    /// Every device's latest state, by device id.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, DbError> {
        with_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT device_id, hardware_id, installed_version, booted_slot, status, target, \
                 target_version, reason, last_seen FROM devices ORDER BY device_id",
            )
            .fetch_all(p)
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
        })
    }

    /// One device's latest state, if it ever reported.
    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, DbError> {
        with_pool!(self, p => {
            let row = sqlx::query(
                "SELECT device_id, hardware_id, installed_version, booted_slot, status, target, \
                 target_version, reason, last_seen FROM devices WHERE device_id = $1",
            )
            .bind(device_id)
            .fetch_optional(p)
            .await?;
            row.map(|r| {
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
            .transpose()
        })
    }

    /// Whether a device has ever reported.
    pub async fn device_exists(&self, device_id: &str) -> Result<bool, DbError> {
        with_pool!(self, p => {
            let row = sqlx::query("SELECT 1 FROM devices WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(p)
                .await?;
            Ok(row.is_some())
        })
    }

    /// A device's reports, oldest first.
    pub async fn events(&self, device_id: &str) -> Result<Vec<DeviceEvent>, DbError> {
        with_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT device_id, installed_version, booted_slot, status, target, target_version, \
                 reason, at FROM device_events WHERE device_id = $1 ORDER BY seq",
            )
            .bind(device_id)
            .fetch_all(p)
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
        })
    }

    pub async fn close(&self) {
        with_pool!(self, p => p.close().await);
    }
}

/// An admin token as listed (never the secret, never its hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdminTokenInfo {
    pub name: String,
    pub role: String,
    pub created_at: String,
    pub revoked: bool,
}

/// A live admin token found by the hash of what a client presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenMatch {
    pub name: String,
    pub role: String,
    pub sha256: String,
}

/// What became of a report that carried a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    Recorded,
    /// Not newer than `last`, the highest accepted: nothing was recorded.
    Replayed {
        last: i64,
    },
}

/// Credentials (admin and device tokens) and the report replay guard; see
/// `migrations/0002_credentials.sql` and `crate::auth`.
impl Db {
    /// Stores a new admin token; `false` if the name is taken.
    pub async fn create_admin_token(
        &self,
        id: &str,
        name: &str,
        role: &str,
        sha256: &str,
        at: &str,
    ) -> Result<bool, DbError> {
        with_pool!(self, p => {
            let done = sqlx::query(
                "INSERT INTO admin_tokens (id, name, role, sha256, created_at, revoked) \
                 VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (name) DO NOTHING",
            )
            .bind(id)
            .bind(name)
            .bind(role)
            .bind(sha256)
            .bind(at)
            .execute(p)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Every admin token, by name.
    pub async fn admin_tokens(&self) -> Result<Vec<AdminTokenInfo>, DbError> {
        with_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT name, role, created_at, revoked FROM admin_tokens ORDER BY name",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(AdminTokenInfo {
                        name: r.try_get("name")?,
                        role: r.try_get("role")?,
                        created_at: r.try_get("created_at")?,
                        revoked: r.try_get::<i64, _>("revoked")? != 0,
                    })
                })
                .collect()
        })
    }

    /// Revokes the admin token `name`; `false` if there is none.
    pub async fn revoke_admin_token(&self, name: &str) -> Result<bool, DbError> {
        with_pool!(self, p => {
            let done = sqlx::query("UPDATE admin_tokens SET revoked = 1 WHERE name = $1")
                .bind(name)
                .execute(p)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// The unrevoked admin token whose SHA-256 (hex) is `sha256`.
    pub async fn admin_token_by_hash(
        &self,
        sha256: &str,
    ) -> Result<Option<AdminTokenMatch>, DbError> {
        with_pool!(self, p => {
            let row = sqlx::query(
                "SELECT name, role, sha256 FROM admin_tokens WHERE sha256 = $1 AND revoked = 0",
            )
            .bind(sha256)
            .fetch_optional(p)
            .await?;
            row.map(|r| {
                Ok(AdminTokenMatch {
                    name: r.try_get("name")?,
                    role: r.try_get("role")?,
                    sha256: r.try_get("sha256")?,
                })
            })
            .transpose()
        })
    }

    /// Sets (or replaces: rotation) the token of a device.
    pub async fn set_device_token(
        &self,
        device_id: &str,
        sha256: &str,
        at: &str,
    ) -> Result<(), DbError> {
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO device_tokens (device_id, sha256, created_at, revoked) \
                 VALUES ($1, $2, $3, 0) ON CONFLICT (device_id) DO UPDATE SET \
                 sha256 = excluded.sha256, created_at = excluded.created_at, revoked = 0",
            )
            .bind(device_id)
            .bind(sha256)
            .bind(at)
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// Revokes a device's token; `false` if it has none.
    pub async fn revoke_device_token(&self, device_id: &str) -> Result<bool, DbError> {
        with_pool!(self, p => {
            let done = sqlx::query("UPDATE device_tokens SET revoked = 1 WHERE device_id = $1")
                .bind(device_id)
                .execute(p)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// `(device_id, sha256)` of the unrevoked device token with this SHA-256 (hex).
    pub async fn device_by_token_hash(
        &self,
        sha256: &str,
    ) -> Result<Option<(String, String)>, DbError> {
        with_pool!(self, p => {
            let row = sqlx::query(
                "SELECT device_id, sha256 FROM device_tokens WHERE sha256 = $1 AND revoked = 0",
            )
            .bind(sha256)
            .fetch_optional(p)
            .await?;
            row.map(|r| Ok((r.try_get("device_id")?, r.try_get("sha256")?)))
                .transpose()
        })
    }

    /// [`Self::record_report`], refusing a replay: with `seq`, the report is
    /// recorded only if `seq` is above the highest accepted from this device
    /// (checked and advanced atomically, before the report is written).
    pub async fn record_report_seq(
        &self,
        device_id: &str,
        report: &DeviceReport,
        at: &str,
        seq: Option<i64>,
    ) -> Result<ReportOutcome, DbError> {
        let Some(seq) = seq else {
            self.record_report(device_id, report, at).await?;
            return Ok(ReportOutcome::Recorded);
        };
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            // The conditional upsert locks the row: two copies of one report
            // racing (even through two instances) cannot both advance it.
            let advanced = sqlx::query(
                "INSERT INTO device_report_seq (device_id, seq) VALUES ($1, $2) \
                 ON CONFLICT (device_id) DO UPDATE SET seq = excluded.seq \
                 WHERE device_report_seq.seq < excluded.seq",
            )
            .bind(device_id)
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !advanced {
                let last: i64 = sqlx::query("SELECT seq FROM device_report_seq WHERE device_id = $1")
                    .bind(device_id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("seq")?;
                tx.rollback().await?;
                return Ok(ReportOutcome::Replayed { last });
            }
            tx.commit().await?;
        });
        // The report itself: a failure here leaves the sequence advanced,
        // so the device's retry needs a new number (it sends one per attempt).
        self.record_report(device_id, report, at).await?;
        Ok(ReportOutcome::Recorded)
    }
}

// Rollout queries live with the rollout code but need this module's pool
// and `with_pool!`, hence a child module at that path.
#[path = "rollout/store.rs"]
pub mod rollout_store;

fn parse_status(text: String) -> Result<UpdateStatus, DbError> {
    serde_json::from_value(serde_json::Value::String(text.clone()))
        .map_err(|_| DbError::BadStatus(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_passwords_never_shown() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/ota/ota.db").expect("sqlite"),
            DatabaseUrl::Sqlite(PathBuf::from("/var/lib/ota/ota.db"))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:rel.db").expect("sqlite"),
            DatabaseUrl::Sqlite(PathBuf::from("rel.db"))
        );
        let pg = DatabaseUrl::parse("postgres://ota:s3cret@db.example/ota").expect("pg");
        assert_eq!(pg.to_string(), "postgres://ota:***@db.example/ota");
        assert!(!format!("{pg:?}").contains("s3cret"));
        for bad in [
            "mysql://x/y",
            "sqlite://",
            "sqlite://a.db?mode=ro",
            "ota.db",
        ] {
            let err = DatabaseUrl::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("database_url"), "{err}");
        }
        let err = DatabaseUrl::parse("postgres://u:s3cret@h:notaport/db")
            .expect_err("bad port")
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
