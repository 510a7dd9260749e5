//! Named crash points: a test-only switch that makes the agent die at one
//! chosen step of install, commit or rollback, the way a power cut would.
//!
//! `OTA_AGENT_CRASH_AT=<point name>` (read once, the first time any point is
//! passed) makes the process call [`std::process::abort`] when it reaches
//! that point: no destructors, no buffered output flushed, no file closed
//! cleanly, which is as close to pulling the plug as a process can get
//! (writes already handed to the kernel survive, as they would in the page
//! cache of a device whose storage honours fsync). The end-to-end test
//! `integration-tests/tests/power_loss.rs` runs the real binary once per
//! point and backend and checks the device recovers.
//!
//! It is compiled in always, because the test drives the very binary that
//! ships. In production the variable is never set; if it were, the only
//! effect is that the agent kills itself, which systemd restarts and the
//! state machine is built to survive anyway.
//!
//! Every point is named in [`ALL`], so the test can loop over all of them;
//! call sites use the constants, never string literals.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const ENV_VAR: &str = "OTA_AGENT_CRASH_AT";

// Install (poll_once and install.rs).
/// A release was chosen and its slot marked unbootable; `Downloading` is
/// not persisted yet.
pub const DOWNLOAD_BEFORE_PERSIST: &str = "download.before_persist";
/// `Downloading` persisted; no byte written to the slot yet.
pub const DOWNLOAD_PERSISTED: &str = "download.persisted";
/// The first chunk is written to the slot but not fsynced or checkpointed.
pub const DOWNLOAD_CHUNK_WRITTEN: &str = "download.chunk_written";
/// A compressed release: one signed zstd frame is decoded, written and
/// checked against its signed digest; no checkpoint for it yet.
pub const DOWNLOAD_FRAME_DECODED: &str = "download.frame_decoded";
/// The slot was fsynced and the checkpoint persisted, mid-stream.
pub const DOWNLOAD_CHECKPOINT_SAVED: &str = "download.checkpoint_saved";
/// A delta release: a checkpoint of the image assembled from the running
/// slot and fetched chunks is persisted (any offset, not a chunk boundary).
pub const DELTA_CHECKPOINT_SAVED: &str = "delta.checkpoint_saved";
/// Every byte verified and the slot fsynced; not yet read back.
pub const INSTALL_BEFORE_READ_BACK: &str = "install.before_read_back";
/// Read back and verified; `Installed` not persisted yet.
pub const INSTALL_VERIFIED: &str = "install.verified";
/// `Installed` persisted; the bootloader not armed yet.
pub const INSTALLED_PERSISTED: &str = "installed.persisted";
/// `set_try_once` returned (durable); `Trying` not persisted yet.
pub const ARM_AFTER_SET_TRY_ONCE: &str = "arm.after_set_try_once";
/// `Trying` persisted; no reboot requested yet.
pub const ARM_TRYING_PERSISTED: &str = "arm.trying_persisted";
/// About to run the reboot command (any reboot the machine asks for).
pub const REBOOT_BEFORE_COMMAND: &str = "reboot.before_command";
/// The reboot command ran; the system has not gone down yet.
pub const REBOOT_AFTER_COMMAND: &str = "reboot.after_command";

// Commit (the trial boot of the new slot).
/// A health check is running (its child process started).
pub const HEALTH_CHECK_RUNNING: &str = "health.check_running";
/// Every health check passed; `mark_good` not called yet.
pub const COMMIT_CHECKS_PASSED: &str = "commit.checks_passed";
/// `mark_good` returned (durable); `Idle` not persisted yet.
pub const COMMIT_AFTER_MARK_GOOD: &str = "commit.after_mark_good";
/// `Idle` with the new release persisted; not reported yet.
pub const COMMIT_IDLE_PERSISTED: &str = "commit.idle_persisted";

