//! The U-Boot environment on disk, byte-compatible with U-Boot's `saveenv`,
//! `mkenvimage` (u-boot-tools) and libubootenv's `fw_printenv`/`fw_setenv`,
//! and the `/etc/fw_env.config` file that says where it lives.
//!
//! One copy of the environment is `size` bytes:
//!
//! ```text
//! single:     crc32 (4 bytes, little-endian) | data (size - 4)
//! redundant:  crc32 (4 bytes, little-endian) | flag (1 byte) | data (size - 5)
//! ```
//!
//! The CRC is zlib's CRC-32 over the whole data area, padding included. The
//! data area holds `name=value\0` entries; an empty entry (a second `\0`)
//! ends the list. What follows is padding that no reader looks at:
//! `mkenvimage` fills it with 0xFF, libubootenv (0.3.x) leaves whatever its
//! heap buffer held. We write 0x00, as U-Boot's own `saveenv` does, so the
//! list stays terminated even for a reader that ignores the extra `\0`.
//!
//! Redundant environments have two copies (two lines in fw_env.config). A
//! copy is valid when its CRC matches. Of two valid copies the current one
//! has the higher flag, except that 0xFF→0x00 wraps (libubootenv's
//! "incremental" flags, used for files and block devices); equal flags mean
//! copy 0. A write goes to the *other* copy with the current flag + 1, so a
//! write torn by a power cut leaves the current copy intact and valid.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest environment copy we accept from a config (real ones are 8-256 KiB).
pub const MAX_ENV_SIZE: usize = 1024 * 1024;
/// Smallest copy: a header and an empty, terminated list.
pub const MIN_ENV_SIZE: usize = 16;
/// fw_env.config files are a few lines; anything larger is not one.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// libubootenv's lock file, so we never interleave with `fw_setenv`.
pub const DEFAULT_LOCK_PATH: &str = "/var/lock/fw_printenv.lock";

/// Why reading or writing the environment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} line {line}: {detail}")]
    Config {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("U-Boot environment: {0}")]
    Corrupt(String),
    #[error("U-Boot environment needs {needed} bytes of data but a copy holds {available}")]
    TooLarge { needed: usize, available: usize },
    #[error("U-Boot variable name {0:?} is invalid (empty, or contains '=' or NUL)")]
    InvalidName(String),
    #[error("value of U-Boot variable {0:?} contains NUL")]
    InvalidValue(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> EnvError + '_ {
    move |source| EnvError::Io {
        path: path.to_owned(),
        source,
    }
}

/// zlib's CRC-32 (IEEE, reflected, init and final xor 0xFFFFFFFF), as U-Boot uses.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// The variables of one environment, in the order they are stored. Names and
/// values are bytes: U-Boot does not require UTF-8 and we rewrite every
/// variable we do not change exactly as we read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvVars {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EnvVars {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The value as text; `None` when unset or not UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Sets `name`; returns whether anything changed. A new variable goes last.
    pub fn set(&mut self, name: &str, value: &str) -> Result<bool, EnvError> {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(EnvError::InvalidName(name.to_owned()));
        }
        if value.contains('\0') {
            return Err(EnvError::InvalidValue(name.to_owned()));
        }
        match self.entries.iter_mut().find(|(n, _)| n == name.as_bytes()) {
            Some((_, v)) if v == value.as_bytes() => Ok(false),
            Some((_, v)) => {
                *v = value.as_bytes().to_vec();
                Ok(true)
            }
            None => {
                self.entries
                    .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
                Ok(true)
            }
        }
    }

    /// Removes `name`; returns whether it was set.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| n != name.as_bytes());
        before != self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses a data area (after the CRC and flag). Like U-Boot and
    /// libubootenv: the list ends at the first empty entry, an entry without
    /// `=` or with an empty name is skipped, and a name set twice keeps its
    /// last value (at the position of its first occurrence).
    pub fn parse_data(data: &[u8]) -> Result<Self, EnvError> {
        let mut vars = EnvVars::new();
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            let Some(len) = rest.iter().position(|&b| b == 0) else {
                return Err(EnvError::Corrupt(format!(
                    "variable list is not terminated (entry at data byte {pos} runs past the end)"
                )));
            };
            let entry = &rest[..len];
            if entry.is_empty() {
                return Ok(vars);
            }
            if let Some(eq) = entry.iter().position(|&b| b == b'=') {
                let (name, value) = (&entry[..eq], &entry[eq + 1..]);
                if !name.is_empty() {
                    match vars.entries.iter_mut().find(|(n, _)| n == name) {
                        Some((_, v)) => *v = value.to_vec(),
                        None => vars.entries.push((name.to_vec(), value.to_vec())),
                    }
                }
            }
            pos += len + 1;
        }
    }

    /// Bytes the variables take in a data area, terminator included.
    pub fn encoded_len(&self) -> usize {
        self.entries
            .iter()
            .map(|(n, v)| n.len() + 1 + v.len() + 1)
            .sum::<usize>()
            + 1
    }

    /// Encodes a data area of exactly `len` bytes, zero-padded.
    pub fn encode_data(&self, len: usize) -> Result<Vec<u8>, EnvError> {
        let needed = self.encoded_len();
        if needed > len {
            return Err(EnvError::TooLarge {
                needed,
                available: len,
            });
        }
        let mut out = Vec::with_capacity(len);
        for (n, v) in &self.entries {
            out.extend_from_slice(n);
            out.push(b'=');
            out.extend_from_slice(v);
            out.push(0);
        }
        out.resize(len, 0);
        Ok(out)
    }
}

