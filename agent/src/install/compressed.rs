//! The compressed install: the same one pass as a raw image, with a
//! decoder between the network and the slot.
//!
//! ```text
//! network ─▶ Source (signed encoded length caps it; TUF digests and the
//!            frame's signed sha256 hash every byte; reconnects with Range)
//!         ─▶ decoder (zstd frame by frame, or one gzip or xz stream)
//!         ─▶ signed image length (caps the output: one byte more is a
//!            decompression bomb)
//!         ─▶ slot, followed by the flush + read-back thread as for raw,
//!            which checks the signed image sha256 on what storage returns
//! ```
//!
//! Resume after a power cut: a zstd target made of independent frames
//! (`ota-repo add` writes one per 8 MiB of image) lists each frame's
//! encoded length, decoded length and sha256 in signed metadata.
//! Checkpoints are taken only at frame boundaries, so a resumed download
//! starts a fresh decoder at a frame with no decoder or hash state to
//! restore: the read-back checks the slot's prefix with the rest (as for a
//! raw image) and every encoded byte fetched after the restart is checked
//! against its frame's signed sha256 (the whole-target TUF digests cannot
//! be, having missed the prefix). gzip, xz, and zstd without a frame
//! table, start over from byte 0 after a restart; within one poll every format
//! resumes where the connection broke, because the decoder is still in
//! memory.
//!
//! Memory: a gzip window is 32 KiB by the format. An xz block header
//! declares its dictionary, which the decoder checks against the limit
//! before allocating it. A zstd frame declares its
//! window in its header; the header is read and the window checked
//! against `download.max_decompression_window` before the decoder sees
//! the frame, so a stream asking for more is refused before anything is
//! allocated for it.

use super::{
    fill, is_transient, Download, Go, InstallError, InstallHooks, Marks, RetryPolicy, SlotPipeline,
};
use crate::crashpoint;
use crate::slot::AlignedBuf;
use ota_common::hash::{Digests, SignedLength, StreamVerifier, VerifyError};
use ota_common::payload::{Compressed, Encoding};
use std::cell::RefCell;
use std::io::{self, Read};

/// Where a download interrupted with `checkpoint` durable bytes resumes:
/// there when a signed frame starts there, else at byte 0.
pub(super) fn resume_point(payload: &Compressed, checkpoint: u64) -> u64 {
    if checkpoint == 0 || payload.frame_at(checkpoint).is_some() {
        return checkpoint;
    }
    tracing::info!(checkpoint, encoding = %payload.encoding,
        "no signed frame of the compressed image starts at the checkpoint; starting over");
    0
}

type Hooks<'h, 'r> = RefCell<&'h mut dyn InstallHooks<'r>>;

/// Streams the compressed target into the slot, decoding on the way.
pub(super) fn stream<'r>(
    job: &Download<'_>,
    payload: &Compressed,
    hooks: &mut dyn InstallHooks<'r>,
    image: &mut SignedLength,
    slot: &mut SlotPipeline<'_>,
) -> Result<(), InstallError> {
    let first = match slot.queued {
        0 => 0,
        done => payload.frame_at(done).ok_or_else(|| InstallError::Decode {
            encoding: payload.encoding.as_str(),
            detail: format!("no signed frame starts at the resumed offset {done}"),
        })?,
    };
    let encoded_start = payload.frames.get(first).map_or(0, |f| f.offset);
    let hooks: Hooks<'_, 'r> = RefCell::new(hooks);
    let mut source = Source {
        hooks: &hooks,
        retry: job.retry,
        reader: None,
        offset: encoded_start,
        limit: payload.encoded.length,
        end: payload.encoded.length,
        // The TUF digests cover the whole target: only a download from its
        // first byte can check them (a resumed one checks each frame).
        whole: if encoded_start == 0 {
            Some(StreamVerifier::new(
                payload.encoded.digests.clone(),
                payload.encoded.length,
            )?)
        } else {
            None
        },
        frame: None,
        failures: 0,
        failure: None,
    };
    let mut sink = Sink {
        job,
        encoding: payload.encoding.as_str(),
        hooks: &hooks,
        image,
        marks: Marks::new(slot.queued),
        slot,
        spare: None,
    };
    let go = if payload.frames.is_empty() {
        sink.whole_stream(payload.encoding, &mut source)?
    } else {
        sink.frames(payload, first, &mut source)?
    };
    if go == Go::Stop {
        return Ok(());
    }
    if let Some(whole) = source.whole.take() {
        whole.finish()?;
    }
    Ok(())
}

