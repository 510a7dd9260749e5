//! `ota-repo add --delta`: the chunk index of a release and its chunk store.
//!
//! The image is cut with the signed chunker parameters
//! (`ota_common::delta`); each chunk is compressed on its own (zstd) and
//! stored under the name the repository serves it by,
//! `targets/chunks/ab/<sha256 of the file>.<sha256 of the chunk>.zst` (see
//! `ota_common::delta::chunk_name`), so a release that shares a chunk with
//! an earlier one stores and publishes nothing new for it. The index goes
//! to `targets/chunks/index/<sha256>.<sha256>.cidx`; its hash and length are what
//! the target signs (`custom.delta`). zstd output is deterministic for a
//! given level and library, so a chunk cut again is the same file.

use crate::error::{RepoError, Result};
use crate::layout::Layout;
use ota_common::delta::{self, Chunk, ChunkIndex, ChunkParams};
use ota_common::payload::Encoding;
use ota_common::wire::DeltaCustom;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// zstd level of the stored chunks: a chunk is compressed once and served
/// to every device, so a slower level than the usual 3 pays off.
const CHUNK_LEVEL: i32 = 12;

/// What `--delta` added to the chunk store.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub custom: DeltaCustom,
    pub chunks: usize,
    /// Chunks this release shares with ones already in the store.
    pub reused: usize,
}

/// Cuts `image_path` (the raw slot image) into chunks, stores the missing
/// ones and the index, and returns the `custom.delta` to sign.
pub fn index_image(layout: &Layout, image_path: &Path, params: ChunkParams) -> Result<Indexed> {
    let mut file = File::open(image_path).map_err(RepoError::io(image_path))?;
    let mut head = [0u8; 8];
    let n = file.read(&mut head).map_err(RepoError::io(image_path))?;
    if let Some(encoding) = Encoding::sniff(&head[..n]) {
        return Err(RepoError::InvalidArgument(format!(
            "--delta needs the raw slot image, and {} is {encoding}-compressed: a device \
             builds its slot from chunks of the decoded image",
            image_path.display()
        )));
    }
    let file = File::open(image_path).map_err(RepoError::io(image_path))?;
    let targets = layout.targets_dir();
    let mut chunks = Vec::new();
    let mut reused = 0;
    delta::for_each_chunk(file, params, |offset, bytes| {
        let compressed = zstd::bulk::compress(bytes, CHUNK_LEVEL)?;
        let chunk = Chunk {
            sha256: delta::sha256(bytes),
            compressed_sha256: delta::sha256(&compressed),
            offset,
            // Both bounded by the chunker's max (≤ 16 MiB).
            length: bytes.len() as u32,
            compressed_length: compressed.len() as u32,
        };
        let dest = targets.join(chunk.store_path());
        if dest.exists() {
            reused += 1;
        } else {
            write_new(&dest, &compressed)?;
        }
        chunks.push(chunk);
        Ok(())
    })
    .map_err(RepoError::io(image_path))?;
    let image_length = chunks.last().map_or(0, |c| c.offset + u64::from(c.length));
    let index = ChunkIndex {
        params,
        image_length,
        chunks,
    };
    let bytes = index.to_bytes();
    // What a device will check, checked here first.
    ChunkIndex::parse(&bytes)
        .map_err(|e| RepoError::Inconsistent(format!("the chunk index just built: {e}")))?;
    let sha256 = delta::sha256(&bytes);
    let reference = delta::IndexRef {
        sha256,
        length: bytes.len() as u64,
    };
    let dest = targets.join(reference.store_path());
    if !dest.exists() {
        write_new(&dest, &bytes).map_err(RepoError::io(&dest))?;
    }
    Ok(Indexed {
        custom: DeltaCustom {
            index_sha256: hex::encode(sha256),
            index_length: bytes.len() as u64,
        },
        chunks: index.chunks.len(),
        reused,
    })
}

/// Writes a chunk-store file atomically, so a cut never leaves a partial
/// chunk under a name that claims the whole one.
fn write_new(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| std::io::Error::other("chunk path without a directory"))?;
    ota_common::atomic::create_dir_all_durable(dir)?;
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("chunk"),
        std::process::id()
    ));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    ota_common::atomic::rename_durable(&tmp, dest)
}