// Rollback.
/// A health check failed; `RollingBack` not persisted yet.
pub const ROLLBACK_CHECKS_FAILED: &str = "rollback.checks_failed";
/// `RollingBack` persisted; `mark_bad` not called yet.
pub const ROLLBACK_PERSISTED: &str = "rollback.persisted";
/// `mark_bad` returned (durable); no reboot requested yet.
pub const ROLLBACK_AFTER_MARK_BAD: &str = "rollback.after_mark_bad";
/// Booted the previous slot while `Trying` (the trial boot died); nothing done yet.
pub const TRIAL_LOST_BEFORE_MARK_BAD: &str = "trial_lost.before_mark_bad";
/// The same, after `mark_bad` of the slot that never came up.
pub const TRIAL_LOST_AFTER_MARK_BAD: &str = "trial_lost.after_mark_bad";
/// Back on the previous slot, the release rejected in memory; `Idle` not persisted yet.
pub const ROLLBACK_BEFORE_IDLE: &str = "rollback.before_idle";
/// `Idle` with the release rejected persisted; not reported yet.
pub const ROLLBACK_IDLE_PERSISTED: &str = "rollback.idle_persisted";

/// Every crash point, in the order an update passes them.
pub const ALL: &[&str] = &[
    DOWNLOAD_BEFORE_PERSIST,
    DOWNLOAD_PERSISTED,
    DOWNLOAD_CHUNK_WRITTEN,
    DOWNLOAD_FRAME_DECODED,
    DOWNLOAD_CHECKPOINT_SAVED,
    DELTA_CHECKPOINT_SAVED,
    INSTALL_BEFORE_READ_BACK,
    INSTALL_VERIFIED,
    INSTALLED_PERSISTED,
    ARM_AFTER_SET_TRY_ONCE,
    ARM_TRYING_PERSISTED,
    REBOOT_BEFORE_COMMAND,
    REBOOT_AFTER_COMMAND,
    HEALTH_CHECK_RUNNING,
    COMMIT_CHECKS_PASSED,
    COMMIT_AFTER_MARK_GOOD,
    COMMIT_IDLE_PERSISTED,
    ROLLBACK_CHECKS_FAILED,
    ROLLBACK_PERSISTED,
    ROLLBACK_AFTER_MARK_BAD,
    TRIAL_LOST_BEFORE_MARK_BAD,
    TRIAL_LOST_AFTER_MARK_BAD,
    ROLLBACK_BEFORE_IDLE,
    ROLLBACK_IDLE_PERSISTED,
];

/// The line written to stderr just before aborting; tests look for it.
pub fn marker(point: &str) -> String {
    format!("crash point {point} reached")
}

static ARMED: OnceLock<Option<String>> = OnceLock::new();

fn armed() -> Option<&'static str> {
    ARMED
        .get_or_init(|| {
            let value = std::env::var(ENV_VAR).ok()?;
            if ALL.contains(&value.as_str()) {
                tracing::warn!(point = %value, "{ENV_VAR} is set: this process will abort at that crash point (a test switch)");
            } else {
                tracing::warn!(point = %value, "{ENV_VAR} names no known crash point; ignoring it");
            }
            Some(value)
        })
        .as_deref()
}

/// Passes crash point `point`: aborts the process if it is the armed one.
pub fn hit(point: &'static str) {
    debug_assert!(ALL.contains(&point), "crash point {point} not in ALL");
    if armed() == Some(point) {
        // stderr is unbuffered: the line is out before the abort.
        eprintln!(
            "ota-agent: {} ({ENV_VAR}); aborting like a power cut",
            marker(point)
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for p in ALL {
            assert!(seen.insert(*p), "{p} listed twice");
            assert!(
                p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'),
                "{p}"
            );
        }
    }

    #[test]
    fn unarmed_points_do_nothing() {
        // The test process never sets the variable to a real point.
        for p in ALL {
            hit(p);
        }
    }
}