/// Single copy or two redundant copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Single,
    Redundant,
}

impl Layout {
    /// Bytes before the data area: the CRC, and the flag when redundant.
    pub fn header_len(self) -> usize {
        match self {
            Layout::Single => 4,
            Layout::Redundant => 5,
        }
    }
}

/// One copy as read from disk: whether its CRC holds, its flag, its data area.
#[derive(Debug, Clone)]
pub struct RawCopy<'a> {
    pub crc_ok: bool,
    pub flag: Option<u8>,
    pub data: &'a [u8],
}

/// Splits a copy into header and data and checks its CRC.
pub fn decode_copy(bytes: &[u8], layout: Layout) -> Result<RawCopy<'_>, EnvError> {
    let header = layout.header_len();
    if bytes.len() < MIN_ENV_SIZE.max(header + 1) {
        return Err(EnvError::Corrupt(format!(
            "copy of {} bytes is too small",
            bytes.len()
        )));
    }
    let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let data = &bytes[header..];
    Ok(RawCopy {
        crc_ok: crc32(data) == stored,
        flag: (layout == Layout::Redundant).then_some(bytes[4]),
        data,
    })
}

/// Encodes one copy of `size` bytes.
pub fn encode_copy(
    vars: &EnvVars,
    size: usize,
    layout: Layout,
    flag: u8,
) -> Result<Vec<u8>, EnvError> {
    let header = layout.header_len();
    let data = vars.encode_data(size.saturating_sub(header))?;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&crc32(&data).to_le_bytes());
    if layout == Layout::Redundant {
        out.push(flag);
    }
    out.extend_from_slice(&data);
    Ok(out)
}

/// Which of two copies is current, as libubootenv decides for files and
/// block devices ("incremental" flags); `None` when neither is valid.
pub fn select_current(valid: [bool; 2], flags: [u8; 2]) -> Option<usize> {
    match valid {
        [false, false] => None,
        [true, false] => Some(0),
        [false, true] => Some(1),
        [true, true] => Some(match flags {
            [0xFF, 0] => 1,
            [0, 0xFF] => 0,
            [f0, f1] if f1 > f0 => 1,
            _ => 0,
        }),
    }
}

/// Where one copy lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLocation {
    /// A plain file or a block device.
    pub device: PathBuf,
    pub offset: u64,
    pub size: usize,
}

/// A parsed fw_env.config: one line (single copy) or two (redundant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvConfig {
    pub copies: Vec<EnvLocation>,
}

