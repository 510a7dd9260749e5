//! How a target's signed bytes become the slot image.
//!
//! A raw target *is* the image: its TUF length and hashes are the slot's.
//! A compressed target signs two things: the encoded bytes as served (TUF
//! `length` and `hashes`, which cap and check the download) and, in
//! `custom.payload`, the decoded image (its length caps the decompressor's
//! output, its sha256 checks the slot). A zstd target made of independent
//! frames also signs each frame's encoded length, decoded length and
//! sha256, so a download can resume at a frame boundary and still check
//! every encoded byte against signed data.
//!
//! This module turns the untrusted-shape JSON into these types once, so the
//! agent never installs a payload whose numbers do not add up.

use crate::hash::Digests;
use crate::tuf::{Target, TufError};
use crate::wire::{FrameCustom, PayloadCustom};

/// The compression formats a device can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Gzip,
    Xz,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
            Encoding::Xz => "xz",
        }
    }

    pub fn parse(s: &str) -> Option<Encoding> {
        match s {
            "zstd" => Some(Encoding::Zstd),
            "gzip" => Some(Encoding::Gzip),
            "xz" => Some(Encoding::Xz),
            _ => None,
        }
    }

    /// The format an encoded stream starts with, by its magic number.
    pub fn sniff(head: &[u8]) -> Option<Encoding> {
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Encoding::Zstd)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Encoding::Xz)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Some(Encoding::Gzip)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a slot holds once a target is installed: its length and digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotImage {
    pub length: u64,
    pub digests: Digests,
}

/// One independent zstd frame, with its place in both streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame starts in the encoded target.
    pub offset: u64,
    pub length: u64,
    /// Where its decoded bytes start in the slot image.
    pub image_offset: u64,
    pub image_length: u64,
    pub sha256: [u8; 32],
}

/// A compressed target, checked for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    pub encoding: Encoding,
    /// The encoded bytes as signed by TUF: the download's cap and digests.
    pub encoded: SlotImage,
    /// The decoded image the slot must hold.
    pub image: SlotImage,
    /// Empty unless the target is made of signed independent zstd frames.
    pub frames: Vec<Frame>,
}

impl Compressed {
    /// The frame whose decoded bytes start at `image_offset`: where a
    /// download interrupted with `image_offset` durable bytes resumes.
    /// `None` when no frame starts there (the download starts over).
    pub fn frame_at(&self, image_offset: u64) -> Option<usize> {
        self.frames
            .iter()
            .position(|f| f.image_offset == image_offset)
    }
}

/// How a target's bytes become the slot image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The target is the image.
    Raw(SlotImage),
    Compressed(Compressed),
}

impl Payload {
    /// The payload of a verified `target`, from its signed `custom.payload`.
    pub fn of(target: &Target) -> Result<Payload, TufError> {
        let encoded = SlotImage {
            length: target.length,
            digests: target.digests.clone(),
        };
        let invalid = |detail: String| TufError::InvalidRelease {
            target: target.name.clone(),
            detail: format!("custom.payload: {detail}"),
        };
        let Some(value) = target.custom.get("payload") else {
            return Ok(Payload::Raw(encoded));
        };
        let custom: PayloadCustom =
            serde_json::from_value(value.clone()).map_err(|e| invalid(e.to_string()))?;
        Self::parse(encoded, &custom).map_err(invalid)
    }

    /// Checks `custom` against the encoded target it describes.
    pub fn parse(encoded: SlotImage, custom: &PayloadCustom) -> Result<Payload, String> {
        let encoding = Encoding::parse(&custom.encoding).ok_or_else(|| {
            format!(
                "unknown encoding {:?} (this agent decodes zstd, gzip and xz)",
                custom.encoding
            )
        })?;
        let image = SlotImage {
            length: custom.image_length,
            digests: Digests {
                sha256: Some(sha256_of("image_sha256", &custom.image_sha256)?),
                sha512: None,
            },
        };
        let frames = frames(encoding, &encoded, &image, &custom.frames)?;
        Ok(Payload::Compressed(Compressed {
            encoding,
            encoded,
            image,
            frames,
        }))
    }

    /// What the slot holds once this payload is installed.
    pub fn image(&self) -> &SlotImage {
        match self {
            Payload::Raw(image) => image,
            Payload::Compressed(c) => &c.image,
        }
    }
}

impl Target {
    /// The length and digests the slot must have once this target is
    /// installed (the decoded image of a compressed target).
    pub fn slot_image(&self) -> Result<SlotImage, TufError> {
        Payload::of(self).map(|p| p.image().clone())
    }
}

