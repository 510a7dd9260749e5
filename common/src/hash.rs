//! Streaming hashing: every byte is hashed as it passes, in one pass, in
//! constant memory, and checked against the lengths and digests that signed
//! metadata promised.
//!
//! The digests come from aws-lc (`aws_lc_rs::digest`, already linked for
//! TLS and signatures): its assembly uses SHA-NI/AVX2 on x86 and the ARMv8
//! crypto extensions, where the pure-Rust `sha2` crate hashed sha512 at
//! about half the speed on the same machine (docs/BENCHMARKS.md, "Install:
//! throughput and memory"). Hashing is what bounds an install's speed once
//! the network and the disk are fast.

use aws_lc_rs::digest::{Context, SHA256, SHA512};
use std::io::{self, Read, Write};

/// One running SHA-2 digest. aws-lc's context has no `Debug`; this names it.
#[derive(Clone)]
struct Hasher(Context);

impl Hasher {
    fn sha256() -> Self {
        Hasher(Context::new(&SHA256))
    }

    fn sha512() -> Self {
        Hasher(Context::new(&SHA512))
    }

    fn update(&mut self, bytes: &[u8]) {
        // aws-lc refuses (panics) only past 2^64 - 1 bits of input; callers
        // feed at most a signed u64 length of bytes checked beforehand, and
        // no real stream comes near 2^61 bytes.
        self.0.update(bytes);
    }

    fn finish<const N: usize>(self) -> [u8; N] {
        let digest = self.0.finish();
        let mut out = [0u8; N];
        // N is the algorithm's output length at every call site below.
        out.copy_from_slice(&digest.as_ref()[..N]);
        out
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hasher({:?})", self.0.algorithm())
    }
}

/// The digests a signed target lists. At least one is present.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digests {
    pub sha256: Option<[u8; 32]>,
    pub sha512: Option<[u8; 64]>,
}

impl Digests {
    pub fn is_empty(&self) -> bool {
        self.sha256.is_none() && self.sha512.is_none()
    }
}

/// Why streamed bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("more data than the signed length of {expected} bytes")]
    TooLong { expected: u64 },
    #[error("{actual} bytes instead of the signed length of {expected}")]
    WrongLength { expected: u64, actual: u64 },
    #[error("{algorithm} mismatch: signed {expected}, got {actual}")]
    DigestMismatch {
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("the signed metadata lists no sha256 or sha512 digest")]
    NoDigest,
}

/// Smallest chunk whose sha512 is worth a thread of its own (see
/// [`StreamVerifier::update_with`]).
pub const PARALLEL_MIN: usize = 128 * 1024;

/// Whether this machine has a second CPU to hash on (asked once).
fn several_cpus() -> bool {
    static SEVERAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SEVERAL.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// The signed length of a stream, enforced as its bytes arrive: the first
/// byte past it is refused before anything is done with it, and the end
/// must come exactly at it. [`StreamVerifier`] enforces it beside the
/// digests; alone, it serves a stream whose digests are checked elsewhere,
/// once, on the bytes kept (the slot image read back from storage in
/// `ota-agent`'s install).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedLength {
    expected: u64,
    seen: u64,
}

impl SignedLength {
    pub fn new(expected: u64) -> Self {
        SignedLength { expected, seen: 0 }
    }

    /// Counts the next chunk; refuses it, counting nothing, if it would
    /// exceed the signed length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        self.skip(chunk.len() as u64)
    }

    /// Counts `n` bytes accepted earlier (a resumed download's prefix).
    pub fn skip(&mut self, n: u64) -> Result<(), VerifyError> {
        match self.seen.checked_add(n) {
            Some(next) if next <= self.expected => {
                self.seen = next;
                Ok(())
            }
            _ => Err(VerifyError::TooLong {
                expected: self.expected,
            }),
        }
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.seen
    }

    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// The stream ended: it must have delivered exactly the signed length.
    pub fn finish(&self) -> Result<(), VerifyError> {
        if self.seen != self.expected {
            return Err(VerifyError::WrongLength {
                expected: self.expected,
                actual: self.seen,
            });
        }
        Ok(())
    }
}

/// Hashes bytes as they stream and enforces a signed length as they arrive,
/// so an endless or oversized stream is cut off at the first extra byte.
#[derive(Debug, Clone)]
pub struct StreamVerifier {
    expected: Digests,
    length: SignedLength,
    sha256: Option<Hasher>,
    sha512: Option<Hasher>,
}

