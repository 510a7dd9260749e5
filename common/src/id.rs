//! The one rule for names that travel between devices, the server and
//! `ota-repo` (device ids, hardware ids, rollout waves and groups). It sits
//! below both [`crate::wire`] and [`crate::rollout`], which each use it, so
//! neither has to import the other for it.

/// Device ids and hardware ids: 1 to 128 characters of `[A-Za-z0-9._:-]`,
/// so they are safe in URLs, file names, logs and SQL alike.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}
