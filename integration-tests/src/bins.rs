//! Where the workspace's binaries are. Tests and the demo run the real
//! executables (built by `cargo build --workspace` or `cargo test --workspace`),
//! never an in-process stand-in.

use std::path::PathBuf;

/// Path of a workspace binary, next to the running executable's target directory.
pub fn path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/test-xxxx or target/debug/ota-demo
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_path_buf());
        if let Some(up) = dir.parent() {
            dirs.push(up.to_path_buf());
        }
    }
    for dir in &dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "binary {name} not found next to {}; build it first with `cargo build --workspace --bins`",
        exe.display()
    )
}
