//! A simulated bootloader with U-Boot/RAUC semantics, its "environment" a
//! JSON file written atomically:
//!
//! ```json
//! {"boot_order": ["A", "B"], "tries_left": {"A": 3, "B": 0}}
//! ```
//!
//! At power-on ([`firmware_boot`]) the firmware walks `boot_order` and boots
//! the first slot with tries left, spending one try; when no slot has any,
//! it resets both to [`DEFAULT_TRIES`] and boots the first in order (as
//! RAUC's U-Boot script does). The agent re-arms or marks slots through the
//! [`Bootloader`] trait.

use super::{BootError, Bootloader, Result};
use crate::slot::SlotId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tries a good slot gets (RAUC's BOOT_x_LEFT default).
pub const DEFAULT_TRIES: u32 = 3;
/// Larger counters are refused as corrupt: nothing here writes more than [`DEFAULT_TRIES`].
const MAX_TRIES: u32 = 16;
/// The environment file is tiny; anything larger is not ours.
const MAX_STATE_BYTES: u64 = 4096;

/// The simulated bootloader environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimState {
    pub boot_order: Vec<SlotId>,
    pub tries_left: BTreeMap<SlotId, u32>,
}

impl Default for SimState {
    /// The factory state: A is the good slot, B was never written.
    fn default() -> Self {
        SimState {
            boot_order: vec![SlotId::A, SlotId::B],
            tries_left: BTreeMap::from([(SlotId::A, DEFAULT_TRIES), (SlotId::B, 0)]),
        }
    }
}

impl SimState {
    pub fn tries(&self, slot: SlotId) -> u32 {
        self.tries_left.get(&slot).copied().unwrap_or(0)
    }

    fn set_order(&mut self, first: SlotId) {
        self.boot_order = vec![first, first.other()];
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let mut order = self.boot_order.clone();
        order.sort();
        if order != [SlotId::A, SlotId::B] {
            return Err(format!(
                "boot_order {:?} is not A and B once each",
                self.boot_order
            ));
        }
        if let Some((slot, n)) = self.tries_left.iter().find(|(_, n)| **n > MAX_TRIES) {
            return Err(format!(
                "tries_left for {slot} is {n}, more than {MAX_TRIES}"
            ));
        }
        Ok(())
    }

    /// The slot the firmware would boot next, without spending a try.
    pub fn next_boot(&self) -> SlotId {
        self.boot_order
            .iter()
            .copied()
            .find(|s| self.tries(*s) > 0)
            .or_else(|| self.boot_order.first().copied())
            .unwrap_or(SlotId::A)
    }
}

/// Loads the environment; a missing file is the factory default.
pub fn load_state(path: &Path) -> Result<SimState> {
    use std::io::Read;
    let io_err = |source| BootError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SimState::default()),
        Err(e) => return Err(io_err(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(BootError::Corrupt {
            path: path.to_owned(),
            detail: format!("larger than {MAX_STATE_BYTES} bytes"),
        });
    }
    let state: SimState = serde_json::from_slice(&bytes).map_err(|e| BootError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    state.validate().map_err(|detail| BootError::Corrupt {
        path: path.to_owned(),
        detail,
    })?;
    Ok(state)
}

/// Writes the environment atomically (a power cut leaves the old or the new one).
pub fn save_state(path: &Path, state: &SimState) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| BootError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    ota_common::atomic::write_atomic(path, &bytes).map_err(|source| BootError::Io {
        path: path.to_owned(),
        source,
    })
}

/// What the firmware does at power-on: boots the first slot in `boot_order`
/// with tries left and spends one. If none has any, both are reset to
/// [`DEFAULT_TRIES`] and the first in order boots. A corrupt environment is
/// reset to the factory default, as U-Boot does with a bad CRC.
pub fn firmware_boot(state_path: &Path) -> Result<SlotId> {
    let mut state = match load_state(state_path) {
        Ok(s) => s,
        Err(BootError::Corrupt { detail, .. }) => {
            tracing::warn!(path = %state_path.display(), %detail, "bootloader environment corrupt; using the factory default");
            SimState::default()
        }
        Err(e) => return Err(e),
    };
    let slot = match state
        .boot_order
        .iter()
        .copied()
        .find(|s| state.tries(*s) > 0)
    {
        Some(slot) => slot,
        None => {
            state.tries_left =
                BTreeMap::from([(SlotId::A, DEFAULT_TRIES), (SlotId::B, DEFAULT_TRIES)]);
            state.boot_order.first().copied().unwrap_or(SlotId::A)
        }
    };
    state
        .tries_left
        .insert(slot, state.tries(slot).saturating_sub(1));
    save_state(state_path, &state)?;
    Ok(slot)
}

/// The simulated bootloader, reading and writing its environment file on every call
/// (the firmware changes it between boots).
#[derive(Debug, Clone)]
pub struct SimBootloader {
    path: PathBuf,
}

impl SimBootloader {
    pub fn new(path: PathBuf) -> Self {
        SimBootloader { path }
    }

    pub fn state(&self) -> Result<SimState> {
        load_state(&self.path)
    }

