//! Delta installs: the new slot image built from the running slot plus the
//! chunks it lacks.
//!
//! [`plan`] fetches the release's chunk index (capped at and checked
//! against its signed length and SHA-256), then finds where the running
//! slot holds the chunks the new image needs. When the running release is
//! itself a delta release whose signed index is still listed, that index
//! says so, with no read of the slot; otherwise the running slot is cut
//! with the new index's chunker parameters, opened read-only, keeping the
//! offset of each needed chunk and nothing else. [`DeltaStream`] then
//! produces the new image in index order as a plain byte stream, the
//! chunks made by the [`pipeline`]'s workers, several at once: a chunk the
//! running slot holds is read again and re-hashed (the slot may not be
//! what the plan saw), any other is fetched from the chunk store (capped at
//! its signed compressed length, its compressed SHA-256 checked before the
//! decoder sees a byte, its decoded length capped and its SHA-256
//! checked). The stream goes through the same one-pass install as a full
//! image (`install::install`): length enforced as it is written, durable
//! checkpoints, the read-back against the image's signed digests, so a
//! resumed delta starts
//! at the chunk holding its checkpoint and the bootloader is armed only
//! after the whole slot matched the signed image hash.
//!
//! Memory: the parsed index (72 bytes per chunk: 4.5 MiB for a 4 GiB image
//! at the 64 KiB average; while planning from the running release's index,
//! that one too) and one map entry per distinct needed chunk found in the
//! running slot (40 bytes), plus the chunks in progress: at most
//! `delta_parallel_fetches` fetched ones with their compressed copies, two
//! read back ahead and the one being written (2.8 MiB at 4 in flight and
//! the default 256 KiB maximum chunk; see [`pipeline`]). Bounded by the
//! signed indexes, never by reading more of either slot.

mod pipeline;

use crate::source::FileFetch;
use ota_common::delta::{self, ChunkIndex, IndexRef};
use ota_common::tuf::{FetchError, TufError};
use pipeline::{ChunkError, Pipeline};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::AtomicU64;
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
    /// How the running slot's chunks were found.
    pub found_by: FoundBy,
}

/// Where the running slot's chunk offsets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// The running release's own signed index: nothing read from the slot.
    RunningIndex,
    /// A FastCDC scan of this many bytes of the running slot.
    Scan(u64),
}

/// The release the running slot holds, as far as the agent knows it.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    /// The running slot (opened read-only, never written).
    pub path: &'a Path,
    /// Its release's signed image length, when the trusted metadata still
    /// lists that release: no chunk of it lies further.
    pub length: Option<u64>,
    /// Its release's signed chunk index, when it is a delta release.
    pub index: Option<&'a IndexRef>,
}

/// The index `reference` names, fetched (capped at its signed length),
/// checked against its signed sha256 and parsed.
fn fetch_index(files: &dyn FileFetch, reference: &IndexRef) -> Result<ChunkIndex, String> {
    let rel = reference.store_path();
    let bytes = files
        .fetch(&rel, reference.length)
        .map_err(|e| format!("fetching the chunk index: {e}"))?;
    if bytes.len() as u64 != reference.length || delta::sha256(&bytes) != reference.sha256 {
        return Err(format!(
            "the chunk index {rel} does not match its signed length and sha256 (tampered or corrupt)"
        ));
    }
    ChunkIndex::parse(&bytes).map_err(|e| format!("the signed chunk index: {e}"))
}

/// Offsets of the `wanted` chunks in the running slot, from the running
/// release's signed index: where `ota-repo` cut that image, which is what
/// the slot holds if it still holds that image (every chunk is re-hashed
/// when used).
fn from_running_index(
    files: &dyn FileFetch,
    reference: &IndexRef,
    length: Option<u64>,
    wanted: &HashSet<[u8; 32]>,
) -> Result<HashMap<[u8; 32], u64>, String> {
    let old = fetch_index(files, reference)?;
    if length.is_some_and(|l| l != old.image_length) {
        return Err(format!(
            "it describes a {} byte image, the running release signs {length:?}",
            old.image_length
        ));
    }
    let mut local = HashMap::new();
    for c in &old.chunks {
        if wanted.contains(&c.sha256) {
            local.entry(c.sha256).or_insert(c.offset);
        }
    }
    Ok(local)
}

