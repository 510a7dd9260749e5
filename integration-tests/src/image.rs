//! Test images: a small "root filesystem" whose first line names its release
//! and whose second line says whether the simulated health check passes.

use std::io::Write;
use std::path::Path;

/// Writes an image of about `size` bytes for `version`; `healthy` decides
/// whether the simulated device's health check passes when booted from it.
pub fn write_image(path: &Path, version: &str, healthy: bool, size: usize) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let header = format!(
        "release={version}\nhealth={}\n",
        if healthy { "ok" } else { "fail" }
    );
    f.write_all(header.as_bytes())?;
    // Deterministic filler that differs per version, so two images never share a hash.
    let mut state: u64 = version.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut remaining = size.saturating_sub(header.len());
    let mut buf = vec![0u8; 64 * 1024];
    while remaining > 0 {
        let n = remaining.min(buf.len());
        for byte in &mut buf[..n] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        f.write_all(&buf[..n])?;
        remaining -= n;
    }
    f.sync_all()?;
    Ok(())
}

/// The release a slot holds, read from its header line.
pub fn release_in(path: &Path) -> Option<String> {
    let mut head = vec![0u8; 64];
    let n = std::io::Read::read(&mut std::fs::File::open(path).ok()?, &mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.lines()
        .next()?
        .strip_prefix("release=")
        .map(str::to_owned)
}
