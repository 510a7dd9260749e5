//! The one-pass streaming install: every chunk is counted against the
//! signed length *before* it is handed to the writer thread (the first
//! byte too many never reaches the slot), and each range is fsynced, then
//! read back from storage and hashed against the signed digests, by a
//! follower thread. The digests are checked once, on the bytes storage
//! returns, not also on the bytes as they arrived: the same check of the
//! same bytes twice cost a third of the install's CPU (docs/BENCHMARKS.md,
//! "Sixth sitting"). Memory use is three
//! fixed buffers (two chunks, one being filled while the other is
//! written, and the read-back's), whatever the image size; a
//! compressed release adds its decoder's window, bounded by
//! `download.max_decompression_window` (`install/compressed.rs`).

use crate::slot::{AlignedBuf, Slot, SlotError, SlotWriter};
use ota_common::hash::{Digests, SignedLength, VerifyError};
use ota_common::payload::Compressed;
use ota_common::tuf::{FetchError, TufError};
use rand::Rng;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

mod compressed;
pub mod delta;

/// Bytes read from the network and written per step (the top of the
/// 64 KiB..1 MiB band). Every write but the last is this large and starts
/// at a multiple of it, which suits flash and block devices. A direct
/// write waits for the device, so its size sets how often the device
/// idles between writes: `dd oflag=direct` into the benchmark's loop
/// device took 12-14 s per GiB with 256 KiB writes and 4.6-5 s with 1 MiB
/// (docs/BENCHMARKS.md, "Install at the speed of the disk").
pub const CHUNK: usize = 1024 * 1024;

/// Why an install failed. The active slot is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("image stream: {0}")]
    Stream(#[source] io::Error),
    #[error("opening the image stream: {0}")]
    Open(#[source] TufError),
    #[error("image refused: {0}")]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The slot, read back from storage after its last fsync, does not
    /// hold the signed image: the download was altered on the way, or
    /// storage did not keep what was written. The read-back is the one
    /// check of the image's digests, so it cannot tell which.
    #[error("slot {slot}: the image read back does not match the signed metadata ({source}): the download was altered or storage did not keep it")]
    NotTheSignedImage {
        slot: crate::slot::SlotId,
        #[source]
        source: VerifyError,
    },
    #[error("saving the download checkpoint: {0}")]
    Checkpoint(String),
    /// A compressed release that cannot be decoded within its signed
    /// numbers or the agent's limits (corrupt, a decompression bomb, a
    /// window larger than allowed).
    #[error("decompressing the {encoding} image: {detail}")]
    Decode {
        encoding: &'static str,
        detail: String,
    },
}

impl InstallError {
    /// True when the bytes already written are still good and a later poll
    /// may resume from the durable checkpoint: the network failed, not the
    /// image or the slot.
    pub fn keeps_checkpoint(&self) -> bool {
        match self {
            InstallError::Stream(_) => true,
            InstallError::Open(e) => is_transient(e),
            InstallError::Verify(_)
            | InstallError::Slot(_)
            | InstallError::NotTheSignedImage { .. }
            | InstallError::Checkpoint(_)
            | InstallError::Decode { .. } => false,
        }
    }
}

/// Network failures worth another try: the connection broke, timed out, or
/// the server had a (5xx) problem. A 404 or an oversized answer is not.
pub(crate) fn is_transient(e: &TufError) -> bool {
    match e {
        TufError::Fetch { error, .. } => match error {
            FetchError::Transport(_) => true,
            FetchError::Http { status } => *status >= 500 || *status == 408 || *status == 429,
            FetchError::NotFound | FetchError::TooLarge { .. } => false,
        },
        _ => false,
    }
}

/// How often and how patiently a broken image stream is re-opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failures in a row tolerated (a try that delivers data resets the count).
    pub retries: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// Wait before retry number `attempt` (0-based): doubling from `initial`,
    /// capped at `max`, then scaled by a random 50..100% so a fleet that lost
    /// the server at the same moment does not come back in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let base = self.initial.saturating_mul(factor).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// What the install needs from its caller while it runs.
pub trait InstallHooks<'r> {
    /// Opens the image stream at byte `offset` (a Range request when > 0).
    fn open(&mut self, offset: u64) -> Result<Box<dyn Read + Send + 'r>, TufError>;
    /// `done` bytes written so far (called after every chunk; a liveness sign).
    fn progress(&mut self, done: u64);
    /// The first `durable` bytes are written and fsynced: persist the offset.
    fn checkpoint(&mut self, durable: u64) -> Result<(), String>;
    /// Waits `delay` before a retry (the caller may keep a watchdog fed meanwhile).
    fn wait(&mut self, delay: Duration) {
        std::thread::sleep(delay);
    }
}

