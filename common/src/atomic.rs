//! Power-cut-safe file replacement.
//!
//! A file is never modified in place: the new content goes to a temporary file
//! in the same directory, is fsynced, renamed over the old name, and the
//! directory is fsynced so the rename itself is durable. At any instruction a
//! reader sees either the complete old file or the complete new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `contents` atomically and durably (mode 0644).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomic_with_mode(path, contents, 0o644)
}

/// Replaces `path` with `contents` atomically and durably, creating the file
/// with `mode` (use 0o600 for secrets: the mode is set at creation, so the
/// content is never readable by others, not even briefly).
pub fn write_atomic_with_mode(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        fsync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Moves `from` to `to` (same filesystem) and makes the rename durable.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    fsync_dir(&parent_dir(to))?;
    let from_dir = parent_dir(from);
    if from_dir != parent_dir(to) {
        fsync_dir(&from_dir)?;
    }
    Ok(())
}

/// [`write_atomic`] for a file on FAT (an ESP), see [`sync_moved_file`].
pub fn write_atomic_fat(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomic(path, contents)?;
    sync_moved_file(path)
}

/// [`rename_durable`] for a file on FAT (an ESP), see [`sync_moved_file`].
pub fn rename_durable_fat(from: &Path, to: &Path) -> io::Result<()> {
    rename_durable(from, to)?;
    sync_moved_file(to)
}

/// On FAT a file's directory entry is its inode (start cluster, size): an
/// fsync of the directory after a rename does not write the moved entry,
/// while the replaced file's clusters are already free in the FAT. A power
/// cut then leaves a name with a size and no data (seen on real ESPs in
/// the full-system power-cut tests, GRUB's grubenv and systemd-boot's
/// loader.conf and entries). Syncing the file under its final name writes
/// that entry. Elsewhere it costs one fsync of clean data.
pub fn sync_moved_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Fsyncs a directory so that entries created, renamed or removed in it survive a power cut.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, fsyncing each parent whose entries changed.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_durable(parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(&parent_dir(dir)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let unique: u64 = rand_suffix();
    parent_dir(path).join(format!(".{name}.tmp-{}-{unique:x}", std::process::id()))
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    // Uniqueness within this process is what matters (create_new rejects a
    // clash); nanoseconds plus a counter give that without a RNG dependency.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos
        ^ COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .rotate_left(48)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").expect("first write");
        write_atomic(&path, b"two").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp files left behind: {names:?}");
    }

    #[test]
    fn secret_files_are_created_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        write_atomic_with_mode(&path, b"secret", 0o600).expect("write");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn failed_write_leaves_old_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing-dir").join("f");
        assert!(write_atomic(&path, b"x").is_err());
        assert!(!path.exists());
    }
}
