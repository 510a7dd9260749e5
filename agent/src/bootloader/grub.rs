//! GRUB backend: RAUC's GRUB slot convention in the GRUB environment block
//! (see `boot/grub/grub.cfg` for the firmware side).
//!
//! * `ORDER` ("A B"): slots in the order grub.cfg considers them;
//! * `A_OK`, `B_OK` ("1"/"0"): the slot may be booted;
//! * `A_TRY`, `B_TRY` ("1"/"0"): grub.cfg set it to 1 when it booted the
//!   slot; the agent resets it to 0 when the slot is confirmed good.
//!
//! grub.cfg boots the first slot in `ORDER` with OK=1 and TRY=0 (and sets
//! its TRY=1); if none, the first with OK=1; if none, the first in `ORDER`.
//! Unset variables take grub.cfg's defaults: `ORDER="A B"`, `A_OK=1`,
//! `B_OK=0`, TRY=0 (the factory state: A is good, B was never written).
//!
//! A slot that booted gets TRY=1, so the running slot must be confirmed
//! (`mark_good`) on every boot; the agent does so whenever [`primary`]
//! reports that the running slot would not boot next.
//!
//! [`primary`]: Bootloader::primary

use super::grub_env::{self, GrubEnv, GrubEnvError};
use super::{BootError, Bootloader, Result};
use crate::slot::SlotId;
use std::path::{Path, PathBuf};

const ORDER: &str = "ORDER";

fn ok_var(slot: SlotId) -> &'static str {
    match slot {
        SlotId::A => "A_OK",
        SlotId::B => "B_OK",
    }
}

fn try_var(slot: SlotId) -> &'static str {
    match slot {
        SlotId::A => "A_TRY",
        SlotId::B => "B_TRY",
    }
}

/// The GRUB bootloader, reading and writing the environment block on every call.
#[derive(Debug, Clone)]
pub struct GrubBootloader {
    path: PathBuf,
}

/// grub.cfg's view of the slot variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotVars {
    pub order: Vec<SlotId>,
    pub ok: [bool; 2],
    pub tried: [bool; 2],
}

impl SlotVars {
    /// Reads the variables with grub.cfg's defaults for unset ones; values
    /// that grub.cfg and this backend never write are an error.
    pub fn from_env(env: &GrubEnv) -> std::result::Result<Self, String> {
        let order = super::parse_order(ORDER, env.get(ORDER))?;
        let flag = |name: &str, default: bool| match env.get(name) {
            None | Some(b"") => Ok(default),
            Some(b"1") => Ok(true),
            Some(b"0") => Ok(false),
            Some(_) => Err(format!("{name} is neither 0 nor 1")),
        };
        Ok(SlotVars {
            order,
            ok: [flag("A_OK", true)?, flag("B_OK", false)?],
            tried: [flag("A_TRY", false)?, flag("B_TRY", false)?],
        })
    }

    /// The slot grub.cfg boots next.
    pub fn next_boot(&self) -> SlotId {
        let ok = |s: SlotId| self.ok[s as usize];
        let tried = |s: SlotId| self.tried[s as usize];
        let order = self.order.iter().copied();
        order
            .clone()
            .find(|s| ok(*s) && !tried(*s))
            .or_else(|| order.clone().find(|s| ok(*s)))
            .or_else(|| self.order.first().copied())
            .unwrap_or(SlotId::A)
    }
}

impl GrubBootloader {
    /// The environment block at `path` (e.g. `/boot/grub/grubenv`).
    pub fn new(path: PathBuf) -> Self {
        GrubBootloader { path }
    }

    /// The block's variables; a missing file is an empty block (grub.cfg's
    /// `load_env` then leaves every variable at its default).
    pub fn env(&self) -> Result<GrubEnv> {
        match grub_env::read_file(&self.path) {
            Err(GrubEnvError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(GrubEnv::new())
            }
            other => other.map_err(|e| self.boot_err(e)),
        }
    }

    fn boot_err(&self, e: GrubEnvError) -> BootError {
        match e {
            GrubEnvError::Io { path, source } => BootError::Io { path, source },
            other => BootError::Corrupt {
                path: self.path.clone(),
                detail: other.to_string(),
            },
        }
    }

