//! The signing audit log: one JSON line per signature made, in
//! `REPO/audit.jsonl`, hash-chained so that editing, removing, inserting or
//! reordering an entry is detected by `ota-repo audit verify`.
//!
//! Each entry carries `seq` (1, 2, ...) and `prev`, the SHA-256 of the
//! previous line's bytes (64 zeros for the first). `audit.head` holds the
//! count and the hash of the last line, so a change to (or removal of) the
//! last entries is caught too. Lines are appended with `O_APPEND` and
//! `sync_data` before the signed metadata is written: a signature without
//! its log entry cannot reach a device.

use crate::error::{Result, SigningError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LOG_FILE: &str = "audit.jsonl";
pub const HEAD_FILE: &str = "audit.head";
pub const OPERATOR_ENV: &str = "OTA_OPERATOR";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What was signed, by whom, with which key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    /// UTC, RFC 3339.
    pub time: String,
    pub operator: String,
    /// `sign` (a signature made here), `merge` (a ceremony signature
    /// accepted), `detached-sign` (a signature file made for a ceremony).
    pub action: String,
    pub role: String,
    pub version: u64,
    /// SHA-256 of the canonical bytes that were signed.
    pub sha256: String,
    pub keyid: String,
    pub key_location: String,
    pub prev: String,
}

/// The fields of an entry the caller chooses.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub action: &'a str,
    pub role: &'a str,
    pub version: u64,
    pub signed_bytes: &'a [u8],
    pub keyid: &'a str,
    pub key_location: &'a str,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    entries: u64,
    last: String,
}

/// An audit log in a directory, with the operator name resolved once.
#[derive(Debug, Clone)]
pub struct AuditLog {
    dir: PathBuf,
    operator: String,
    /// The log file when it is not `dir/audit.jsonl` (a log handed to
    /// `audit verify --log`); its head is the same name ending in `.head`.
    file: Option<PathBuf>,
}