/// The encoded stream from the network: never read past `limit` (the
/// current frame's end, or the signed length), every byte hashed as it
/// arrives, a broken connection re-opened with a Range request at the
/// exact byte it broke at. Errors that are not the decoder's are kept in
/// `failure`, so the install reports them as they are.
struct Source<'s, 'h, 'r> {
    hooks: &'s Hooks<'h, 'r>,
    retry: RetryPolicy,
    reader: Option<Box<dyn Read + Send + 'r>>,
    offset: u64,
    limit: u64,
    end: u64,
    whole: Option<StreamVerifier>,
    frame: Option<StreamVerifier>,
    failures: u32,
    failure: Option<InstallError>,
}

impl Source<'_, '_, '_> {
    fn fail(&mut self, e: InstallError) -> io::Error {
        let message = e.to_string();
        self.failure = Some(e);
        io::Error::other(message)
    }

    fn back_off(&mut self, error: &dyn std::fmt::Display, what: &str) {
        let delay = self.retry.delay(self.failures);
        self.failures += 1;
        tracing::warn!(%error, offset = self.offset, attempt = self.failures,
            retries = self.retry.retries, delay_ms = delay.as_millis() as u64, "{what}");
        self.hooks.borrow_mut().wait(delay);
    }

    fn check(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut checked = Ok(());
        for verifier in [self.whole.as_mut(), self.frame.as_mut()]
            .into_iter()
            .flatten()
        {
            checked = checked.and(verifier.update(bytes));
        }
        checked.map_err(|e| self.fail(InstallError::Verify(e)))
    }
}

impl Read for Source<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the image stream already failed"));
        }
        let room = usize::try_from(self.limit.saturating_sub(self.offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if room == 0 {
            return Ok(0);
        }
        loop {
            let reader = match self.reader.as_mut() {
                Some(r) => r,
                None => {
                    let opened = self.hooks.borrow_mut().open(self.offset);
                    match opened {
                        Ok(r) => self.reader.insert(r),
                        Err(e) if is_transient(&e) && self.failures < self.retry.retries => {
                            self.back_off(&e, "could not open the image stream; retrying");
                            continue;
                        }
                        Err(e) => return Err(self.fail(InstallError::Open(e))),
                    }
                }
            };
            let result = match reader.read(&mut buf[..room]) {
                // Below the signed length: the connection closed early.
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("stream ended at byte {} of {}", self.offset, self.end),
                )),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other,
            };
            match result {
                Ok(n) => {
                    self.failures = 0;
                    self.check(&buf[..n])?;
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if self.failures < self.retry.retries => {
                    self.reader = None;
                    self.back_off(&e, "image stream broke off; resuming with a Range request");
                }
                Err(e) => return Err(self.fail(InstallError::Stream(e))),
            }
        }
    }
}

/// Decoded bytes on their way into the slot.
struct Sink<'a, 'j, 'f, 'h, 'r> {
    job: &'a Download<'j>,
    encoding: &'static str,
    hooks: &'a Hooks<'h, 'r>,
    image: &'a mut SignedLength,
    slot: &'a mut SlotPipeline<'f>,
    marks: Marks,
    /// A buffer not handed to the writer (a decoder's last, empty read).
    spare: Option<AlignedBuf>,
}

/// Why pumping decoded bytes stopped early.
enum Stopped {
    /// The decoder (or the source under it) failed.
    Read(io::Error),
    Install(InstallError),
    /// The writer or the follower failed: its error is the install's.
    Pipeline,
}