/// Offsets of the `wanted` chunks in the first `scan_len` bytes of the
/// running slot, cut with the new index's parameters.
fn scan(
    running: &Path,
    scan_len: u64,
    params: delta::ChunkParams,
    wanted: &HashSet<[u8; 32]>,
    beat: &mut dyn FnMut(),
) -> Result<HashMap<[u8; 32], u64>, String> {
    let mut local = HashMap::new();
    // read-only: the running slot is never opened for writing.
    let slot = File::open(running)
        .map_err(|e| format!("opening the running slot {}: {e}", running.display()))?;
    delta::for_each_chunk(
        io::BufReader::with_capacity(1 << 20, slot.take(scan_len)),
        params,
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
    Ok(local)
}

/// Fetches and checks the index, finds the needed chunks in the running
/// slot (from the running release's index when it has one, else by a scan
/// of its first `running.length` bytes, the whole slot when unknown) and
/// decides whether the delta pays: `Err` says why the full image is
/// installed instead. `beat` is called after every scanned chunk (at most
/// the chunker's `max`, 256 KiB by default, like the download's beat per
/// 256 KiB read): scanning a 4 GiB slot takes longer than a watchdog waits.
pub fn plan(
    files: &dyn FileFetch,
    reference: &IndexRef,
    image_length: u64,
    running: Running<'_>,
    full_bytes: u64,
    max_fetch_percent: u64,
    beat: &mut dyn FnMut(),
) -> Result<DeltaPlan, String> {
    let index = fetch_index(files, reference)?;
    if index.image_length != image_length {
        return Err(format!(
            "the chunk index describes a {} byte image, the release signs {image_length}",
            index.image_length
        ));
    }
    let wanted: HashSet<[u8; 32]> = index.chunks.iter().map(|c| c.sha256).collect();
    beat();
    let known = running.index.and_then(|old| {
        from_running_index(files, old, running.length, &wanted)
            .map_err(|e| {
                tracing::warn!(reason = %e,
                    "the running release's chunk index is unusable; scanning the running slot");
            })
            .ok()
    });
    let (local, found_by) = match known {
        Some(local) => (local, FoundBy::RunningIndex),
        None => {
            let scan_len = running.length.unwrap_or(u64::MAX);
            let local = scan(running.path, scan_len, index.params, &wanted, beat)?;
            (local, FoundBy::Scan(scan_len))
        }
    };
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
        found_by,
    })
}

/// Why a delta stream stopped for good (a chunk that failed its signed
/// hash, a chunk store that answered 404), shared with the caller so it
/// can fall back to the full image instead of retrying.
pub type Failure = Arc<Mutex<Option<String>>>;

/// The new slot image, produced chunk by chunk from `offset`.
struct DeltaStream {
    chunks: Pipeline,
    buf: Vec<u8>,
    pos: usize,
    failure: Failure,
}

impl DeltaStream {
    /// `fetches` chunks are fetched at once, each worker with its own
    /// chunk-store client from `client`.
    pub fn open(
        plan: Arc<DeltaPlan>,
        fetches: usize,
        client: &mut dyn FnMut() -> Option<Box<dyn FileFetch>>,
        running: &Path,
        offset: u64,
        failure: Failure,
        fetched: Arc<AtomicU64>,
    ) -> io::Result<DeltaStream> {
        // read-only: the running slot is never opened for writing.
        let running = File::open(running)?;
        let first = plan
            .index
            .chunk_at(offset)
            .unwrap_or(plan.index.chunks.len());
        let skip = plan
            .index
            .chunks
            .get(first)
            .map_or(0, |c| (offset - c.offset) as usize);
        let mut stream = DeltaStream {
            chunks: Pipeline::start(plan, fetches, client, running, first, fetched)?,
            buf: Vec::new(),
            pos: 0,
            failure,
        };
        if stream.load()? {
            stream.pos = skip;
        }
        Ok(stream)
    }