/// The operator: env `OTA_OPERATOR`, else the repository's `operator`
/// setting, else the login user name.
pub fn operator(configured: Option<&str>) -> String {
    let non_empty = |s: String| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    std::env::var(OPERATOR_ENV)
        .ok()
        .and_then(non_empty)
        .or_else(|| configured.map(str::to_owned).and_then(non_empty))
        .or_else(|| std::env::var("USER").ok().and_then(non_empty))
        .or_else(|| std::env::var("LOGNAME").ok().and_then(non_empty))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl AuditLog {
    pub fn new(dir: impl Into<PathBuf>, operator: String) -> Self {
        Self {
            dir: dir.into(),
            operator,
            file: None,
        }
    }

    /// Any log of this format by its file, e.g. the server's online-signing
    /// log (`<audit_dir>/audit.jsonl`), to verify it without a repository.
    /// The head is read beside it: `audit.jsonl` -> `audit.head` (any other
    /// `NAME.EXT` -> `NAME.head`, so a copied pair keeps working).
    pub fn at_file(file: impl Into<PathBuf>) -> Self {
        let file = file.into();
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        Self {
            dir,
            operator: String::new(),
            file: Some(file),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.file.clone().unwrap_or_else(|| self.dir.join(LOG_FILE))
    }

    fn head_path(&self) -> PathBuf {
        match &self.file {
            Some(f) => f.with_extension("head"),
            None => self.dir.join(HEAD_FILE),
        }
    }

    /// The entries of the log that parse, in order (a broken log is
    /// reported by [`AuditLog::verify`]); none when it does not exist.
    pub fn entries(&self) -> Vec<AuditEntry> {
        std::fs::read_to_string(self.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Appends one entry, durably. Refuses to extend a log whose head file
    /// does not match its last line (it was tampered with or is corrupt).
    pub fn record(&self, event: &Event<'_>) -> Result<AuditEntry> {
        let path = self.path();
        let head = self.read_head()?;
        let (seq, prev) = match &head {
            Some(h) => {
                let (count, last) = last_line(&path)?;
                if count != h.entries || last != h.last {
                    return Err(SigningError::Audit(format!(
                        "{} does not match {} (run `ota-repo audit verify`); refusing to append",
                        path.display(),
                        self.head_path().display()
                    )));
                }
                (h.entries + 1, h.last.clone())
            }
            None if path.exists() && std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 0 => {
                return Err(SigningError::Audit(format!(
                    "{} exists without {}; refusing to append",
                    path.display(),
                    self.head_path().display()
                )))
            }
            None => (1, GENESIS.to_owned()),
        };
        let entry = AuditEntry {
            seq,
            time: jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .map_err(|e| SigningError::Audit(e.to_string()))?
                .to_string(),
            operator: self.operator.clone(),
            action: event.action.to_owned(),
            role: event.role.to_owned(),
            version: event.version,
            sha256: sha256_hex(event.signed_bytes),
            keyid: event.keyid.to_owned(),
            key_location: event.key_location.to_owned(),
            prev,
        };
        let line = serde_json::to_string(&entry)
            .map_err(|e| SigningError::Audit(format!("serializing an entry: {e}")))?;
        ota_common::atomic::create_dir_all_durable(&self.dir)
            .map_err(SigningError::io(&self.dir))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(SigningError::io(&path))?;
        file.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(SigningError::io(&path))?;
        let new_head = Head {
            entries: seq,
            last: sha256_hex(line.as_bytes()),
        };
        let head_bytes = serde_json::to_vec(&new_head)
            .map_err(|e| SigningError::Audit(format!("serializing the head: {e}")))?;
        ota_common::atomic::write_atomic(&self.head_path(), &head_bytes)
            .map_err(SigningError::io(self.head_path()))?;
        Ok(entry)
    }

    fn read_head(&self) -> Result<Option<Head>> {
        let path = self.head_path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| SigningError::Audit(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SigningError::Io { path, source: e }),
        }
    }

    /// Checks the whole chain; `Ok(n)` is the number of entries.
    pub fn verify(&self) -> Result<u64> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(SigningError::Io { path, source: e }),
        };
        let broken = |line: usize, detail: String| {
            SigningError::Audit(format!("{} line {line}: {detail}", path.display()))
        };
        let mut prev_hash = GENESIS.to_owned();
        let mut count = 0u64;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let entry: AuditEntry = serde_json::from_str(line)
                .map_err(|e| broken(n, format!("not a valid entry ({e}): edited")))?;
            if entry.prev != prev_hash {
                return Err(broken(
                    n,
                    if n == 1 {
                        "`prev` is not the genesis value: entries before it were removed, or this entry was edited".to_owned()
                    } else {
                        format!("`prev` does not match the hash of line {}: line {} was edited, or an entry was removed, inserted or reordered before line {n}", n - 1, n - 1)
                    },
                ));
            }
            if entry.seq != n as u64 {
                return Err(broken(
                    n,
                    format!("entry number {} found where {n} was expected: entries were removed, inserted or reordered", entry.seq),
                ));
            }
            prev_hash = sha256_hex(line.as_bytes());
            count += 1;
        }
        match self.read_head()? {
            Some(h) if h.entries == count && h.last == prev_hash => Ok(count),
            Some(h) if h.entries != count => Err(SigningError::Audit(format!(
                "{} has {count} entries but {} records {}: entries were removed or appended at the end",
                path.display(),
                self.head_path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| HEAD_FILE.to_owned()),
                h.entries
            ))),
            Some(_) => Err(broken(
                count as usize,
                "does not match the recorded hash of the last entry: the last line was edited".to_owned(),
            )),
            None if count == 0 => Ok(0),
            None => Err(SigningError::Audit(format!(
                "{} is missing: the log cannot be checked to its end",
                self.head_path().display()
            ))),
        }
    }
}

/// Number of lines and the hash of the last one.
fn last_line(path: &Path) -> Result<(u64, String)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, GENESIS.to_owned())),
        Err(e) => {
            return Err(SigningError::Io {
                path: path.to_owned(),
                source: e,
            })
        }
    };
    let mut count = 0;
    let mut last = GENESIS.to_owned();
    for line in text.lines() {
        count += 1;
        last = sha256_hex(line.as_bytes());
    }
    Ok((count, last))
}
