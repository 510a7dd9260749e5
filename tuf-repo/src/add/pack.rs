//! How `ota-repo add` turns an image file into the target's bytes: as it
//! is (raw), compressed, or, for an input that is already compressed,
//! kept as it is.
//!
//! The signed target is the encoded file (TUF length and hashes as usual);
//! `custom.payload` signs the decoded image's length and sha256, and for
//! zstd the frame table that lets a device resume at a frame boundary
//! (see `ota_common::payload`). zstd output is made of independent frames
//! of `frame_size` image bytes each, with a window of at most
//! [`ZSTD_WINDOW_LOG`] so the default device limit (8 MiB) accepts it.

use crate::error::{RepoError, Result};
use ota_common::hash::StreamDigests;
use ota_common::payload::Encoding;
use ota_common::wire::{FrameCustom, PayloadCustom};
use sha2::{Digest, Sha256, Sha512};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// zstd windows are at most 2^23 = 8 MiB: the agent's default
/// `download.max_decompression_window`.
pub const ZSTD_WINDOW_LOG: u32 = 23;
/// Image bytes per independent zstd frame by default: the resume granularity.
pub const DEFAULT_FRAME_SIZE: u64 = 8 * 1024 * 1024;

/// What `add --compress` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store the image as it is (no `custom.payload`).
    None,
    Zstd,
    Gzip,
    Xz,
}

impl std::str::FromStr for Compression {
    type Err = RepoError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            "gzip" => Ok(Compression::Gzip),
            "xz" => Ok(Compression::Xz),
            other => Err(RepoError::InvalidArgument(format!(
                "--compress {other:?}: expected zstd, gzip, xz or none"
            ))),
        }
    }
}

/// How to pack one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    pub compression: Compression,
    /// zstd: image bytes per independent frame.
    pub frame_size: u64,
    /// zstd 1..=19, gzip 1..=9; `None`: the format's usual default.
    pub level: Option<u32>,
    /// Also cut the image into a signed chunk index and store its chunks
    /// (`add/delta.rs`), so devices can install it as a delta.
    pub delta: bool,
    /// Whether the target lists sha512 beside sha256 (and is stored under
    /// its sha512 name too). Off by default, as in python-tuf and tough:
    /// devices check every digest a target lists, and sha512, without
    /// hardware support on most of them, cost an install more CPU than
    /// everything else it does (docs/BENCHMARKS.md, "Install at the speed
    /// of the disk").
    pub list_sha512: bool,
}

impl Packing {
    /// The image as it is, as `add` always did.
    pub fn raw() -> Packing {
        Packing {
            compression: Compression::None,
            frame_size: DEFAULT_FRAME_SIZE,
            level: None,
            delta: false,
            list_sha512: false,
        }
    }

    fn check(&self) -> Result<()> {
        if !(64 * 1024..=1 << 30).contains(&self.frame_size) {
            return Err(RepoError::InvalidArgument(format!(
                "--frame-size {}: must be between 65536 and 1073741824 bytes",
                self.frame_size
            )));
        }
        let max = match self.compression {
            Compression::None => return Ok(()),
            Compression::Zstd => 19,
            Compression::Gzip | Compression::Xz => 9,
        };
        match self.level {
            Some(level) if level == 0 || level > max => Err(RepoError::InvalidArgument(format!(
                "--compress-level {level}: must be between 1 and {max}"
            ))),
            _ => Ok(()),
        }
    }
}

/// The target's bytes as written, and what they decode to.
#[derive(Debug, Clone)]
pub struct Packed {
    /// Length and digests of the target file (the encoded bytes).
    pub digests: StreamDigests,
    /// `None` for a raw target.
    pub payload: Option<PayloadCustom>,
}