impl FwEnvConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, EnvError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io_err(path))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(EnvError::Config {
                path: path.to_owned(),
                line: 0,
                detail: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        Self::parse(&text, path)
    }

    /// Parses fw_env.config text as libubootenv does: `#` starts a comment
    /// line; each other line is `device offset size [sector-size [sectors]]`
    /// where the offset is a C integer (decimal, 0x hex or 0 octal) and the
    /// sizes are hexadecimal with or without `0x` (`4000` is 16 KiB). Only
    /// files and block devices are supported: MTD and UBI need erase cycles.
    /// `origin` only names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, EnvError> {
        let mut copies = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |detail: String| EnvError::Config {
                path: origin.to_owned(),
                line,
                detail,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed
                .split_whitespace()
                .take_while(|f| !f.starts_with('#'))
                .collect();
            let [device, offset, size, rest @ ..] = fields.as_slice() else {
                return Err(err(
                    "expected `device offset size [sector-size [sectors]]`".into()
                ));
            };
            if rest.len() > 3 {
                return Err(err(format!("{} fields, at most 6 expected", fields.len())));
            }
            if device.starts_with("/dev/mtd") || device.starts_with("/dev/ubi") {
                return Err(err(format!(
                    "{device}: MTD/UBI devices are not supported (only files and block devices)"
                )));
            }
            let offset = parse_c_int(offset)
                .ok_or_else(|| err(format!("offset {offset:?} is not a number")))?;
            let offset = u64::try_from(offset).map_err(|_| {
                err("negative offsets (from the device end) are not supported".into())
            })?;
            let size_text = size;
            let size = parse_hex(size)
                .ok_or_else(|| err(format!("size {size_text:?} is not a hexadecimal number")))?;
            if !(MIN_ENV_SIZE as u64..=MAX_ENV_SIZE as u64).contains(&size) {
                return Err(err(format!(
                    "size {size_text} ({size} bytes) is outside {MIN_ENV_SIZE}..={MAX_ENV_SIZE}"
                )));
            }
            for extra in rest.iter().take(2) {
                parse_hex(extra)
                    .ok_or_else(|| err(format!("{extra:?} is not a hexadecimal number")))?;
            }
            if offset.checked_add(size).is_none() {
                return Err(err("offset + size overflows".into()));
            }
            if copies.len() == 2 {
                return Err(err("more than two environment copies".into()));
            }
            copies.push(EnvLocation {
                device: PathBuf::from(device),
                offset,
                size: size as usize,
            });
        }
        match copies.as_slice() {
            [] => Err(EnvError::Config {
                path: origin.to_owned(),
                line: 0,
                detail: "no environment device line".into(),
            }),
            [a, b] if a.size != b.size => Err(EnvError::Config {
                path: origin.to_owned(),
                line: 0,
                detail: format!("the two copies differ in size ({} and {})", a.size, b.size),
            }),
            [a, b]
                if a.device == b.device
                    && a.offset < b.offset + b.size as u64
                    && b.offset < a.offset + a.size as u64 =>
            {
                Err(EnvError::Config {
                    path: origin.to_owned(),
                    line: 0,
                    detail: "the two copies overlap".into(),
                })
            }
            _ => Ok(FwEnvConfig { copies }),
        }
    }

    pub fn layout(&self) -> Layout {
        if self.copies.len() == 2 {
            Layout::Redundant
        } else {
            Layout::Single
        }
    }

    /// Size of one copy.
    pub fn size(&self) -> usize {
        self.copies.first().map_or(0, |c| c.size)
    }
}

/// strtoll with base 0: optional sign, then `0x` hex, `0` octal or decimal.
fn parse_c_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<u64>().ok()?
    };
    let value = i64::try_from(value).ok()?;
    Some(if neg { -value } else { value })
}

/// `%zx`: hexadecimal with an optional `0x`.
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The environment as read: its variables and which copy they came from.
#[derive(Debug, Clone)]
pub struct LoadedEnv {
    pub vars: EnvVars,
    /// Index of the copy read (always 0 for a single copy).
    pub current: usize,
    /// Its flag (redundant layout only; 0 otherwise).
    pub flag: u8,
}

/// Reads and writes the environment described by a [`FwEnvConfig`].
#[derive(Debug, Clone)]
pub struct EnvStore {
    config: FwEnvConfig,
    lock_path: Option<PathBuf>,
}

impl EnvStore {
    /// A store that takes libubootenv's lock file around every access.
    pub fn new(config: FwEnvConfig) -> Self {
        EnvStore {
            config,
            lock_path: Some(PathBuf::from(DEFAULT_LOCK_PATH)),
        }
    }

    /// Uses `lock_path` instead of libubootenv's (`None`: no lock).
    pub fn with_lock_path(mut self, lock_path: Option<PathBuf>) -> Self {
        self.lock_path = lock_path;
        self
    }

