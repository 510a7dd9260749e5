//! Where things live inside a repository directory.

use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "repo.json";
pub const KEYS_DIR: &str = "keys";
pub const METADATA_DIR: &str = "metadata";
pub const TARGETS_DIR: &str = "targets";

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.root.join(KEYS_DIR)
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.root.join(METADATA_DIR)
    }

    pub fn targets_dir(&self) -> PathBuf {
        self.root.join(TARGETS_DIR)
    }

    /// A path from `repo.json` (relative to the repository, or absolute).
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }
}
