//! What the OTA agent, server and repository tool share.
//!
//! * [`tuf`]: the TUF client workflow (verification only: this crate holds no
//!   signing code, so the agent that links it can never sign anything).
//! * [`wire`]: the JSON types exchanged between devices, the server and `ota-repo`.
//! * [`hash`]: streaming SHA-256/SHA-512 hashing and verification.
//! * [`atomic`]: power-cut-safe file replacement.
//! * [`id`]: the character rule for device, hardware, wave and group ids.
//! * [`payload`]: how a target's signed bytes become the slot image (raw, or
//!   compressed with its signed decoded length and digest).
//! * [`delta`]: a delta release's signed chunk index and the chunker both
//!   the release tool and the agent cut images with.
//! * [`rollout`]: staged rollouts: the signed wave schedule and a device's wave.

pub mod atomic;
pub mod delta;
pub mod hash;
pub mod id;
pub mod payload;
pub mod rollout;
pub mod tuf;
pub mod wire;