    /// Fills `buf` with the next chunk, checked against its signed hash;
    /// `false` past the last one.
    fn load(&mut self) -> io::Result<bool> {
        self.pos = 0;
        self.buf.clear();
        match self.chunks.next_chunk() {
            None => Ok(false),
            Some(Ok(bytes)) => {
                self.buf = bytes;
                Ok(true)
            }
            Some(Err(ChunkError::Transient(e))) => Err(io::Error::other(e)),
            Some(Err(ChunkError::Refused(reason))) => {
                if let Ok(mut slot) = self.failure.lock() {
                    slot.get_or_insert(reason.clone());
                }
                Err(io::Error::new(io::ErrorKind::InvalidData, reason))
            }
        }
    }
}

impl Read for DeltaStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() && !self.load()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Why a release is installed in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoDelta {
    /// It is not a delta release.
    NotDelta,
    /// It is one, and this is why the delta is not used: worth telling the
    /// server, so a fleet operator sees why the device fetched everything.
    FallBack(String),
}

/// The delta plan for `target` when it is a delta release worth installing
/// as one; else why not (logged too). `running_target` is the verified
/// target the running slot holds, when the agent knows it: its signed
/// length bounds a scan, and its signed index, when it has one, makes the
/// scan unnecessary.
pub fn try_plan(
    config: &crate::config::DownloadConfig,
    source: &dyn crate::source::UpdateSource,
    target: &ota_common::tuf::Target,
    image_length: u64,
    running: &Path,
    running_target: Option<&ota_common::tuf::Target>,
    beat: &mut dyn FnMut(),
) -> Result<DeltaPlan, NoDelta> {
    let Some(custom) = target.release().ok().and_then(|r| r.delta) else {
        return Err(NoDelta::NotDelta);
    };
    let fall_back = |why: String| {
        tracing::warn!(target = %target.name, reason = %why, "installing the full image instead of the delta");
        NoDelta::FallBack(why)
    };
    if !config.delta {
        return Err(fall_back("download.delta is off".into()));
    }
    let reference = IndexRef::parse(&custom).map_err(fall_back)?;
    let files = source
        .files()
        .ok_or_else(|| fall_back("this update source has no chunk store".into()))?;
    let running_length = running_target.and_then(|t| t.slot_image().ok().map(|i| i.length));
    let running_index = running_target
        .and_then(|t| t.release().ok()?.delta)
        .and_then(|c| IndexRef::parse(&c).ok());
    let plan = plan(
        &*files,
        &reference,
        image_length,
        Running {
            path: running,
            length: running_length,
            index: running_index.as_ref(),
        },
        target.length,
        config.delta_max_fetch_percent,
        beat,
    )
    .map_err(fall_back)?;
    let found = match plan.found_by {
        FoundBy::RunningIndex => "from the running release's chunk index, no scan".to_owned(),
        FoundBy::Scan(u64::MAX) => "by a scan of the whole running slot".to_owned(),
        FoundBy::Scan(n) => format!("by a scan of {n} bytes of the running slot"),
    };
    tracing::info!(target = %target.name, chunks = plan.index.chunks.len(),
        found = %found, reused_bytes = plan.reused_bytes, fetch_bytes = plan.fetch_bytes,
        full_bytes = target.length, parallel_fetches = config.delta_parallel_fetches,
        "delta planned");
    Ok(plan)
}

