//! The chunks of a delta install, produced by a few worker threads at once
//! and handed over strictly in index order.
//!
//! On a link with latency a delta's time is its round trips: one GET per
//! missing chunk, hundreds of them. Each worker owns one [`FileFetch`]
//! (sharing the transport's keep-alive pool, so each request in flight
//! keeps its own connection open) and produces whole chunks: read back from
//! the running slot and re-hashed, or fetched and checked exactly as a
//! single fetch would be (length cap while receiving, compressed SHA-256
//! before decoding, decoded length cap and SHA-256). Reading and hashing
//! the reused chunks therefore overlaps with the slot writes too.
//!
//! Order and memory: chunks are handed out in index order, at most
//! `delta_parallel_fetches` (N) of those to fetch and [`READ_AHEAD`] of
//! those to read back at once; a new one only after the writer took one.
//! Fetches look ahead past any number of reused chunks (a release's
//! changes are sparse: with a window counted in chunks, they would rarely
//! overlap), reads only two chunks ahead. So at most N fetched chunks
//! (each its compressed copy and its decoded bytes while being checked),
//! two read-back chunks and the one being written are held:
//! `N × (max_compressed + max) + 3 × max`, 2.8 MiB for N = 4 at the
//! default 256 KiB maximum chunk, whatever the image size. A reused chunk
//! the running slot no longer holds is fetched by its reader, one more
//! request in flight at most per reader.
//!
//! Stopping: dropping the [`Pipeline`] closes the job queue and joins the
//! workers. A worker checks the stop flag before every job, so after a
//! refused chunk or an error at most the requests already on the wire
//! finish (each bounded by the HTTP timeout), and no thread outlives the
//! stream.

use super::DeltaPlan;
use crate::source::FileFetch;
use ota_common::delta;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Why a chunk could not be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// The chunk store refused it for good (a 404, bytes that fail their
    /// signed hash or do not decode): the delta ends, the full image follows.
    Refused(String),
    /// Worth a retry from the last checkpoint (the network, a 5xx).
    Transient(String),
}

type ChunkResult = Result<Vec<u8>, ChunkError>;

struct Job {
    index: usize,
    reply: SyncSender<ChunkResult>,
}

/// What every worker shares.
struct Shared {
    plan: Arc<DeltaPlan>,
    running: File,
    fetched: Arc<AtomicU64>,
    stop: AtomicBool,
}

/// Reused chunks read back and hashed ahead of the writer: two keep the
/// writer busy (one is hashed while the other is written) on two cores.
const READ_AHEAD: usize = 2;

/// Chunks `first..` of the plan, in order: up to `fetches` of the chunks to
/// fetch and [`READ_AHEAD`] of those to read back in progress at once.
pub struct Pipeline {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
    /// Replies for the chunks handed out, by index.
    pending: BTreeMap<usize, Receiver<ChunkResult>>,
    /// The next chunk to deliver.
    next: usize,
    fetches: Window,
    reads: Window,
    workers: Vec<JoinHandle<()>>,
}

/// One kind of job (fetch or read back): how many may be out, how many
/// are, and how far the hand-out got.
struct Window {
    limit: usize,
    out: usize,
    cursor: usize,
}

impl Pipeline {
    /// Starts `fetches` workers for the chunks to fetch plus the
    /// read-ahead, on chunks `first..`, each with its own chunk-store
    /// client from `client` (a reader whose chunk is gone from the running
    /// slot fetches it); `running` is the running slot, opened read-only.
    pub fn start(
        plan: Arc<DeltaPlan>,
        fetches: usize,
        client: &mut dyn FnMut() -> Option<Box<dyn FileFetch>>,
        running: File,
        first: usize,
        fetched: Arc<AtomicU64>,
    ) -> std::io::Result<Pipeline> {
        let remaining = plan.index.chunks.len().saturating_sub(first);
        let fetches = fetches.clamp(1, remaining.max(1));
        let shared = Arc::new(Shared {
            plan,
            running,
            fetched,
            stop: AtomicBool::new(false),
        });
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let window = |limit| Window {
            limit,
            out: 0,
            cursor: first,
        };
        let mut pipeline = Pipeline {
            shared: shared.clone(),
            jobs: Some(jobs),
            pending: BTreeMap::new(),
            next: first,
            fetches: window(fetches),
            reads: window(READ_AHEAD),
            workers: Vec::with_capacity(fetches + READ_AHEAD),
        };
        for n in 0..(fetches + READ_AHEAD).min(remaining) {
            let files = client().ok_or_else(|| std::io::Error::other("no chunk store"))?;
            let (shared, queue) = (shared.clone(), queue.clone());
            let worker = std::thread::Builder::new()
                .name(format!("delta-chunks-{n}"))
                .spawn(move || work(&shared, &*files, &queue))?;
            pipeline.workers.push(worker);
        }
        pipeline.hand_out();
        Ok(pipeline)
    }

