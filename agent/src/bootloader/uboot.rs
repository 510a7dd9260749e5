//! U-Boot backend: RAUC's U-Boot slot convention in the real U-Boot
//! environment (see `boot/uboot/boot.cmd` for the firmware side), plus
//! U-Boot's own boot-count variables.
//!
//! * `BOOT_ORDER` ("A B"): slots in the order the boot script tries them;
//! * `BOOT_A_LEFT`, `BOOT_B_LEFT`: boots left; the script boots the first
//!   slot in order with tries left and spends one; when none has any it
//!   resets both to [`DEFAULT_TRIES`] and resets the board. Unset means the
//!   script's defaults ("A B", 3).
//! * `upgrade_available`, `bootcount`: U-Boot's CONFIG_BOOTCOUNT_LIMIT
//!   convention; set to 1/0 while a slot is on trial, cleared when the trial
//!   ends. `bootlimit` and `altbootcmd` belong to the board and are never
//!   written (an unset `bootlimit` reads as 1).
//!
//! Only variables whose value changes are written, and nothing is written
//! when none does; every other variable is rewritten byte for byte.

use super::uboot_env::{EnvError, EnvStore, EnvVars, FwEnvConfig};
use super::{BootError, Bootloader, Result};
use crate::slot::SlotId;
use std::path::{Path, PathBuf};

/// Tries a good slot gets (RAUC's BOOT_x_LEFT default).
pub const DEFAULT_TRIES: u32 = 3;
/// `bootlimit` when the board sets none.
pub const DEFAULT_BOOTLIMIT: u32 = 1;
/// Larger counters are refused as corrupt: nothing here writes more than [`DEFAULT_TRIES`].
const MAX_TRIES: u32 = 16;

const ORDER: &str = "BOOT_ORDER";

fn left_var(slot: SlotId) -> &'static str {
    match slot {
        SlotId::A => "BOOT_A_LEFT",
        SlotId::B => "BOOT_B_LEFT",
    }
}

/// The U-Boot bootloader, reading and writing the environment on every call
/// (the boot script changes it between boots).
#[derive(Debug, Clone)]
pub struct UBootBootloader {
    store: EnvStore,
    /// Names the environment in errors: the fw_env.config it came from.
    origin: PathBuf,
}

impl UBootBootloader {
    /// Reads the fw_env.config at `config_path` (e.g. `/etc/fw_env.config`).
    pub fn new(config_path: &Path) -> Result<Self> {
        let config = FwEnvConfig::load(config_path).map_err(|e| match e {
            EnvError::Io { path, source } => BootError::Io { path, source },
            other => BootError::Config(other.to_string()),
        })?;
        Ok(Self::from_store(EnvStore::new(config), config_path))
    }

    /// Uses an already configured store; `origin` names it in errors.
    pub fn from_store(store: EnvStore, origin: &Path) -> Self {
        UBootBootloader {
            store,
            origin: origin.to_owned(),
        }
    }

    /// The whole environment as the firmware will see it.
    pub fn env(&self) -> Result<EnvVars> {
        Ok(self.store.read().map_err(|e| self.boot_err(e))?.vars)
    }

    /// `bootlimit`, or [`DEFAULT_BOOTLIMIT`] when unset.
    pub fn bootlimit(&self) -> Result<u32> {
        let env = self.env()?;
        match env.get("bootlimit") {
            None => Ok(DEFAULT_BOOTLIMIT),
            Some(v) => parse_count(v).ok_or_else(|| self.corrupt("bootlimit is not a number")),
        }
    }

