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