impl Sink<'_, '_, '_, '_, '_> {
    fn decode_error(&self, detail: String) -> InstallError {
        InstallError::Decode {
            encoding: self.encoding,
            detail,
        }
    }

    /// The install's error for a failed decode: the source's own failure
    /// (network, digest) when it had one, else the decoder's complaint.
    fn failed(
        &self,
        source: &mut Source<'_, '_, '_>,
        stopped: Stopped,
    ) -> Result<Go, InstallError> {
        match stopped {
            Stopped::Pipeline => Ok(Go::Stop),
            Stopped::Install(e) => Err(e),
            Stopped::Read(e) => Err(source
                .failure
                .take()
                .unwrap_or_else(|| self.decode_error(e.to_string()))),
        }
    }

    /// Decoded bytes from `decoder` into the slot until it ends; at most
    /// `cap` of them (the signed length of what it decodes).
    fn pump(&mut self, decoder: &mut dyn Read, cap: u64) -> Result<u64, Stopped> {
        let mut decoded = 0u64;
        loop {
            let Some(mut buf) = self.spare.take().or_else(|| self.slot.buffer()) else {
                return Err(Stopped::Pipeline);
            };
            let n = fill(decoder, &mut buf).map_err(Stopped::Read)?;
            if n == 0 {
                self.spare = Some(buf);
                return Ok(decoded);
            }
            if decoded + n as u64 > cap {
                return Err(Stopped::Install(self.bomb(cap)));
            }
            match self.image.update(&buf[..n]) {
                Ok(()) => {}
                Err(VerifyError::TooLong { expected }) => {
                    return Err(Stopped::Install(self.bomb(expected)))
                }
                Err(e) => return Err(Stopped::Install(e.into())),
            }
            if self.slot.write(buf, n) == Go::Stop {
                return Err(Stopped::Pipeline);
            }
            decoded += n as u64;
            let mut hooks = self.hooks.borrow_mut();
            hooks.progress(self.slot.queued);
            let go = self
                .marks
                .after_write(self.job, &mut **hooks, self.slot, false)
                .map_err(Stopped::Install)?;
            if go == Go::Stop {
                return Err(Stopped::Pipeline);
            }
        }
    }

    fn bomb(&self, cap: u64) -> InstallError {
        self.decode_error(format!(
            "it decodes to more than its signed length of {cap} bytes (a decompression bomb?); cut off there"
        ))
    }

    /// A target of signed independent zstd frames, from frame `first`:
    /// each decoded with a fresh decoder, checked against its signed
    /// numbers, and a checkpoint allowed after it.
    fn frames(
        &mut self,
        payload: &Compressed,
        first: usize,
        source: &mut Source<'_, '_, '_>,
    ) -> Result<Go, InstallError> {
        for (i, frame) in payload.frames.iter().enumerate().skip(first) {
            source.limit = frame.offset + frame.length;
            source.frame = Some(StreamVerifier::new(
                Digests {
                    sha256: Some(frame.sha256),
                    sha512: None,
                },
                frame.length,
            )?);
            let decoded = match self.zstd_frame(source, frame.image_length) {
                Ok(n) => n,
                Err(stopped) => return self.failed(source, stopped),
            };
            if decoded != frame.image_length {
                return Err(self.decode_error(format!(
                    "frame {i} decodes to {decoded} bytes, its signed length is {}",
                    frame.image_length
                )));
            }
            if source.offset != source.limit {
                return Err(self.decode_error(format!(
                    "frame {i} ends {} bytes before its signed end",
                    source.limit - source.offset
                )));
            }
            if let Some(v) = source.frame.take() {
                v.finish().map_err(|e| {
                    self.decode_error(format!("frame {i} does not match its signed digest: {e}"))
                })?;
            }
            crashpoint::hit(crashpoint::DOWNLOAD_FRAME_DECODED);
            let mut hooks = self.hooks.borrow_mut();
            if self
                .marks
                .after_write(self.job, &mut **hooks, self.slot, true)?
                == Go::Stop
            {
                return Ok(Go::Stop);
            }
        }
        Ok(Go::On)
    }

    /// A target without a frame table: decoded in one go, no checkpoint.
    fn whole_stream(
        &mut self,
        encoding: Encoding,
        source: &mut Source<'_, '_, '_>,
    ) -> Result<Go, InstallError> {
        let cap = self.job.length;
        match encoding {
            Encoding::Zstd => {
                // One or more frames back to back.
                let mut decoded = 0u64;
                while source.offset < source.end {
                    match self.zstd_frame(source, cap - decoded) {
                        Ok(n) => decoded += n,
                        Err(stopped) => return self.failed(source, stopped),
                    }
                }
            }
            Encoding::Gzip => {
                let mut decoder = flate2::read::MultiGzDecoder::new(&mut *source);
                let pumped = self.pump(&mut decoder, cap);
                drop(decoder);
                if let Err(stopped) = pumped {
                    return self.failed(source, stopped);
                }
                if source.offset != source.end {
                    return Err(self.decode_error(format!(
                        "the gzip stream ends {} bytes before the signed end of the target",
                        source.end - source.offset
                    )));
                }
            }
            Encoding::Xz => {
                // Each block's dictionary is checked against the limit
                // (plus the decoder's fixed tables and 64 KiB input buffer) before the
                // decoder allocates it.
                let limit_kib = u32::try_from(self.job.max_window / 1024 + 128).unwrap_or(u32::MAX);
                let mut decoder =
                    lzma_rust2::XzReader::new_mem_limit(&mut *source, true, limit_kib);
                let pumped = self.pump(&mut decoder, cap);
                drop(decoder);
                match pumped {
                    Err(Stopped::Read(e)) if source.failure.is_none() && e.to_string().contains("mem_limit") => {
                        return Err(self.decode_error(format!(
                            "an xz block asks for a dictionary larger than download.max_decompression_window allows ({} bytes): {e}",
                            self.job.max_window
                        )))
                    }
                    Err(stopped) => return self.failed(source, stopped),
                    Ok(_) => {}
                }
                if source.offset != source.end {
                    return Err(self.decode_error(format!(
                        "the xz stream ends {} bytes before the signed end of the target",
                        source.end - source.offset
                    )));
                }
            }
        }
        Ok(Go::On)
    }

    /// One zstd frame from `source` into the slot, its window checked
    /// against the agent's limit before the decoder sees it.
    fn zstd_frame(&mut self, source: &mut Source<'_, '_, '_>, cap: u64) -> Result<u64, Stopped> {
        let header = zstd_header(source).map_err(Stopped::Read)?;
        let window =
            zstd_window(&header).map_err(|detail| Stopped::Install(self.decode_error(detail)))?;
        if window > self.job.max_window {
            return Err(Stopped::Install(self.decode_error(format!(
                "a frame asks for a {window}-byte window; download.max_decompression_window allows {}",
                self.job.max_window
            ))));
        }
        let input = io::Cursor::new(header).chain(&mut *source);
        let mut decoder = ruzstd::decoding::StreamingDecoder::new(input)
            .map_err(|e| Stopped::Read(io::Error::other(e.to_string())))?;
        self.pump(&mut decoder, cap)
    }
}

