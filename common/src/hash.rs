//! Streaming hashing: every byte is hashed as it passes, in one pass, in
//! constant memory, and checked against the lengths and digests that signed
//! metadata promised.

use sha2::{Digest, Sha256, Sha512};
use std::io::{self, Read, Write};

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

/// Hashes bytes as they stream and enforces a signed length as they arrive,
/// so an endless or oversized stream is cut off at the first extra byte.
#[derive(Debug, Clone)]
pub struct StreamVerifier {
    expected: Digests,
    expected_len: u64,
    seen: u64,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
}

impl StreamVerifier {
    /// Starts a verifier for `expected_len` bytes with the given digests.
    pub fn new(expected: Digests, expected_len: u64) -> Result<Self, VerifyError> {
        if expected.is_empty() {
            return Err(VerifyError::NoDigest);
        }
        Ok(Self {
            sha256: expected.sha256.map(|_| Sha256::new()),
            sha512: expected.sha512.map(|_| Sha512::new()),
            expected,
            expected_len,
            seen: 0,
        })
    }

    /// Feeds the next chunk. Fails, without hashing it, if it would exceed the signed length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        let next = self.seen.saturating_add(chunk.len() as u64);
        if next > self.expected_len {
            return Err(VerifyError::TooLong {
                expected: self.expected_len,
            });
        }
        self.seen = next;
        if let Some(h) = self.sha256.as_mut() {
            h.update(chunk);
        }
        if let Some(h) = self.sha512.as_mut() {
            h.update(chunk);
        }
        Ok(())
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.seen
    }

    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// Checks length and every listed digest.
    pub fn finish(self) -> Result<(), VerifyError> {
        if self.seen != self.expected_len {
            return Err(VerifyError::WrongLength {
                expected: self.expected_len,
                actual: self.seen,
            });
        }
        if let (Some(h), Some(want)) = (self.sha256, self.expected.sha256) {
            let got: [u8; 32] = h.finalize().into();
            if got != want {
                return Err(VerifyError::DigestMismatch {
                    algorithm: "sha256",
                    expected: hex::encode(want),
                    actual: hex::encode(got),
                });
            }
        }
        if let (Some(h), Some(want)) = (self.sha512, self.expected.sha512) {
            let got: [u8; 64] = h.finalize().into();
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
    let mut sha256 = Sha256::new();
    let mut sha512 = Sha512::new();
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
        sha256: sha256.finalize().into(),
        sha512: sha512.finalize().into(),
    })
}

/// SHA-256 of a byte slice, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
