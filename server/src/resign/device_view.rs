//! Checks what the server is about to publish with its online signatures
//! the way a freshly flashed device checks it: the device-side TUF client
//! (`ota_common::tuf`, the very code the agent runs), trusting the newest
//! published root, refreshing from the files of the publication. A
//! signature the server just made that no device would accept (a key root
//! does not list, an expired targets role, a snapshot that does not match
//! the targets it names) refuses the commit instead of breaking the fleet.

use super::ResignError;
use crate::storage::Storage;
use ota_common::tuf::{ClientOptions, FileTransport, TufClient};

/// Refreshes a fresh client trusting `anchor` (root bytes) from `files`
/// (name, bytes): `timestamp.json`, the snapshot it names, the targets that
/// names, and any newer roots. Runs in a work directory of publication `id`.
pub(super) async fn check(
    storage: &Storage,
    id: &str,
    anchor: Vec<u8>,
    files: Vec<(String, Vec<u8>)>,
) -> Result<(), ResignError> {
    let work = storage.publication_workdir(id, "device-view").await?;
    let result = tokio::task::spawn_blocking(move || {
        let result = refresh(&work, &anchor, &files);
        if let Err(e) = std::fs::remove_dir_all(&work) {
            tracing::warn!(path = %work.display(), "cannot remove the check's directory: {e}");
        }
        result
    })
    .await
    .map_err(|e| ResignError::Metadata(format!("background check: {e}")))?;
    result
}

fn refresh(
    work: &std::path::Path,
    anchor: &[u8],
    files: &[(String, Vec<u8>)],
) -> Result<(), ResignError> {
    let io = |what: &str, e: std::io::Error| ResignError::Metadata(format!("{what}: {e}"));
    let repo = work.join("metadata");
    let targets = work.join("targets");
    let state = work.join("client");
    for dir in [&repo, &targets] {
        std::fs::create_dir_all(dir).map_err(|e| io("create the check's directory", e))?;
    }
    for (name, bytes) in files {
        std::fs::write(repo.join(name), bytes).map_err(|e| io(name, e))?;
    }
    let url = |dir: &std::path::Path| {
        // A relative data_dir makes a relative path; URLs need it absolute.
        let dir = std::fs::canonicalize(dir).map_err(|e| io("resolve the check's directory", e))?;
        url::Url::from_directory_path(&dir)
            .map_err(|()| ResignError::Metadata(format!("{} is not absolute", dir.display())))
    };
    let refused = |e: ota_common::tuf::TufError| {
        ResignError::Refused(format!(
            "devices would refuse this publication once the server signed it: {e}"
        ))
    };
    TufClient::<FileTransport>::init(&state, anchor).map_err(refused)?;
    let mut client = TufClient::open(
        &state,
        ClientOptions::new(url(&repo)?, url(&targets)?),
        FileTransport,
    )
    .map_err(refused)?;
    client.refresh().map_err(refused)?;
    Ok(())
}
