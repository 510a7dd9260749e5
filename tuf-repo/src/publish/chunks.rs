//! Publishing the chunk store (`targets/chunks/`, written by `add --delta`).
//!
//! Chunks and indexes go up through the same publication as images, under
//! their published names (`chunks/ab/<chunk sha256>.zst`,
//! `chunks/index/<sha256>.cidx`);
//! the server stores each under `<sha256 of the file>.<name>` as it does
//! any target, which is the name the local store already uses. A chunk the
//! server already serves is not uploaded again, which is what makes a delta
//! release cheap to publish as well as to install.

use super::AdminClient;
use crate::error::{RepoError, Result};
use crate::layout::Layout;
use ota_common::wire::StagedTarget;
use std::fs::File;
use std::path::{Path, PathBuf};

/// One file of the local chunk store.
#[derive(Debug, Clone)]
pub struct ChunkFile {
    /// Relative to `targets/`, as served: `chunks/ab/<file sha256>.<name>`.
    pub served: String,
    /// The name it is uploaded under: `chunks/ab/<name>`.
    pub published: String,
    pub sha256: String,
    pub length: u64,
    pub path: PathBuf,
}

/// Every file of the chunk store, in a stable order.
pub fn chunk_files(layout: &Layout) -> Result<Vec<ChunkFile>> {
    let targets = layout.targets_dir();
    let root = targets.join("chunks");
    let mut files = Vec::new();
    if root.is_dir() {
        walk(&targets, &root, &mut files)?;
    }
    files.sort_by(|a, b| a.served.cmp(&b.served));
    Ok(files)
}

fn walk(targets: &Path, dir: &Path, out: &mut Vec<ChunkFile>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(RepoError::io(dir))? {
        let entry = entry.map_err(RepoError::io(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(RepoError::io(&path))?;
        if kind.is_dir() {
            walk(targets, &path, out)?;
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Partial files of an interrupted `add` start with '.'.
        if !kind.is_file() || name.starts_with('.') {
            continue;
        }
        let Some((sha256, base)) = name.split_once('.') else {
            continue;
        };
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let rel_dir = dir
            .strip_prefix(targets)
            .ok()
            .and_then(|d| d.to_str())
            .ok_or_else(|| {
                RepoError::Inconsistent(format!("chunk directory {} is not UTF-8", dir.display()))
            })?;
        let length = entry.metadata().map_err(RepoError::io(&path))?.len();
        out.push(ChunkFile {
            served: format!("{rel_dir}/{name}"),
            published: format!("{rel_dir}/{base}"),
            sha256: sha256.to_ascii_lowercase(),
            length,
            path,
        });
    }
    Ok(())
}

impl AdminClient {
    /// Whether the server serves this file already. Only a clear 404 means
    /// "absent": any other answer or a transport error is an error, so a
    /// broken server never turns into a publication that lacks chunks.
    pub fn serves(&self, served: &str, length: u64) -> Result<bool> {
        let what = format!("asking the server for targets/{served} (HEAD)");
        let resp = self
            .http
            .head(self.url(&["targets", served])?)
            .send()
            .map_err(|e| RepoError::Publish(format!("{what}: {}", super::error_chain(&e))))?;
        match resp.status() {
            // The header itself: a HEAD answer has no body to size.
            reqwest::StatusCode::OK => Ok(resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                == Some(length)),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            status => Err(RepoError::Publish(format!(
                "{what}: server answered {status}"
            ))),
        }
    }

    pub fn upload_chunk_file(&self, id: &str, file: &ChunkFile) -> Result<()> {
        let what = format!(
            "uploading {} (PUT /admin/v1/publications/{id}/targets/{})",
            file.served, file.published
        );
        let body = File::open(&file.path).map_err(RepoError::io(&file.path))?;
        let mut url = self.url(&[
            "admin",
            "v1",
            "publications",
            id,
            "targets",
            &file.published,
        ])?;
        // No metadata lists a chunk: devices fetch it by its SHA-256 name
        // only, so the server need not place a SHA-512 copy (a server that
        // predates `names` ignores it and places both).
        url.query_pairs_mut().append_pair("names", "sha256");
        let req = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::blocking::Body::sized(body, file.length));
        let resp = self.send(&what, req)?;
        let staged: StagedTarget = Self::json(&what, resp)?;
        if staged.length != file.length || !staged.sha256.eq_ignore_ascii_case(&file.sha256) {
            return Err(RepoError::Publish(format!(
                "{what}: the server received {} bytes with sha256 {}, expected {} bytes with \
                 sha256 {}; nothing was committed",
                staged.length, staged.sha256, file.length, file.sha256
            )));
        }
        Ok(())
    }
}
