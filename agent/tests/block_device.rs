//! Slots on real block devices: loop devices over sparse files in a temp
//! dir. Needs root (losetup, mkfs.ext4, mount); without it these tests fail
//! with a message saying so, never pass silently.

use ota_agent::install::install_stream;
use ota_agent::slot::{SlotError, SlotWriter, Slots};
use ota_common::hash::Digests;
use sha2::{Digest, Sha256, Sha512};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEVICE_BYTES: u64 = 8 * 1024 * 1024;

/// A loop device over a sparse file; detached when dropped.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn new(dir: &Path, name: &str) -> LoopDevice {
        let backing = dir.join(name);
        let file = std::fs::File::create(&backing).expect("backing file");
        file.set_len(DEVICE_BYTES).expect("sparse file");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&backing)
            .output()
            .unwrap_or_else(|e| panic!("cannot run losetup (util-linux, needs root): {e}"));
        assert!(
            out.status.success(),
            "losetup -f --show {} failed: these tests need root and loop devices: {}",
            backing.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // The guard exists from here on, so a failed check below still detaches.
        let dev = LoopDevice {
            path: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        };
        assert!(
            dev.path.to_string_lossy().starts_with("/dev/loop"),
            "losetup printed {:?}",
            dev.path
        );
        dev
    }

    fn read(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(&self.path)
            .and_then(|mut f| f.read_exact(&mut buf))
            .expect("read loop device");
        buf
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A mounted filesystem; unmounted when dropped.
struct Mount {
    point: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.point).status();
    }
}

fn digests_of(data: &[u8]) -> Digests {
    Digests {
        sha256: Some(Sha256::digest(data).into()),
        sha512: Some(Sha512::digest(data).into()),
    }
}

/// Slot A (booted) is a file; slot B is the loop device.
fn slots(dir: &Path, dev: &LoopDevice) -> Slots {
    let a = dir.join("a.img");
    std::fs::write(&a, b"running system").expect("slot a");
    Slots::new(a, dev.path.clone(), None)
}

#[test]
fn writes_and_verifies_an_image_on_a_loop_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = LoopDevice::new(dir.path(), "b.raw");
    let s = slots(dir.path(), &dev);
    // Not a multiple of the chunk or of the sector size.
    let image: Vec<u8> = (0..(3 * 1024 * 1024 + 12_345))
        .map(|i: usize| (i * 13 % 251) as u8)
        .collect();
    install_stream(
        &image[..],
        image.len() as u64,
        &digests_of(&image),
        &s.b,
        &s.a,
        |_| {},
    )
    .expect("install onto the loop device");
    assert_eq!(dev.read(image.len()), image);
    assert_eq!(std::fs::read(&s.a.path).expect("slot a"), b"running system");
}

#[test]
fn a_mounted_loop_device_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = LoopDevice::new(dir.path(), "b.raw");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&dev.path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mkfs.ext4 (e2fsprogs): {e}"));
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let point = dir.path().join("mnt");
    std::fs::create_dir(&point).expect("mount point");
    // Read-only, without replaying the journal: a read-write ext4 mount keeps
    // writing to the device on its own (lazy inode-table init, journal commits),
    // which would make "not a byte written" fail for reasons not our own.
    let out = Command::new("mount")
        .args(["-o", "ro,noload"])
        .arg(&dev.path)
        .arg(&point)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {} (needs root): {}",
        dev.path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mount = Mount { point };
    let before = dev.read(2 * 1024 * 1024);

    let s = slots(dir.path(), &dev);
    let err = SlotWriter::open(&s.b, &s.a, 4096).expect_err("mounted");
    assert!(matches!(err, SlotError::InUse { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("is mounted at") && message.contains(&mount.point.display().to_string()),
        "the error names the mount point: {message}"
    );
    assert_eq!(dev.read(2 * 1024 * 1024), before, "not a byte written");
    drop(mount);
}

#[test]
fn an_image_larger_than_the_device_is_refused_before_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = LoopDevice::new(dir.path(), "b.raw");
    std::fs::write(&dev.path, vec![0xab; 1024 * 1024]).expect("fill the device");
    let s = slots(dir.path(), &dev);
    let image = vec![0u8; DEVICE_BYTES as usize + 1];
    let err = install_stream(
        &image[..],
        image.len() as u64,
        &digests_of(&image),
        &s.b,
        &s.a,
        |_| {},
    )
    .expect_err("too large");
    let message = err.to_string();
    assert!(
        message.contains(&format!("which holds {DEVICE_BYTES} bytes")),
        "{message}"
    );
    assert_eq!(dev.read(1024 * 1024), vec![0xab; 1024 * 1024]);
}
