//! The one-pass streaming install: every chunk is checked by the stream
//! verifier (signed length enforced as bytes arrive) *before* it is written,
//! the slot is fsynced, then read back from storage and verified again.
//! Memory use is one buffer, whatever the image size.

use crate::slot::{Slot, SlotError, SlotWriter};
use ota_common::hash::{Digests, StreamVerifier, VerifyError};
use ota_common::tuf::{FetchError, TufError};
use rand::Rng;
use std::io::{self, Read};
use std::time::Duration;

/// Bytes read from the network and written per step (within the 64 KiB..1 MiB
/// band). Every write but the last is this large and starts at a multiple of
/// it, which suits flash and block devices.
pub const CHUNK: usize = 256 * 1024;

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
    #[error("saving the download checkpoint: {0}")]
    Checkpoint(String),
}

impl InstallError {
    /// True when the bytes already written are still good and a later poll
    /// may resume from the durable checkpoint: the network failed, not the
    /// image or the slot.
    pub fn keeps_checkpoint(&self) -> bool {
        match self {
            InstallError::Stream(_) => true,
            InstallError::Open(e) => is_transient(e),
            InstallError::Verify(_) | InstallError::Slot(_) | InstallError::Checkpoint(_) => false,
        }
    }
}

/// Network failures worth another try: the connection broke, timed out, or
/// the server had a (5xx) problem. A 404 or an oversized answer is not.
fn is_transient(e: &TufError) -> bool {
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
    pub length: u64,
    pub digests: &'a Digests,
    pub slot: &'a Slot,
    pub booted: &'a Slot,
    /// Durable checkpoint to resume from (0: from the start).
    pub resume_from: u64,
    /// fsync and persist the offset after every this many bytes.
    pub checkpoint_every: u64,
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
        slot,
        booted,
        resume_from: 0,
        checkpoint_every: u64::MAX,
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

/// The resumable install. Resuming at a checkpoint first re-hashes the
/// slot's bytes before it (one pass, one buffer) so the image is verified as
/// a whole; then streams the rest, re-opening the stream with a Range
/// request from the last written byte when the network fails (bounded
/// retries, exponential backoff with jitter); every `checkpoint_every`
/// bytes it fsyncs the slot and only then lets the caller persist the
/// offset. Finally fsync, read back from storage, verify again.
pub fn install<'r>(
    job: &Download<'_>,
    hooks: &mut dyn InstallHooks<'r>,
) -> Result<(), InstallError> {
    let mut verifier = StreamVerifier::new(job.digests.clone(), job.length)?;
    let mut writer = SlotWriter::open_at(job.slot, job.booted, job.length, job.resume_from)?;
    if writer.written() > 0 {
        writer.rehash_prefix(&mut verifier)?;
        tracing::info!(slot = %job.slot.id, offset = writer.written(), length = job.length,
            "resuming the download after the bytes already in the slot");
    }
    let mut last_checkpoint = writer.written();
    let mut buf = vec![0u8; CHUNK];
    let mut reader: Option<Box<dyn Read + Send + 'r>> = None;
    let mut failures = 0u32;
    loop {
        let stream = match reader.as_mut() {
            Some(r) => r,
            None => match hooks.open(verifier.len()) {
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
        let result = match fill(stream, &mut buf) {
            // A stream that ends early (connection closed cleanly) broke off like any other.
            Ok(0) if verifier.len() < job.length => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("stream ended at byte {} of {}", verifier.len(), job.length),
            )),
            other => other,
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if failures < job.retry.retries => {
                // Bytes of the broken chunk were neither hashed nor written:
                // the next request starts right after the last written byte.
                reader = None;
                let delay = job.retry.delay(failures);
                failures += 1;
                tracing::warn!(error = %e, offset = verifier.len(), attempt = failures, retries = job.retry.retries,
                    delay_ms = delay.as_millis() as u64, "image stream broke off; resuming with a Range request");
                hooks.wait(delay);
                continue;
            }
            Err(e) => return Err(InstallError::Stream(e)),
        };
        if n == 0 {
            break;
        }
        failures = 0;
        let chunk = &buf[..n];
        // Verified first: bytes beyond the signed length never reach the slot.
        verifier.update(chunk)?;
        writer.write_chunk(chunk)?;
        crate::crashpoint::hit(crate::crashpoint::DOWNLOAD_CHUNK_WRITTEN);
        hooks.progress(verifier.len());
        if writer.written() - last_checkpoint >= job.checkpoint_every
            && writer.written() < job.length
        {
            // Durable first, recorded second: a checkpoint never names bytes
            // that a power cut could still take away.
            writer.sync()?;
            hooks
                .checkpoint(writer.written())
                .map_err(InstallError::Checkpoint)?;
            last_checkpoint = writer.written();
        }
    }
    verifier.finish()?;
    let written = writer.finish()?;
    crate::crashpoint::hit(crate::crashpoint::INSTALL_BEFORE_READ_BACK);
    written.verify_read_back(job.digests)?;
    Ok(())
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
                InstallError::Verify(VerifyError::DigestMismatch { .. })
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
