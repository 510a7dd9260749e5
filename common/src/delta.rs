//! Delta releases: the signed chunk index of a slot image.
//!
//! `ota-repo add --delta` cuts the decoded image into content-defined
//! chunks (FastCDC, 2020 variant) and writes an index listing each chunk's
//! SHA-256, length and the length of its zstd-compressed copy in the chunk
//! store. The index is a file of its own in the chunk store, signed by its
//! SHA-256 and length in the target's `custom.delta`; the chunks are named
//! by the SHA-256 of their *uncompressed* bytes, so a chunk shared by two
//! releases is stored and served once.
//!
//! A device that runs release N cuts its running slot with the same
//! parameters (they are in the index, so device and release tool cannot
//! disagree), keeps what it already has and fetches the rest. Every chunk
//! is checked against its signed hash and the assembled slot against the
//! signed image hash.
//!
//! This module turns the index bytes into [`ChunkIndex`] once: parameters
//! within the chunker's limits, every chunk length within them, the lengths
//! adding up to the signed image length. Nothing downstream re-checks.

use crate::wire::DeltaCustom;
use std::io::{self, Read};

/// Chunker parameters `ota-repo add --delta` uses: a 64 KiB average keeps
/// the index of a 4 GiB slot at 64 Ki entries (2.5 MiB), while chunks stay
/// small enough that a change of a few bytes costs one chunk's download.
pub const DEFAULT_PARAMS: ChunkParams = ChunkParams {
    min: 16 * 1024,
    avg: 64 * 1024,
    max: 256 * 1024,
};

/// Starts every index file: the format and its version.
const MAGIC: &[u8; 8] = b"OTACIDX1";
const HEADER_LEN: usize = 8 + 4 * 3 + 8 + 4;
/// sha256, compressed sha256, length, compressed length.
const ENTRY_LEN: usize = 32 + 32 + 4 + 4;

/// Largest index a device fetches: 4 Mi chunks, i.e. a slot of 256 GiB at
/// the smallest allowed average. The signed `index_length` is the real cap.
pub const MAX_INDEX_BYTES: u64 = (HEADER_LEN + ENTRY_LEN * 4 * 1024 * 1024) as u64;

/// FastCDC's bounds (fastcdc::v2020), checked here so that parameters read
/// from an index never reach the chunker's assertions.
const MIN_RANGE: (u32, u32) = (64, 1_048_576);
const AVG_RANGE: (u32, u32) = (256, 4_194_304);
const MAX_RANGE: (u32, u32) = (1024, 16_777_216);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkParams {
    fn check(self) -> Result<ChunkParams, String> {
        let within = |v: u32, (lo, hi): (u32, u32)| (lo..=hi).contains(&v);
        if !within(self.min, MIN_RANGE)
            || !within(self.avg, AVG_RANGE)
            || !within(self.max, MAX_RANGE)
            || self.min > self.avg
            || self.avg > self.max
        {
            return Err(format!(
                "chunker parameters min {} / avg {} / max {} are outside FastCDC's limits",
                self.min, self.avg, self.max
            ));
        }
        Ok(self)
    }

    /// The largest a compressed chunk may be: zstd's worst case for an
    /// incompressible chunk of `max` bytes, with room to spare.
    pub fn max_compressed(self) -> u32 {
        self.max + self.max / 128 + 4096
    }
}

/// One chunk of the image, where it goes and what it must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub sha256: [u8; 32],
    /// SHA-256 of the compressed copy: checked before a byte of it reaches
    /// the decompressor, and part of its name in the chunk store.
    pub compressed_sha256: [u8; 32],
    /// Offset in the slot image: the sum of the lengths before it.
    pub offset: u64,
    pub length: u32,
    /// Length of the zstd-compressed copy in the chunk store.
    pub compressed_length: u32,
}

impl Chunk {
    /// Where the chunk store keeps the compressed chunk, relative to the
    /// repository's `targets/`.
    pub fn store_path(&self) -> String {
        let (dir, base) = chunk_name(&self.sha256);
        format!("{dir}/{}.{base}", hex::encode(self.compressed_sha256))
    }
}