    fn boot_err(&self, e: EnvError) -> BootError {
        match e {
            EnvError::Io { path, source } => BootError::Io { path, source },
            other => BootError::Corrupt {
                path: self.origin.clone(),
                detail: other.to_string(),
            },
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> BootError {
        BootError::Corrupt {
            path: self.origin.clone(),
            detail: detail.into(),
        }
    }

    fn modify(
        &self,
        change: impl FnOnce(&mut EnvVars) -> std::result::Result<(), EnvError>,
    ) -> Result<()> {
        let wrote = self.store.modify(change).map_err(|e| self.boot_err(e))?;
        tracing::debug!(config = %self.origin.display(), wrote, "U-Boot environment updated");
        Ok(())
    }
}

fn parse_count(v: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(v).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The boot script's view of the slot variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotVars {
    pub order: Vec<SlotId>,
    pub left: [u32; 2],
}

impl SlotVars {
    /// Reads the variables as the boot script does, with its defaults for
    /// unset ones; values the script could not have written are an error.
    pub fn from_env(env: &EnvVars) -> std::result::Result<Self, String> {
        let order = super::parse_order(ORDER, env.get(ORDER))?;
        let mut left = [DEFAULT_TRIES; 2];
        for (i, slot) in [SlotId::A, SlotId::B].into_iter().enumerate() {
            let name = left_var(slot);
            if let Some(v) = env.get(name).filter(|v| !v.is_empty()) {
                let n = parse_count(v)
                    .filter(|n| *n <= MAX_TRIES)
                    .ok_or_else(|| format!("{name} is not a number up to {MAX_TRIES}"))?;
                left[i] = n;
            }
        }
        Ok(SlotVars { order, left })
    }

    pub fn left(&self, slot: SlotId) -> u32 {
        self.left[slot as usize]
    }

    /// The slot the boot script boots next: the first in order with tries
    /// left, else (after it resets both counters) the first in order.
    pub fn next_boot(&self) -> SlotId {
        self.order
            .iter()
            .copied()
            .find(|s| self.left(*s) > 0)
            .or_else(|| self.order.first().copied())
            .unwrap_or(SlotId::A)
    }
}

impl Bootloader for UBootBootloader {
    fn primary(&self) -> Result<SlotId> {
        let env = self.env()?;
        let vars = SlotVars::from_env(&env).map_err(|d| self.corrupt(d))?;
        Ok(vars.next_boot())
    }

    fn set_try_once(&mut self, slot: SlotId) -> Result<()> {
        self.modify(|env| {
            env.set(ORDER, &super::order_value(slot))?;
            env.set(left_var(slot), "1")?;
            // The fallback is the running slot: it must have tries left, or
            // after a failed try the script's reset-both would boot `slot` again.
            let fallback = left_var(slot.other());
            let fallback_left = match env.get(fallback) {
                None | Some(b"") => Some(DEFAULT_TRIES),
                Some(v) => parse_count(v),
            };
            if fallback_left.is_none_or(|n| n == 0 || n > MAX_TRIES) {
                env.set(fallback, &DEFAULT_TRIES.to_string())?;
            }
            env.set("upgrade_available", "1")?;
            env.set("bootcount", "0")?;
            Ok(())
        })
    }

    fn mark_good(&mut self, slot: SlotId) -> Result<()> {
        self.modify(|env| {
            env.set(ORDER, &super::order_value(slot))?;
            env.set(left_var(slot), &DEFAULT_TRIES.to_string())?;
            env.set("upgrade_available", "0")?;
            env.set("bootcount", "0")?;
            Ok(())
        })
    }

    fn mark_bad(&mut self, slot: SlotId) -> Result<()> {
        self.modify(|env| {
            env.set(left_var(slot), "0")?;
            env.set(ORDER, &super::order_value(slot.other()))?;
            // The trial is over: stop U-Boot counting boots towards altbootcmd.
            env.set("upgrade_available", "0")?;
            env.set("bootcount", "0")?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::uboot_env::{encode_copy, Layout};
    use super::*;

    fn setup(initial: &[(&str, &str)]) -> (tempfile::TempDir, UBootBootloader) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut vars = EnvVars::new();
        for (n, v) in initial {
            vars.set(n, v).expect("set");
        }
        let env = dir.path().join("uboot.env");
        let mut bytes = encode_copy(&vars, 0x400, Layout::Redundant, 1).expect("c0");
        bytes.extend(encode_copy(&vars, 0x400, Layout::Redundant, 0).expect("c1"));
        std::fs::write(&env, bytes).expect("write");
        let config = dir.path().join("fw_env.config");
        std::fs::write(
            &config,
            format!("{0} 0 0x400\n{0} 0x400 0x400\n", env.display()),
        )
        .expect("config");
        let bl = UBootBootloader::new(&config).expect("new");
        let store = bl
            .store
            .clone()
            .with_lock_path(Some(dir.path().join("lock")));
        (dir, UBootBootloader::from_store(store, &config))
    }

    fn get(bl: &UBootBootloader, name: &str) -> Option<String> {
        bl.env().expect("env").get_str(name).map(str::to_owned)
    }

    #[test]
    fn unset_variables_mean_the_script_defaults() {
        let (_d, bl) = setup(&[("bootcmd", "run ota")]);
        assert_eq!(bl.primary().expect("primary"), SlotId::A);
        assert_eq!(bl.bootlimit().expect("bootlimit"), 1);
    }

    #[test]
    fn try_once_good_and_bad() {
        let (_d, mut bl) = setup(&[("bootcmd", "run ota"), ("bootlimit", "2")]);
        bl.set_try_once(SlotId::B).expect("arm");
        assert_eq!(bl.primary().expect("primary"), SlotId::B);
        assert_eq!(get(&bl, "BOOT_ORDER").as_deref(), Some("B A"));
        assert_eq!(get(&bl, "BOOT_B_LEFT").as_deref(), Some("1"));
        assert_eq!(get(&bl, "BOOT_A_LEFT"), None, "default 3 is left unset");
        assert_eq!(get(&bl, "upgrade_available").as_deref(), Some("1"));
        assert_eq!(get(&bl, "bootcount").as_deref(), Some("0"));
        assert_eq!(get(&bl, "bootlimit").as_deref(), Some("2"), "board's own");

        bl.mark_good(SlotId::B).expect("good");
        assert_eq!(bl.primary().expect("primary"), SlotId::B);
        assert_eq!(get(&bl, "BOOT_B_LEFT").as_deref(), Some("3"));
        assert_eq!(get(&bl, "upgrade_available").as_deref(), Some("0"));

        bl.mark_bad(SlotId::B).expect("bad");
        assert_eq!(bl.primary().expect("primary"), SlotId::A);
        assert_eq!(get(&bl, "BOOT_ORDER").as_deref(), Some("A B"));
        assert_eq!(get(&bl, "BOOT_B_LEFT").as_deref(), Some("0"));
        assert_eq!(get(&bl, "bootcmd").as_deref(), Some("run ota"));
    }

    #[test]
    fn operations_are_idempotent_and_write_only_on_change() {
        let (_d, mut bl) = setup(&[]);
        bl.mark_good(SlotId::A).expect("good");
        let before = bl.store.read().expect("read");
        bl.mark_good(SlotId::A).expect("good again");
        let after = bl.store.read().expect("read");
        assert_eq!(before.current, after.current, "no second write");
        assert_eq!(before.flag, after.flag);
    }

    #[test]
    fn try_once_gives_an_exhausted_fallback_its_tries_back() {
        let (_d, mut bl) = setup(&[("BOOT_A_LEFT", "0")]);
        bl.set_try_once(SlotId::B).expect("arm");
        assert_eq!(get(&bl, "BOOT_A_LEFT").as_deref(), Some("3"));
    }

    #[test]
    fn exhausted_counters_boot_the_first_in_order() {
        let (_d, bl) = setup(&[
            ("BOOT_ORDER", "B A"),
            ("BOOT_A_LEFT", "0"),
            ("BOOT_B_LEFT", "0"),
        ]);
        assert_eq!(bl.primary().expect("primary"), SlotId::B);
        let (_d, bl) = setup(&[
            ("BOOT_ORDER", "B A"),
            ("BOOT_A_LEFT", "2"),
            ("BOOT_B_LEFT", "0"),
        ]);
        assert_eq!(bl.primary().expect("primary"), SlotId::A);
    }

    #[test]
    fn values_the_script_cannot_have_written_are_corrupt() {
        for bad in [
            [("BOOT_ORDER", "A C"), ("x", "y")],
            [("BOOT_A_LEFT", "three"), ("x", "y")],
            [("BOOT_B_LEFT", "99"), ("x", "y")],
        ] {
            let (_d, bl) = setup(&bad);
            assert!(
                matches!(bl.primary(), Err(BootError::Corrupt { .. })),
                "{bad:?}"
            );
        }
    }
}
