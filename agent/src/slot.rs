//! The A/B slots: which is which, and the only code that opens a slot for
//! writing. That code refuses the booted slot, so no caller can overwrite the
//! running system by mistake.

use ota_common::hash::{Digests, StreamVerifier, VerifyError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Size of the buffer used to read a slot back.
const READ_BACK_CHUNK: usize = 1024 * 1024;

/// Bytes [`ReadBack::finish`] reads between two signs of life.
const READ_BACK_STEP: u64 = 8 * 1024 * 1024;

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SlotId {
    A,
    B,
}

impl SlotId {
    /// The other slot.
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SlotId::A => "A",
            SlotId::B => "B",
        }
    }

    /// Parses "A"/"B" (either case).
    pub fn parse(s: &str) -> Option<SlotId> {
        match s {
            "A" | "a" => Some(SlotId::A),
            "B" | "b" => Some(SlotId::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why writing or verifying a slot failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("refusing to write slot {slot} ({path}): it is the booted slot")]
    Booted { slot: SlotId, path: PathBuf },
    #[error("refusing to write slot {slot} ({path}): it is the same file as the booted slot {booted} ({booted_path})")]
    SameAsBooted {
        slot: SlotId,
        path: PathBuf,
        booted: SlotId,
        booted_path: PathBuf,
    },
    #[error(
        "image of {length} bytes does not fit slot {slot} ({path}), which holds {capacity} bytes"
    )]
    TooLarge {
        slot: SlotId,
        path: PathBuf,
        length: u64,
        capacity: u64,
    },
    #[error("refusing to write slot {slot} ({path}): {detail}")]
    InUse {
        slot: SlotId,
        path: PathBuf,
        detail: String,
    },
    #[error("slot {slot} ({path}): {action}: {source}")]
    Io {
        slot: SlotId,
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("slot {slot} ({path}): read-back verification failed: {source}")]
    ReadBack {
        slot: SlotId,
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
}

/// A slot: its id and the file or block device that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub id: SlotId,
    pub path: PathBuf,
    /// Largest image accepted (configured); block devices are also limited by their size.
    pub max_image_bytes: Option<u64>,
}

/// Both slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    pub a: Slot,
    pub b: Slot,
}

impl Slots {
    pub fn new(a: PathBuf, b: PathBuf, max_image_bytes: Option<u64>) -> Self {
        Slots {
            a: Slot {
                id: SlotId::A,
                path: a,
                max_image_bytes,
            },
            b: Slot {
                id: SlotId::B,
                path: b,
                max_image_bytes,
            },
        }
    }

    pub fn get(&self, id: SlotId) -> &Slot {
        match id {
            SlotId::A => &self.a,
            SlotId::B => &self.b,
        }
    }
}

impl Slot {
    fn io(&self, action: &'static str) -> impl FnOnce(io::Error) -> SlotError + '_ {
        move |source| SlotError::Io {
            slot: self.id,
            path: self.path.clone(),
            action,
            source,
        }
    }
}

/// An inactive slot opened for writing an image of a known length.
#[derive(Debug)]
pub struct SlotWriter {
    slot: Slot,
    file: File,
    /// The same slot opened again with O_DIRECT, for the chunks that
    /// allow it (see [`SlotWriter::write_chunk`]); `None` where the file
    /// system refuses direct I/O (tmpfs) or a direct write failed once.
    direct: Option<File>,
    length: u64,
    written: u64,
    is_regular_file: bool,
    is_block: bool,
}

impl SlotWriter {
    /// Opens `slot` to receive an image of `length` bytes, while `booted` runs.
    pub fn open(slot: &Slot, booted: &Slot, length: u64) -> Result<SlotWriter, SlotError> {
        Self::open_at(slot, booted, length, 0)
    }