/// Hooks that open the delta stream instead of the target's bytes; the
/// rest (progress, checkpoints, waits) is the caller's.
struct DeltaHooks<'a> {
    inner: &'a mut dyn super::InstallHooks<'static>,
    source: &'a dyn crate::source::UpdateSource,
    plan: Arc<DeltaPlan>,
    running: &'a Path,
    parallel: u32,
    failure: Failure,
    fetched: Arc<AtomicU64>,
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
        let source = self.source;
        let stream = DeltaStream::open(
            self.plan.clone(),
            self.parallel as usize,
            &mut || source.files(),
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

/// Why a delta install did not finish.
#[derive(Debug)]
pub enum DeltaError {
    /// The chunk store refused a chunk for good (a 404, bytes that fail
    /// their signed hash): the full image is installed instead.
    Refused(String),
    /// The install itself failed, as a full one can.
    Install(super::InstallError),
}

/// Installs `job` (the slot image, `payload: None`) from `plan`: the
/// running slot's chunks plus fetched ones, `parallel` chunks in progress
/// at once. `Ok` carries the compressed bytes fetched.
pub fn install(
    job: &super::Download<'_>,
    hooks: &mut dyn super::InstallHooks<'static>,
    source: &dyn crate::source::UpdateSource,
    plan: DeltaPlan,
    running: &Path,
    parallel: u32,
) -> Result<u64, DeltaError> {
    let fetched = Arc::new(AtomicU64::new(0));
    let failure: Failure = Arc::new(Mutex::new(None));
    let mut delta_hooks = DeltaHooks {
        inner: hooks,
        source,
        plan: Arc::new(plan),
        running,
        parallel,
        failure: failure.clone(),
        fetched: fetched.clone(),
    };
    if let Err(e) = super::install(job, &mut delta_hooks) {
        let refused = failure.lock().ok().and_then(|mut f| f.take());
        return Err(refused.map_or(DeltaError::Install(e), DeltaError::Refused));
    }
    Ok(fetched.load(std::sync::atomic::Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A chunk store in memory that counts what it is asked, how many
    /// requests overlap, and can hold each answer back a little (a link's
    /// round trip).
    #[derive(Default)]
    struct Store {
        files: Mutex<HashMap<String, Vec<u8>>>,
        delay: std::time::Duration,
        requests: std::sync::atomic::AtomicUsize,
        in_flight: std::sync::atomic::AtomicUsize,
        max_in_flight: std::sync::atomic::AtomicUsize,
    }

    impl Store {
        fn put(&self, rel: String, bytes: Vec<u8>) {
            self.files.lock().expect("store").insert(rel, bytes);
        }

        fn requests(&self) -> usize {
            self.requests.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl FileFetch for Arc<Store> {
        fn fetch(&self, rel: &str, max_len: u64) -> Result<Vec<u8>, TufError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.requests.fetch_add(1, SeqCst);
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.max_in_flight.fetch_max(now, SeqCst);
            std::thread::sleep(self.delay);
            let found = self.files.lock().expect("store").get(rel).cloned();
            self.in_flight.fetch_sub(1, SeqCst);
            match found {
                Some(mut bytes) => {
                    // The transport's cap: never more than asked for.
                    bytes.truncate(max_len as usize);
                    Ok(bytes)
                }
                None => Err(TufError::Fetch {
                    url: rel.into(),
                    error: FetchError::NotFound,
                }),
            }
        }
    }

    /// Publishes `image` as a delta release into `store` (its index and
    /// every chunk, zstd-compressed) and returns its signed index reference.
    fn publish(store: &Store, image: &[u8]) -> IndexRef {
        let mut chunks = Vec::new();
        delta::for_each_chunk(image, delta::DEFAULT_PARAMS, |offset, bytes| {
            let compressed = ruzstd::encoding::compress_to_vec(
                bytes,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
            let chunk = delta::Chunk {
                sha256: delta::sha256(bytes),
                compressed_sha256: delta::sha256(&compressed),
                offset,
                length: bytes.len() as u32,
                compressed_length: compressed.len() as u32,
            };
            store.put(chunk.store_path(), compressed);
            chunks.push(chunk);
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
        store.put(reference.store_path(), bytes);
        reference
    }

    /// The index of `image`, alone in a store.
    fn index_of(image: &[u8]) -> (Arc<Store>, IndexRef) {
        let store = Arc::new(Store::default());
        let reference = publish(&store, image);
        (store, reference)
    }

    /// `image` with `edits` (offset, length) overwritten.
    fn edited(image: &[u8], edits: &[(usize, usize)]) -> Vec<u8> {
        let mut out = image.to_vec();
        for (n, &(at, len)) in edits.iter().enumerate() {
            out[at..at + len].copy_from_slice(&noise(len, 100 + n as u64));
        }
        out
    }

    /// A device running `old` (a delta release in `store`) in a slot file
    /// with unrelated bytes after it, and the plan to install `new`.
    struct Scenario {
        _dir: tempfile::TempDir,
        running: std::path::PathBuf,
        store: Arc<Store>,
        new: Vec<u8>,
        plan: Arc<DeltaPlan>,
    }

    fn scenario(delay_ms: u64, with_running_index: bool) -> Scenario {
        let old = noise(4 * MIB, 41);
        let new = edited(
            &old,
            &[(300_000, 2000), (1_500_000, 500), (3_000_000, 4000)],
        );
        let store = Arc::new(Store {
            delay: std::time::Duration::from_millis(delay_ms),
            ..Store::default()
        });
        let old_ref = publish(&store, &old);
        let new_ref = publish(&store, &new);
        let dir = tempfile::tempdir().expect("tempdir");
        let running = dir.path().join("running.img");
        let mut slot = old.clone();
        slot.extend_from_slice(&noise(MIB, 43));
        std::fs::write(&running, slot).expect("running slot");
        let plan = plan(
            &store,
            &new_ref,
            new.len() as u64,
            Running {
                path: &running,
                length: Some(old.len() as u64),
                index: with_running_index.then_some(&old_ref),
            },
            new.len() as u64,
            100,
            &mut || {},
        )
        .expect("plan");
        Scenario {
            _dir: dir,
            running,
            store,
            new,
            plan: Arc::new(plan),
        }
    }

    impl Scenario {
        fn stream(&self, parallel: usize, offset: u64) -> (DeltaStream, Failure) {
            let failure: Failure = Arc::new(Mutex::new(None));
            let stream = DeltaStream::open(
                self.plan.clone(),
                parallel,
                &mut || Some(Box::new(self.store.clone()) as Box<dyn FileFetch>),
                &self.running,
                offset,
                failure.clone(),
                Arc::new(AtomicU64::new(0)),
            )
            .expect("open");
            (stream, failure)
        }

        /// The chunks the plan fetches, by index.
        fn fetched_chunks(&self) -> Vec<usize> {
            (0..self.plan.index.chunks.len())
                .filter(|&i| {
                    !self
                        .plan
                        .local
                        .contains_key(&self.plan.index.chunks[i].sha256)
                })
                .collect()
        }
    }

    #[test]
    fn chunks_fetched_several_at_once_arrive_in_index_order() {
        let s = scenario(20, true);
        let fetched = s.fetched_chunks();
        assert!(fetched.len() >= 3, "{fetched:?}");
        let mut image = Vec::new();
        let (mut stream, failure) = s.stream(4, 0);
        stream.read_to_end(&mut image).expect("the delta stream");
        assert!(image == s.new, "the stream is the new image, byte for byte");
        assert_eq!(failure.lock().expect("failure").as_deref(), None);
        // Three edits far apart: their chunks' requests were on the wire together.
        let overlap = s
            .store
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (2..=4).contains(&overlap),
            "{overlap} requests in flight at most"
        );

        // Resumed mid-chunk, one at a time: the same bytes from there.
        let offset = s.plan.index.chunks[fetched[1]].offset + 1234;
        let before = s
            .store
            .max_in_flight
            .swap(0, std::sync::atomic::Ordering::SeqCst);
        assert!(before > 1);
        let mut rest = Vec::new();
        let (mut stream, _) = s.stream(1, offset);
        stream.read_to_end(&mut rest).expect("resumed stream");
        assert!(rest[..] == s.new[offset as usize..]);
        assert_eq!(
            s.store
                .max_in_flight
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }

    #[test]
    fn a_tampered_chunk_in_the_window_ends_the_stream_and_its_workers() {
        let s = scenario(10, true);
        let fetched = s.fetched_chunks();
        // The middle fetched chunk: with 4 in flight, others are on the wire with it.
        let bad = s.plan.index.chunks[fetched[fetched.len() / 2]];
        {
            let mut files = s.store.files.lock().expect("store");
            let bytes = files.get_mut(&bad.store_path()).expect("chunk");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
        }
        let running_before = std::fs::read(&s.running).expect("running");
        let (mut stream, failure) = s.stream(4, 0);
        let mut image = Vec::new();
        let err = stream.read_to_end(&mut image).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(
            image.len() as u64,
            bad.offset,
            "every chunk before the bad one, nothing after it"
        );
        assert!(image[..] == s.new[..bad.offset as usize]);
        let why = failure.lock().expect("failure").clone().expect("recorded");
        assert!(
            why.contains("does not match its signed length and sha256"),
            "{why}"
        );
        drop(stream);
        // Dropping the stream joined its workers: nothing is in flight and
        // nothing more is asked.
        let asked = s.store.requests();
        assert_eq!(
            s.store.in_flight.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(s.store.requests(), asked);
        assert!(std::fs::read(&s.running).expect("running") == running_before);
    }

    #[test]
    fn the_running_release_index_replaces_the_scan_and_a_changed_chunk_is_fetched() {
        let s = scenario(0, true);
        assert_eq!(s.plan.found_by, FoundBy::RunningIndex);
        let scanned = scenario(0, false);
        assert_eq!(scanned.plan.found_by, FoundBy::Scan(4 * MIB as u64));
        // The index knows exactly what the scan would have found.
        assert_eq!(s.plan.local, scanned.plan.local);
        assert!(
            s.plan.reused_bytes > 3 * MIB as u64,
            "{}",
            s.plan.reused_bytes
        );

        // The running slot changed under a reused chunk since the release
        // was installed: that chunk is fetched, the image still right.
        let reused = s
            .plan
            .index
            .chunks
            .iter()
            .position(|c| s.plan.local.contains_key(&c.sha256) && c.offset > MIB as u64)
            .expect("a reused chunk");
        let at = s.plan.local[&s.plan.index.chunks[reused].sha256];
        let mut slot = std::fs::read(&s.running).expect("running");
        slot[at as usize + 10] ^= 1;
        std::fs::write(&s.running, &slot).expect("change the running slot");
        let before = s.store.requests();
        let mut image = Vec::new();
        let (mut stream, _) = s.stream(4, 0);
        stream.read_to_end(&mut image).expect("the delta stream");
        assert!(image == s.new);
        assert_eq!(
            s.store.requests() - before,
            s.fetched_chunks().len() + 1,
            "the planned chunks plus the changed one"
        );
    }

    #[test]
    fn an_unusable_running_index_falls_back_to_the_scan() {
        let image = noise(2 * MIB, 47);
        let (store, reference) = index_of(&image);
        // Signed, but not what the store serves.
        let wrong = IndexRef {
            sha256: [7; 32],
            length: reference.length,
        };
        store.put(wrong.store_path(), b"OTACIDX1 but not this one".to_vec());
        let dir = tempfile::tempdir().expect("tempdir");
        let running = dir.path().join("running.img");
        std::fs::write(&running, &image).expect("running slot");
        let plan = plan(
            &store,
            &reference,
            image.len() as u64,
            Running {
                path: &running,
                length: Some(image.len() as u64),
                index: Some(&wrong),
            },
            image.len() as u64,
            100,
            &mut || {},
        )
        .expect("plan");
        assert_eq!(plan.found_by, FoundBy::Scan(2 * MIB as u64));
        assert_eq!(plan.reused_bytes, image.len() as u64);
    }

    /// Plans from a running slot holding unrelated bytes, then the new image:
    /// (bytes reused, heartbeats).
    fn plan_from(scan_len: Option<u64>) -> (u64, u32) {
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
            Running {
                path: &running,
                length: scan_len,
                index: None,
            },
            2 * image.len() as u64,
            100,
            &mut || beats += 1,
        )
        .expect("plan");
        (plan.reused_bytes, beats)
    }

    #[test]
    fn the_scan_feeds_the_watchdogs_at_least_every_256_kib() {
        let (reused, beats) = plan_from(None);
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
        let (reused, beats) = plan_from(Some(8 * MIB as u64));
        assert_eq!(reused, 0, "nothing past the running image was read");
        assert!(beats <= (8 * MIB as u32) / delta::DEFAULT_PARAMS.min + 1);
    }
}