/// One resumable install of an image of `length` bytes with `digests` into `slot`.
#[derive(Debug, Clone)]
pub struct Download<'a> {
    /// The slot image's length and digests (a compressed release's
    /// decoded image).
    pub length: u64,
    pub digests: &'a Digests,
    /// `Some`: the stream is this compressed target, decoded on the way
    /// into the slot; `None`: the stream is the image itself.
    pub payload: Option<&'a Compressed>,
    /// Largest decoder window a compressed stream may ask for, in bytes.
    pub max_window: u64,
    pub slot: &'a Slot,
    pub booted: &'a Slot,
    /// Durable checkpoint to resume from (0: from the start).
    pub resume_from: u64,
    /// fsync and persist the offset after every this many bytes...
    pub checkpoint_every: u64,
    /// ...once at least this long after the previous checkpoint.
    pub checkpoint_interval: Duration,
    pub retry: RetryPolicy,
}

/// Streams `reader` (an image of `length` bytes with `digests`) into `slot`
/// while `booted` runs, then reads it back and verifies it again.
pub fn install_stream<'r>(
    reader: impl Read + Send + 'r,
    length: u64,
    digests: &Digests,
    slot: &Slot,
    booted: &Slot,
    progress: impl FnMut(u64),
) -> Result<(), InstallError> {
    struct Once<R, P> {
        reader: Option<R>,
        progress: P,
    }
    impl<'r, R: Read + Send + 'r, P: FnMut(u64)> InstallHooks<'r> for Once<R, P> {
        fn open(&mut self, _offset: u64) -> Result<Box<dyn Read + Send + 'r>, TufError> {
            match self.reader.take() {
                Some(r) => Ok(Box::new(r)),
                None => Err(TufError::Fetch {
                    url: "(stream)".into(),
                    error: FetchError::NotFound,
                }),
            }
        }
        fn progress(&mut self, done: u64) {
            (self.progress)(done)
        }
        fn checkpoint(&mut self, _durable: u64) -> Result<(), String> {
            Ok(())
        }
    }
    let job = Download {
        length,
        digests,
        payload: None,
        max_window: 0,
        slot,
        booted,
        resume_from: 0,
        checkpoint_every: u64::MAX,
        checkpoint_interval: Duration::ZERO,
        retry: RetryPolicy {
            retries: 0,
            initial: Duration::ZERO,
            max: Duration::ZERO,
        },
    };
    install(
        &job,
        &mut Once {
            reader: Some(reader),
            progress,
        },
    )
}

/// How many bytes the install writes before it asks the follower thread to
/// make them durable, between checkpoints. Small
/// enough that the disk writes while the network delivers, instead of
/// idling until a large flush at the end; large enough that the flushes
/// cost little.
const FLUSH_EVERY: u64 = 8 * 1024 * 1024;