    pub fn config(&self) -> &FwEnvConfig {
        &self.config
    }

    /// Reads the current copy; an error if no copy has a valid CRC (U-Boot
    /// would then boot with its built-in default environment).
    pub fn read(&self) -> Result<LoadedEnv, EnvError> {
        let _lock = self.lock()?;
        self.read_unlocked()
    }

    /// Reads, lets `change` edit the variables, and writes them back if they
    /// changed (returns whether it wrote). Holds the lock throughout.
    pub fn modify(
        &self,
        change: impl FnOnce(&mut EnvVars) -> Result<(), EnvError>,
    ) -> Result<bool, EnvError> {
        let _lock = self.lock()?;
        let loaded = self.read_unlocked()?;
        let mut vars = loaded.vars.clone();
        change(&mut vars)?;
        if vars == loaded.vars {
            return Ok(false);
        }
        self.write_unlocked(&loaded, &vars)?;
        Ok(true)
    }

    fn read_unlocked(&self) -> Result<LoadedEnv, EnvError> {
        let layout = self.config.layout();
        let images = self
            .config
            .copies
            .iter()
            .map(read_copy)
            .collect::<Result<Vec<_>, _>>()?;
        let copies = images
            .iter()
            .map(|img| decode_copy(img, layout))
            .collect::<Result<Vec<_>, _>>()?;
        let current = match copies.as_slice() {
            [only] => only.crc_ok.then_some(0),
            [a, b] => select_current(
                [a.crc_ok, b.crc_ok],
                [a.flag.unwrap_or(0), b.flag.unwrap_or(0)],
            ),
            _ => None,
        };
        let Some(current) = current else {
            return Err(EnvError::Corrupt(format!(
                "bad CRC in {} (U-Boot would use its default environment)",
                if copies.len() == 2 {
                    "both copies"
                } else {
                    "the only copy"
                }
            )));
        };
        let copy = &copies[current];
        Ok(LoadedEnv {
            vars: EnvVars::parse_data(copy.data)?,
            current,
            flag: copy.flag.unwrap_or(0),
        })
    }

    fn write_unlocked(&self, loaded: &LoadedEnv, vars: &EnvVars) -> Result<(), EnvError> {
        let layout = self.config.layout();
        let (target, flag) = match layout {
            Layout::Single => (0, 0),
            // The other copy, so a torn write leaves the current one valid.
            Layout::Redundant => (1 - loaded.current, loaded.flag.wrapping_add(1)),
        };
        let image = encode_copy(vars, self.config.size(), layout, flag)?;
        let loc = &self.config.copies[target];
        write_copy(loc, &image)
    }

    fn lock(&self) -> Result<Option<nix::fcntl::Flock<File>>, EnvError> {
        let Some(path) = &self.lock_path else {
            return Ok(None);
        };
        // libubootenv ignores a lock it cannot open (no /var/lock in an
        // initramfs); so do we, but a lock we opened is waited for.
        let file = match OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "U-Boot env lock file unavailable; continuing unlocked");
                return Ok(None);
            }
        };
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map(Some)
            .map_err(|(_, errno)| EnvError::Io {
                path: path.clone(),
                source: io::Error::from(errno),
            })
    }
}

fn read_copy(loc: &EnvLocation) -> Result<Vec<u8>, EnvError> {
    let path = loc.device.as_path();
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(loc.offset))
        .map_err(io_err(path))?;
    let mut buf = vec![0u8; loc.size];
    file.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            EnvError::Corrupt(format!(
                "{} is shorter than offset {} + size {}",
                path.display(),
                loc.offset,
                loc.size
            ))
        } else {
            io_err(path)(e)
        }
    })?;
    Ok(buf)
}