/// The name a chunk is published under (directory, base name):
/// `chunks/ab/abcdef….zst`, by the hash of its uncompressed bytes, two hex
/// digits of fan-out keeping directories small. Like every target, the
/// repository serves it under `dir/<sha256 of the file>.<base>`
/// ([`Chunk::store_path`]), so the server needs no route of its own and a
/// CDN may cache it forever.
pub fn chunk_name(sha256: &[u8; 32]) -> (String, String) {
    let hex = hex::encode(sha256);
    (format!("chunks/{}", &hex[..2]), format!("{hex}.zst"))
}

/// The name an index is published under, `chunks/index/<sha256>.cidx`
/// (unique, so two releases published together never share a name);
/// served as `chunks/index/<sha256>.<sha256>.cidx` ([`IndexRef::store_path`]).
pub fn index_name(sha256: &[u8; 32]) -> (String, String) {
    (
        "chunks/index".to_owned(),
        format!("{}.cidx", hex::encode(sha256)),
    )
}

/// The signed reference to a release's index, from `custom.delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRef {
    pub sha256: [u8; 32],
    pub length: u64,
}

impl IndexRef {
    pub fn parse(custom: &DeltaCustom) -> Result<IndexRef, String> {
        let sha256 = hex::decode(&custom.index_sha256)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or("custom.delta.index_sha256 is not 64 hex digits")?;
        if custom.index_length < HEADER_LEN as u64 || custom.index_length > MAX_INDEX_BYTES {
            return Err(format!(
                "custom.delta.index_length {} is outside {HEADER_LEN}..={MAX_INDEX_BYTES}",
                custom.index_length
            ));
        }
        Ok(IndexRef {
            sha256,
            length: custom.index_length,
        })
    }

    pub fn store_path(&self) -> String {
        let (dir, base) = index_name(&self.sha256);
        format!("{dir}/{}.{base}", hex::encode(self.sha256))
    }
}

/// A release's chunk index, consistent with itself and its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    pub params: ChunkParams,
    pub image_length: u64,
    pub chunks: Vec<Chunk>,
}

impl ChunkIndex {
    /// Parses index bytes that already matched their signed hash and length.
    pub fn parse(bytes: &[u8]) -> Result<ChunkIndex, String> {
        let header = bytes
            .get(..HEADER_LEN)
            .ok_or_else(|| format!("{} bytes is shorter than the header", bytes.len()))?;
        if &header[..8] != MAGIC {
            return Err("not a chunk index (wrong magic)".into());
        }
        let u32_at =
            |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let params = ChunkParams {
            min: u32_at(header, 8),
            avg: u32_at(header, 12),
            max: u32_at(header, 16),
        }
        .check()?;
        let mut image_length = [0u8; 8];
        image_length.copy_from_slice(&header[20..28]);
        let image_length = u64::from_le_bytes(image_length);
        let count = u32_at(header, 28) as usize;
        let body = &bytes[HEADER_LEN..];
        if body.len() != count.saturating_mul(ENTRY_LEN) {
            return Err(format!(
                "{count} chunks need {} bytes of entries, the index has {}",
                count.saturating_mul(ENTRY_LEN),
                body.len()
            ));
        }
        let mut chunks = Vec::with_capacity(count);
        let mut offset = 0u64;
        for (i, entry) in body.chunks_exact(ENTRY_LEN).enumerate() {
            let mut sha256 = [0u8; 32];
            sha256.copy_from_slice(&entry[..32]);
            let mut compressed_sha256 = [0u8; 32];
            compressed_sha256.copy_from_slice(&entry[32..64]);
            let length = u32_at(entry, 64);
            let compressed_length = u32_at(entry, 68);
            if length == 0 || length > params.max {
                return Err(format!(
                    "chunk {i} is {length} bytes (allowed 1..={})",
                    params.max
                ));
            }
            if compressed_length == 0 || compressed_length > params.max_compressed() {
                return Err(format!(
                    "chunk {i} claims {compressed_length} compressed bytes (allowed 1..={})",
                    params.max_compressed()
                ));
            }
            chunks.push(Chunk {
                sha256,
                compressed_sha256,
                offset,
                length,
                compressed_length,
            });
            offset += u64::from(length);
        }
        if offset != image_length {
            return Err(format!(
                "the chunks add up to {offset} bytes, the index says the image is {image_length}"
            ));
        }
        Ok(ChunkIndex {
            params,
            image_length,
            chunks,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.params.min.to_le_bytes());
        out.extend_from_slice(&self.params.avg.to_le_bytes());
        out.extend_from_slice(&self.params.max.to_le_bytes());
        out.extend_from_slice(&self.image_length.to_le_bytes());
        // An index too large for u32 cannot be parsed back; MAX_INDEX_BYTES
        // refuses it long before.
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.sha256);
            out.extend_from_slice(&c.compressed_sha256);
            out.extend_from_slice(&c.length.to_le_bytes());
            out.extend_from_slice(&c.compressed_length.to_le_bytes());
        }
        out
    }

    /// The chunk holding image byte `offset` (`None` at or past the end).
    pub fn chunk_at(&self, offset: u64) -> Option<usize> {
        let i = self
            .chunks
            .partition_point(|c| c.offset + u64::from(c.length) <= offset);
        (i < self.chunks.len()).then_some(i)
    }

    /// Bytes the chunk store holds for this image, compressed.
    pub fn compressed_total(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| u64::from(c.compressed_length))
            .sum()
    }
}

