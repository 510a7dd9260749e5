//! Delta installs: the new slot image built from the running slot plus the
//! chunks it lacks.
//!
//! [`plan`] fetches the release's chunk index (capped at and checked
//! against its signed length and SHA-256), then cuts the running slot with
//! the index's chunker parameters, opened read-only, keeping the offset of
//! each chunk the new image needs and nothing else. [`DeltaStream`] then
//! produces the new image in index order as a plain byte stream: a chunk
//! the running slot holds is read again and re-hashed (the slot may not
//! have stayed what the scan saw), any other is fetched from the chunk
//! store (capped at its signed compressed length, its compressed SHA-256
//! checked before the decoder sees a byte, its decoded length capped and
//! its SHA-256 checked). The stream goes through the same one-pass install
//! as a full image (`install::install`): length and whole-image digest
//! enforced as it is written, durable checkpoints, read-back, so a resumed
//! delta starts at the chunk holding its checkpoint and the bootloader is
//! armed only after the whole slot matched the signed image hash.
//!
//! Memory: the parsed index (72 bytes per chunk: 4.5 MiB for a 4 GiB image
//! at the 64 KiB average) and one map entry per distinct needed chunk found
//! in the running slot (40 bytes), plus one chunk and its compressed copy
//! (at most 2 × 256 KiB at the default parameters). Bounded by the signed
//! index, never by reading more of either slot.

use crate::source::FileFetch;
use ota_common::delta::{self, ChunkIndex, IndexRef};
use ota_common::tuf::{FetchError, TufError};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What a delta install of one release needs: its index and where the
/// running slot holds the chunks it shares with the new image.
#[derive(Debug)]
pub struct DeltaPlan {
    pub index: ChunkIndex,
    /// Running-slot offset of each needed chunk found there, by hash.
    local: HashMap<[u8; 32], u64>,
    /// Compressed bytes to fetch (each missing chunk occurrence counted).
    pub fetch_bytes: u64,
    /// Image bytes taken from the running slot.
    pub reused_bytes: u64,
}

/// Fetches and checks the index, scans the running slot `running` (its
/// first `scan_len` bytes) and decides whether the delta pays: `Err` says
/// why the full image is installed instead. `beat` is called after every
/// scanned chunk (at most the chunker's `max`, 256 KiB by default, like the
/// download's beat per 256 KiB read): scanning a 4 GiB slot takes longer
/// than a watchdog waits.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    files: &dyn FileFetch,
    reference: &IndexRef,
    image_length: u64,
    running: &Path,
    scan_len: u64,
    full_bytes: u64,
    max_fetch_percent: u64,
    beat: &mut dyn FnMut(),
) -> Result<DeltaPlan, String> {
    let rel = reference.store_path();
    let bytes = files
        .fetch(&rel, reference.length)
        .map_err(|e| format!("fetching the chunk index: {e}"))?;
    if bytes.len() as u64 != reference.length || delta::sha256(&bytes) != reference.sha256 {
        return Err(format!(
            "the chunk index {rel} does not match its signed length and sha256 (tampered or corrupt)"
        ));
    }
    let index = ChunkIndex::parse(&bytes).map_err(|e| format!("the signed chunk index: {e}"))?;
    drop(bytes);
    if index.image_length != image_length {
        return Err(format!(
            "the chunk index describes a {} byte image, the release signs {image_length}",
            index.image_length
        ));
    }
    let wanted: HashSet<[u8; 32]> = index.chunks.iter().map(|c| c.sha256).collect();
    let mut local = HashMap::new();
    // read-only: the running slot is never opened for writing.
    let slot = File::open(running)
        .map_err(|e| format!("opening the running slot {}: {e}", running.display()))?;
    delta::for_each_chunk(
        io::BufReader::with_capacity(1 << 20, slot.take(scan_len)),
        index.params,
        |offset, chunk| {
            beat();
            let sha256 = delta::sha256(chunk);
            if wanted.contains(&sha256) {
                local.entry(sha256).or_insert(offset);
            }
            Ok(())
        },
    )
    .map_err(|e| format!("scanning the running slot {}: {e}", running.display()))?;
    drop(wanted);
    let (mut fetch_bytes, mut reused_bytes) = (0u64, 0u64);
    for c in &index.chunks {
        if local.contains_key(&c.sha256) {
            reused_bytes += u64::from(c.length);
        } else {
            fetch_bytes += u64::from(c.compressed_length);
        }
    }
    if fetch_bytes.saturating_mul(100) > full_bytes.saturating_mul(max_fetch_percent) {
        return Err(format!(
            "the delta would fetch {fetch_bytes} bytes, more than {max_fetch_percent}% of the \
             {full_bytes} byte full download"
        ));
    }
    Ok(DeltaPlan {
        index,
        local,
        fetch_bytes,
        reused_bytes,
    })
}

