//! The client workflow.

use super::{ClientOptions, Target, Transport, TufError};
use chrono::{DateTime, Utc};
use std::io::Read;
use std::path::Path;
use url::Url;

/// Whether a refresh changed the trusted metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    Unchanged,
    Updated,
}

/// Version and expiry of one trusted role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSummary {
    pub version: u64,
    pub expires: DateTime<Utc>,
}

/// Read-only view of the trusted top-level metadata (for status display).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedMetadata {
    pub root: RoleSummary,
    pub timestamp: Option<RoleSummary>,
    pub snapshot: Option<RoleSummary>,
    pub targets: Option<RoleSummary>,
    pub consistent_snapshot: bool,
    /// Newest time vouched for by verified metadata (see module docs).
    pub trusted_time: Option<DateTime<Utc>>,
}

/// A TUF client over a metadata directory and a transport.
#[derive(Debug)]
pub struct TufClient<T: Transport> {
    options: ClientOptions,
    transport: T,
    view: TrustedMetadata,
}

fn todo_err() -> TufError {
    TufError::Malformed {
        role: "client".into(),
        detail: "not yet implemented".into(),
    }
}

impl<T: Transport> TufClient<T> {
    pub fn init(metadata_dir: &Path, trusted_root: &[u8]) -> Result<(), TufError> {
        let _ = (metadata_dir, trusted_root);
        Err(todo_err())
    }

    pub fn open(
        metadata_dir: &Path,
        options: ClientOptions,
        transport: T,
    ) -> Result<Self, TufError> {
        let _ = (metadata_dir, options, transport);
        Err(todo_err())
    }

    pub fn refresh(&mut self) -> Result<RefreshOutcome, TufError> {
        Err(todo_err())
    }

    pub fn top_level_targets(&self) -> Result<Vec<Target>, TufError> {
        Err(todo_err())
    }

    pub fn find_target(&mut self, name: &str) -> Result<Option<Target>, TufError> {
        let _ = name;
        Err(todo_err())
    }

    pub fn target_url(&self, target: &Target) -> Result<Url, TufError> {
        let _ = (target, &self.options);
        Err(todo_err())
    }

    pub fn open_target(
        &self,
        target: &Target,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, TufError> {
        let _ = (target, offset, &self.transport);
        Err(todo_err())
    }

    pub fn download_target(&self, target: &Target, dest: &Path) -> Result<(), TufError> {
        let _ = (target, dest);
        Err(todo_err())
    }

    pub fn trusted(&self) -> &TrustedMetadata {
        &self.view
    }
}