/// Writes the target for `image` to `out` as `packing` says, calling
/// `progress` with the image bytes read so far. Reads the image in
/// constant memory (one frame at a time for zstd); an already compressed
/// input is copied as it is, then decoded once to learn its image.
pub fn pack(
    mut image: std::fs::File,
    image_path: &Path,
    out: &mut impl Write,
    packing: &Packing,
    mut progress: impl FnMut(u64),
) -> Result<Packed> {
    packing.check()?;
    let image_err = |source| RepoError::Image {
        path: image_path.to_owned(),
        source,
    };
    let mut head = [0u8; 6];
    let n = read_full(&mut image, &mut head).map_err(image_err)?;
    image.seek(SeekFrom::Start(0)).map_err(image_err)?;
    let already = match packing.compression {
        Compression::None => None,
        _ => Encoding::sniff(&head[..n]),
    };
    let mut target = HashingWriter::new(out);
    let payload = match (already, packing.compression) {
        (Some(encoding), _) => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read_full(&mut image, &mut buf).map_err(image_err)?;
                if n == 0 {
                    break;
                }
                target.write_all(&buf[..n]).map_err(image_err)?;
                progress(target.length);
            }
            image.seek(SeekFrom::Start(0)).map_err(image_err)?;
            let (image_length, image_sha256) =
                decoded_image(encoding, &mut image).map_err(|e| {
                    RepoError::InvalidArgument(format!(
                        "{} looks {encoding}-compressed but does not decode (zstd windows may be at most 8 MiB, what devices accept by default): {e}",
                        image_path.display()
                    ))
                })?;
            Some(PayloadCustom {
                encoding: encoding.as_str().to_owned(),
                image_length,
                image_sha256: hex::encode(image_sha256),
                frames: Vec::new(),
            })
        }
        (None, Compression::None) => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read_full(&mut image, &mut buf).map_err(image_err)?;
                if n == 0 {
                    break;
                }
                target.write_all(&buf[..n]).map_err(image_err)?;
                progress(target.length);
            }
            None
        }
        (None, Compression::Zstd) => {
            Some(zstd_frames(&mut image, &mut target, packing, &mut progress).map_err(image_err)?)
        }
        (None, Compression::Gzip) => {
            Some(gzip(&mut image, &mut target, packing, &mut progress).map_err(image_err)?)
        }
        (None, Compression::Xz) => {
            Some(xz(&mut image, &mut target, packing, &mut progress).map_err(image_err)?)
        }
    };
    target.flush().map_err(image_err)?;
    Ok(Packed {
        digests: target.finish(),
        payload,
    })
}

/// Independent zstd frames of `frame_size` image bytes each.
fn zstd_frames(
    image: &mut impl Read,
    target: &mut HashingWriter<'_, impl Write>,
    packing: &Packing,
    progress: &mut impl FnMut(u64),
) -> io::Result<PayloadCustom> {
    let level = packing.level.map_or(9, |l| l as i32);
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    compressor.set_parameter(zstd::stream::raw::CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
    compressor.include_checksum(false)?;
    let frame_size = usize::try_from(packing.frame_size).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; frame_size];
    let mut image_sha256 = Sha256::new();
    let mut image_length = 0u64;
    let mut frames = Vec::new();
    loop {
        let n = read_full(image, &mut buf)?;
        if n == 0 {
            break;
        }
        image_sha256.update(&buf[..n]);
        image_length += n as u64;
        let frame = compressor.compress(&buf[..n])?;
        target.write_all(&frame)?;
        frames.push(FrameCustom {
            length: frame.len() as u64,
            image_length: n as u64,
            sha256: hex::encode(Sha256::digest(&frame)),
        });
        progress(image_length);
    }
    Ok(PayloadCustom {
        encoding: Encoding::Zstd.as_str().to_owned(),
        image_length,
        image_sha256: hex::encode(image_sha256.finalize()),
        frames,
    })
}

/// One gzip stream (devices restart it from byte 0 after a power cut).
fn gzip(
    image: &mut impl Read,
    target: &mut HashingWriter<'_, impl Write>,
    packing: &Packing,
    progress: &mut impl FnMut(u64),
) -> io::Result<PayloadCustom> {
    let level = flate2::Compression::new(packing.level.unwrap_or(6));
    let mut encoder = flate2::write::GzEncoder::new(target, level);
    let payload = one_stream(Encoding::Gzip, image, &mut encoder, progress)?;
    encoder.finish()?;
    Ok(payload)
}