    /// Opens `slot` to receive an image of `length` bytes, keeping its first
    /// `resume_from` bytes (an interrupted download's durable checkpoint;
    /// the read-back checks them with the rest). When a
    /// file slot is shorter than that, the write starts over at byte 0:
    /// [`SlotWriter::written`] tells where it really starts.
    ///
    /// This is the only place a slot is opened for writing, so the check
    /// against the booted slot lives here: by id, and by device and inode in
    /// case both paths name the same file (a symlink or a misconfiguration).
    /// A block device must not be mounted (nor any of its partitions), is
    /// opened exclusively (O_EXCL: the kernel refuses to mount it meanwhile)
    /// and must be large enough: all checked before the first byte is written.
    pub fn open_at(
        slot: &Slot,
        booted: &Slot,
        length: u64,
        resume_from: u64,
    ) -> Result<SlotWriter, SlotError> {
        if slot.id == booted.id || slot.path == booted.path {
            return Err(SlotError::Booted {
                slot: slot.id,
                path: slot.path.clone(),
            });
        }
        if let Some(max) = slot.max_image_bytes {
            if length > max {
                return Err(SlotError::TooLarge {
                    slot: slot.id,
                    path: slot.path.clone(),
                    length,
                    capacity: max,
                });
            }
        }
        // Opened without truncation: the file is compared with the booted
        // slot first, and only then is a regular file emptied (its old
        // content is untrusted from now on). Block devices are never created.
        let is_block = is_block_device(&slot.path);
        if is_block {
            let in_use = crate::blockdev::in_use(&slot.path)
                .map_err(slot.io("checking whether the block device is in use"))?;
            if let Some(in_use) = in_use {
                return Err(SlotError::InUse {
                    slot: slot.id,
                    path: slot.path.clone(),
                    detail: in_use.to_string(),
                });
            }
        }
        let mut options = OpenOptions::new();
        options
            .write(true)
            .read(true)
            .create(!is_block)
            .truncate(false);
        if is_block {
            options.custom_flags(nix::fcntl::OFlag::O_EXCL.bits());
        }
        let file = options.open(&slot.path).map_err(|source| {
            if is_block && source.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) {
                SlotError::InUse {
                    slot: slot.id,
                    path: slot.path.clone(),
                    detail: "the kernel reports the block device busy (mounted or claimed)".into(),
                }
            } else {
                (slot.io("opening for writing"))(source)
            }
        })?;
        let meta = file.metadata().map_err(slot.io("stat"))?;
        if let Ok(booted_meta) = std::fs::metadata(&booted.path) {
            let same = if meta.file_type().is_block_device() {
                booted_meta.rdev() == meta.rdev()
            } else {
                booted_meta.dev() == meta.dev() && booted_meta.ino() == meta.ino()
            };
            if same {
                return Err(SlotError::SameAsBooted {
                    slot: slot.id,
                    path: slot.path.clone(),
                    booted: booted.id,
                    booted_path: booted.path.clone(),
                });
            }
        }
        let mut start = resume_from.min(length);
        if meta.file_type().is_file() {
            if meta.len() < start {
                tracing::warn!(slot = %slot.id, path = %slot.path.display(), checkpoint = start, size = meta.len(),
                    "slot is shorter than the download checkpoint; starting over");
                start = 0;
            }
            // Bytes past the checkpoint were never made durable: drop them.
            file.set_len(start).map_err(slot.io("truncating"))?;
        }
        let direct = reopen_direct(&file, Access::Write);
        let mut writer = SlotWriter {
            slot: slot.clone(),
            direct,
            file,
            length,
            written: start,
            is_regular_file: meta.file_type().is_file(),
            is_block: meta.file_type().is_block_device(),
        };
        if writer.is_block {
            let capacity = match crate::blockdev::size(&writer.file) {
                Ok(size) => size,
                Err(_) => writer
                    .file
                    .seek(SeekFrom::End(0))
                    .map_err(slot.io("measuring the block device"))?,
            };
            if length > capacity {
                return Err(SlotError::TooLarge {
                    slot: slot.id,
                    path: slot.path.clone(),
                    length,
                    capacity,
                });
            }
        }
        Ok(writer)
    }

    /// Makes everything written so far durable (for a download checkpoint).
    pub fn sync(&mut self) -> Result<(), SlotError> {
        self.file.sync_data().map_err(self.slot.io("fsync"))
    }

