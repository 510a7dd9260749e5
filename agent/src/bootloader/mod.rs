//! The bootloader interface: which slot boots next, and the try-once /
//! mark-good / mark-bad operations an A/B update needs. One sibling module
//! per backend; [`from_config`] chooses.

pub mod custom;
pub mod grub;
pub mod grub_env;
pub mod sim;
pub mod systemd_boot;
pub mod uboot;
pub mod uboot_env;

use crate::config::{BootBackend, BootConfig};
use crate::slot::SlotId;
use std::path::PathBuf;

/// Why a bootloader operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("bootloader state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bootloader state {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("bootloader configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, BootError>;

/// What the agent asks of a bootloader. Every operation is durable when it
/// returns (a power cut afterwards keeps its effect) and idempotent (the
/// state machine repeats it after an interruption).
pub trait Bootloader: std::fmt::Debug {
    /// The slot the bootloader will boot next.
    fn primary(&self) -> Result<SlotId>;
    /// Boot `slot` once at the next boot; if it does not come up and get
    /// marked good, fall back to the other slot.
    fn set_try_once(&mut self, slot: SlotId) -> Result<()>;
    /// Make `slot` the permanent primary.
    fn mark_good(&mut self, slot: SlotId) -> Result<()>;
    /// Never boot `slot` again until it is re-armed.
    fn mark_bad(&mut self, slot: SlotId) -> Result<()>;
}

/// Parses a boot-order variable (`"A B"`) as the boot scripts read it: unset
/// or empty means `"A B"`; anything but known slot names is an error naming
/// the variable, since no script of ours could have written it.
pub(crate) fn parse_order(
    var: &str,
    value: Option<&[u8]>,
) -> std::result::Result<Vec<SlotId>, String> {
    let text = match value {
        None | Some(b"") => "A B",
        Some(v) => std::str::from_utf8(v).map_err(|_| format!("{var} is not text"))?,
    };
    let order = text
        .split_ascii_whitespace()
        .map(|t| match t {
            "A" => Ok(SlotId::A),
            "B" => Ok(SlotId::B),
            other => Err(format!("{var} {text:?} names unknown slot {other:?}")),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if order.is_empty() {
        return Err(format!("{var} names no slot"));
    }
    Ok(order)
}

/// The boot-order value that boots `first`, falling back to the other slot.
pub(crate) fn order_value(first: SlotId) -> String {
    format!("{first} {}", first.other())
}

/// The backend named by `[boot]`.
pub fn from_config(config: &BootConfig) -> Result<Box<dyn Bootloader>> {
    match config.backend {
        BootBackend::Sim => {
            let path = config.sim_state.clone().ok_or_else(|| {
                BootError::Config("boot.sim_state is required with backend = \"sim\"".into())
            })?;
            Ok(Box::new(sim::SimBootloader::new(path)))
        }
        BootBackend::UBoot => Ok(Box::new(uboot::UBootBootloader::new(
            &config.fw_env_config,
        )?)),
        BootBackend::Grub => Ok(Box::new(grub::GrubBootloader::new(config.grubenv.clone()))),
        BootBackend::SystemdBoot => {
            let dir = systemd_boot::SystemdBootBootloader::entries_dir_from(
                config.esp_entries_dir.as_deref(),
            )?;
            Ok(Box::new(systemd_boot::SystemdBootBootloader::new(
                dir,
                config.loader_conf.clone(),
                &config.entry_a,
                &config.entry_b,
            )?))
        }
        BootBackend::Custom => Ok(Box::new(custom::CustomBootloader::new(
            config.custom_command.clone(),
            std::time::Duration::from_secs(config.custom_timeout_secs),
        )?)),
    }
}