impl StreamVerifier {
    /// Starts a verifier for `expected_len` bytes with the given digests.
    pub fn new(expected: Digests, expected_len: u64) -> Result<Self, VerifyError> {
        if expected.is_empty() {
            return Err(VerifyError::NoDigest);
        }
        Ok(Self {
            sha256: expected.sha256.map(|_| Hasher::sha256()),
            sha512: expected.sha512.map(|_| Hasher::sha512()),
            expected,
            length: SignedLength::new(expected_len),
        })
    }

    /// Feeds the next chunk. Fails, without hashing it, if it would exceed the signed length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        self.update_with(chunk, |_| ())
    }

    /// Feeds the next chunk like [`StreamVerifier::update`] and, once the
    /// chunk is known to fit the signed length, runs `alongside` on it
    /// while it is hashed; `alongside` never sees a chunk that was refused.
    ///
    /// With both digests listed, a chunk of at least [`PARALLEL_MIN`]
    /// bytes and more than one CPU, sha512 runs on a second thread while
    /// this one computes sha256 and then `alongside`. sha512 has no hardware support on most devices and
    /// costs about three times sha256 per byte, so on one thread it, not
    /// the disk, set the install's pace (docs/BENCHMARKS.md, "Install at
    /// the speed of the disk"). A scoped thread per chunk costs tens of
    /// microseconds against the milliseconds a chunk takes to hash.
    pub fn update_with<T>(
        &mut self,
        chunk: &[u8],
        alongside: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, VerifyError> {
        self.length.update(chunk)?;
        match (self.sha256.as_mut(), self.sha512.as_mut()) {
            (Some(sha256), Some(sha512)) if chunk.len() >= PARALLEL_MIN && several_cpus() => {
                Ok(std::thread::scope(|scope| {
                    scope.spawn(|| sha512.update(chunk));
                    sha256.update(chunk);
                    alongside(chunk)
                }))
            }
            (sha256, sha512) => {
                if let Some(h) = sha256 {
                    h.update(chunk);
                }
                if let Some(h) = sha512 {
                    h.update(chunk);
                }
                Ok(alongside(chunk))
            }
        }
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.length.len()
    }

    pub fn is_empty(&self) -> bool {
        self.length.is_empty()
    }

    /// Checks length and every listed digest.
    pub fn finish(self) -> Result<(), VerifyError> {
        self.length.finish()?;
        if let (Some(h), Some(want)) = (self.sha256, self.expected.sha256) {
            let got: [u8; 32] = h.finish();
            if got != want {
                return Err(VerifyError::DigestMismatch {
                    algorithm: "sha256",
                    expected: hex::encode(want),
                    actual: hex::encode(got),
                });
            }
        }
        if let (Some(h), Some(want)) = (self.sha512, self.expected.sha512) {
            let got: [u8; 64] = h.finish();
            if got != want {
                return Err(VerifyError::DigestMismatch {
                    algorithm: "sha512",
                    expected: hex::encode(want),
                    actual: hex::encode(got),
                });
            }
        }
        Ok(())
    }
}

/// SHA-256 and SHA-512 of a stream, computed in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDigests {
    pub length: u64,
    pub sha256: [u8; 32],
    pub sha512: [u8; 64],
}

/// Copies `reader` to `writer` (if any) while computing both digests: one pass
/// over the bytes, 64 KiB of buffer, whatever the size of the stream.
pub fn copy_and_digest<R: Read, W: Write>(
    mut reader: R,
    mut writer: Option<&mut W>,
    mut progress: impl FnMut(u64),
) -> io::Result<StreamDigests> {
    let mut sha256 = Hasher::sha256();
    let mut sha512 = Hasher::sha512();
    let mut buf = vec![0u8; 64 * 1024];
    let mut length = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        sha256.update(chunk);
        sha512.update(chunk);
        if let Some(w) = writer.as_mut() {
            w.write_all(chunk)?;
        }
        length += n as u64;
        progress(length);
    }
    Ok(StreamDigests {
        length,
        sha256: sha256.finish(),
        sha512: sha512.finish(),
    })
}