    /// Writes the next chunk (already fed to the stream verifier by the caller).
    ///
    /// A chunk that starts on a [`DIRECT_ALIGN`] boundary of the slot, in
    /// memory (an [`AlignedBuf`]) and is a whole number of blocks long
    /// goes to the device with O_DIRECT: no copy into the page cache,
    /// which was the largest single cost of an install (docs/BENCHMARKS.md,
    /// "Install at the speed of the disk"), and no gigabyte of dirty pages
    /// evicting the running system's cache. Any other chunk (an image's
    /// last, a decoder's odd-sized output, a slot on tmpfs) is written
    /// through the page cache; the follower's fdatasync makes both kinds
    /// durable, and neither ever shares a page with the other, as direct
    /// chunks cover whole aligned blocks.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), SlotError> {
        let next = self.written.saturating_add(chunk.len() as u64);
        if next > self.length {
            return Err(SlotError::TooLarge {
                slot: self.slot.id,
                path: self.slot.path.clone(),
                length: next,
                capacity: self.length,
            });
        }
        use std::os::unix::fs::FileExt;
        let slot = &self.slot;
        if let Some(direct) = self
            .direct
            .as_ref()
            .filter(|_| is_aligned(chunk, self.written))
        {
            match direct.write_all_at(chunk, self.written) {
                Ok(()) => {
                    self.written = next;
                    return Ok(());
                }
                // Refused for this device or file system after all (EINVAL:
                // a logical block larger than DIRECT_ALIGN): the page cache
                // takes this chunk and the rest. A short direct write that
                // failed midway is rewritten whole below.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) => {
                    tracing::debug!(error = %e, "direct write refused; writing through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err((slot.io("writing"))(e)),
            }
        }
        self.file
            .write_all_at(chunk, self.written)
            .map_err(slot.io("writing"))?;
        self.written = next;
        Ok(())
    }

    /// Whether the chunks written so far could go to the device directly
    /// (for tests and the benchmark's record).
    pub fn writes_directly(&self) -> bool {
        self.direct.is_some()
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// A read-back of this slot for an image with `digests`, to follow the
    /// writer range by range as it makes them durable (see [`ReadBack`]).
    pub fn read_back(&self, digests: &Digests) -> Result<ReadBack, SlotError> {
        ReadBack::of(&self.slot, &self.file, self.is_block, self.length, digests)
    }

    /// Makes the written bytes durable (fsync), trimming a file slot to the image length.
    pub fn finish(self) -> Result<WrittenSlot, SlotError> {
        let slot = &self.slot;
        if self.is_regular_file {
            self.file
                .set_len(self.written)
                .map_err(slot.io("truncating"))?;
        }
        self.file.sync_all().map_err(slot.io("fsync"))?;
        Ok(WrittenSlot {
            slot: self.slot,
            file: self.file,
            length: self.written,
            is_block: self.is_block,
        })
    }
}

/// A slot whose image is written and fsynced, awaiting read-back verification.
#[derive(Debug)]
pub struct WrittenSlot {
    slot: Slot,
    file: File,
    length: u64,
    is_block: bool,
}

impl WrittenSlot {
    /// Reads the first `length` bytes back from storage and checks them
    /// against every digest the signed metadata lists, so a bad write (flash
    /// error, short write, a bug) or an altered download is caught before
    /// the bootloader is told to boot it.
    pub fn verify_read_back(self, digests: &Digests) -> Result<(), SlotError> {
        let read_back = ReadBack::of(&self.slot, &self.file, self.is_block, self.length, digests)?;
        read_back.finish(&self, &mut || {})
    }