fn sha256_of(field: &str, hex_digest: &str) -> Result<[u8; 32], String> {
    hex::decode(hex_digest)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("{field} is not 64 hex digits"))
}

/// The frame table with offsets, checked: zstd only, no empty frame, the
/// frames add up to exactly the encoded target and the decoded image.
fn frames(
    encoding: Encoding,
    encoded: &SlotImage,
    image: &SlotImage,
    custom: &[FrameCustom],
) -> Result<Vec<Frame>, String> {
    if custom.is_empty() {
        return Ok(Vec::new());
    }
    if encoding != Encoding::Zstd {
        return Err(format!("frames are defined for zstd only, not {encoding}"));
    }
    let mut offset = 0u64;
    let mut image_offset = 0u64;
    let mut frames = Vec::with_capacity(custom.len());
    for (i, f) in custom.iter().enumerate() {
        if f.length == 0 || f.image_length == 0 {
            return Err(format!("frame {i} is empty"));
        }
        frames.push(Frame {
            offset,
            length: f.length,
            image_offset,
            image_length: f.image_length,
            sha256: sha256_of(&format!("frame {i} sha256"), &f.sha256)?,
        });
        offset = offset
            .checked_add(f.length)
            .ok_or("frame lengths overflow")?;
        image_offset = image_offset
            .checked_add(f.image_length)
            .ok_or("frame image lengths overflow")?;
    }
    if offset != encoded.length {
        return Err(format!(
            "the frames add up to {offset} bytes, the signed target length is {}",
            encoded.length
        ));
    }
    if image_offset != image.length {
        return Err(format!(
            "the frames decode to {image_offset} bytes, the signed image_length is {}",
            image.length
        ));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(custom: serde_json::Value) -> Target {
        Target {
            name: "img.zst".into(),
            length: 30,
            digests: Digests {
                sha256: Some([1; 32]),
                sha512: None,
            },
            custom,
        }
    }

    fn frame(length: u64, image_length: u64) -> serde_json::Value {
        serde_json::json!({"length": length, "image_length": image_length, "sha256": "ab".repeat(32)})
    }

    #[test]
    fn raw_targets_are_their_own_image() {
        let t = target(serde_json::json!({"version": "1.0.0"}));
        assert_eq!(
            t.slot_image().expect("raw"),
            SlotImage {
                length: 30,
                digests: t.digests.clone()
            }
        );
    }

    #[test]
    fn frames_get_offsets_and_must_add_up() {
        let good = target(serde_json::json!({"payload": {
            "encoding": "zstd", "image_length": 100, "image_sha256": "cd".repeat(32),
            "frames": [frame(10, 60), frame(20, 40)]}}));
        let Payload::Compressed(c) = Payload::of(&good).expect("good") else {
            panic!("compressed")
        };
        assert_eq!(c.image.length, 100);
        assert_eq!((c.frames[1].offset, c.frames[1].image_offset), (10, 60));
        assert_eq!(c.frame_at(60), Some(1));
        assert_eq!(c.frame_at(61), None);

        for (payload, why) in [
            (
                serde_json::json!({"encoding": "zstd", "image_length": 100, "image_sha256": "cd".repeat(32),
                    "frames": [frame(10, 60), frame(19, 40)]}),
                "add up to 29",
            ),
            (
                serde_json::json!({"encoding": "zstd", "image_length": 101, "image_sha256": "cd".repeat(32),
                    "frames": [frame(10, 60), frame(20, 40)]}),
                "decode to 100",
            ),
            (
                serde_json::json!({"encoding": "gzip", "image_length": 100, "image_sha256": "cd".repeat(32),
                    "frames": [frame(30, 100)]}),
                "zstd only",
            ),
            (
                serde_json::json!({"encoding": "lz4", "image_length": 100, "image_sha256": "cd".repeat(32)}),
                "unknown encoding",
            ),
            (
                serde_json::json!({"encoding": "zstd", "image_length": 100, "image_sha256": "cd"}),
                "64 hex digits",
            ),
            (
                serde_json::json!({"encoding": "zstd", "image_length": 100, "image_sha256": "cd".repeat(32), "chunks": []}),
                "unknown field",
            ),
        ] {
            let err = Payload::of(&target(serde_json::json!({ "payload": payload })))
                .expect_err(why)
                .to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn sniffs_the_magic_numbers() {
        assert_eq!(
            Encoding::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Encoding::Zstd)
        );
        assert_eq!(Encoding::sniff(b"\x1f\x8b\x08"), Some(Encoding::Gzip));
        assert_eq!(Encoding::sniff(b"\xfd7zXZ\x00\x00"), Some(Encoding::Xz));
        assert_eq!(Encoding::sniff(b"release=1.0"), None);
    }
}
