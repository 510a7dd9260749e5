//! `[online_signing]` in the server config: which online keys, how long
//! what they sign stays valid, and how early it is renewed.
//!
//! ```toml
//! [online_signing]
//! key = "pkcs11:token=ota-online;object=timestamp?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/ota-server/token-pin"
//! timestamp_expiry = "1d"
//! resign_before = "6h"
//! # Optional: the server also renews snapshot before it expires.
//! snapshot_key = "pkcs11:token=ota-online;object=snapshot?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/ota-server/token-pin"
//! snapshot_expiry = "7d"
//! # Optional: a hash-chained log of every online signature, in ota-repo's
//! # audit log format (audit.jsonl + audit.head in this directory).
//! audit_dir = "/var/lib/ota-server/online-audit"
//! ```
//!
//! Keys are written as `ota-repo` writes them in repo.json (the same parser):
//! a PKCS#8 PEM file path, or an RFC 7512 `pkcs11:` URI whose PIN comes from
//! `pin-source=file:PATH` or env `OTA_PKCS11_PIN` (`pin-value` is refused).

use ota_signing::key_ref::KeyRef;
use std::path::PathBuf;
use std::time::Duration;

/// Default lifetime of a re-signed timestamp.
pub const DEFAULT_TIMESTAMP_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a re-signed snapshot.
pub const DEFAULT_SNAPSHOT_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default margin: re-sign when the published metadata expires within this.
pub const DEFAULT_RESIGN_BEFORE: Duration = Duration::from_secs(6 * 3600);

/// The resolved `[online_signing]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineSigning {
    /// The timestamp role's online key.
    pub key: KeyRef,
    pub timestamp_expiry: Duration,
    /// Re-sign what expires within this (timestamp and snapshot alike).
    pub resign_before: Duration,
    /// `None`: snapshot stays offline (signed by `ota-repo` only).
    pub snapshot: Option<SnapshotSigning>,
    /// Where every online signature is recorded (`audit.jsonl`, the format
    /// of `ota-repo`'s audit log); `None`: in the server log only.
    pub audit_dir: Option<PathBuf>,
}

/// The snapshot role's online key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSigning {
    pub key: KeyRef,
    pub expiry: Duration,
}

impl OnlineSigning {
    /// Timestamp only, with the default lifetimes.
    pub fn timestamp_only(key: KeyRef) -> OnlineSigning {
        OnlineSigning {
            key,
            timestamp_expiry: DEFAULT_TIMESTAMP_EXPIRY,
            resign_before: DEFAULT_RESIGN_BEFORE,
            snapshot: None,
            audit_dir: None,
        }
    }
}

/// `[online_signing]` as written in the config file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineSigningFile {
    pub(crate) key: String,
    pub(crate) timestamp_expiry: Option<String>,
    pub(crate) resign_before: Option<String>,
    pub(crate) snapshot_key: Option<String>,
    pub(crate) snapshot_expiry: Option<String>,
    pub(crate) audit_dir: Option<PathBuf>,
}

impl OnlineSigningFile {
    pub fn resolve(self) -> Result<OnlineSigning, String> {
        let key: KeyRef = self.key.parse().map_err(|e| format!("key: {e}"))?;
        let duration = |name: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(text) => parse_duration(&text).map_err(|e| format!("{name}: {e}")),
        };
        let timestamp_expiry = duration(
            "timestamp_expiry",
            self.timestamp_expiry,
            DEFAULT_TIMESTAMP_EXPIRY,
        )?;
        let resign_before = duration("resign_before", self.resign_before, DEFAULT_RESIGN_BEFORE)?;
        let margin_fits = |name: &str, expiry: Duration| {
            if resign_before >= expiry {
                Err(format!(
                    "resign_before ({}s) must be shorter than {name} ({}s), \
                     or every check would re-sign",
                    resign_before.as_secs(),
                    expiry.as_secs()
                ))
            } else {
                Ok(())
            }
        };
        margin_fits("timestamp_expiry", timestamp_expiry)?;
        let snapshot = match (self.snapshot_key, self.snapshot_expiry) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err("snapshot_expiry is set but snapshot_key is not".to_owned());
            }
            (Some(text), expiry) => {
                let key: KeyRef = text.parse().map_err(|e| format!("snapshot_key: {e}"))?;
                let expiry = duration("snapshot_expiry", expiry, DEFAULT_SNAPSHOT_EXPIRY)?;
                margin_fits("snapshot_expiry", expiry)?;
                Some(SnapshotSigning { key, expiry })
            }
        };
        if self
            .audit_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err("audit_dir is empty".to_owned());
        }
        Ok(OnlineSigning {
            key,
            timestamp_expiry,
            resign_before,
            snapshot,
            audit_dir: self.audit_dir,
        })
    }
}

/// `90s`, `30m`, `12h`, `1d`, `2w`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("invalid duration {text:?}: expected e.g. 90s, 30m, 12h, 1d, 2w");
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(invalid()),
    };
    // A hundred years is past anything meaningful and far from overflow.
    let secs = n
        .checked_mul(factor)
        .filter(|s| (1..=100 * 366 * 86_400).contains(s))
        .ok_or_else(invalid)?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21_600)));
        for bad in ["", "s", "0s", "5", "1y", "-1h", "99999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    fn file(key: &str) -> OnlineSigningFile {
        OnlineSigningFile {
            key: key.to_owned(),
            timestamp_expiry: None,
            resign_before: None,
            snapshot_key: None,
            snapshot_expiry: None,
            audit_dir: None,
        }
    }

    #[test]
    fn settings_are_checked() {
        let ok = file("/k.pem").resolve().expect("defaults");
        assert_eq!(ok.timestamp_expiry, DEFAULT_TIMESTAMP_EXPIRY);
        assert_eq!(ok.snapshot, None);
        let token = "pkcs11:token=online;object=ts?module-path=/m.so&pin-source=file:/run/pin";
        let ok = file(token).resolve().expect("token key");
        assert!(matches!(ok.key, KeyRef::Pkcs11(_)));
        for (bad, expected) in [
            (
                "pkcs11:token=a;object=b?module-path=/m.so&pin-value=1234",
                "pin-value is refused",
            ),
            ("pkcs11:token=x;object=y", "module-path"),
            ("pkcs11:token=x?module-path=/m.so", "object=LABEL"),
            ("", "empty key reference"),
        ] {
            let err = file(bad).resolve().expect_err(bad);
            assert!(err.contains(expected), "{err}");
        }
        let mut f = file("/k.pem");
        f.timestamp_expiry = Some("1h".to_owned());
        f.resign_before = Some("2h".to_owned());
        assert!(f.resolve().expect_err("margin").contains("resign_before"));
    }

    #[test]
    fn snapshot_settings() {
        let mut f = file("/ts.pem");
        f.snapshot_key = Some("/snap.pem".to_owned());
        let s = f.resolve().expect("snapshot").snapshot.expect("some");
        assert_eq!(s.expiry, DEFAULT_SNAPSHOT_EXPIRY);
        let mut f = file("/ts.pem");
        f.snapshot_expiry = Some("3d".to_owned());
        assert!(f.resolve().expect_err("no key").contains("snapshot_key"));
        let mut f = file("/ts.pem");
        f.snapshot_key = Some("/snap.pem".to_owned());
        f.snapshot_expiry = Some("1h".to_owned());
        assert!(f.resolve().expect_err("margin").contains("snapshot_expiry"));
    }
}
