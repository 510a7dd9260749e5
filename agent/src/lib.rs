//! The OTA device agent: polls the server's TUF repository, streams a newer
//! release into the inactive A/B slot (verified as it arrives and read back
//! after), arms the bootloader to try it once, reboots, health-checks the new
//! slot and commits or rolls back.
//!
//! One module per concern:
//! * [`config`]: the TOML configuration.
//! * [`slot`]: A/B slots and the only code that writes one (never the booted one).
//! * [`blockdev`]: block-device size, mount and holder checks, buffer-cache flush.
//! * [`bootloader`]: the bootloader trait and its backends ([`bootloader::sim`]).
//! * [`booted`]: which slot runs, which boot this is.
//! * [`state`]: the persisted state.
//! * [`machine`]: the state machine, every transition in one file.
//! * [`install`]: the one-pass streaming install.
//! * [`health`]: post-boot health checks.
//! * [`report`]: status reports to the server.
//! * [`source`]: verified releases from the TUF client.
//! * [`lock`]: one agent process at a time.
//! * [`verify`]: re-hash the slots against the trusted signed metadata (`ota-agent verify`).
//! * [`sd_notify`], [`watchdog`]: systemd readiness and watchdog, hardware watchdog.

pub mod blockdev;
pub mod booted;
pub mod bootloader;
pub mod config;
pub mod crashpoint;
pub mod health;
pub mod install;
pub mod lock;
pub mod machine;
pub mod report;
pub mod rollout;
pub mod sd_notify;
pub mod slot;
pub mod source;
pub mod state;
pub mod verify;
pub mod watchdog;

/// User-Agent of every HTTP request the agent makes.
pub const USER_AGENT: &str = concat!("ota-agent/", env!("CARGO_PKG_VERSION"));

/// Installs the aws-lc-rs rustls provider for the process (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
