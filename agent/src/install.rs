//! The one-pass streaming install: every chunk is checked by the stream
//! verifier (signed length enforced as bytes arrive) *before* it is written,
//! the slot is fsynced, then read back from storage and verified again.
//! Memory use is one buffer, whatever the image size.

use crate::slot::{Slot, SlotError, SlotWriter};
use ota_common::hash::{Digests, StreamVerifier, VerifyError};
use std::io::{self, Read};

/// Bytes read from the network and written per step (within the 64 KiB..1 MiB band).
pub const CHUNK: usize = 256 * 1024;

/// Why an install failed. The active slot is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("image stream: {0}")]
    Stream(#[source] io::Error),
    #[error("image refused: {0}")]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Slot(#[from] SlotError),
}

/// Streams `reader` (an image of `length` bytes with `digests`) into `slot`
/// while `booted` runs, then reads it back and verifies it again.
pub fn install_stream(
    mut reader: impl Read,
    length: u64,
    digests: &Digests,
    slot: &Slot,
    booted: &Slot,
    mut progress: impl FnMut(u64),
) -> Result<(), InstallError> {
    let mut verifier = StreamVerifier::new(digests.clone(), length)?;
    let mut writer = SlotWriter::open(slot, booted, length)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = fill(&mut reader, &mut buf).map_err(InstallError::Stream)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        // Verified first: bytes beyond the signed length never reach the slot.
        verifier.update(chunk)?;
        writer.write_chunk(chunk)?;
        progress(verifier.len());
    }
    verifier.finish()?;
    writer.finish()?.verify_read_back(digests)?;
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
        assert!(
            matches!(err, InstallError::Verify(VerifyError::WrongLength { .. })),
            "{err}"
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