/// SHA-256 of a byte slice, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&SHA256, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    // The `sha2` crate as an independent reference for aws-lc's digests.
    use sha2::{Digest, Sha256, Sha512};

    fn digests_of(data: &[u8]) -> Digests {
        Digests {
            sha256: Some(Sha256::digest(data).into()),
            sha512: Some(Sha512::digest(data).into()),
        }
    }

    #[test]
    fn accepts_exact_bytes_in_chunks() {
        let data = b"hello world, this is an image";
        let mut v = StreamVerifier::new(digests_of(data), data.len() as u64).expect("new");
        for chunk in data.chunks(5) {
            v.update(chunk).expect("update");
        }
        v.finish().expect("verified");
    }

    #[test]
    fn cuts_off_at_first_extra_byte() {
        let data = b"abc";
        let mut v = StreamVerifier::new(digests_of(data), 3).expect("new");
        v.update(b"ab").expect("first");
        assert_eq!(v.update(b"cd"), Err(VerifyError::TooLong { expected: 3 }));
    }

    #[test]
    fn rejects_short_and_tampered_streams() {
        let data = b"abc";
        let mut v = StreamVerifier::new(digests_of(data), 3).expect("new");
        v.update(b"ab").expect("update");
        assert!(matches!(v.finish(), Err(VerifyError::WrongLength { .. })));

        let mut v = StreamVerifier::new(digests_of(data), 3).expect("new");
        v.update(b"abd").expect("update");
        assert!(matches!(
            v.finish(),
            Err(VerifyError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn each_listed_digest_is_checked() {
        let data = b"abc";
        let mut d = digests_of(data);
        d.sha512 = Some([0u8; 64]);
        let mut v = StreamVerifier::new(d, 3).expect("new");
        v.update(data).expect("update");
        assert!(matches!(
            v.finish(),
            Err(VerifyError::DigestMismatch {
                algorithm: "sha512",
                ..
            })
        ));
        assert_eq!(
            StreamVerifier::new(Digests::default(), 3).err(),
            Some(VerifyError::NoDigest)
        );
    }

    #[test]
    fn copy_and_digest_matches_one_shot() {
        let data = vec![7u8; 200_000];
        let mut out = Vec::new();
        let d = copy_and_digest(&data[..], Some(&mut out), |_| {}).expect("copy");
        assert_eq!(out, data);
        assert_eq!(d.length, 200_000);
        assert_eq!(d.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(d.sha512, <[u8; 64]>::from(Sha512::digest(&data)));
    }

    #[test]
    fn chunked_digests_equal_the_reference_implementation() {
        // Odd chunk sizes cross every block boundary of both algorithms.
        let data: Vec<u8> = (0..300_001u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut v = StreamVerifier::new(digests_of(&data), data.len() as u64).expect("new");
        for chunk in data.chunks(65_537) {
            v.update(chunk).expect("update");
        }
        v.finish().expect("aws-lc agrees with sha2");
        assert_eq!(sha256_hex(b"abc"), hex::encode(Sha256::digest(b"abc")));
    }

    #[test]
    fn large_chunks_hash_both_digests_on_two_threads_and_still_catch_each() {
        // Chunks above PARALLEL_MIN take the two-thread path.
        let data: Vec<u8> = (0..(PARALLEL_MIN * 5 + 77) as u32)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let chunk = PARALLEL_MIN * 2;
        let mut v = StreamVerifier::new(digests_of(&data), data.len() as u64).expect("new");
        let mut copy = Vec::new();
        for c in data.chunks(chunk) {
            v.update_with(c, |c| copy.extend_from_slice(c))
                .expect("update");
        }
        assert_eq!(copy, data);
        v.finish().expect("both digests agree with sha2");

        for algorithm in ["sha256", "sha512"] {
            let mut d = digests_of(&data);
            match algorithm {
                "sha256" => d.sha256 = Some([1u8; 32]),
                _ => d.sha512 = Some([1u8; 64]),
            }
            let mut v = StreamVerifier::new(d, data.len() as u64).expect("new");
            for c in data.chunks(chunk) {
                v.update_with(c, |_| ()).expect("update");
            }
            match v.finish() {
                Err(VerifyError::DigestMismatch { algorithm: a, .. }) => assert_eq!(a, algorithm),
                other => panic!("{algorithm}: {other:?}"),
            }
        }

        // A chunk past the signed length never reaches `alongside`.
        let mut v = StreamVerifier::new(digests_of(&data), 10).expect("new");
        let mut called = false;
        assert_eq!(
            v.update_with(&data[..chunk], |_| called = true),
            Err(VerifyError::TooLong { expected: 10 })
        );
        assert!(!called);
    }

    #[test]
    fn signed_length_refuses_the_first_byte_too_many_and_an_early_end() {
        let mut n = SignedLength::new(10);
        n.update(&[0; 6]).expect("fits");
        assert_eq!(
            n.update(&[0; 5]),
            Err(VerifyError::TooLong { expected: 10 })
        );
        assert_eq!(n.len(), 6, "a refused chunk is not counted");
        assert_eq!(
            n.finish(),
            Err(VerifyError::WrongLength {
                expected: 10,
                actual: 6
            })
        );
        n.skip(4).expect("the rest");
        n.finish().expect("exactly the signed length");
        assert_eq!(n.skip(u64::MAX), Err(VerifyError::TooLong { expected: 10 }));
    }
}