/// Writes one copy in place and fsyncs it: durable on return.
fn write_copy(loc: &EnvLocation, image: &[u8]) -> Result<(), EnvError> {
    let path = loc.device.as_path();
    // Never create or truncate: the device (or file) and its layout exist.
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.seek(SeekFrom::Start(loc.offset))
        .map_err(io_err(path))?;
    file.write_all(image).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> EnvVars {
        let mut v = EnvVars::new();
        for (n, val) in pairs {
            v.set(n, val).expect("set");
        }
        v
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn single_copy_round_trip_and_padding() {
        let v = vars(&[("foo", "bar"), ("bootcmd", "run a=b; boot")]);
        let img = encode_copy(&v, 64, Layout::Single, 0).expect("encode");
        assert_eq!(img.len(), 64);
        assert_eq!(&img[4..12], b"foo=bar\0");
        let end = 4 + v.encoded_len();
        assert_eq!(img[end - 1], 0, "terminating empty entry");
        assert!(img[end..].iter().all(|&b| b == 0), "zero padding");
        assert_eq!(
            u32::from_le_bytes(img[..4].try_into().expect("4")),
            crc32(&img[4..])
        );
        let copy = decode_copy(&img, Layout::Single).expect("decode");
        assert!(copy.crc_ok);
        assert_eq!(copy.flag, None);
        let back = EnvVars::parse_data(copy.data).expect("parse");
        assert_eq!(back, v);
        assert_eq!(back.get_str("bootcmd"), Some("run a=b; boot"));
    }

    #[test]
    fn redundant_copy_has_flag_and_shorter_data() {
        let v = vars(&[("a", "1")]);
        let img = encode_copy(&v, 32, Layout::Redundant, 7).expect("encode");
        assert_eq!(img[4], 7);
        assert_eq!(&img[5..9], b"a=1\0");
        let copy = decode_copy(&img, Layout::Redundant).expect("decode");
        assert!(copy.crc_ok);
        assert_eq!(copy.flag, Some(7));
        assert_eq!(copy.data.len(), 27);
    }

    #[test]
    fn a_flipped_byte_breaks_the_crc() {
        let v = vars(&[("a", "1")]);
        let mut img = encode_copy(&v, 32, Layout::Single, 0).expect("encode");
        img[20] ^= 1; // in the padding: still covered by the CRC
        assert!(!decode_copy(&img, Layout::Single).expect("decode").crc_ok);
    }

    #[test]
    fn oversize_environment_is_a_clear_error() {
        let v = vars(&[("name", &"x".repeat(100))]);
        let err = encode_copy(&v, 64, Layout::Single, 0).expect_err("too big");
        assert!(
            matches!(
                err,
                EnvError::TooLarge {
                    needed: 107,
                    available: 60
                }
            ),
            "{err}"
        );
        // Exactly full fits: entry + terminator == data area.
        let v = vars(&[("n", &"x".repeat(56))]);
        assert_eq!(v.encoded_len(), 60);
        encode_copy(&v, 64, Layout::Single, 0).expect("exact fit");
    }

    #[test]
    fn parse_follows_u_boot_rules() {
        let data = b"a=1\0junk\0=empty\0b=x=y\0a=2\0\0c=after-end\0";
        let v = EnvVars::parse_data(data).expect("parse");
        let got: Vec<_> = v.iter().collect();
        assert_eq!(got, [(&b"a"[..], &b"2"[..]), (&b"b"[..], &b"x=y"[..])]);
        // Unterminated list: refused, not panicked on.
        assert!(EnvVars::parse_data(b"a=1\0b=2").is_err());
        assert!(EnvVars::parse_data(b"").is_err());
        assert!(EnvVars::parse_data(&[0xFF; 40]).is_err());
        assert!(EnvVars::parse_data(b"\0").expect("empty").is_empty());
    }

    #[test]
    fn set_reports_changes_and_validates() {
        let mut v = vars(&[("a", "1")]);
        assert!(!v.set("a", "1").expect("same"));
        assert!(v.set("a", "2").expect("changed"));
        assert!(v.set("b", "v=w").expect("new"));
        assert!(v.set("x=y", "1").is_err());
        assert!(v.set("", "1").is_err());
        assert!(v.set("n", "a\0b").is_err());
        assert!(v.remove("a"));
        assert!(!v.remove("a"));
    }

    #[test]
    fn current_copy_selection_with_wrap_around() {
        assert_eq!(select_current([true, true], [1, 2]), Some(1));
        assert_eq!(select_current([true, true], [3, 2]), Some(0));
        assert_eq!(select_current([true, true], [5, 5]), Some(0));
        assert_eq!(select_current([true, true], [0xFF, 0]), Some(1));
        assert_eq!(select_current([true, true], [0, 0xFF]), Some(0));
        assert_eq!(select_current([true, true], [0xFE, 0xFF]), Some(1));
        assert_eq!(select_current([false, true], [9, 1]), Some(1));
        assert_eq!(select_current([true, false], [1, 9]), Some(0));
        assert_eq!(select_current([false, false], [1, 2]), None);
    }

    #[test]
    fn config_parsing() {
        let p = Path::new("fw_env.config");
        let c = FwEnvConfig::parse(
            "# comment\n\n/dev/mmcblk0 0x3c0000 0x4000 # trailing\n/dev/mmcblk0 0x3e0000 4000 0x200 1\n",
            p,
        )
        .expect("parse");
        assert_eq!(c.layout(), Layout::Redundant);
        assert_eq!(c.copies[0].offset, 0x3c0000);
        assert_eq!(c.copies[1].size, 0x4000, "sizes are hexadecimal");
        let c = FwEnvConfig::parse("/boot/uboot.env 010 100\n", p).expect("parse");
        assert_eq!(c.layout(), Layout::Single);
        assert_eq!(c.copies[0].offset, 8, "leading 0 is octal, as strtoll");
        assert_eq!(c.copies[0].size, 0x100);

        let bad = [
            ("", "no environment"),
            ("/f 0\n", "expected"),
            ("/f zz 100\n", "offset"),
            ("/f 0 xyz\n", "size"),
            ("/f 0 0\n", "outside"),
            ("/f 0 200000\n", "outside"),
            ("/f -0x100 100\n", "negative"),
            ("/dev/mtd1 0 100\n", "MTD"),
            ("/f 0 100\n/f 0 200\n", "differ"),
            ("/f 0 100\n/f 0x80 100\n", "overlap"),
            ("/f 0 100\n/g 0 100\n/h 0 100\n", "more than two"),
        ];
        for (text, want) in bad {
            let err = FwEnvConfig::parse(text, p).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    fn store_in(dir: &Path, redundant: bool) -> EnvStore {
        let mut text = format!("{} 0 100\n", dir.join("env0").display());
        if redundant {
            text += &format!("{} 0x100 100\n", dir.join("env0").display());
        }
        let config = FwEnvConfig::parse(&text, Path::new("t")).expect("config");
        EnvStore::new(config).with_lock_path(Some(dir.join("lock")))
    }

    #[test]
    fn redundant_store_alternates_copies_and_survives_a_torn_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = vars(&[("a", "1")]);
        let mut file = encode_copy(&v, 0x100, Layout::Redundant, 0xFF).expect("c0");
        file.extend(encode_copy(&v, 0x100, Layout::Redundant, 0xFE).expect("c1"));
        std::fs::write(dir.path().join("env0"), &file).expect("write");
        let store = store_in(dir.path(), true);
        let loaded = store.read().expect("read");
        assert_eq!((loaded.current, loaded.flag), (0, 0xFF));

        // Writes go to copy 1 with flag 0xFF + 1 = 0, which then wins.
        assert!(store.modify(|v| v.set("a", "2").map(drop)).expect("modify"));
        let loaded = store.read().expect("read");
        assert_eq!((loaded.current, loaded.flag), (1, 0));
        assert_eq!(loaded.vars.get_str("a"), Some("2"));
        // Unchanged: nothing written.
        assert!(!store.modify(|v| v.set("a", "2").map(drop)).expect("noop"));

        // Tear the next write (to copy 0): copy 1 stays current.
        assert!(store.modify(|v| v.set("a", "3").map(drop)).expect("modify"));
        let mut bytes = std::fs::read(dir.path().join("env0")).expect("read");
        bytes[10] ^= 0x55;
        std::fs::write(dir.path().join("env0"), &bytes).expect("write");
        let loaded = store.read().expect("read");
        assert_eq!(loaded.current, 1);
        assert_eq!(loaded.vars.get_str("a"), Some("2"));
    }

    #[test]
    fn single_store_refuses_a_bad_crc_and_a_short_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(dir.path(), false);
        std::fs::write(dir.path().join("env0"), [0xFFu8; 0x100]).expect("write");
        let err = store.read().expect_err("bad crc").to_string();
        assert!(err.contains("bad CRC"), "{err}");
        std::fs::write(dir.path().join("env0"), [0u8; 10]).expect("write");
        let err = store.read().expect_err("short").to_string();
        assert!(err.contains("shorter"), "{err}");
        assert!(
            store.modify(|_| Ok(())).is_err(),
            "no write over a corrupt env"
        );
    }
}
