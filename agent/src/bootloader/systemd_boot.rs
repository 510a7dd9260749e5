//! systemd-boot backend: Boot Loader Specification (type #1) entries with
//! automatic boot assessment (see `boot/systemd-boot/` for example entries).
//!
//! Each slot has one entry file in the ESP's `loader/entries/`, named after a
//! configured base name (`ota-a`, `ota-b`) plus the BLS boot counter:
//!
//! * `<name>.conf`: no counter: a good ("blessed") entry;
//! * `<name>+L-D.conf` (or `<name>+L.conf`, D = 0): L tries left, D done.
//!   systemd-boot renames the entry to `+(L-1)-(D+1)` each time it boots it;
//!   an entry with L = 0 is bad and sorted last;
//!   `systemd-bless-boot` renames it to `<name>.conf` once
//!   `boot-complete.target` is reached.
//!
//! Which slot is preferred is the `default` line of `loader.conf`. systemd-boot
//! matches it against an entry's id, and that id is the whole file name,
//! boot counter included (seen on Debian 12's systemd-boot 252 in the
//! full-system board 2, docs/FULL-SYSTEM.md), so this backend writes the
//! entry's exact current file name there:
//!
//! * `set_try_once(s)`: the other (running) slot's entry is blessed so it is a
//!   valid fallback, `s` becomes `<s>+1-0.conf`, `default <s>+1-0.conf`.
//!   Booting it renames it `<s>+0-1.conf`, which the default no longer
//!   matches: unless something blesses it, the next boot takes the first
//!   entry in systemd-boot's order, where entries with no tries left come
//!   last, i.e. the other slot;
//! * `mark_good(s)`: `s` becomes `<s>.conf`, `default <s>.conf`;
//! * `mark_bad(s)`: `s` becomes `<s>+0-D.conf`, `default` the other's file.
//!
//! A default without the counter (`<s>.conf`) would never match a counting
//! entry: the choice would fall to the sort order, which boots B whenever
//! both are good, so a try of A from a committed B would boot B again.
//!
//! Every rename is a durable `rename(2)` (the directory is fsynced) and
//! loader.conf is replaced atomically, so a power cut leaves either name.
//! The order of the steps makes every intermediate state boot a good slot.

use super::{BootError, Bootloader, Result};
use crate::slot::SlotId;
use std::path::{Path, PathBuf};

/// loader.conf is a few lines; anything larger is not a loader.conf.
const MAX_LOADER_CONF_BYTES: u64 = 64 * 1024;
/// An ESP's entries directory holds a handful of files; refuse to scan a huge one.
const MAX_DIR_ENTRIES: usize = 10_000;
/// Counters systemd-boot accepts (it refuses values above INT_MAX).
const MAX_COUNTER: u32 = i32::MAX as u32;

/// The BLS boot counter in an entry's file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// One slot's entry file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file name in the entries directory.
    pub file_name: String,
    /// `None`: no counter (blessed).
    pub counter: Option<Counter>,
}

impl Entry {
    /// systemd-boot's "bad": a counter with no tries left.
    pub fn is_bad(&self) -> bool {
        self.counter.is_some_and(|c| c.left == 0)
    }
}

/// The file name for entry `name` with `counter`.
pub fn entry_file_name(name: &str, counter: Option<Counter>) -> String {
    match counter {
        None => format!("{name}.conf"),
        Some(c) => format!("{name}+{}-{}.conf", c.left, c.done),
    }
}

/// Whether `file` is an entry file of base name `name`: `None` if not,
/// `Some(Err)` if it is one but its counter is malformed.
pub fn parse_entry_file(
    file: &str,
    name: &str,
) -> Option<std::result::Result<Option<Counter>, String>> {
    let stem = file.strip_suffix(".conf")?;
    if stem == name {
        return Some(Ok(None));
    }
    let counter = stem.strip_prefix(name)?.strip_prefix('+')?;
    Some(parse_counter(counter).map(Some).map_err(|detail| {
        format!("entry {file:?}: boot counter {counter:?} {detail} (expected +LEFT or +LEFT-DONE)")
    }))
}

fn parse_counter(text: &str) -> std::result::Result<Counter, String> {
    let number = |s: &str| -> std::result::Result<u32, String> {
        if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("is not a number".into());
        }
        s.parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_COUNTER)
            .ok_or_else(|| "is too large".into())
    };
    let (left, done) = match text.split_once('-') {
        Some((l, d)) => (number(l)?, number(d)?),
        None => (number(text)?, 0),
    };
    Ok(Counter { left, done })
}