    pub fn length(&self) -> u64 {
        self.length
    }
}

/// The read-back of a slot that follows its writer: every range the writer
/// has made durable (fsynced) is dropped from the page cache, read again
/// from storage and hashed, while the next range is still downloading. By
/// the time the last byte is written only the last range is left to read,
/// so the read-back costs the install little more than that range instead
/// of a second pass over the whole image (docs/BENCHMARKS.md, "Install at
/// the speed of the disk").
///
/// It is the install's one check of the image against its signed digests
/// (the stream enforces only the signed length as bytes arrive): every
/// byte is read from storage after it was durable and its cached copy
/// dropped, and hashed with every digest the metadata lists. Checked
/// there, the digests cover what the bootloader will boot, whether the
/// download was altered on the way or storage failed to keep it, in one
/// pass over the bytes (docs/BENCHMARKS.md, "Sixth sitting").
#[derive(Debug)]
pub struct ReadBack {
    slot: Slot,
    file: File,
    /// `file` was opened with O_DIRECT: reads come from the device, never
    /// from the page cache, and need `DIRECT_ALIGN`-aligned offsets,
    /// lengths and memory.
    direct: bool,
    is_block: bool,
    verifier: StreamVerifier,
    buf: AlignedBuf,
}

/// Alignment of direct reads and writes: a multiple of every logical block
/// size in use (512 and 4096 bytes).
pub const DIRECT_ALIGN: usize = 4096;

/// Whether `chunk`, to be written at `offset`, meets O_DIRECT's rules:
/// memory, offset and length all on [`DIRECT_ALIGN`] boundaries.
fn is_aligned(chunk: &[u8], offset: u64) -> bool {
    let align = DIRECT_ALIGN as u64;
    offset.is_multiple_of(align)
        && chunk.len().is_multiple_of(DIRECT_ALIGN)
        && !chunk.is_empty()
        && (chunk.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
}

/// A zeroed buffer of fixed length whose first byte sits on a
/// [`DIRECT_ALIGN`] boundary in memory, as direct I/O requires: it
/// over-allocates by one block and starts at the boundary inside.
#[derive(Debug)]
pub struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let bytes = vec![0u8; len + DIRECT_ALIGN];
        let start = (DIRECT_ALIGN - bytes.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        AlignedBuf { bytes, start, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

impl ReadBack {
    fn of(
        slot: &Slot,
        file: &File,
        is_block: bool,
        length: u64,
        digests: &Digests,
    ) -> Result<ReadBack, SlotError> {
        let verifier =
            StreamVerifier::new(digests.clone(), length).map_err(|source| SlotError::ReadBack {
                slot: slot.id,
                path: slot.path.clone(),
                source,
            })?;
        let (file, direct) = match reopen_direct(file, Access::Read) {
            Some(direct) => (direct, true),
            // Positioned reads only (pread), so sharing the writer's file
            // description and its offset is harmless.
            None => (
                file.try_clone()
                    .map_err(slot.io("duplicating the slot's descriptor"))?,
                false,
            ),
        };
        Ok(ReadBack {
            slot: slot.clone(),
            file,
            direct,
            is_block,
            verifier,
            buf: AlignedBuf::new(READ_BACK_CHUNK),
        })
    }

    /// Makes everything written into the slot so far durable: fdatasync
    /// on this descriptor flushes the file (or device) whichever descriptor
    /// wrote it, so the writer's thread need not wait for it.
    pub fn sync(&self) -> Result<(), SlotError> {
        self.file.sync_data().map_err(self.slot.io("fsync"))
    }

    /// Bytes read back and hashed so far.
    pub fn done(&self) -> u64 {
        self.verifier.len()
    }

    /// Reads back everything up to `durable` (bytes the writer has fsynced)
    /// not read yet. Returns early, with what it has, once `stop` is set.
    pub fn catch_up(&mut self, durable: u64, stop: &AtomicBool) -> Result<(), SlotError> {
        use std::os::unix::fs::FileExt;
        let from = self.done();
        if durable <= from {
            return Ok(());
        }
        if !self.direct {
            drop_page_cache(&self.file, from, durable - from);
        }
        let align = if self.direct { DIRECT_ALIGN as u64 } else { 1 };
        let mut offset = from;
        while offset < durable {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            // A direct read starts on the block boundary at or before
            // `offset` and asks for whole blocks; the bytes around the
            // wanted range are read and not hashed.
            let at = offset - offset % align;
            let skip = (offset - at) as usize;
            let wanted = usize::try_from(durable - offset)
                .unwrap_or(usize::MAX)
                .min(READ_BACK_CHUNK - skip);
            let ask = (skip + wanted).next_multiple_of(align as usize);
            let window = &mut self.buf[..ask];
            let n = match self.file.read_at(window, at) {
                Ok(n) if n > skip => (n - skip).min(wanted),
                Ok(_) => {
                    return Err(SlotError::Io {
                        slot: self.slot.id,
                        path: self.slot.path.clone(),
                        action: "reading back",
                        source: io::Error::from(io::ErrorKind::UnexpectedEof),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((self.slot.io("reading back"))(e)),
            };
            let bytes = &self.buf[skip..skip + n];
            self.verifier
                .update(bytes)
                .map_err(|source| SlotError::ReadBack {
                    slot: self.slot.id,
                    path: self.slot.path.clone(),
                    source,
                })?;
            offset += n as u64;
        }
        Ok(())
    }

    /// Reads back what is left of `written` (now fsynced whole) and checks
    /// the digests of everything read back. `alive` is called after every
    /// [`READ_BACK_STEP`] read: after a resumed download the follower may
    /// leave most of the image to read here, which on slow flash takes
    /// longer than a watchdog waits.
    pub fn finish(
        mut self,
        written: &WrittenSlot,
        alive: &mut dyn FnMut(),
    ) -> Result<(), SlotError> {
        if self.is_block && !self.direct {
            // The block device's own buffer cache, beside the pages dropped per range.
            if let Err(e) = crate::blockdev::flush_buffers(&self.file) {
                tracing::debug!(error = %e, "BLKFLSBUF failed; read-back may hit the buffer cache");
            }
        }
        let never = AtomicBool::new(false);
        while self.done() < written.length {
            let step = self.done().saturating_add(READ_BACK_STEP);
            self.catch_up(step.min(written.length), &never)?;
            alive();
        }
        let slot = &self.slot;
        self.verifier
            .finish()
            .map_err(|source| SlotError::ReadBack {
                slot: slot.id,
                path: slot.path.clone(),
                source,
            })
    }
}

/// What a slot is reopened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// The slot's file opened again (the same inode, through /proc/self/fd)
/// with O_DIRECT, or `None` where the file system refuses direct I/O
/// (tmpfs) or /proc is not mounted: then reads and writes go through the
/// page cache (the read-back dropping its pages first). Direct I/O copies
/// nothing through the page cache and leaves it as it was, which on a
/// device with 64 MiB of RAM keeps a GiB-sized install from evicting
/// everything else.
///
/// Reopening the descriptor already open, never the configured path again,
/// means the checks made when it was opened (not the booted slot, not in
/// use) hold for this one too; a block device is not opened with O_EXCL a
/// second time, which would conflict with the first.
fn reopen_direct(file: &File, access: Access) -> Option<File> {
    use std::os::fd::AsRawFd;
    OpenOptions::new()
        .read(access == Access::Read)
        .write(access == Access::Write)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .inspect_err(
            |e| tracing::debug!(error = %e, ?access, "no direct I/O; going through the page cache"),
        )
        .ok()
}

/// Asks the kernel to drop the cached pages of `len` bytes of `file` from
/// `offset`, so the read-back sees what storage holds rather than what we
/// just wrote into memory. Advisory: on failure the read-back still
/// catches everything but media errors. The pages are clean (fsynced)
/// before this is called, so none is skipped for being dirty.
fn drop_page_cache(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // off_t is 32 bits on armv7: a range it cannot express drops the whole
    // file's pages instead (offset 0, length 0), as the read-back did before
    // it followed the writer.
    let (offset, len) = match (
        nix::libc::off_t::try_from(offset),
        nix::libc::off_t::try_from(len),
    ) {
        (Ok(offset), Ok(len)) => (offset, len),
        _ => (0, 0),
    };
    if let Err(e) = nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    ) {
        tracing::debug!(error = %e, "posix_fadvise(DONTNEED) failed; read-back may hit the page cache");
    }
}

/// True when `path` exists and is a block device.
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::{Digest, Sha256, Sha512};
    use std::io::Write;

    pub(crate) fn digests_of(data: &[u8]) -> Digests {
        Digests {
            sha256: Some(Sha256::digest(data).into()),
            sha512: Some(Sha512::digest(data).into()),
        }
    }

    fn slots(dir: &Path, max: Option<u64>) -> Slots {
        Slots::new(dir.join("a.img"), dir.join("b.img"), max)
    }

    fn write_image(slot: &Slot, booted: &Slot, data: &[u8]) -> Result<WrittenSlot, SlotError> {
        let mut w = SlotWriter::open(slot, booted, data.len() as u64)?;
        for chunk in data.chunks(64 * 1024) {
            w.write_chunk(chunk)?;
        }
        w.finish()
    }

    #[test]
    fn writes_and_verifies_the_inactive_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), None);
        // Old, longer content must not survive past the image length.
        std::fs::write(&s.b.path, vec![9u8; 300_000]).expect("old");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        write_image(&s.b, &s.a, &data)
            .expect("write")
            .verify_read_back(&digests_of(&data))
            .expect("read back");
        assert_eq!(std::fs::read(&s.b.path).expect("read"), data);
    }

    #[test]
    fn never_opens_the_booted_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), None);
        std::fs::write(&s.a.path, b"running system").expect("write");
        let err = SlotWriter::open(&s.a, &s.a, 3).expect_err("booted");
        assert!(
            matches!(
                err,
                SlotError::Booted {
                    slot: SlotId::A,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read(&s.a.path).expect("read"), b"running system");
    }

    #[test]
    fn never_opens_a_symlink_to_the_booted_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), None);
        std::fs::write(&s.a.path, b"running system").expect("write");
        std::os::unix::fs::symlink(&s.a.path, &s.b.path).expect("symlink");
        let err = SlotWriter::open(&s.b, &s.a, 3).expect_err("same file");
        assert!(matches!(err, SlotError::SameAsBooted { .. }), "{err}");
        // Not even truncated.
        assert_eq!(std::fs::read(&s.a.path).expect("read"), b"running system");
    }

    #[test]
    fn read_back_catches_a_corrupted_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), None);
        let data = vec![0x5au8; 100_000];
        let written = write_image(&s.b, &s.a, &data).expect("write");
        // Storage flips a byte between the write and the read-back.
        let mut f = OpenOptions::new()
            .write(true)
            .open(&s.b.path)
            .expect("open");
        f.seek(SeekFrom::Start(77_777)).expect("seek");
        f.write_all(&[0xa5]).expect("corrupt");
        f.sync_all().expect("sync");
        let err = written
            .verify_read_back(&digests_of(&data))
            .expect_err("corrupt");
        assert!(matches!(err, SlotError::ReadBack { .. }), "{err}");
    }

    #[test]
    fn a_read_back_following_the_writer_reads_storage_range_by_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), None);
        // Ranges that end off the 4 KiB grid exercise the direct reads' alignment.
        let data: Vec<u8> = (0..(3 * READ_BACK_CHUNK + 5000) as u32)
            .map(|i| (i % 249) as u8)
            .collect();
        let digests = digests_of(&data);
        let never = AtomicBool::new(false);
        let follow = |tamper: Option<usize>| -> Result<(), SlotError> {
            let mut w = SlotWriter::open(&s.b, &s.a, data.len() as u64)?;
            let mut read_back = w.read_back(&digests)?;
            for (i, chunk) in data.chunks(READ_BACK_CHUNK + 1234).enumerate() {
                w.write_chunk(chunk)?;
                read_back.sync()?;
                if tamper == Some(i) {
                    // Storage flips a byte of this range once it is durable,
                    // before the read-back reaches it.
                    use std::os::unix::fs::FileExt;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&s.b.path)
                        .expect("open");
                    f.write_all_at(&[0xff], w.written() - 7).expect("flip");
                    f.sync_all().expect("sync");
                }
                read_back.catch_up(w.written(), &never)?;
                assert_eq!(read_back.done(), w.written());
            }
            read_back.finish(&w.finish()?, &mut || {})
        };
        follow(None).expect("untouched storage reads back");
        let err = follow(Some(1)).expect_err("flipped byte");
        assert!(matches!(err, SlotError::ReadBack { .. }), "{err}");
    }

    /// Whether the file system under `dir` takes O_DIRECT (tmpfs does not).
    fn takes_direct_io(dir: &Path) -> bool {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
            .open(dir.join("probe"))
            .is_ok()
    }

    #[test]
    fn aligned_chunks_go_direct_others_through_the_page_cache_and_all_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), None);
        let block = 64 * 1024;
        let data: Vec<u8> = (0..(4 * block + 1000) as u32)
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let digests = digests_of(&data);
        let mut buf = AlignedBuf::new(block);
        let mut write = |tamper: bool| -> Result<(), SlotError> {
            let mut w = SlotWriter::open(&s.b, &s.a, data.len() as u64)?;
            assert_eq!(w.writes_directly(), takes_direct_io(dir.path()));
            let mut read_back = w.read_back(&digests)?;
            // Two whole aligned blocks (direct), the odd 1000 bytes (page
            // cache), then aligned memory at an unaligned offset (page
            // cache), then the rest.
            let pieces = [block, block, 1000, block, block];
            let mut at = 0;
            for len in pieces {
                buf[..len].copy_from_slice(&data[at..at + len]);
                w.write_chunk(&buf[..len])?;
                at += len;
            }
            assert_eq!(w.written(), data.len() as u64);
            // No direct write was refused on the way.
            assert_eq!(w.writes_directly(), takes_direct_io(dir.path()));
            read_back.sync()?;
            if tamper {
                // Storage flips a byte of a directly written block once it
                // is durable.
                use std::os::unix::fs::FileExt;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&s.b.path)
                    .expect("open");
                f.write_all_at(&[!data[block + 5]], block as u64 + 5)
                    .expect("flip");
                f.sync_all().expect("sync");
            }
            read_back.catch_up(w.written(), &AtomicBool::new(false))?;
            read_back.finish(&w.finish()?, &mut || {})
        };
        write(false).expect("reads back");
        assert_eq!(std::fs::read(&s.b.path).expect("read"), data);
        let err = write(true).expect_err("flipped byte");
        assert!(matches!(err, SlotError::ReadBack { .. }), "{err}");
    }

    /// The read-back is the one check of the image's digests (the stream
    /// enforces only the signed length), so it checks every listed one.
    #[test]
    fn read_back_checks_every_listed_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), None);
        let data = vec![0x3cu8; 100_000];
        let good = digests_of(&data);
        write_image(&s.b, &s.a, &data)
            .expect("write")
            .verify_read_back(&good)
            .expect("both match");
        for (algorithm, wrong) in [
            (
                "sha512",
                Digests {
                    sha512: Some([0u8; 64]),
                    ..good.clone()
                },
            ),
            (
                "sha256",
                Digests {
                    sha256: Some([0u8; 32]),
                    ..good.clone()
                },
            ),
            (
                "sha512",
                Digests {
                    sha256: None,
                    sha512: Some([0u8; 64]),
                },
            ),
        ] {
            let err = write_image(&s.b, &s.a, &data)
                .expect("write")
                .verify_read_back(&wrong)
                .expect_err("a wrong digest");
            assert!(
                matches!(
                    &err,
                    SlotError::ReadBack {
                        source: VerifyError::DigestMismatch { algorithm: a, .. },
                        ..
                    } if *a == algorithm
                ),
                "{algorithm}: {err}"
            );
        }
    }

    #[test]
    fn image_larger_than_the_slot_is_refused_before_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), Some(1000));
        let err = SlotWriter::open(&s.b, &s.a, 1001).expect_err("too large");
        assert!(
            matches!(err, SlotError::TooLarge { capacity: 1000, .. }),
            "{err}"
        );
        assert!(!s.b.path.exists());
    }

    /// What the follower left is read back in steps, each a sign of life
    /// (a resumed download can leave most of the image to read here).
    #[test]
    fn the_rest_of_a_read_back_is_a_sign_of_life_per_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), None);
        let step = READ_BACK_STEP as usize;
        let data: Vec<u8> = (0..3 * step + 5).map(|i| (i % 251) as u8).collect();
        let written = write_image(&s.b, &s.a, &data).expect("write");
        let read_back = ReadBack::of(
            &s.b,
            &written.file,
            false,
            written.length,
            &digests_of(&data),
        )
        .expect("read-back");
        let mut beats = 0;
        read_back
            .finish(&written, &mut || beats += 1)
            .expect("matches");
        assert_eq!(beats, 4, "one per step of {step} bytes");
    }

    #[test]
    fn writing_past_the_announced_length_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = slots(dir.path(), None);
        let mut w = SlotWriter::open(&s.b, &s.a, 4).expect("open");
        w.write_chunk(b"abc").expect("fits");
        assert!(w.write_chunk(b"de").is_err());
    }
}