    /// Hands out chunks in index order while each kind has room.
    fn hand_out(&mut self) {
        let Some(jobs) = &self.jobs else { return };
        let chunks = &self.shared.plan.index.chunks;
        let local = &self.shared.plan.local;
        for (window, reused) in [(&mut self.fetches, false), (&mut self.reads, true)] {
            while window.out < window.limit {
                let Some(index) = (window.cursor..chunks.len())
                    .find(|&i| local.contains_key(&chunks[i].sha256) == reused)
                else {
                    window.cursor = chunks.len();
                    break;
                };
                window.cursor = index + 1;
                let (reply, result) = mpsc::sync_channel(1);
                if jobs.send(Job { index, reply }).is_err() {
                    return;
                }
                self.pending.insert(index, result);
                window.out += 1;
            }
        }
    }

    /// The next chunk in index order, `None` past the last one.
    pub fn next_chunk(&mut self) -> Option<ChunkResult> {
        let chunk = self.shared.plan.index.chunks.get(self.next)?;
        let window = if self.shared.plan.local.contains_key(&chunk.sha256) {
            &mut self.reads
        } else {
            &mut self.fetches
        };
        window.out = window.out.saturating_sub(1);
        let answer = self.pending.remove(&self.next).map_or_else(
            || Err(ChunkError::Transient("a chunk was never handed out".into())),
            |reply| {
                reply.recv().unwrap_or_else(|_| {
                    Err(ChunkError::Transient(
                        "a chunk worker stopped without an answer".into(),
                    ))
                })
            },
        );
        self.next += 1;
        self.hand_out();
        Some(answer)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Closing the queue wakes every idle worker; a busy one finishes its
        // request, finds nobody waiting for the answer and stops.
        self.jobs = None;
        self.pending.clear();
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                tracing::error!("a delta chunk worker panicked");
            }
        }
    }
}

fn work(shared: &Shared, files: &dyn FileFetch, queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        // The consumer may be gone (an earlier chunk failed): nothing to do.
        let _ = job.reply.send(produce(shared, files, job.index));
    }
}

/// Chunk `index`: from the running slot when it still holds it, else
/// fetched; either way its bytes match the signed hash.
fn produce(shared: &Shared, files: &dyn FileFetch, index: usize) -> ChunkResult {
    let chunk = shared.plan.index.chunks[index];
    let length = chunk.length as usize;
    if let Some(&at) = shared.plan.local.get(&chunk.sha256) {
        let mut buf = vec![0u8; length];
        match shared.running.read_exact_at(&mut buf, at) {
            Ok(()) if delta::sha256(&buf) == chunk.sha256 => return Ok(buf),
            // The running slot is not what the plan saw: fetch it instead.
            _ => tracing::warn!(
                offset = at,
                "running slot chunk changed since the plan; fetching it"
            ),
        }
    }
    let rel = chunk.store_path();
    let compressed = files
        .fetch(&rel, u64::from(chunk.compressed_length))
        .map_err(|e| {
            // The same judgement as a full image's stream: a 408 or 429
            // from a CDN is a wait and a retry, not a reason to download
            // the whole image instead.
            if crate::install::is_transient(&e) {
                ChunkError::Transient(format!("fetching chunk {rel}: {e}"))
            } else {
                ChunkError::Refused(format!("chunk store: {e}"))
            }
        })?;
    shared
        .fetched
        .fetch_add(compressed.len() as u64, Ordering::Relaxed);
    if compressed.len() as u64 != u64::from(chunk.compressed_length)
        || delta::sha256(&compressed) != chunk.compressed_sha256
    {
        return Err(ChunkError::Refused(format!(
            "chunk {rel} does not match its signed length and sha256 (tampered or corrupt)"
        )));
    }
    let decoder = ruzstd::decoding::StreamingDecoder::new(&compressed[..])
        .map_err(|e| ChunkError::Refused(format!("chunk {rel}: not a zstd frame: {e}")))?;
    let mut buf = Vec::with_capacity(length);
    decoder
        .take(length as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ChunkError::Refused(format!("chunk {rel}: decoding: {e}")))?;
    if buf.len() != length || delta::sha256(&buf) != chunk.sha256 {
        return Err(ChunkError::Refused(format!(
            "chunk {rel} decodes to bytes that do not match its signed length and sha256"
        )));
    }
    Ok(buf)
}