/// `fnmatch` as systemd-boot's `efi_fnmatch` applies loader.conf's `default`:
/// `*`, `?`, `[...]` (with ranges), `\` escapes; compared case-folded.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|skip| glob_at(&p[1..], &t[skip..])),
        Some('?') => !t.is_empty() && glob_at(&p[1..], &t[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(2).position(|c| *c == ']').map(|i| i + 2) else {
                // An unterminated class matches a literal '['.
                return t.first() == Some(&'[') && glob_at(&p[1..], &t[1..]);
            };
            let Some(c) = t.first() else { return false };
            let class = &p[1..close];
            let mut i = 0;
            let mut hit = false;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    hit |= (class[i]..=class[i + 2]).contains(c);
                    i += 3;
                } else {
                    hit |= class[i] == *c;
                    i += 1;
                }
            }
            hit && glob_at(&p[close + 1..], &t[1..])
        }
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && glob_at(&p[2..], &t[1..]),
        Some(c) => t.first() == Some(c) && glob_at(&p[1..], &t[1..]),
    }
}

/// The last `default` value of a loader.conf text (systemd-boot keeps the last).
pub fn default_pattern(text: &str) -> Option<&str> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (key, value) = line.split_once([' ', '\t'])?;
            (key == "default").then(|| value.trim())
        })
        .rfind(|v| !v.is_empty())
}

/// `text` with its `default` lines replaced by one `default {id}` (where the
/// first was, else appended); every other line kept byte for byte.
pub fn with_default(text: &str, id: &str) -> String {
    let mut out = String::with_capacity(text.len() + id.len() + 16);
    let mut written = false;
    for line in text.split_inclusive('\n') {
        let is_default = line
            .trim()
            .split_once([' ', '\t'])
            .is_some_and(|(k, _)| k == "default")
            || line.trim() == "default";
        if !is_default {
            out.push_str(line);
        } else if !written {
            out.push_str(&format!("default {id}\n"));
            written = true;
        }
    }
    if !written {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("default {id}\n"));
    }
    out
}

/// The systemd-boot bootloader, reading the entries directory and loader.conf
/// on every call (systemd-boot and systemd-bless-boot rename entries between calls).
#[derive(Debug, Clone)]
pub struct SystemdBootBootloader {
    entries_dir: PathBuf,
    loader_conf: PathBuf,
    names: [String; 2],
}

impl SystemdBootBootloader {
    /// Entries in `entries_dir` named `entry_a`/`entry_b`; `loader_conf`
    /// defaults to `loader.conf` beside the entries directory.
    pub fn new(
        entries_dir: PathBuf,
        loader_conf: Option<PathBuf>,
        entry_a: &str,
        entry_b: &str,
    ) -> Result<Self> {
        let loader_conf = match loader_conf {
            Some(p) => p,
            None => entries_dir
                .parent()
                .map(|p| p.join("loader.conf"))
                .ok_or_else(|| {
                    BootError::Config(format!(
                        "boot.esp_entries_dir {} has no parent for loader.conf",
                        entries_dir.display()
                    ))
                })?,
        };
        for name in [entry_a, entry_b] {
            if name.is_empty() || name.contains(['+', '/', '*', '?', '[', '\\']) {
                return Err(BootError::Config(format!(
                    "entry name {name:?} must be non-empty without '+', '/' or glob characters"
                )));
            }
        }
        if entry_a.eq_ignore_ascii_case(entry_b) {
            return Err(BootError::Config(
                "boot.entry_a and boot.entry_b must differ".into(),
            ));
        }
        Ok(SystemdBootBootloader {
            entries_dir,
            loader_conf,
            names: [entry_a.to_owned(), entry_b.to_owned()],
        })
    }

