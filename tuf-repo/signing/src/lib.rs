//! `ota-signing`: everything that holds or uses a TUF signing key, and
//! nothing else. `ota-repo` signs with it offline (release engineer's
//! machine), `ota-server` online (timestamp and snapshot); the device agent
//! never links it, so no private-key code or `tough` reaches a device.
//!
//! * [`key_ref`]: where a key lives as repo.json and the server config name it
//!   (a PKCS#8 file or a `pkcs11:` URI) and opening it for signing.
//! * [`keys`]: software keys per scheme (generate, load, key ids).
//! * [`pkcs11`]: keys inside a token: URIs, sessions, signing per mechanism.
//! * [`audit`]: the hash-chained log of every signature made.

pub mod audit;
pub mod error;
pub mod key_ref;
pub mod keys;
pub mod pkcs11;

pub use error::{Result, SigningError};
