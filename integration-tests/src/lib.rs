//! The harness that end-to-end tests and the demo share: it runs the real
//! `ota-server`, `ota-repo` and `ota-agent` binaries together, and simulates
//! devices whose only differences from a real board are file-backed slots,
//! the simulated bootloader and a "reboot" that restarts the agent in the slot
//! that bootloader picks.

pub mod bins;
pub mod device;
pub mod firmware;
pub mod fixture;
pub mod full_system;
pub mod image;
pub mod measured;
pub mod proxy;
pub mod python;
pub mod repo;
pub mod s3;
pub mod server;