/// The resumable install. Resuming at a checkpoint streams the rest after
/// the bytes already in the slot (the read-back checks those like the
/// others), re-opening the stream with a Range
/// request from the last written byte when the network fails (bounded
/// retries, exponential backoff with jitter).
///
/// Three threads, each on its own resource: this one receives, checks
/// (length and digests) and hands each full chunk to a writer thread,
/// which writes it into the slot while the next chunk arrives; a follower
/// makes what was written durable (fdatasync), reports each durable
/// offset back, and reads back from storage and hashes the range it just
/// made durable (`slot::ReadBack`). Written one after the other on one
/// thread, receiving and hashing a chunk and writing it added up, where on
/// two cores they can overlap (docs/BENCHMARKS.md, "Install at the speed
/// of the disk"). A checkpoint (every `checkpoint_every` bytes, at most
/// once per `checkpoint_interval`) waits for the follower to report its
/// offset durable before the caller records it, so it never names bytes
/// a power cut could take away; between checkpoints no fsync stalls the
/// stream. After the last chunk: the final fsync, the rest of the
/// read-back, and the whole slot must match every signed digest.
pub fn install<'r>(
    job: &Download<'_>,
    hooks: &mut dyn InstallHooks<'r>,
) -> Result<(), InstallError> {
    let mut received = SignedLength::new(job.length);
    let resume_from = match job.payload {
        Some(payload) => compressed::resume_point(payload, job.resume_from),
        None => job.resume_from,
    };
    let writer = SlotWriter::open_at(job.slot, job.booted, job.length, resume_from)?;
    let mut read_back = writer.read_back(job.digests)?;
    let prefix = writer.written();
    if prefix > 0 {
        received.skip(prefix)?;
        tracing::info!(slot = %job.slot.id, offset = prefix, length = job.length,
            "resuming the download after the bytes already in the slot");
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (written_tx, written_rx) = mpsc::channel::<u64>();
        let (durable_tx, durable_rx) = mpsc::channel::<u64>();
        if prefix > 0 {
            // The resumed prefix is read back like the rest.
            let _ = written_tx.send(prefix);
        }
        let stop = &stop;
        let spawned = std::thread::Builder::new()
            .name("slot-follower".into())
            .spawn_scoped(scope, move || {
                // The highest offset made durable so far; the read-back
                // trails it.
                let mut durable = read_back.done();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // Wait for the writer only when there is nothing left to
                    // read back; otherwise just look for a new mark, so a
                    // long read-back (a resumed download's prefix) never
                    // keeps a checkpoint waiting for its flush.
                    let mark = if read_back.done() < durable {
                        match written_rx.try_recv() {
                            Ok(upto) => Some(upto),
                            Err(mpsc::TryRecvError::Empty) => None,
                            Err(mpsc::TryRecvError::Disconnected) => break,
                        }
                    } else {
                        match written_rx.recv() {
                            Ok(upto) => Some(upto),
                            Err(_) => break,
                        }
                    };
                    if let Some(mut upto) = mark {
                        // Marks that queued up meanwhile are made durable in
                        // one flush.
                        while let Ok(later) = written_rx.try_recv() {
                            upto = later;
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        read_back.sync()?;
                        // The main thread may have finished already; then
                        // this offset is of no use to it.
                        let _ = durable_tx.send(upto);
                        durable = durable.max(upto);
                    }
                    let step = durable.min(read_back.done().saturating_add(FLUSH_EVERY));
                    read_back.catch_up(step, stop)?;
                }
                Ok::<_, SlotError>(read_back)
            });
        // Nothing is written yet when the system refuses a thread.
        let thread_error = |e| {
            InstallError::Slot(SlotError::Io {
                slot: job.slot.id,
                path: job.slot.path.clone(),
                action: "starting the install's threads",
                source: e,
            })
        };
        let follower = spawned.map_err(thread_error)?;
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<WriteJob>(BUFFERS);
        let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
        for _ in 0..BUFFERS {
            let _ = free_tx.send(AlignedBuf::new(CHUNK));
        }
        let writing = std::thread::Builder::new()
            .name("slot-writer".into())
            .spawn_scoped(scope, move || {
                write_behind(writer, jobs_rx, free_tx, written_tx)
            });
        // Refused: the closure, and with it the follower's channel, is
        // dropped, so the follower ends too.
        let writing = writing.map_err(thread_error)?;
        let mut slot = SlotPipeline {
            jobs: jobs_tx,
            free: free_rx,
            durable: durable_rx,
            queued: prefix,
            is_finished: &|| follower.is_finished() || writing.is_finished(),
        };
        let streamed = match job.payload {
            None => stream(job, hooks, &mut received, &mut slot),
            Some(payload) => compressed::stream(job, payload, hooks, &mut received, &mut slot),
        };
        if streamed.is_err() {
            // The stream's error is the one to tell; the others only wrote
            // and read verified bytes.
            stop.store(true, Ordering::Relaxed);
        }
        // The writer writes what is queued, then ends, and so does the
        // follower once it has flushed and read back what was written.
        drop(slot);
        let wrote = join(writing);
        let followed = join(follower);
        streamed?;
        // A failed write is told before a failed read-back: the read-back
        // of a range that was never written is no news.
        let writer = wrote?;
        let read_back = followed?;
        received.finish()?;
        let written = writer.finish()?;
        crate::crashpoint::hit(crate::crashpoint::INSTALL_BEFORE_READ_BACK);
        // Signs of life while the rest is read back: after a resume the
        // follower may leave most of the image.
        let length = job.length;
        let alive = &mut || hooks.progress(length);
        read_back.finish(&written, alive).map_err(|e| match e {
            SlotError::ReadBack { slot, source, .. } => {
                InstallError::NotTheSignedImage { slot, source }
            }
            other => other.into(),
        })
    })
}