    /// Applies `change` and replaces the block if anything changed. GRUB's
    /// `save_env` cannot create the block, so it must exist already.
    fn modify(
        &self,
        change: impl FnOnce(&mut GrubEnv) -> std::result::Result<(), GrubEnvError>,
    ) -> Result<()> {
        let mut env = grub_env::read_file(&self.path).map_err(|e| match e {
            GrubEnvError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                BootError::Config(format!(
                    "GRUB environment block {} does not exist (create it with `grub-editenv {} create`)",
                    self.path.display(),
                    self.path.display()
                ))
            }
            other => self.boot_err(other),
        })?;
        let before = env.clone();
        change(&mut env).map_err(|e| self.boot_err(e))?;
        if env != before {
            grub_env::write_file(&self.path, &env).map_err(|e| self.boot_err(e))?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Bootloader for GrubBootloader {
    fn primary(&self) -> Result<SlotId> {
        let env = self.env()?;
        let vars = SlotVars::from_env(&env).map_err(|detail| BootError::Corrupt {
            path: self.path.clone(),
            detail,
        })?;
        Ok(vars.next_boot())
    }

    fn set_try_once(&mut self, slot: SlotId) -> Result<()> {
        self.modify(|env| {
            env.set(ORDER, &super::order_value(slot))?;
            env.set(ok_var(slot), "1")?;
            env.set(try_var(slot), "0")?;
            // The fallback is the running slot: make sure grub.cfg picks it
            // after the trial boot set `slot`'s TRY, not `slot` once more.
            env.set(ok_var(slot.other()), "1")?;
            env.set(try_var(slot.other()), "0")?;
            Ok(())
        })
    }

    fn mark_good(&mut self, slot: SlotId) -> Result<()> {
        self.modify(|env| {
            env.set(ORDER, &super::order_value(slot))?;
            env.set(ok_var(slot), "1")?;
            env.set(try_var(slot), "0")?;
            Ok(())
        })
    }

    fn mark_bad(&mut self, slot: SlotId) -> Result<()> {
        self.modify(|env| {
            env.set(ok_var(slot), "0")?;
            env.set(ORDER, &super::order_value(slot.other()))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, GrubBootloader) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grubenv");
        grub_env::write_file(&path, &GrubEnv::new()).expect("create");
        (dir, GrubBootloader::new(path))
    }

    /// What grub.cfg does at power-on: picks the slot and sets its TRY.
    fn firmware_boot(bl: &GrubBootloader) -> SlotId {
        let mut env = bl.env().expect("env");
        let vars = SlotVars::from_env(&env).expect("vars");
        let slot = vars.next_boot();
        if vars.ok[slot as usize] && !vars.tried[slot as usize] {
            env.set(try_var(slot), "1").expect("set");
            grub_env::write_file(bl.path(), &env).expect("save_env");
        }
        slot
    }

    #[test]
    fn factory_block_boots_a() {
        let (_d, bl) = setup();
        assert_eq!(bl.primary().expect("primary"), SlotId::A);
        assert_eq!(firmware_boot(&bl), SlotId::A);
        // A now has TRY=1 and nothing else is OK: A still boots.
        assert_eq!(bl.primary().expect("primary"), SlotId::A);
    }

    #[test]
    fn try_once_then_fallback() {
        let (_d, mut bl) = setup();
        firmware_boot(&bl);
        bl.set_try_once(SlotId::B).expect("arm");
        assert_eq!(bl.primary().expect("primary"), SlotId::B);
        assert_eq!(firmware_boot(&bl), SlotId::B);
        // B was never confirmed: the next boot is A.
        assert_eq!(bl.primary().expect("primary"), SlotId::A);
        assert_eq!(firmware_boot(&bl), SlotId::A);
        bl.mark_bad(SlotId::B).expect("bad");
        let env = bl.env().expect("env");
        assert_eq!(env.get_str("B_OK"), Some("0"));
        assert_eq!(env.get_str("ORDER"), Some("A B"));
        assert_eq!(firmware_boot(&bl), SlotId::A);
    }

    #[test]
    fn mark_good_confirms_each_boot() {
        let (_d, mut bl) = setup();
        bl.set_try_once(SlotId::B).expect("arm");
        assert_eq!(firmware_boot(&bl), SlotId::B);
        bl.mark_good(SlotId::B).expect("good");
        for _ in 0..3 {
            assert_eq!(bl.primary().expect("primary"), SlotId::B);
            assert_eq!(firmware_boot(&bl), SlotId::B);
            // Booted B has TRY=1 and A is OK: the agent sees it must confirm.
            assert_eq!(bl.primary().expect("primary"), SlotId::A);
            bl.mark_good(SlotId::B).expect("good");
        }
    }

    #[test]
    fn writes_only_on_change_and_needs_an_existing_block() {
        let (_d, mut bl) = setup();
        bl.mark_good(SlotId::A).expect("good");
        let before = std::fs::metadata(bl.path()).expect("stat");
        bl.mark_good(SlotId::A).expect("again");
        let after = std::fs::metadata(bl.path()).expect("stat");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(before.ino(), after.ino(), "not replaced when unchanged");

        let mut missing = GrubBootloader::new(bl.path().with_file_name("none"));
        assert_eq!(missing.primary().expect("defaults"), SlotId::A);
        let err = missing
            .mark_good(SlotId::A)
            .expect_err("missing")
            .to_string();
        assert!(err.contains("grub-editenv"), "{err}");
    }

    #[test]
    fn values_grub_cfg_never_writes_are_corrupt() {
        let (_d, bl) = setup();
        for (name, value) in [("ORDER", "A X"), ("A_OK", "yes"), ("B_TRY", "2")] {
            let mut env = GrubEnv::new();
            env.set(name, value).expect("set");
            grub_env::write_file(bl.path(), &env).expect("write");
            assert!(
                matches!(bl.primary(), Err(BootError::Corrupt { .. })),
                "{name}"
            );
        }
    }
}
