//! Which slot is running and which boot this is, as the kernel tells it.

use crate::slot::SlotId;
use std::path::{Path, PathBuf};

/// Parameter RAUC's bootloader integrations put on the command line; recognised as well.
pub const RAUC_SLOT_PARAM: &str = "rauc.slot";
/// The kernel command line and boot id are short; cap what is read.
const MAX_READ: u64 = 64 * 1024;

/// Why the booted slot or boot id could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum BootedError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {param}= (or {RAUC_SLOT_PARAM}=) parameter: the bootloader must pass the booted slot (A or B) on the kernel command line")]
    Missing { path: PathBuf, param: String },
    #[error("{path} has no {param}= (or {RAUC_SLOT_PARAM}=) parameter, and root={root} is neither slot (compared with slots.a/b and slots.a_partuuid/b_partuuid)")]
    RootUnknown {
        path: PathBuf,
        param: String,
        root: String,
    },
    #[error("{path}: {param}={value:?} is not A or B")]
    BadValue {
        path: PathBuf,
        param: String,
        value: String,
    },
    #[error("{path} is empty: no boot id")]
    NoBootId { path: PathBuf },
}

fn read_capped(path: &Path) -> Result<String, BootedError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_READ).read_to_string(&mut text))
        .map_err(|source| BootedError::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok(text)
}

/// The booted slot, from `param=A|B` (or `rauc.slot=`) in the command line at `cmdline_path`.
/// The configured parameter wins when both are present; the last occurrence
/// of a parameter counts, as in the kernel.
pub fn booted_slot(cmdline_path: &Path, param: &str) -> Result<SlotId, BootedError> {
    let cmdline = read_capped(cmdline_path)?;
    parse_cmdline(&cmdline, param).map_err(|e| match e {
        ParseError::Missing => BootedError::Missing {
            path: cmdline_path.to_owned(),
            param: param.to_owned(),
        },
        ParseError::BadValue { param, value } => BootedError::BadValue {
            path: cmdline_path.to_owned(),
            param,
            value,
        },
    })
}

/// The slots as the kernel may name them in `root=`.
#[derive(Debug, Clone, Copy)]
pub struct SlotRoots<'a> {
    pub a: &'a Path,
    pub b: &'a Path,
    pub a_partuuid: Option<&'a str>,
    pub b_partuuid: Option<&'a str>,
}

/// The booted slot: from `param=A|B` (or `rauc.slot=`) as [`booted_slot`];
/// when neither is on the command line, from `root=PARTUUID=...` (matched
/// against the configured partition UUIDs, or through
/// /dev/disk/by-partuuid/) or `root=/dev/...` (matched against the slot
/// paths, by name or by device number).
pub fn booted_slot_with_root(
    cmdline_path: &Path,
    param: &str,
    roots: &SlotRoots<'_>,
) -> Result<SlotId, BootedError> {
    match booted_slot(cmdline_path, param) {
        Err(BootedError::Missing { path, param }) => {
            let cmdline = read_capped(cmdline_path)?;
            let Some(root) = last_param(&cmdline, "root") else {
                return Err(BootedError::Missing { path, param });
            };
            slot_of_root(root, roots, Path::new("/dev/disk/by-partuuid")).ok_or_else(|| {
                BootedError::RootUnknown {
                    path,
                    param,
                    root: root.chars().take(128).collect(),
                }
            })
        }
        other => other,
    }
}