/// Chunks in the install at once: one being filled and checked while the
/// other is written. Each is [`CHUNK`] bytes, allocated once per install.
const BUFFERS: usize = 2;

/// What the stream hands the writer thread, in order.
enum WriteJob {
    /// A checked chunk: write its first `usize` bytes at the slot's end.
    Write(AlignedBuf, usize),
    /// Ask the follower to make the slot durable up to this offset, once
    /// every chunk queued before is written.
    Flush(u64),
}

/// The writer thread: writes the chunks in the order they come, gives each
/// buffer back, and passes flush requests on to the follower once the
/// bytes they cover are written. Ends when the stream drops its side, or
/// at the first failed write (its error is the install's); either way the
/// follower's channel goes with it.
fn write_behind(
    mut writer: SlotWriter,
    jobs: mpsc::Receiver<WriteJob>,
    free: mpsc::Sender<AlignedBuf>,
    written: mpsc::Sender<u64>,
) -> Result<SlotWriter, SlotError> {
    for job in jobs {
        match job {
            WriteJob::Write(buf, n) => {
                writer.write_chunk(&buf[..n])?;
                crate::crashpoint::hit(crate::crashpoint::DOWNLOAD_CHUNK_WRITTEN);
                let _ = free.send(buf);
            }
            WriteJob::Flush(upto) => {
                let _ = written.send(upto);
            }
        }
    }
    Ok(writer)
}

/// The stream's side of the writer and follower threads.
struct SlotPipeline<'a> {
    jobs: mpsc::SyncSender<WriteJob>,
    /// Buffers back from the writer, ready to be filled again.
    free: mpsc::Receiver<AlignedBuf>,
    /// Offsets the follower has made durable.
    durable: mpsc::Receiver<u64>,
    /// Bytes handed to the writer so far: the slot's length once they are
    /// written.
    queued: u64,
    /// True once the writer or the follower has stopped early, which they
    /// do only on an error.
    is_finished: &'a dyn Fn() -> bool,
}

impl SlotPipeline<'_> {
    /// An empty buffer, once the writer has one to give back; `None` when
    /// the writer has stopped (its error is the install's).
    fn buffer(&self) -> Option<AlignedBuf> {
        self.free.recv().ok()
    }

    /// Hands the first `n` bytes of `buf`, already checked against the
    /// signed length, to the writer.
    fn write(&mut self, buf: AlignedBuf, n: usize) -> Go {
        if self.jobs.send(WriteJob::Write(buf, n)).is_err() {
            return Go::Stop;
        }
        self.queued += n as u64;
        Go::On
    }

    /// Asks for everything queued so far to be made durable.
    fn flush(&self) {
        let _ = self.jobs.send(WriteJob::Flush(self.queued));
    }
}

