//! The repository's current signed metadata, loaded and verified with
//! tough's own client from `metadata/` (expiry not enforced: the release
//! engineer must be able to inspect and re-sign expired metadata).

use crate::error::{RepoError, Result};
use crate::layout::Layout;
use std::path::{Path, PathBuf};
use tough::schema::{Root, Signed, Snapshot, Targets, Timestamp};
use tough::{ExpirationEnforcement, RepositoryLoader};
use url::Url;

#[derive(Debug, Clone)]
pub struct RepoState {
    pub root: Signed<Root>,
    pub targets: Signed<Targets>,
    pub snapshot: Signed<Snapshot>,
    pub timestamp: Signed<Timestamp>,
}

impl RepoState {
    pub async fn load(layout: &Layout) -> Result<Self> {
        let metadata_dir = layout.metadata_dir();
        let anchor = metadata_dir.join("1.root.json");
        let root_bytes = std::fs::read(&anchor).map_err(RepoError::io(&anchor))?;
        let metadata_url = dir_url(&metadata_dir)?;
        let targets_url = dir_url(&layout.targets_dir())?;
        let repo = RepositoryLoader::new(&root_bytes, metadata_url, targets_url)
            .expiration_enforcement(ExpirationEnforcement::Unsafe)
            .load()
            .await
            .map_err(RepoError::tough(format!(
                "loading the signed metadata in {}",
                metadata_dir.display()
            )))?;
        Ok(Self {
            root: repo.root().clone(),
            targets: repo.targets().clone(),
            snapshot: repo.snapshot().clone(),
            timestamp: repo.timestamp().clone(),
        })
    }

    pub fn root_version(&self) -> u64 {
        self.root.signed.version.get()
    }
}

/// A `file://` URL for a directory (with the trailing slash tough joins below).
pub fn dir_url(dir: &Path) -> Result<Url> {
    let abs: PathBuf = if dir.exists() {
        std::fs::canonicalize(dir).map_err(RepoError::io(dir))?
    } else {
        std::env::current_dir()
            .map_err(RepoError::io("."))?
            .join(dir)
    };
    Url::from_directory_path(&abs).map_err(|()| {
        RepoError::InvalidArgument(format!("{} is not an absolute path", abs.display()))
    })
}