    /// The configured entries directory, or the first of
    /// [`crate::config::ESP_ENTRIES_DIRS`] that exists.
    pub fn entries_dir_from(configured: Option<&Path>) -> Result<PathBuf> {
        if let Some(dir) = configured {
            return Ok(dir.to_owned());
        }
        crate::config::ESP_ENTRIES_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.is_dir())
            .ok_or_else(|| {
                BootError::Config(format!(
                    "boot.esp_entries_dir is not set and none of {} exists",
                    crate::config::ESP_ENTRIES_DIRS.join(", ")
                ))
            })
    }

    pub fn name(&self, slot: SlotId) -> &str {
        &self.names[slot as usize]
    }

    pub fn entries_dir(&self) -> &Path {
        &self.entries_dir
    }

    pub fn loader_conf(&self) -> &Path {
        &self.loader_conf
    }

    /// The entry file of `slot`: exactly one file must carry its base name.
    pub fn entry(&self, slot: SlotId) -> Result<Entry> {
        let name = self.name(slot);
        let dir = &self.entries_dir;
        let io = |source| BootError::Io {
            path: dir.clone(),
            source,
        };
        let mut found = Vec::new();
        for (i, item) in std::fs::read_dir(dir).map_err(io)?.enumerate() {
            if i >= MAX_DIR_ENTRIES {
                return Err(BootError::Corrupt {
                    path: dir.clone(),
                    detail: format!("more than {MAX_DIR_ENTRIES} files"),
                });
            }
            let item = item.map_err(io)?;
            let Some(file) = item.file_name().to_str().map(str::to_owned) else {
                continue; // not UTF-8: not a name this backend or systemd-boot writes for us
            };
            if file.starts_with('.') {
                continue; // systemd-boot skips hidden files; our temp files are hidden
            }
            match parse_entry_file(&file, name) {
                None => {}
                Some(Ok(counter)) => found.push(Entry {
                    file_name: file,
                    counter,
                }),
                Some(Err(detail)) => {
                    return Err(BootError::Corrupt {
                        path: dir.join(&file),
                        detail,
                    })
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(BootError::Config(format!(
                "no boot entry for slot {slot} in {}: expected {name}.conf or {name}+LEFT-DONE.conf",
                dir.display()
            ))),
            _ => {
                let mut names: Vec<_> = found.into_iter().map(|e| e.file_name).collect();
                names.sort();
                Err(BootError::Corrupt {
                    path: dir.clone(),
                    detail: format!(
                        "slot {slot} has several entries ({}); exactly one must exist",
                        names.join(", ")
                    ),
                })
            }
        }
    }

    /// Renames `slot`'s entry to carry `counter`; nothing when it already does.
    fn set_counter(&self, slot: SlotId, counter: Option<Counter>) -> Result<()> {
        let entry = self.entry(slot)?;
        let new = entry_file_name(self.name(slot), counter);
        if entry.file_name == new {
            return Ok(());
        }
        let from = self.entries_dir.join(&entry.file_name);
        let to = self.entries_dir.join(&new);
        ota_common::atomic::rename_durable_fat(&from, &to).map_err(|source| BootError::Io {
            path: from.clone(),
            source,
        })?;
        tracing::debug!(from = %entry.file_name, to = %new, "boot entry renamed");
        Ok(())
    }

    /// loader.conf's text; a missing file is empty (no default).
    fn read_loader_conf(&self) -> Result<String> {
        use std::io::Read;
        let path = &self.loader_conf;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(source) => {
                return Err(BootError::Io {
                    path: path.clone(),
                    source,
                })
            }
        };
        let mut bytes = Vec::new();
        file.take(MAX_LOADER_CONF_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| BootError::Io {
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_LOADER_CONF_BYTES {
            return Err(BootError::Corrupt {
                path: path.clone(),
                detail: format!("larger than {MAX_LOADER_CONF_BYTES} bytes"),
            });
        }
        String::from_utf8(bytes).map_err(|_| BootError::Corrupt {
            path: path.clone(),
            detail: "not UTF-8 text".into(),
        })
    }

    /// loader.conf's `default`, if set.
    pub fn default_entry(&self) -> Result<Option<String>> {
        Ok(default_pattern(&self.read_loader_conf()?).map(str::to_owned))
    }

    /// Makes the entry file `file_name` the default; loader.conf is replaced
    /// atomically and only when the line changes (the ESP is flash too).
    fn set_default(&self, file_name: &str) -> Result<()> {
        let text = self.read_loader_conf()?;
        let new = with_default(&text, file_name);
        if new == text {
            return Ok(());
        }
        ota_common::atomic::write_atomic_fat(&self.loader_conf, new.as_bytes()).map_err(|source| {
            BootError::Io {
                path: self.loader_conf.clone(),
                source,
            }
        })
    }
}

/// What systemd-boot boots given loader.conf's `default` and both entries:
/// the slot whose entry file name (systemd-boot's id) the default matches,
/// unless that entry is bad, then the other; with no match, the first in
/// systemd-boot's order (entries with tries left or no counter before bad
/// ones, then by id, highest first).
pub fn choose(default: Option<&str>, entries: [&Entry; 2]) -> SlotId {
    let slots = [SlotId::A, SlotId::B];
    let matched = default.and_then(|pattern| {
        slots
            .into_iter()
            .find(|s| glob_match(pattern, &entries[*s as usize].file_name))
    });
    if let Some(slot) = matched {
        return if entries[slot as usize].is_bad() && !entries[slot.other() as usize].is_bad() {
            slot.other()
        } else {
            slot
        };
    }
    let key = |s: SlotId| {
        (
            entries[s as usize].is_bad(),
            std::cmp::Reverse(entries[s as usize].file_name.to_ascii_lowercase()),
        )
    };
    if key(SlotId::B) < key(SlotId::A) {
        SlotId::B
    } else {
        SlotId::A
    }
}

impl Bootloader for SystemdBootBootloader {
    fn primary(&self) -> Result<SlotId> {
        let a = self.entry(SlotId::A)?;
        let b = self.entry(SlotId::B)?;
        let default = self.default_entry()?;
        Ok(choose(default.as_deref(), [&a, &b]))
    }

    fn set_try_once(&mut self, slot: SlotId) -> Result<()> {
        // The running slot is the fallback: bless it first, so that when the
        // try fails systemd-boot has a good entry to fall back to.
        self.set_counter(slot.other(), None)?;
        let one_try = Some(Counter { left: 1, done: 0 });
        self.set_counter(slot, one_try)?;
        self.set_default(&entry_file_name(self.name(slot), one_try))
    }

    fn mark_good(&mut self, slot: SlotId) -> Result<()> {
        self.set_counter(slot, None)?;
        self.set_default(&entry_file_name(self.name(slot), None))
    }

    fn mark_bad(&mut self, slot: SlotId) -> Result<()> {
        let done = self.entry(slot)?.counter.map_or(0, |c| c.done);
        self.set_counter(slot, Some(Counter { left: 0, done }))?;
        let fallback = self.entry(slot.other())?;
        self.set_default(&fallback.file_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_parse_with_their_counters() {
        let c = |left, done| Some(Ok(Some(Counter { left, done })));
        assert_eq!(parse_entry_file("ota-a.conf", "ota-a"), Some(Ok(None)));
        assert_eq!(parse_entry_file("ota-a+3.conf", "ota-a"), c(3, 0));
        assert_eq!(parse_entry_file("ota-a+0-12.conf", "ota-a"), c(0, 12));
        assert_eq!(parse_entry_file("ota-ab.conf", "ota-a"), None);
        assert_eq!(parse_entry_file("ota-a.conf.bak", "ota-a"), None);
        assert_eq!(parse_entry_file("other+1-0.conf", "ota-a"), None);
        for bad in [
            "ota-a+.conf",
            "ota-a+x.conf",
            "ota-a+1-.conf",
            "ota-a+1-2-3.conf",
            "ota-a+-1.conf",
            "ota-a+99999999999.conf",
            "ota-a+1+2.conf",
        ] {
            assert!(
                matches!(parse_entry_file(bad, "ota-a"), Some(Err(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn glob_matches_like_efi_fnmatch() {
        assert!(glob_match("ota-a.conf", "OTA-A.conf"));
        assert!(glob_match("ota-*", "ota-b.conf"));
        assert!(glob_match("ota-[ab].conf", "ota-b.conf"));
        assert!(glob_match("ota-[a-c]?conf", "ota-b.conf"));
        assert!(!glob_match("ota-a.conf", "ota-b.conf"));
        assert!(!glob_match("ota-[c-z].conf", "ota-b.conf"));
    }

    #[test]
    fn default_line_is_replaced_in_place() {
        let text = "timeout 3\ndefault old.conf\neditor no\ndefault again\n";
        assert_eq!(default_pattern(text), Some("again"));
        let new = with_default(text, "ota-b.conf");
        assert_eq!(new, "timeout 3\ndefault ota-b.conf\neditor no\n");
        assert_eq!(
            with_default("timeout 3", "x.conf"),
            "timeout 3\ndefault x.conf\n"
        );
        assert_eq!(with_default("", "x.conf"), "default x.conf\n");
    }

    fn entry(file_name: &str) -> Entry {
        let stem = file_name.trim_end_matches(".conf");
        let counter = stem
            .split_once('+')
            .map(|(_, c)| parse_counter(c).expect("counter"));
        Entry {
            file_name: file_name.to_owned(),
            counter,
        }
    }

    #[test]
    fn a_try_is_the_default_only_until_systemd_boot_counts_it() {
        // Armed: the default names the counting file, so A boots even
        // though B sorts first.
        let a = entry("ota-a+1-0.conf");
        let b = entry("ota-b.conf");
        assert_eq!(choose(Some("ota-a+1-0.conf"), [&a, &b]), SlotId::A);
        // systemd-boot renamed it on that boot: the default matches nothing
        // and the bad entry sorts last.
        let a = entry("ota-a+0-1.conf");
        assert_eq!(choose(Some("ota-a+1-0.conf"), [&a, &b]), SlotId::B);
        // The counter-less id the backend used to write never matches a
        // counting entry: the sort order picked B and A's try never ran.
        let a = entry("ota-a+1-0.conf");
        assert_eq!(choose(Some("ota-a.conf"), [&a, &b]), SlotId::B);
        // Committed entries match by their plain name, case-folded.
        let a = entry("ota-a.conf");
        assert_eq!(choose(Some("OTA-A.conf"), [&a, &b]), SlotId::A);
        assert_eq!(choose(None, [&a, &b]), SlotId::B);
    }
}
