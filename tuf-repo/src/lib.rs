//! `ota-repo`: the release engineer's side of the OTA system. Creates the
//! offline signing keys, builds and signs TUF metadata with `tough`, adds
//! images as targets and publishes the repository to the server or a
//! directory.
//!
//! Repository layout (everything below `--repo DIR`):
//! * `repo.json`: the [`config::RepoConfig`] (key files, thresholds, expiry policy per role).
//! * `keys/<role>-<n>.pem`: PKCS#8 private keys, mode 0600 (development only: software keys);
//!   production keys live in a PKCS#11 token and repo.json holds their `pkcs11:` URIs.
//! * `audit.jsonl` + `audit.head`: the hash-chained log of every signature made.
//! * `ceremony/<role>.json`, `ceremony/delegated/<delegated role>.json`: an unsigned role
//!   waiting for offline signatures (its accepted signatures beside it in `.signatures/`).
//! * `metadata/N.<delegated role>.json`: delegated targets roles (`ota-repo delegate`).
//! * `metadata/`: `N.root.json` (+ `root.json`, a copy of the newest), `N.targets.json`,
//!   `N.snapshot.json`, `timestamp.json` (consistent snapshots).
//! * `targets/[dir/]<sha256>.<basename>` (and `<sha512>.<basename>` for targets added with `--hash sha512`): the images.

pub mod add;
pub mod ceremony;
pub mod config;
pub mod delegated;
pub mod delegation;

pub mod editor;
pub mod error;
pub mod evidence;
pub mod expiry;
pub mod init;
pub mod layout;
pub mod progress;
pub mod publish;
pub mod resign;
pub mod role;
pub mod rollout;
pub mod rotate;
pub mod state;
pub mod status;
pub mod target_name;

pub use ceremony::delegated as delegation_ceremony;
pub use error::RepoError;
// The signing code lives in its own crate (tuf-repo/signing) so that
// ota-server can sign online without the rest of the release tool; these
// paths keep `ota_repo::keys` and friends working for the tool and its tests.
pub use ota_signing::{audit, key_ref, keys, pkcs11};