/// Why a delta stream stopped for good (a chunk that failed its signed
/// hash, a chunk store that answered 404), shared with the caller so it
/// can fall back to the full image instead of retrying.
pub type Failure = Arc<Mutex<Option<String>>>;

/// The new slot image, produced chunk by chunk from `offset`.
struct DeltaStream {
    plan: Arc<DeltaPlan>,
    files: Box<dyn FileFetch>,
    running: File,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    failure: Failure,
    fetched: Arc<std::sync::atomic::AtomicU64>,
}

impl DeltaStream {
    pub fn open(
        plan: Arc<DeltaPlan>,
        files: Box<dyn FileFetch>,
        running: &Path,
        offset: u64,
        failure: Failure,
        fetched: Arc<std::sync::atomic::AtomicU64>,
    ) -> io::Result<DeltaStream> {
        let running = File::open(running)?;
        let mut stream = DeltaStream {
            next: plan
                .index
                .chunk_at(offset)
                .unwrap_or(plan.index.chunks.len()),
            plan,
            files,
            running,
            buf: Vec::new(),
            pos: 0,
            failure,
            fetched,
        };
        if let Some(chunk) = stream.plan.index.chunks.get(stream.next) {
            let skip = (offset - chunk.offset) as usize;
            stream.load()?;
            stream.pos = skip;
        }
        Ok(stream)
    }

    /// Fills `buf` with chunk `next`, checked against its signed hash.
    fn load(&mut self) -> io::Result<()> {
        let chunk = self.plan.index.chunks[self.next];
        self.next += 1;
        self.pos = 0;
        self.buf.clear();
        let length = chunk.length as usize;
        if let Some(&at) = self.plan.local.get(&chunk.sha256) {
            self.buf.resize(length, 0);
            match self.running.read_exact_at(&mut self.buf, at) {
                Ok(()) if delta::sha256(&self.buf) == chunk.sha256 => return Ok(()),
                // The running slot changed since the scan: fetch it instead.
                _ => tracing::warn!(
                    offset = at,
                    "running slot chunk changed since the scan; fetching it"
                ),
            }
            self.buf.clear();
        }
        let rel = chunk.store_path();
        let compressed = match self.files.fetch(&rel, u64::from(chunk.compressed_length)) {
            Ok(bytes) => bytes,
            Err(e) => {
                let transient = matches!(
                    &e,
                    TufError::Fetch {
                        error: FetchError::Transport(_),
                        ..
                    }
                ) || matches!(&e, TufError::Fetch { error: FetchError::Http { status }, .. } if *status >= 500);
                if !transient {
                    self.fail(format!("chunk store: {e}"));
                }
                return Err(io::Error::other(format!("fetching chunk {rel}: {e}")));
            }
        };
        self.fetched.fetch_add(
            compressed.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if compressed.len() as u64 != u64::from(chunk.compressed_length)
            || delta::sha256(&compressed) != chunk.compressed_sha256
        {
            return Err(self.fail(format!(
                "chunk {rel} does not match its signed length and sha256 (tampered or corrupt)"
            )));
        }
        let decoder = ruzstd::decoding::StreamingDecoder::new(&compressed[..])
            .map_err(|e| self.fail(format!("chunk {rel}: not a zstd frame: {e}")))?;
        if let Err(e) = decoder.take(length as u64 + 1).read_to_end(&mut self.buf) {
            return Err(self.fail(format!("chunk {rel}: decoding: {e}")));
        }
        if self.buf.len() != length || delta::sha256(&self.buf) != chunk.sha256 {
            return Err(self.fail(format!(
                "chunk {rel} decodes to bytes that do not match its signed length and sha256"
            )));
        }
        Ok(())
    }

    fn fail(&self, reason: String) -> io::Error {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(reason.clone());
        }
        io::Error::new(io::ErrorKind::InvalidData, reason)
    }
}