fn last_param<'c>(cmdline: &'c str, name: &str) -> Option<&'c str> {
    cmdline
        .split_whitespace()
        .rev()
        .filter_map(|tok| tok.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

fn slot_of_root(root: &str, roots: &SlotRoots<'_>, by_partuuid: &Path) -> Option<SlotId> {
    let candidates = [
        (SlotId::A, roots.a, roots.a_partuuid),
        (SlotId::B, roots.b, roots.b_partuuid),
    ];
    let device = if let Some(uuid) = root
        .strip_prefix("PARTUUID=")
        .or_else(|| root.strip_prefix("partuuid="))
    {
        // A configured UUID decides; otherwise udev's by-partuuid link names the device.
        if let Some((id, ..)) = candidates
            .iter()
            .find(|(_, _, u)| u.is_some_and(|u| u.eq_ignore_ascii_case(uuid)))
        {
            return Some(*id);
        }
        if uuid.contains('/') || uuid.is_empty() {
            return None; // PARTNROFF= and friends: not resolved here.
        }
        by_partuuid.join(uuid.to_ascii_lowercase())
    } else if root.starts_with('/') {
        PathBuf::from(root)
    } else {
        return None;
    };
    if let Some((id, ..)) = candidates.iter().find(|(_, p, _)| *p == device) {
        return Some(*id);
    }
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(&device).ok()?.rdev();
    candidates
        .iter()
        .find(|(_, p, _)| std::fs::metadata(p).is_ok_and(|m| m.rdev() != 0 && m.rdev() == rdev))
        .map(|(id, ..)| *id)
}

enum ParseError {
    Missing,
    BadValue { param: String, value: String },
}

fn parse_cmdline(cmdline: &str, param: &str) -> Result<SlotId, ParseError> {
    let find = |name: &str| {
        cmdline
            .split_whitespace()
            .rev()
            .filter_map(|tok| tok.split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'))
            .next()
    };
    let (name, value) = match find(param) {
        Some(v) => (param, v),
        None => match find(RAUC_SLOT_PARAM) {
            Some(v) => (RAUC_SLOT_PARAM, v),
            None => return Err(ParseError::Missing),
        },
    };
    SlotId::parse(value).ok_or_else(|| ParseError::BadValue {
        param: name.to_owned(),
        value: value.chars().take(64).collect(),
    })
}

/// The kernel's id of this boot: changes at every boot, stable while it runs.
pub fn boot_id(path: &Path) -> Result<String, BootedError> {
    let id = read_capped(path)?.trim().to_owned();
    if id.is_empty() {
        return Err(BootedError::NoBootId {
            path: path.to_owned(),
        });
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cmdline");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn finds_the_configured_parameter() {
        let (_d, p) = cmdline("console=ttyS0 root=/dev/mmcblk0p3 ota.slot=B quiet\n");
        assert_eq!(booted_slot(&p, "ota.slot").expect("slot"), SlotId::B);
        let (_d, p) = cmdline("ota.slot=A");
        assert_eq!(booted_slot(&p, "ota.slot").expect("slot"), SlotId::A);
    }

    #[test]
    fn recognises_rauc_slot_and_custom_names() {
        let (_d, p) = cmdline("root=/dev/sda2 rauc.slot=A\n");
        assert_eq!(booted_slot(&p, "ota.slot").expect("slot"), SlotId::A);
        let (_d, p) = cmdline("rauc.slot=A myboard.slot=B\n");
        assert_eq!(booted_slot(&p, "myboard.slot").expect("slot"), SlotId::B);
    }

    #[test]
    fn missing_or_bad_values_are_clear_errors() {
        let (_d, p) = cmdline("console=ttyS0 not.ota.slot=A\n");
        let err = booted_slot(&p, "ota.slot")
            .expect_err("missing")
            .to_string();
        assert!(err.contains("ota.slot="), "{err}");
        let (_d, p) = cmdline("ota.slot=C\n");
        let err = booted_slot(&p, "ota.slot").expect_err("bad").to_string();
        assert!(err.contains("\"C\" is not A or B"), "{err}");
        let err = booted_slot(Path::new("/nonexistent/cmdline"), "ota.slot").expect_err("none");
        assert!(matches!(err, BootedError::Read { .. }));
    }

    #[test]
    fn falls_back_to_root_by_partuuid_or_device_path() {
        let roots = SlotRoots {
            a: Path::new("/dev/mmcblk0p2"),
            b: Path::new("/dev/mmcblk0p3"),
            a_partuuid: Some("6C3B1A2E-02"),
            b_partuuid: Some("6c3b1a2e-03"),
        };
        let (_d, p) = cmdline("console=ttyS0 root=PARTUUID=6c3b1a2e-02 rootwait\n");
        assert_eq!(
            booted_slot_with_root(&p, "ota.slot", &roots).expect("slot"),
            SlotId::A
        );
        let (_d, p) = cmdline("root=/dev/mmcblk0p3 ro\n");
        assert_eq!(
            booted_slot_with_root(&p, "ota.slot", &roots).expect("slot"),
            SlotId::B
        );
        // The slot parameter wins over root=.
        let (_d, p) = cmdline("root=/dev/mmcblk0p3 ota.slot=A\n");
        assert_eq!(
            booted_slot_with_root(&p, "ota.slot", &roots).expect("slot"),
            SlotId::A
        );
        let (_d, p) = cmdline("root=/dev/sda1\n");
        let err = booted_slot_with_root(&p, "ota.slot", &roots)
            .expect_err("unknown root")
            .to_string();
        assert!(err.contains("root=/dev/sda1 is neither slot"), "{err}");
        let (_d, p) = cmdline("quiet\n");
        assert!(matches!(
            booted_slot_with_root(&p, "ota.slot", &roots),
            Err(BootedError::Missing { .. })
        ));
    }

    #[test]
    fn partuuid_without_configured_uuids_resolves_through_by_partuuid_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let by_partuuid = dir.path().join("by-partuuid");
        std::fs::create_dir(&by_partuuid).expect("dir");
        // udev's links point at the device nodes; the null device stands in for a partition.
        std::os::unix::fs::symlink("/dev/null", by_partuuid.join("abcd-02")).expect("link");
        let roots = SlotRoots {
            a: Path::new("/dev/zero"),
            b: Path::new("/dev/null"),
            a_partuuid: None,
            b_partuuid: None,
        };
        assert_eq!(
            slot_of_root("PARTUUID=ABCD-02", &roots, &by_partuuid),
            Some(SlotId::B)
        );
        assert_eq!(slot_of_root("PARTUUID=abcd-09", &roots, &by_partuuid), None);
        assert_eq!(slot_of_root("LABEL=rootfs", &roots, &by_partuuid), None);
    }

    #[test]
    fn boot_id_is_trimmed_and_required() {
        let (_d, p) = cmdline("6f1e0c7a-1b2c-4d5e-8f90-123456789abc\n");
        assert_eq!(
            boot_id(&p).expect("id"),
            "6f1e0c7a-1b2c-4d5e-8f90-123456789abc"
        );
        let (_d, p) = cmdline("\n");
        assert!(matches!(boot_id(&p), Err(BootedError::NoBootId { .. })));
    }
}