/// Cuts `reader` into content-defined chunks with `params`, calling `each`
/// with every chunk's image offset and bytes in order. One chunk is held at
/// a time (at most `params.max` bytes).
pub fn for_each_chunk(
    reader: impl Read,
    params: ChunkParams,
    mut each: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let params = params.check().map_err(io::Error::other)?;
    let chunker = fastcdc::v2020::StreamCDC::new(reader, params.min, params.avg, params.max);
    for chunk in chunker {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        each(chunk.offset, &chunk.data)?;
    }
    Ok(())
}

/// SHA-256 of one chunk.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(lengths: &[u32]) -> ChunkIndex {
        let mut offset = 0;
        let chunks = lengths
            .iter()
            .enumerate()
            .map(|(i, &length)| {
                let c = Chunk {
                    sha256: [i as u8; 32],
                    compressed_sha256: [!(i as u8); 32],
                    offset,
                    length,
                    compressed_length: length / 2 + 1,
                };
                offset += u64::from(length);
                c
            })
            .collect();
        ChunkIndex {
            params: DEFAULT_PARAMS,
            image_length: offset,
            chunks,
        }
    }

    #[test]
    fn round_trips_and_finds_chunks_by_offset() {
        let idx = index(&[20_000, 70_000, 5]);
        let parsed = ChunkIndex::parse(&idx.to_bytes()).unwrap();
        assert_eq!(parsed, idx);
        assert_eq!(parsed.chunk_at(0), Some(0));
        assert_eq!(parsed.chunk_at(19_999), Some(0));
        assert_eq!(parsed.chunk_at(20_000), Some(1));
        assert_eq!(parsed.chunk_at(90_004), Some(2));
        assert_eq!(parsed.chunk_at(90_005), None);
    }

    #[test]
    fn inconsistent_indexes_are_refused_with_the_reason() {
        let good = index(&[20_000, 70_000]).to_bytes();
        let mut short = good.clone();
        short.pop();
        assert!(ChunkIndex::parse(&short).unwrap_err().contains("entries"));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(ChunkIndex::parse(&magic).unwrap_err().contains("magic"));
        let mut total = good.clone();
        total[20] ^= 1;
        assert!(ChunkIndex::parse(&total).unwrap_err().contains("add up"));
        let mut params = good.clone();
        params[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ChunkIndex::parse(&params).unwrap_err().contains("FastCDC"));
        let oversized = index(&[300_000]).to_bytes();
        assert!(ChunkIndex::parse(&oversized)
            .unwrap_err()
            .contains("chunk 0"));
        assert!(ChunkIndex::parse(b"OTA").is_err());
    }

    #[test]
    fn chunking_is_deterministic_and_covers_the_input() {
        let data: Vec<u8> = (0..600_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut cuts = Vec::new();
        let mut total = 0;
        for_each_chunk(&data[..], DEFAULT_PARAMS, |offset, bytes| {
            assert_eq!(offset, total);
            total += bytes.len() as u64;
            cuts.push((offset, sha256(bytes)));
            Ok(())
        })
        .unwrap();
        assert_eq!(total, data.len() as u64);
        assert!(cuts.len() > 2);
        let mut again = Vec::new();
        for_each_chunk(&data[..], DEFAULT_PARAMS, |offset, bytes| {
            again.push((offset, sha256(bytes)));
            Ok(())
        })
        .unwrap();
        assert_eq!(cuts, again);
    }
}