impl Read for DeltaStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.next == self.plan.index.chunks.len() {
                return Ok(0);
            }
            self.load()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The delta plan for `target` when it is a delta release worth installing
/// as one; `None` (with a log line saying why, unless the release has no
/// index) when the full image is installed instead. Only the first
/// `running_length` bytes of the running slot are scanned: the running
/// release's signed image length when the agent knows it (the rest of the
/// device holds no chunk of that image), else `None`, the whole device.
pub fn try_plan(
    config: &crate::config::DownloadConfig,
    source: &dyn crate::source::UpdateSource,
    target: &ota_common::tuf::Target,
    image_length: u64,
    running: &Path,
    running_length: Option<u64>,
    beat: &mut dyn FnMut(),
) -> Option<DeltaPlan> {
    let custom = target.release().ok()?.delta?;
    if !config.delta {
        tracing::info!(target = %target.name, "delta release installed in full: download.delta is off");
        return None;
    }
    let fall_back = |why: String| {
        tracing::warn!(target = %target.name, reason = %why, "installing the full image instead of the delta");
    };
    let reference = match IndexRef::parse(&custom) {
        Ok(r) => r,
        Err(e) => {
            fall_back(e);
            return None;
        }
    };
    let Some(files) = source.files() else {
        fall_back("this update source has no chunk store".into());
        return None;
    };
    match plan(
        &*files,
        &reference,
        image_length,
        running,
        running_length.unwrap_or(u64::MAX),
        target.length,
        config.delta_max_fetch_percent,
        beat,
    ) {
        Ok(plan) => {
            tracing::info!(target = %target.name, chunks = plan.index.chunks.len(),
                scanned = running_length.map_or("the whole running slot".into(), |n| format!("{n} bytes")),
                reused_bytes = plan.reused_bytes, fetch_bytes = plan.fetch_bytes,
                full_bytes = target.length, "delta planned from the running slot");
            Some(plan)
        }
        Err(why) => {
            fall_back(why);
            None
        }
    }
}

/// Hooks that open the delta stream instead of the target's bytes; the
/// rest (progress, checkpoints, waits) is the caller's.
struct DeltaHooks<'a> {
    inner: &'a mut dyn super::InstallHooks<'static>,
    source: &'a dyn crate::source::UpdateSource,
    plan: Arc<DeltaPlan>,
    running: &'a Path,
    failure: Failure,
    fetched: Arc<std::sync::atomic::AtomicU64>,
}

impl super::InstallHooks<'static> for DeltaHooks<'_> {
    fn open(&mut self, offset: u64) -> Result<Box<dyn Read + Send>, TufError> {
        let stopped = |detail: String| TufError::Fetch {
            url: "(chunk store)".into(),
            error: FetchError::Transport(detail),
        };
        if self.failure.lock().map_or(true, |f| f.is_some()) {
            // Not worth a retry: the caller falls back to the full image.
            return Err(TufError::Fetch {
                url: "(chunk store)".into(),
                error: FetchError::NotFound,
            });
        }
        self.inner.progress(offset);
        let files = self
            .source
            .files()
            .ok_or_else(|| stopped("no chunk store".into()))?;
        let stream = DeltaStream::open(
            self.plan.clone(),
            files,
            self.running,
            offset,
            self.failure.clone(),
            self.fetched.clone(),
        )
        .map_err(|e| stopped(e.to_string()))?;
        Ok(Box::new(stream))
    }

    fn progress(&mut self, done: u64) {
        self.inner.progress(done)
    }

    fn checkpoint(&mut self, durable: u64) -> Result<(), String> {
        self.inner.checkpoint(durable)?;
        crate::crashpoint::hit(crate::crashpoint::DELTA_CHECKPOINT_SAVED);
        Ok(())
    }