/// One xz stream with a dictionary of at most 8 MiB (what devices accept
/// by default); devices restart it from byte 0 after a power cut.
fn xz(
    image: &mut impl Read,
    target: &mut HashingWriter<'_, impl Write>,
    packing: &Packing,
    progress: &mut impl FnMut(u64),
) -> io::Result<PayloadCustom> {
    let mut options = lzma_rust2::XzOptions::with_preset(packing.level.unwrap_or(6));
    options.lzma_options.dict_size = options.lzma_options.dict_size.min(1 << ZSTD_WINDOW_LOG);
    let mut encoder = lzma_rust2::XzWriter::new(target, options)?;
    let payload = one_stream(Encoding::Xz, image, &mut encoder, progress)?;
    encoder.finish()?;
    Ok(payload)
}

/// Feeds the whole image to `encoder` (one stream, no frame table) while
/// hashing it: the payload of a gzip or xz target. The caller finishes the
/// encoder, whose type differs.
fn one_stream(
    encoding: Encoding,
    image: &mut impl Read,
    encoder: &mut impl Write,
    progress: &mut impl FnMut(u64),
) -> io::Result<PayloadCustom> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut image_sha256 = Sha256::new();
    let mut image_length = 0u64;
    loop {
        let n = read_full(image, &mut buf)?;
        if n == 0 {
            break;
        }
        image_sha256.update(&buf[..n]);
        image_length += n as u64;
        encoder.write_all(&buf[..n])?;
        progress(image_length);
    }
    Ok(PayloadCustom {
        encoding: encoding.as_str().to_owned(),
        image_length,
        image_sha256: hex::encode(image_sha256.finalize()),
        frames: Vec::new(),
    })
}

/// Length and sha256 of what an already compressed input decodes to.
fn decoded_image(encoding: Encoding, input: &mut std::fs::File) -> io::Result<(u64, [u8; 32])> {
    let mut decoder: Box<dyn Read + '_> = match encoding {
        Encoding::Zstd => {
            // A window devices with the default limit would refuse is
            // refused here, where it can still be recompressed.
            let mut decoder = zstd::stream::read::Decoder::new(input)?;
            decoder.window_log_max(ZSTD_WINDOW_LOG)?;
            Box::new(decoder)
        }
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        // The same limit as zstd windows: 8 MiB of dictionary, plus the
        // decoder's fixed tables.
        Encoding::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            input,
            true,
            (1 << (ZSTD_WINDOW_LOG - 10)) + 128,
        )),
    };
    let mut sha256 = Sha256::new();
    let mut length = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut decoder, &mut buf)?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        length += n as u64;
    }
    Ok((length, sha256.finalize().into()))
}

/// Reads until `buf` is full or the input ends.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

/// Writes through to the target file while hashing what it writes: the
/// target's TUF length, sha256 and sha512.
struct HashingWriter<'w, W: Write> {
    out: &'w mut W,
    length: u64,
    sha256: Sha256,
    sha512: Sha512,
}

impl<'w, W: Write> HashingWriter<'w, W> {
    fn new(out: &'w mut W) -> Self {
        HashingWriter {
            out,
            length: 0,
            sha256: Sha256::new(),
            sha512: Sha512::new(),
        }
    }