/// A writer's or follower's result; a panic in it is re-raised here, as a
/// panic in this thread would be.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Streams the image from `received.len()` to its end into the slot,
/// asking the follower to flush every so often and recording checkpoints
/// once it reports them durable. Returns early (Ok) when the writer or the
/// follower has failed: that error is the install's.
fn stream<'r>(
    job: &Download<'_>,
    hooks: &mut dyn InstallHooks<'r>,
    received: &mut SignedLength,
    slot: &mut SlotPipeline<'_>,
) -> Result<(), InstallError> {
    let mut marks = Marks::new(slot.queued);
    // A buffer kept for the retry after a broken chunk.
    let mut spare: Option<AlignedBuf> = None;
    let mut reader: Option<Box<dyn Read + Send + 'r>> = None;
    let mut failures = 0u32;
    loop {
        let stream = match reader.as_mut() {
            Some(r) => r,
            None => match hooks.open(received.len()) {
                Ok(r) => reader.insert(r),
                Err(e) if is_transient(&e) && failures < job.retry.retries => {
                    let delay = job.retry.delay(failures);
                    failures += 1;
                    tracing::warn!(error = %e, attempt = failures, retries = job.retry.retries,
                        delay_ms = delay.as_millis() as u64, "could not open the image stream; retrying");
                    hooks.wait(delay);
                    continue;
                }
                Err(e) => return Err(InstallError::Open(e)),
            },
        };
        // Aligned, and filled whole before each write, so every chunk but
        // the image's last can go to the slot with O_DIRECT.
        let Some(mut buf) = spare.take().or_else(|| slot.buffer()) else {
            return Ok(());
        };
        let result = match fill(stream, &mut buf) {
            // A stream that ends early (connection closed cleanly) broke off like any other.
            Ok(0) if received.len() < job.length => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("stream ended at byte {} of {}", received.len(), job.length),
            )),
            other => other,
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if failures < job.retry.retries => {
                // Bytes of the broken chunk were neither hashed nor written:
                // the next request starts right after the last written byte.
                spare = Some(buf);
                reader = None;
                let delay = job.retry.delay(failures);
                failures += 1;
                tracing::warn!(error = %e, offset = received.len(), attempt = failures, retries = job.retry.retries,
                    delay_ms = delay.as_millis() as u64, "image stream broke off; resuming with a Range request");
                hooks.wait(delay);
                continue;
            }
            Err(e) => return Err(InstallError::Stream(e)),
        };
        if n == 0 {
            return Ok(());
        }
        failures = 0;
        // Counted against the signed length first: bytes beyond it never
        // reach the slot.
        received.update(&buf[..n])?;
        if slot.write(buf, n) == Go::Stop {
            return Ok(());
        }
        hooks.progress(received.len());
        if marks.after_write(job, hooks, slot, true)? == Go::Stop {
            return Ok(());
        }
    }
}

/// Whether the stream goes on after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Go {
    On,
    /// The follower has failed: its error is the install's.
    Stop,
}

/// Where the stream last asked for a flush and recorded a checkpoint.
#[derive(Debug)]
struct Marks {
    last_flush: u64,
    last_checkpoint: u64,
    last_checkpoint_at: std::time::Instant,
}

impl Marks {
    fn new(written: u64) -> Marks {
        Marks {
            last_flush: written,
            last_checkpoint: written,
            last_checkpoint_at: std::time::Instant::now(),
        }
    }

    /// After each chunk handed to the writer: a checkpoint when one is due
    /// and `may_checkpoint` (a compressed stream can resume only at a frame
    /// boundary), else a flush request every [`FLUSH_EVERY`] bytes.
    fn after_write(
        &mut self,
        job: &Download<'_>,
        hooks: &mut dyn InstallHooks<'_>,
        slot: &mut SlotPipeline<'_>,
        may_checkpoint: bool,
    ) -> Result<Go, InstallError> {
        let written = slot.queued;
        if may_checkpoint
            && written - self.last_checkpoint >= job.checkpoint_every
            && self.last_checkpoint_at.elapsed() >= job.checkpoint_interval
            && written < job.length
        {
            // Written and durable first (the writer, then the follower's
            // fdatasync), recorded second: a checkpoint never names bytes a
            // power cut could take away. The wait is short: both have been
            // working all along.
            slot.flush();
            self.last_flush = written;
            loop {
                match slot.durable.recv() {
                    Ok(durable) if durable >= written => break,
                    Ok(_) => continue,
                    // The follower stopped: an error, or the writer's.
                    Err(_) => return Ok(Go::Stop),
                }
            }
            hooks
                .checkpoint(written)
                .map_err(InstallError::Checkpoint)?;
            self.last_checkpoint = written;
            self.last_checkpoint_at = std::time::Instant::now();
        } else if written - self.last_flush >= FLUSH_EVERY && written < job.length {
            // The follower's flush covers the bytes written before this.
            slot.flush();
            self.last_flush = written;
        }
        // Offsets flushed between checkpoints are of no further use here.
        slot.durable.try_iter().for_each(drop);
        if (slot.is_finished)() {
            // The writer and the follower stop only on an error, which
            // ends the install.
            return Ok(Go::Stop);
        }
        Ok(Go::On)
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn fill(reader: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::tests::digests_of;
    use crate::slot::Slots;
    use ota_common::hash::Digests;

    fn setup() -> (tempfile::TempDir, Slots) {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = Slots::new(dir.path().join("a.img"), dir.path().join("b.img"), None);
        std::fs::write(&slots.a.path, b"running").expect("a");
        (dir, slots)
    }

    #[test]
    fn installs_a_multi_chunk_image() {
        let (_d, s) = setup();
        let data: Vec<u8> = (0..(CHUNK * 2 + 1234))
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        let mut last = 0;
        install_stream(
            &data[..],
            data.len() as u64,
            &digests_of(&data),
            &s.b,
            &s.a,
            |n| last = n,
        )
        .expect("install");
        assert_eq!(last, data.len() as u64);
        assert_eq!(std::fs::read(&s.b.path).expect("read"), data);
        assert_eq!(std::fs::read(&s.a.path).expect("read"), b"running");
    }

    /// The writer thread's failure is the install's error, whichever chunk
    /// it comes at, and nothing waits forever for a thread that is gone:
    /// /dev/full refuses every write with ENOSPC.
    #[test]
    fn a_failed_write_ends_the_install_with_its_error() {
        let (_d, s) = setup();
        let full = Slots::new(s.a.path.clone(), "/dev/full".into(), None);
        let data = vec![5u8; CHUNK * 4 + 10];
        let err = install_stream(
            &data[..],
            data.len() as u64,
            &digests_of(&data),
            &full.b,
            &full.a,
            |_| {},
        )
        .expect_err("no space");
        assert!(
            matches!(&err, InstallError::Slot(SlotError::Io { action: "writing", source, .. })
                if source.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32)),
            "{err:?}"
        );
        assert_eq!(std::fs::read(&s.a.path).expect("read"), b"running");
    }

    #[test]
    fn oversized_stream_is_cut_before_writing_the_extra_bytes() {
        let (_d, s) = setup();
        let signed = vec![1u8; 1000];
        let served = vec![1u8; CHUNK * 3];
        let err = install_stream(&served[..], 1000, &digests_of(&signed), &s.b, &s.a, |_| {})
            .expect_err("too long");
        assert!(
            matches!(err, InstallError::Verify(VerifyError::TooLong { .. })),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&s.b.path).expect("stat").len(), 0);
    }

