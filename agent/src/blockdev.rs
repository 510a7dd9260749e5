//! What the slot writer must know about a block device before and after
//! writing it: its size, whether it (or one of its partitions) is mounted or
//! held by another driver, and how to drop its buffer cache so a read-back
//! sees the medium.
//!
//! The ioctls are the only unsafe code of the agent; each call passes a
//! valid open descriptor and, for BLKGETSIZE64, a pointer to a local u64.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

// BLKGETSIZE64 is _IOR(0x12, 114, size_t): the number encodes the size of
// size_t (4 on 32-bit boards) although the kernel always writes a u64.
nix::ioctl_read_bad!(
    blkgetsize64,
    nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>()),
    u64
);
// BLKFLSBUF is _IO(0x12, 97): write back and drop the device's buffer cache.
nix::ioctl_none!(blkflsbuf, 0x12, 97);

/// Size of the block device open as `file`, in bytes.
pub fn size(file: &File) -> io::Result<u64> {
    let mut bytes: u64 = 0;
    // SAFETY: `file` is an open descriptor and `bytes` outlives the call.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut bytes) }.map_err(io::Error::from)?;
    Ok(bytes)
}

/// Drops the buffer cache of the block device open as `file` (needs
/// CAP_SYS_ADMIN), so the next read comes from the medium.
pub fn flush_buffers(file: &File) -> io::Result<()> {
    // SAFETY: `file` is an open descriptor; BLKFLSBUF takes no argument.
    unsafe { blkflsbuf(file.as_raw_fd()) }.map_err(io::Error::from)?;
    Ok(())
}

/// Why a block device must not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InUse {
    /// The device, or its partition `device`, is mounted at `mount_point`.
    Mounted {
        device: String,
        mount_point: PathBuf,
    },
    /// Another kernel driver (device-mapper, md, LVM...) is built on it.
    Held { holder: String },
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InUse::Mounted {
                device,
                mount_point,
            } => write!(
                f,
                "block device {device} is mounted at {}",
                mount_point.display()
            ),
            InUse::Held { holder } => write!(f, "block device is held by {holder}"),
        }
    }
}

/// Whether the block device at `path`, or a partition of it, is mounted
/// (per /proc/self/mountinfo) or held by another driver (per sysfs).
pub fn in_use(path: &Path) -> io::Result<Option<InUse>> {
    let rdev = std::fs::metadata(path)?.rdev();
    let own = devnum(rdev);
    let sys = PathBuf::from(format!("/sys/dev/block/{own}"));
    // The device and its partitions: "M:m" -> kernel name.
    let mut devices: Vec<(String, String)> = vec![(own.clone(), kernel_name(&sys))];
    if let Ok(entries) = std::fs::read_dir(&sys) {
        for entry in entries.flatten() {
            let dir = entry.path();
            if dir.join("partition").exists() {
                if let Ok(dev) = std::fs::read_to_string(dir.join("dev")) {
                    devices.push((
                        dev.trim().to_owned(),
                        entry.file_name().to_string_lossy().into_owned(),
                    ));
                }
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let wanted: HashSet<&str> = devices.iter().map(|(n, _)| n.as_str()).collect();
    if let Some((num, mount_point)) = mounted(&mountinfo, &wanted) {
        let device = devices
            .iter()
            .find(|(n, _)| *n == num)
            .map(|(_, name)| name.clone())
            .unwrap_or(num);
        return Ok(Some(InUse::Mounted {
            device,
            mount_point,
        }));
    }
    for (num, name) in &devices {
        let holders = PathBuf::from(format!("/sys/dev/block/{num}/holders"));
        if let Some(holder) = std::fs::read_dir(holders)
            .ok()
            .and_then(|mut it| it.next())
            .and_then(Result::ok)
        {
            return Ok(Some(InUse::Held {
                holder: format!("{} (on {name})", holder.file_name().to_string_lossy()),
            }));
        }
    }
    Ok(None)
}

fn devnum(rdev: u64) -> String {
    format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    )
}

fn kernel_name(sys: &Path) -> String {
    std::fs::canonicalize(sys)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// The first mount in `mountinfo` whose device number is in `wanted`.
fn mounted(mountinfo: &str, wanted: &HashSet<&str>) -> Option<(String, PathBuf)> {
    // Fields: mount-id parent-id major:minor root mount-point options ...
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let num = fields.nth(2)?;
        let mount_point = fields.nth(1)?;
        wanted
            .contains(num)
            .then(|| (num.to_owned(), PathBuf::from(unescape(mount_point))))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_mounted_device_or_partition_in_mountinfo() {
        let info = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    30 1 179:2 / / rw,relatime - ext4 /dev/mmcblk0p2 rw\n\
                    31 30 7:3 / /mnt/my\\040disk rw - ext4 /dev/loop3 rw\n";
        let wanted: HashSet<&str> = ["7:0", "7:3"].into_iter().collect();
        assert_eq!(
            mounted(info, &wanted),
            Some(("7:3".to_owned(), PathBuf::from("/mnt/my disk")))
        );
        let wanted: HashSet<&str> = ["179:3"].into_iter().collect();
        assert_eq!(mounted(info, &wanted), None);
    }

    #[test]
    fn regular_files_are_not_block_devices() {
        let file = tempfile::tempfile().expect("tempfile");
        assert!(size(&file).is_err());
    }
}