/// The bytes of a zstd frame header up to and including its window or
/// content size fields (at most 18), read exactly.
fn zstd_header(source: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut header = vec![0u8; 5];
    source.read_exact(&mut header)?;
    if header[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a zstd frame (bad magic number)",
        ));
    }
    let descriptor = header[4];
    let single_segment = descriptor & 0x20 != 0;
    let dictionary_id = [0, 1, 2, 4][usize::from(descriptor & 0x03)];
    let content_size = match descriptor >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let rest = usize::from(!single_segment) + dictionary_id + content_size;
    header.resize(5 + rest, 0);
    source.read_exact(&mut header[5..])?;
    Ok(header)
}

/// The window a zstd frame declares (RFC 8878, 3.1.1.1): from the window
/// descriptor, or for a single-segment frame its content size.
fn zstd_window(header: &[u8]) -> Result<u64, String> {
    let descriptor = header[4];
    if descriptor & 0x20 == 0 {
        let w = header[5];
        let exponent = u32::from(w >> 3);
        let base = 1u64 << (10 + exponent);
        return Ok(base + (base / 8) * u64::from(w & 0x07));
    }
    let dictionary_id = [0, 1, 2, 4][usize::from(descriptor & 0x03)];
    let field = &header[5 + dictionary_id..];
    let size = match field.len() {
        1 => u64::from(field[0]),
        2 => u64::from(u16::from_le_bytes([field[0], field[1]])) + 256,
        4 => u64::from(u32::from_le_bytes([field[0], field[1], field[2], field[3]])),
        8 => u64::from_le_bytes([
            field[0], field[1], field[2], field[3], field[4], field[5], field[6], field[7],
        ]),
        n => return Err(format!("frame header with a {n}-byte content size field")),
    };
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::super::{install, InstallError, CHUNK};
    use super::*;
    use crate::slot::tests::digests_of;
    use crate::slot::Slots;
    use ota_common::payload::{Frame, SlotImage};
    use ota_common::tuf::TufError;
    use std::time::Duration;

    fn setup() -> (tempfile::TempDir, Slots) {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = Slots::new(dir.path().join("a.img"), dir.path().join("b.img"), None);
        std::fs::write(&slots.a.path, b"running").expect("a");
        (dir, slots)
    }

    /// A compressible image: runs of one byte value.
    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / 3000 % 11) as u8).collect()
    }

    fn sha256(bytes: &[u8]) -> [u8; 32] {
        digests_of(bytes).sha256.expect("sha256")
    }

    /// `image` as independent zstd frames of `frame` bytes, with its table.
    fn framed(image: &[u8], frame: usize) -> (Vec<u8>, Compressed) {
        let mut encoded = Vec::new();
        let mut frames = Vec::new();
        for (i, part) in image.chunks(frame).enumerate() {
            let bytes = ruzstd::encoding::compress_to_vec(
                part,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
            frames.push(Frame {
                offset: encoded.len() as u64,
                length: bytes.len() as u64,
                image_offset: (i * frame) as u64,
                image_length: part.len() as u64,
                sha256: sha256(&bytes),
            });
            encoded.extend_from_slice(&bytes);
        }
        let payload = compressed(Encoding::Zstd, &encoded, image, frames);
        (encoded, payload)
    }

    fn compressed(
        encoding: Encoding,
        encoded: &[u8],
        image: &[u8],
        frames: Vec<Frame>,
    ) -> Compressed {
        Compressed {
            encoding,
            encoded: SlotImage {
                length: encoded.len() as u64,
                digests: digests_of(encoded),
            },
            image: SlotImage {
                length: image.len() as u64,
                digests: Digests {
                    sha256: Some(sha256(image)),
                    sha512: None,
                },
            },
            frames,
        }
    }

    /// Serves `encoded` from any offset; records opens and checkpoints;
    /// optionally breaks the first connection after `break_at` bytes.
    struct Server<'a> {
        encoded: &'a [u8],
        opens: Vec<u64>,
        checkpoints: Vec<u64>,
        break_at: Option<usize>,
    }

    impl<'a> InstallHooks<'a> for Server<'a> {
        fn open(&mut self, offset: u64) -> Result<Box<dyn Read + Send + 'a>, TufError> {
            self.opens.push(offset);
            let rest = &self.encoded[offset as usize..];
            Ok(match self.break_at.take() {
                Some(n) => Box::new(&rest[..n.min(rest.len())]),
                None => Box::new(rest),
            })
        }
        fn progress(&mut self, _done: u64) {}
        fn checkpoint(&mut self, durable: u64) -> Result<(), String> {
            self.checkpoints.push(durable);
            Ok(())
        }
        fn wait(&mut self, _delay: Duration) {}
    }

    fn serve(encoded: &[u8]) -> Server<'_> {
        Server {
            encoded,
            opens: Vec::new(),
            checkpoints: Vec::new(),
            break_at: None,
        }
    }

    fn job<'a>(s: &'a Slots, payload: &'a Compressed, resume_from: u64) -> Download<'a> {
        Download {
            length: payload.image.length,
            digests: &payload.image.digests,
            payload: Some(payload),
            max_window: 8 << 20,
            slot: &s.b,
            booted: &s.a,
            resume_from,
            checkpoint_every: 1,
            checkpoint_interval: Duration::ZERO,
            retry: RetryPolicy {
                retries: 2,
                initial: Duration::ZERO,
                max: Duration::ZERO,
            },
        }
    }

    #[test]
    fn framed_zstd_installs_with_checkpoints_only_at_frame_boundaries() {
        let (_d, s) = setup();
        let data = image(CHUNK * 3 + 5000);
        let (encoded, payload) = framed(&data, 100_000);
        assert!(encoded.len() < data.len() / 4, "compressed");
        let mut server = serve(&encoded);
        // A connection that breaks mid-frame is resumed at the exact byte.
        server.break_at = Some(encoded.len() / 2);
        install(&job(&s, &payload, 0), &mut server).expect("install");
        assert_eq!(std::fs::read(&s.b.path).expect("slot"), data);
        assert_eq!(server.opens, [0, (encoded.len() / 2) as u64]);
        let boundaries: Vec<u64> = payload.frames.iter().map(|f| f.image_offset).collect();
        assert!(!server.checkpoints.is_empty());
        assert!(
            server.checkpoints.iter().all(|c| boundaries.contains(c)),
            "{:?} not all in {boundaries:?}",
            server.checkpoints
        );
    }

    #[test]
    fn a_restart_resumes_at_the_frame_of_the_checkpoint() {
        let (_d, s) = setup();
        let data = image(500_000);
        let (encoded, payload) = framed(&data, 100_000);
        // Two frames are in the slot (durable) when the agent restarts.
        std::fs::write(&s.b.path, &data[..200_000]).expect("prefix");
        let mut server = serve(&encoded);
        install(&job(&s, &payload, 200_000), &mut server).expect("resumed");
        assert_eq!(server.opens, [payload.frames[2].offset]);
        assert_eq!(std::fs::read(&s.b.path).expect("slot"), data);

        // A checkpoint inside a frame cannot be resumed: from byte 0.
        std::fs::write(&s.b.path, &data[..150_000]).expect("prefix");
        let mut server = serve(&encoded);
        install(&job(&s, &payload, 150_000), &mut server).expect("over");
        assert_eq!(server.opens, [0]);
        assert_eq!(std::fs::read(&s.b.path).expect("slot"), data);

        // A resumed prefix that is not the signed image is caught at the end.
        let mut wrong = data[..200_000].to_vec();
        wrong[10] ^= 1;
        std::fs::write(&s.b.path, &wrong).expect("prefix");
        let err = install(&job(&s, &payload, 200_000), &mut serve(&encoded))
            .expect_err("tampered prefix");
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
    }

    #[test]
    fn a_decompression_bomb_is_cut_off_at_the_signed_length() {
        let (_d, s) = setup();
        // 8 MiB of zeros in one small frame, signed as a 100000-byte image.
        let bomb = vec![0u8; 8 << 20];
        let (encoded, mut payload) = framed(&bomb, bomb.len());
        assert!(encoded.len() < 64 * 1024);
        let signed = &bomb[..100_000];
        payload.image = SlotImage {
            length: signed.len() as u64,
            digests: Digests {
                sha256: Some(sha256(signed)),
                sha512: None,
            },
        };
        payload.frames[0].image_length = signed.len() as u64;
        let err = install(&job(&s, &payload, 0), &mut serve(&encoded)).expect_err("bomb");
        assert!(
            matches!(&err, InstallError::Decode { detail, .. } if detail.contains("decompression bomb")),
            "{err}"
        );
        assert!(!err.keeps_checkpoint());
        assert!(std::fs::metadata(&s.b.path).expect("slot").len() <= 100_000);
        assert_eq!(std::fs::read(&s.a.path).expect("a"), b"running");
    }

    #[test]
    fn a_window_above_the_limit_is_refused_before_decoding() {
        let (_d, s) = setup();
        // A frame header asking for a 64 MiB window (exponent 16), then junk.
        let mut encoded = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x80];
        encoded.extend_from_slice(&[0u8; 100]);
        let data = vec![1u8; 1000];
        let frames = vec![Frame {
            offset: 0,
            length: encoded.len() as u64,
            image_offset: 0,
            image_length: 1000,
            sha256: sha256(&encoded),
        }];
        let payload = compressed(Encoding::Zstd, &encoded, &data, frames);
        let err = install(&job(&s, &payload, 0), &mut serve(&encoded)).expect_err("window");
        assert!(
            err.to_string().contains("67108864-byte window")
                && err.to_string().contains("max_decompression_window"),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&s.b.path).expect("slot").len(), 0);
    }

    #[test]
    fn truncated_and_tampered_streams_are_refused() {
        let (_d, s) = setup();
        let data = image(300_000);
        let (encoded, payload) = framed(&data, 100_000);
        // The server never sends the last bytes: a network failure, which
        // keeps the checkpoint for the next poll.
        let short = &encoded[..encoded.len() - 10];
        let mut server = Server {
            encoded: short,
            ..serve(short)
        };
        let mut j = job(&s, &payload, 0);
        j.retry.retries = 0;
        let err = install(&j, &mut server).expect_err("truncated");
        assert!(matches!(err, InstallError::Stream(_)), "{err}");
        assert!(err.keeps_checkpoint());

        let mut tampered = encoded.clone();
        let last = payload.frames[2].offset as usize + 20;
        tampered[last] ^= 0x55;
        let err = install(&job(&s, &payload, 0), &mut serve(&tampered)).expect_err("tampered");
        assert!(
            matches!(err, InstallError::Decode { .. } | InstallError::Verify(_)),
            "{err}"
        );
        assert!(!err.keeps_checkpoint());
        assert_eq!(std::fs::read(&s.a.path).expect("a"), b"running");
    }

    fn xz(data: &[u8], dict_size: u32) -> Vec<u8> {
        use std::io::Write as _;
        let mut options = lzma_rust2::XzOptions::with_preset(1);
        options.lzma_options.dict_size = dict_size;
        let mut w = lzma_rust2::XzWriter::new(Vec::new(), options).expect("xz");
        w.write_all(data).expect("xz");
        w.finish().expect("xz")
    }

    #[test]
    fn xz_installs_and_its_dictionary_is_limited() {
        let (_d, s) = setup();
        let data = image(CHUNK * 2 + 99);
        let encoded = xz(&data, 1 << 20);
        let payload = compressed(Encoding::Xz, &encoded, &data, Vec::new());
        install(&job(&s, &payload, 0), &mut serve(&encoded)).expect("xz");
        assert_eq!(std::fs::read(&s.b.path).expect("slot"), data);

        let mut j = job(&s, &payload, 0);
        j.max_window = 256 * 1024;
        let err = install(&j, &mut serve(&encoded)).expect_err("1 MiB dictionary");
        assert!(
            err.to_string().contains("max_decompression_window"),
            "{err}"
        );
        assert!(std::fs::metadata(&s.b.path).expect("slot").len() == 0);
    }

    #[test]
    fn gzip_installs_in_one_stream() {
        use std::io::Write as _;
        let (_d, s) = setup();
        let data = image(CHUNK * 2 + 77);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).expect("gz");
        let encoded = e.finish().expect("gz");
        let payload = compressed(Encoding::Gzip, &encoded, &data, Vec::new());
        let mut server = serve(&encoded);
        install(&job(&s, &payload, 0), &mut server).expect("gzip");
        assert_eq!(std::fs::read(&s.b.path).expect("slot"), data);
        assert!(server.checkpoints.is_empty(), "no frame to resume at");

        let mut bigger = data.clone();
        bigger.extend_from_slice(b"one more");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bigger).expect("gz");
        let encoded = e.finish().expect("gz");
        let mut payload = compressed(Encoding::Gzip, &encoded, &data, Vec::new());
        payload.encoded.length = encoded.len() as u64;
        let err = install(&job(&s, &payload, 0), &mut serve(&encoded)).expect_err("bomb");
        assert!(err.to_string().contains("decompression bomb"), "{err}");
    }

    #[test]
    fn window_from_the_descriptor_or_the_content_size() {
        // Window descriptor 0x58: exponent 11, mantissa 0: 2 MiB.
        assert_eq!(
            zstd_window(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58]),
            Ok(2 << 20)
        );
        // Mantissa 4 adds half: 3 MiB.
        assert_eq!(
            zstd_window(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x5c]),
            Ok(3 << 20)
        );
        // Single segment, 4-byte content size of 1 GiB.
        assert_eq!(
            zstd_window(&[0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0, 0, 0, 0x40]),
            Ok(1 << 30)
        );
        // Single segment, 2-byte content size (plus 256).
        assert_eq!(zstd_window(&[0x28, 0xb5, 0x2f, 0xfd, 0x60, 0, 1]), Ok(512));
    }

    #[test]
    fn header_reads_exactly_its_fields() {
        let mut bytes: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd, 0xa0, 1, 2, 3, 4, 99];
        assert_eq!(zstd_header(&mut bytes).expect("header").len(), 9);
        assert_eq!(bytes, &[99]);
        let mut not_zstd: &[u8] = b"\x1f\x8b\x08\x00\x00\x00";
        assert!(zstd_header(&mut not_zstd).is_err());
    }
}