    #[test]
    fn tampered_or_short_images_are_refused() {
        let (_d, s) = setup();
        let signed = vec![1u8; 5000];
        let mut tampered = signed.clone();
        tampered[4000] = 2;
        let err = install_stream(
            &tampered[..],
            5000,
            &digests_of(&signed),
            &s.b,
            &s.a,
            |_| {},
        )
        .expect_err("tampered");
        assert!(
            matches!(
                err,
                InstallError::NotTheSignedImage {
                    source: VerifyError::DigestMismatch { .. },
                    ..
                }
            ),
            "{err}"
        );
        let err = install_stream(
            &signed[..4999],
            5000,
            &digests_of(&signed),
            &s.b,
            &s.a,
            |_| {},
        )
        .expect_err("short");
        // A short stream is a broken connection as far as the install can tell.
        assert!(
            matches!(&err, InstallError::Stream(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err}"
        );
        assert!(err.keeps_checkpoint());
    }

    /// An endless stream that counts what it gave and says when it is dropped.
    struct Endless {
        served: std::sync::Arc<std::sync::atomic::AtomicU64>,
        dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
        fail_after: Option<u64>,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            use std::sync::atomic::Ordering;
            let served = self.served.load(Ordering::SeqCst);
            if self.fail_after.is_some_and(|limit| served >= limit) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "reset by peer",
                ));
            }
            buf.fill(1);
            self.served.fetch_add(buf.len() as u64, Ordering::SeqCst);
            Ok(buf.len())
        }
    }

    impl Drop for Endless {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn an_endless_stream_is_read_at_most_one_chunk_past_the_signed_length() {
        use std::sync::atomic::Ordering;
        let (_d, s) = setup();
        let served = std::sync::Arc::default();
        let dropped = std::sync::Arc::default();
        let stream = Endless {
            served: std::sync::Arc::clone(&served),
            dropped: std::sync::Arc::clone(&dropped),
            fail_after: None,
        };
        let signed = vec![1u8; 1000];
        let err = install_stream(stream, 1000, &digests_of(&signed), &s.b, &s.a, |_| {})
            .expect_err("endless");
        assert!(
            matches!(err, InstallError::Verify(VerifyError::TooLong { .. })),
            "{err}"
        );
        // Reading stopped at the first chunk past the end, and the stream is closed.
        assert!(served.load(Ordering::SeqCst) <= CHUNK as u64);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn a_dropped_connection_is_a_stream_error_that_keeps_the_written_bytes() {
        use std::sync::atomic::Ordering;
        let (_d, s) = setup();
        let served = std::sync::Arc::default();
        let dropped = std::sync::Arc::default();
        let length = (CHUNK * 4) as u64;
        let stream = Endless {
            served: std::sync::Arc::clone(&served),
            dropped: std::sync::Arc::clone(&dropped),
            fail_after: Some((CHUNK * 2) as u64),
        };
        let image = vec![1u8; CHUNK * 4];
        let err = install_stream(stream, length, &digests_of(&image), &s.b, &s.a, |_| {})
            .expect_err("reset");
        assert!(
            matches!(&err, InstallError::Stream(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{err}"
        );
        assert!(err.keeps_checkpoint());
        assert!(dropped.load(Ordering::SeqCst));
        // The two chunks before the reset were verified and written.
        assert_eq!(
            std::fs::metadata(&s.b.path).expect("stat").len(),
            (CHUNK * 2) as u64
        );
    }

    /// Hooks over an in-memory image that record checkpoints.
    struct Recorder<'a> {
        image: &'a [u8],
        checkpoints: Vec<u64>,
        /// A slow link: a pause after each chunk.
        pace: Duration,
    }

    impl<'a> InstallHooks<'a> for Recorder<'a> {
        fn open(&mut self, offset: u64) -> Result<Box<dyn Read + Send + 'a>, TufError> {
            Ok(Box::new(&self.image[offset as usize..]))
        }
        fn progress(&mut self, _done: u64) {
            std::thread::sleep(self.pace);
        }
        fn checkpoint(&mut self, durable: u64) -> Result<(), String> {
            self.checkpoints.push(durable);
            Ok(())
        }
    }

    fn job<'a>(
        s: &'a Slots,
        digests: &'a Digests,
        length: u64,
        interval: Duration,
    ) -> Download<'a> {
        Download {
            length,
            digests,
            payload: None,
            max_window: 0,
            slot: &s.b,
            booted: &s.a,
            resume_from: 0,
            checkpoint_every: CHUNK as u64,
            checkpoint_interval: interval,
            retry: RetryPolicy {
                retries: 0,
                initial: Duration::ZERO,
                max: Duration::ZERO,
            },
        }
    }

    #[test]
    fn checkpoints_need_both_the_bytes_and_the_interval() {
        let (_d, s) = setup();
        let image: Vec<u8> = (0..CHUNK * 4).map(|i| (i % 253) as u8).collect();
        let digests = digests_of(&image);
        let mut every_chunk = Recorder {
            image: &image,
            checkpoints: Vec::new(),
            pace: Duration::from_millis(5),
        };
        let length = image.len() as u64;
        install(&job(&s, &digests, length, Duration::ZERO), &mut every_chunk).expect("install");
        // Each at a chunk boundary the follower had made durable, in order,
        // none at the end (the install's own final fsync covers it). Which
        // boundaries depends on how fast the follower's flushes come back.
        let c = &every_chunk.checkpoints;
        assert!(
            !c.is_empty(),
            "a 100 ms pause per chunk leaves time to flush"
        );
        assert!(c.windows(2).all(|w| w[0] < w[1]), "{c:?}");
        assert!(
            c.iter()
                .all(|&d| d % CHUNK as u64 == 0 && d > 0 && d < length),
            "{c:?}"
        );

        let mut hourly = Recorder {
            image: &image,
            checkpoints: Vec::new(),
            pace: Duration::from_millis(5),
        };
        install(
            &job(&s, &digests, length, Duration::from_secs(3600)),
            &mut hourly,
        )
        .expect("install");
        assert!(hourly.checkpoints.is_empty(), "{:?}", hourly.checkpoints);
        assert_eq!(std::fs::read(&s.b.path).expect("slot"), image);
    }

    #[test]
    fn refuses_to_install_into_the_booted_slot() {
        let (_d, s) = setup();
        let data = b"new image";
        let err = install_stream(&data[..], 9, &digests_of(data), &s.a, &s.a, |_| {})
            .expect_err("booted");
        assert!(
            matches!(err, InstallError::Slot(SlotError::Booted { .. })),
            "{err}"
        );
        assert_eq!(std::fs::read(&s.a.path).expect("read"), b"running");
    }
}
