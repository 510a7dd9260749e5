//! The metadata directory: trusted metadata as the exact bytes received,
//! replaced atomically, plus two small non-JSON state files (the
//! timestamp's ETag and the newest trusted time).

use super::TufError;
use crate::atomic;
use chrono::{DateTime, Utc};
use std::io;
use std::path::{Path, PathBuf};

const ETAG_FILE: &str = "timestamp.etag";
const TRUSTED_TIME_FILE: &str = "trusted-time";
/// Largest file read back from the metadata directory (the largest download limit is far below).
const MAX_STORED: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// `root.json`, `targets.json`, `<role>.json` with unsafe characters percent-encoded.
    pub(crate) fn role_path(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{}.json", encode_role_name(role)))
    }

    pub(crate) fn read_role(&self, role: &str) -> Result<Option<Vec<u8>>, TufError> {
        read_optional(&self.role_path(role))
    }

    pub(crate) fn write_role(&self, role: &str, bytes: &[u8]) -> Result<(), TufError> {
        let path = self.role_path(role);
        atomic::write_atomic(&path, bytes).map_err(|e| io_err(&path, e))
    }

    pub(crate) fn remove_role(&self, role: &str) -> Result<(), TufError> {
        remove_optional(&self.role_path(role))
    }

    pub(crate) fn read_etag(&self) -> Option<String> {
        let path = self.dir.join(ETAG_FILE);
        match read_optional(&path) {
            Ok(Some(b)) => String::from_utf8(b).ok().filter(|s| !s.is_empty()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("ignoring stored etag: {e}");
                None
            }
        }
    }

    pub(crate) fn write_etag(&self, etag: Option<&str>) -> Result<(), TufError> {
        let path = self.dir.join(ETAG_FILE);
        match etag {
            Some(e) => atomic::write_atomic(&path, e.as_bytes()).map_err(|e| io_err(&path, e)),
            None => remove_optional(&path),
        }
    }

    pub(crate) fn read_trusted_time(&self) -> Option<DateTime<Utc>> {
        let path = self.dir.join(TRUSTED_TIME_FILE);
        let bytes = match read_optional(&path) {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("ignoring stored trusted time: {e}");
                return None;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        match DateTime::parse_from_rfc3339(text.trim()) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable trusted time: {e}");
                None
            }
        }
    }

    pub(crate) fn write_trusted_time(&self, t: DateTime<Utc>) -> Result<(), TufError> {
        let path = self.dir.join(TRUSTED_TIME_FILE);
        let text = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        atomic::write_atomic(&path, text.as_bytes()).map_err(|e| io_err(&path, e))
    }
}

pub(crate) fn io_err(path: &Path, error: io::Error) -> TufError {
    TufError::Io {
        path: path.display().to_string(),
        error,
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, TufError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STORED)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err(path, e))?;
    Ok(Some(bytes))
}

fn remove_optional(path: &Path) -> Result<(), TufError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                atomic::fsync_dir(dir).map_err(|e| io_err(dir, e))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Percent-encodes every byte outside `[A-Za-z0-9_.-]` (and a leading `.`),
/// so a role name is always one plain file name: never a path, never hidden.
pub(crate) fn encode_role_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let safe = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if safe {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode_role_name;

    #[test]
    fn role_names_become_single_safe_file_names() {
        assert_eq!(encode_role_name("board-a"), "board-a");
        assert_eq!(encode_role_name("../etc/passwd"), "%2E.%2Fetc%2Fpasswd");
        assert_eq!(encode_role_name("a b%"), "a%20b%25");
    }
}