    fn finish(self) -> StreamDigests {
        StreamDigests {
            length: self.length,
            sha256: self.sha256.finalize().into(),
            sha512: self.sha512.finalize().into(),
        }
    }
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.sha512.update(&buf[..n]);
        self.length += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> std::fmt::Debug for HashingWriter<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HashingWriter({} bytes)", self.length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i / 1000 % 7) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(&data).expect("write");
        (f, data)
    }

    fn packing(compression: Compression) -> Packing {
        Packing {
            compression,
            frame_size: 64 * 1024,
            level: None,
            delta: false,
            list_sha512: false,
        }
    }

    #[test]
    fn zstd_frames_decode_one_by_one_to_the_image() {
        let (f, data) = image(200_000);
        let mut out = Vec::new();
        let packed = pack(
            f.reopen().expect("open"),
            f.path(),
            &mut out,
            &packing(Compression::Zstd),
            |_| {},
        )
        .expect("pack");
        let payload = packed.payload.expect("payload");
        assert_eq!(payload.image_length, 200_000);
        assert_eq!(payload.image_sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(payload.frames.len(), 4);
        assert_eq!(packed.digests.length, out.len() as u64);
        assert!(out.len() < data.len() / 10, "compressible data shrinks");
        let mut at = 0usize;
        let mut decoded = Vec::new();
        for frame in &payload.frames {
            let bytes = &out[at..at + frame.length as usize];
            assert_eq!(frame.sha256, hex::encode(Sha256::digest(bytes)));
            let mut one = zstd::stream::read::Decoder::new(bytes)
                .expect("decoder")
                .single_frame();
            one.read_to_end(&mut decoded).expect("frame decodes alone");
            at += frame.length as usize;
        }
        assert_eq!(decoded, data);
    }

    #[test]
    fn compressed_inputs_are_kept_and_their_image_signed() {
        let (_f, data) = image(100_000);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&data).expect("gz");
            e.finish().expect("gz")
        };
        let mut input = tempfile::NamedTempFile::new().expect("tmp");
        input.write_all(&gz).expect("write");
        let mut out = Vec::new();
        let packed = pack(
            input.reopen().expect("open"),
            input.path(),
            &mut out,
            &packing(Compression::Zstd),
            |_| {},
        )
        .expect("pack");
        assert_eq!(out, gz, "kept as it is");
        let payload = packed.payload.expect("payload");
        assert_eq!(payload.encoding, "gzip");
        assert_eq!(payload.image_length, 100_000);
        assert_eq!(payload.image_sha256, hex::encode(Sha256::digest(&data)));

        let mut raw = Vec::new();
        let packed = pack(
            input.reopen().expect("open"),
            input.path(),
            &mut raw,
            &packing(Compression::None),
            |_| {},
        )
        .expect("raw");
        assert!(packed.payload.is_none(), "none means as it is, unsniffed");
        assert_eq!(raw, gz);
    }

    #[test]
    fn a_compressed_input_with_a_window_devices_refuse_is_refused() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("encoder");
        encoder
            .set_parameter(zstd::stream::raw::CParameter::WindowLog(24))
            .expect("window");
        encoder.write_all(&vec![3u8; 9 << 20]).expect("write");
        let big_window = encoder.finish().expect("zstd");
        let mut input = tempfile::NamedTempFile::new().expect("tmp");
        input.write_all(&big_window).expect("write");
        let err = pack(
            input.reopen().expect("open"),
            input.path(),
            &mut Vec::new(),
            &packing(Compression::Zstd),
            |_| {},
        )
        .expect_err("a 16 MiB window");
        assert!(err.to_string().contains("at most 8 MiB"), "{err}");
    }

    #[test]
    fn xz_round_trips_with_at_most_an_8_mib_dictionary() {
        let (f, data) = image(300_000);
        let mut out = Vec::new();
        let mut p = packing(Compression::Xz);
        p.level = Some(9);
        let packed = pack(f.reopen().expect("open"), f.path(), &mut out, &p, |_| {}).expect("pack");
        let payload = packed.payload.expect("payload");
        assert_eq!(payload.encoding, "xz");
        assert_eq!(payload.image_sha256, hex::encode(Sha256::digest(&data)));
        let mut decoded = Vec::new();
        lzma_rust2::XzReader::new_mem_limit(&out[..], true, 8 * 1024 + 128)
            .read_to_end(&mut decoded)
            .expect("decodes within 8 MiB");
        assert_eq!(decoded, data);
    }

    #[test]
    fn bad_options_are_named() {
        assert_eq!("xz".parse::<Compression>().ok(), Some(Compression::Xz));
        assert!("lz4".parse::<Compression>().is_err());
        let mut p = packing(Compression::Zstd);
        p.level = Some(30);
        assert!(p
            .check()
            .unwrap_err()
            .to_string()
            .contains("--compress-level"));
        p.level = None;
        p.frame_size = 10;
        assert!(p.check().unwrap_err().to_string().contains("--frame-size"));
    }
}