    /// Writes only on change, as the real backends do (flash wears).
    fn update(&self, f: impl FnOnce(&mut SimState)) -> Result<()> {
        let before = load_state(&self.path)?;
        let mut state = before.clone();
        f(&mut state);
        if state == before {
            return Ok(());
        }
        save_state(&self.path, &state)
    }
}

impl Bootloader for SimBootloader {
    fn primary(&self) -> Result<SlotId> {
        Ok(load_state(&self.path)?.next_boot())
    }

    fn set_try_once(&mut self, slot: SlotId) -> Result<()> {
        self.update(|s| {
            s.set_order(slot);
            s.tries_left.insert(slot, 1);
        })
    }

    fn mark_good(&mut self, slot: SlotId) -> Result<()> {
        self.update(|s| {
            s.set_order(slot);
            s.tries_left.insert(slot, DEFAULT_TRIES);
        })
    }

    fn mark_bad(&mut self, slot: SlotId) -> Result<()> {
        self.update(|s| {
            s.tries_left.insert(slot, 0);
            s.set_order(slot.other());
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, SimBootloader) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("boot.json");
        let bl = SimBootloader::new(path.clone());
        (dir, path, bl)
    }

    #[test]
    fn factory_state_boots_a_and_spends_tries() {
        let (_d, path, bl) = setup();
        assert_eq!(bl.primary().expect("primary"), SlotId::A);
        assert_eq!(firmware_boot(&path).expect("boot"), SlotId::A);
        assert_eq!(load_state(&path).expect("state").tries(SlotId::A), 2);
        assert_eq!(firmware_boot(&path).expect("boot"), SlotId::A);
        assert_eq!(load_state(&path).expect("state").tries(SlotId::A), 1);
    }

    #[test]
    fn try_once_then_fallback() {
        let (_d, path, mut bl) = setup();
        firmware_boot(&path).expect("boot A");
        bl.set_try_once(SlotId::B).expect("arm");
        let s = bl.state().expect("state");
        assert_eq!(s.boot_order, [SlotId::B, SlotId::A]);
        assert_eq!(s.tries(SlotId::B), 1);
        assert_eq!(bl.primary().expect("primary"), SlotId::B);
        // B gets exactly one boot...
        assert_eq!(firmware_boot(&path).expect("try B"), SlotId::B);
        // ...and when it does not get marked good, the next boot is A again.
        assert_eq!(firmware_boot(&path).expect("fallback"), SlotId::A);
        assert_eq!(firmware_boot(&path).expect("fallback"), SlotId::A);
    }

    #[test]
    fn mark_good_makes_the_slot_permanent() {
        let (_d, path, mut bl) = setup();
        bl.set_try_once(SlotId::B).expect("arm");
        assert_eq!(firmware_boot(&path).expect("try B"), SlotId::B);
        bl.mark_good(SlotId::B).expect("good");
        let s = bl.state().expect("state");
        assert_eq!(s.boot_order, [SlotId::B, SlotId::A]);
        assert_eq!(s.tries(SlotId::B), DEFAULT_TRIES);
        for _ in 0..3 {
            assert_eq!(firmware_boot(&path).expect("boot"), SlotId::B);
        }
    }

    #[test]
    fn mark_bad_falls_back_immediately() {
        let (_d, path, mut bl) = setup();
        bl.set_try_once(SlotId::B).expect("arm");
        assert_eq!(firmware_boot(&path).expect("try B"), SlotId::B);
        bl.mark_bad(SlotId::B).expect("bad");
        let s = bl.state().expect("state");
        assert_eq!(s.boot_order, [SlotId::A, SlotId::B]);
        assert_eq!(s.tries(SlotId::B), 0);
        assert_eq!(bl.primary().expect("primary"), SlotId::A);
        assert_eq!(firmware_boot(&path).expect("boot"), SlotId::A);
    }

    #[test]
    fn no_tries_left_resets_both_and_boots_first_in_order() {
        let (_d, path, _bl) = setup();
        save_state(
            &path,
            &SimState {
                boot_order: vec![SlotId::B, SlotId::A],
                tries_left: BTreeMap::from([(SlotId::A, 0), (SlotId::B, 0)]),
            },
        )
        .expect("save");
        assert_eq!(firmware_boot(&path).expect("boot"), SlotId::B);
        let s = load_state(&path).expect("state");
        assert_eq!(s.tries(SlotId::B), DEFAULT_TRIES - 1);
        assert_eq!(s.tries(SlotId::A), DEFAULT_TRIES);
    }

    #[test]
    fn corrupt_state_is_an_error_for_the_agent_and_reset_by_firmware() {
        let (_d, path, mut bl) = setup();
        std::fs::write(
            &path,
            b"{\"boot_order\": [\"A\", \"A\"], \"tries_left\": {}}",
        )
        .expect("write");
        assert!(matches!(
            bl.mark_good(SlotId::A),
            Err(BootError::Corrupt { .. })
        ));
        std::fs::write(&path, b"garbage").expect("write");
        assert!(matches!(bl.primary(), Err(BootError::Corrupt { .. })));
        assert_eq!(firmware_boot(&path).expect("boot"), SlotId::A);
        assert!(bl.primary().is_ok());
    }
}