    fn wait(&mut self, delay: std::time::Duration) {
        self.inner.wait(delay)
    }
}

/// Installs `job` (the slot image, `payload: None`) from `plan`: the
/// running slot's chunks plus fetched ones. `Err` carries the install's
/// error and, when the delta itself failed (a chunk refused, the chunk
/// store gone), why: the caller then installs the full image.
pub fn install(
    job: &super::Download<'_>,
    hooks: &mut dyn super::InstallHooks<'static>,
    source: &dyn crate::source::UpdateSource,
    plan: DeltaPlan,
    running: &Path,
) -> Result<u64, super::InstallError> {
    let fetched = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut delta_hooks = DeltaHooks {
        inner: hooks,
        source,
        plan: Arc::new(plan),
        running,
        failure: Arc::new(Mutex::new(None)),
        fetched: fetched.clone(),
    };
    super::install(job, &mut delta_hooks)?;
    Ok(fetched.load(std::sync::atomic::Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_common::tuf::FetchError;

    const MIB: usize = 1024 * 1024;

    /// Incompressible bytes from `seed`.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// A chunk store holding one file: the index.
    struct IndexOnly(String, Vec<u8>);

    impl FileFetch for IndexOnly {
        fn fetch(&self, rel: &str, _max_len: u64) -> Result<Vec<u8>, TufError> {
            if rel == self.0 {
                Ok(self.1.clone())
            } else {
                Err(TufError::Fetch {
                    url: rel.into(),
                    error: FetchError::NotFound,
                })
            }
        }
    }

    /// The index of `image` (compressed copies not needed: nothing is fetched).
    fn index_of(image: &[u8]) -> (IndexOnly, IndexRef) {
        let mut chunks = Vec::new();
        delta::for_each_chunk(image, delta::DEFAULT_PARAMS, |offset, bytes| {
            chunks.push(delta::Chunk {
                sha256: delta::sha256(bytes),
                compressed_sha256: [0; 32],
                offset,
                length: bytes.len() as u32,
                compressed_length: bytes.len() as u32,
            });
            Ok(())
        })
        .expect("chunking");
        let bytes = ChunkIndex {
            params: delta::DEFAULT_PARAMS,
            image_length: image.len() as u64,
            chunks,
        }
        .to_bytes();
        let reference = IndexRef {
            sha256: delta::sha256(&bytes),
            length: bytes.len() as u64,
        };
        (IndexOnly(reference.store_path(), bytes), reference)
    }

    /// Plans from a running slot holding unrelated bytes, then the new image:
    /// (bytes reused, heartbeats).
    fn plan_from(scan_len: u64) -> (u64, u32) {
        let image = noise(4 * MIB, 3);
        let (files, reference) = index_of(&image);
        let dir = tempfile::tempdir().expect("tempdir");
        let running = dir.path().join("running.img");
        let mut slot = noise(8 * MIB, 5);
        slot.extend_from_slice(&image);
        std::fs::write(&running, slot).expect("running slot");
        let mut beats = 0u32;
        let plan = plan(
            &files,
            &reference,
            image.len() as u64,
            &running,
            scan_len,
            image.len() as u64,
            100,
            &mut || beats += 1,
        )
        .expect("plan");
        (plan.reused_bytes, beats)
    }

    #[test]
    fn the_scan_feeds_the_watchdogs_at_least_every_256_kib() {
        let (reused, beats) = plan_from(u64::MAX);
        // All but the chunk the unrelated bytes before the image shifted.
        assert!(
            reused > 3 * MIB as u64,
            "the image is in the slot: {reused}"
        );
        let scanned = 12 * MIB as u32;
        assert!(
            beats >= scanned / delta::DEFAULT_PARAMS.max,
            "{beats} heartbeats while scanning {scanned} bytes"
        );
    }

    #[test]
    fn the_scan_stops_at_the_running_image_length() {
        let (reused, beats) = plan_from(8 * MIB as u64);
        assert_eq!(reused, 0, "nothing past the running image was read");
        assert!(beats <= (8 * MIB as u32) / delta::DEFAULT_PARAMS.min + 1);
    }
}
