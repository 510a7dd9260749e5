//! Custom backend: a device maker's program speaking RAUC's custom bootloader
//! interface (see `boot/custom/bootloader-custom.sh` for a working example):
//!
//! | call | stdout |
//! |---|---|
//! | `CMD get-primary` | `A` or `B` |
//! | `CMD set-primary SLOT` | – |
//! | `CMD get-state SLOT` | `good` or `bad` |
//! | `CMD set-state SLOT good\|bad` | – |
//! | `CMD get-current` | `A` or `B` (informational) |
//!
//! Exit status 0 means success. The trait maps onto it as RAUC does: a new
//! slot is marked `good` and then made primary (the program owns any try
//! counting); `mark_bad` sets `bad` and, should the program still report that
//! slot as primary, makes the other one primary.
//!
//! The program runs without a shell, with stdin closed, in its own process
//! group (killed as a whole after the timeout); stdout and stderr are read
//! up to [`MAX_OUTPUT_BYTES`], beyond which the call fails.

use super::{BootError, Bootloader, Result};
use crate::slot::SlotId;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Output beyond this is not an answer to any of the calls.
pub const MAX_OUTPUT_BYTES: usize = 4096;

/// A slot's state as the program reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Good,
    Bad,
}

impl SlotState {
    fn as_str(self) -> &'static str {
        match self {
            SlotState::Good => "good",
            SlotState::Bad => "bad",
        }
    }
}

/// The custom bootloader program.
#[derive(Debug, Clone)]
pub struct CustomBootloader {
    command: Vec<String>,
    timeout: Duration,
}

impl CustomBootloader {
    /// `command` is the program and leading arguments; the call's arguments follow them.
    pub fn new(command: Vec<String>, timeout: Duration) -> Result<Self> {
        if command.first().is_none_or(|p| p.is_empty()) {
            return Err(BootError::Config(
                "boot.custom_command must name a program".into(),
            ));
        }
        Ok(CustomBootloader { command, timeout })
    }

    fn program(&self) -> PathBuf {
        PathBuf::from(self.command.first().map(String::as_str).unwrap_or_default())
    }

    fn describe(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = self.command.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        all.join(" ")
    }

    fn failed(&self, args: &[&str], detail: String) -> BootError {
        BootError::Corrupt {
            path: self.program(),
            detail: format!("`{}` {detail}", self.describe(args)),
        }
    }

    /// Runs one call and returns its stdout (trimmed) when it exits 0.
    fn call(&self, args: &[&str]) -> Result<String> {
        let (program, lead) = self
            .command
            .split_first()
            .ok_or_else(|| BootError::Config("boot.custom_command is empty".into()))?;
        let mut child = Command::new(program)
            .args(lead)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| BootError::Io {
                path: self.program(),
                source,
            })?;
        // Both pipes are drained on threads so a chatty program cannot block
        // on a full pipe; the results come back over a channel so a grandchild
        // holding a pipe open cannot make us wait past the deadline.
        let (tx, rx) = mpsc::channel();
        for (which, pipe) in [
            (
                0usize,
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
            (
                1,
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
        ] {
            let tx = tx.clone();
            if let Some(pipe) = pipe {
                std::thread::spawn(move || {
                    let _ = tx.send((which, read_limited(pipe)));
                });
            }
        }
        drop(tx);
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => {
                    kill_group(&mut child);
                    return Err(BootError::Io {
                        path: self.program(),
                        source,
                    });
                }
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                return Err(self.failed(
                    args,
                    format!("timed out after {}s and was killed", self.timeout.as_secs()),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut outputs: [Option<(Vec<u8>, bool)>; 2] = [None, None];
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(100))) {
                Ok((which, out)) => outputs[which] = Some(out),
                Err(_) => {
                    kill_group(&mut child);
                    return Err(self.failed(
                        args,
                        "exited but left its output open (a background process?)".into(),
                    ));
                }
            }
        }
        let [stdout, stderr] = outputs.map(|o| o.unwrap_or_default());
        let stderr_text = String::from_utf8_lossy(&stderr.0).trim().to_owned();
        if !status.success() {
            let how = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                (None, None) => "failed".to_owned(),
            };
            let detail = if stderr_text.is_empty() {
                how
            } else {
                format!("{how}: {stderr_text}")
            };
            return Err(self.failed(args, detail));
        }
        if stdout.1 || stderr.1 {
            return Err(self.failed(
                args,
                format!("wrote more than {MAX_OUTPUT_BYTES} bytes of output"),
            ));
        }
        if !stderr_text.is_empty() {
            tracing::debug!(command = %self.describe(args), stderr = %stderr_text, "custom bootloader said");
        }
        let text = String::from_utf8(stdout.0)
            .map_err(|_| self.failed(args, "printed output that is not UTF-8".into()))?;
        Ok(text.trim().to_owned())
    }

    fn slot_answer(&self, args: &[&str]) -> Result<SlotId> {
        let out = self.call(args)?;
        match out.as_str() {
            "A" => Ok(SlotId::A),
            "B" => Ok(SlotId::B),
            _ => Err(self.failed(args, format!("printed {out:?}, expected A or B"))),
        }
    }

    /// `get-primary`: the slot the bootloader boots next.
    pub fn get_primary(&self) -> Result<SlotId> {
        self.slot_answer(&["get-primary"])
    }

    /// `get-current`: the slot the bootloader says it booted (informational).
    pub fn get_current(&self) -> Result<SlotId> {
        self.slot_answer(&["get-current"])
    }

    /// `get-state SLOT`.
    pub fn get_state(&self, slot: SlotId) -> Result<SlotState> {
        let args = ["get-state", slot.as_str()];
        let out = self.call(&args)?;
        match out.as_str() {
            "good" => Ok(SlotState::Good),
            "bad" => Ok(SlotState::Bad),
            _ => Err(self.failed(&args, format!("printed {out:?}, expected good or bad"))),
        }
    }

    /// `set-state SLOT good|bad`.
    pub fn set_state(&self, slot: SlotId, state: SlotState) -> Result<()> {
        self.call(&["set-state", slot.as_str(), state.as_str()])
            .map(drop)
    }

    /// `set-primary SLOT`.
    pub fn set_primary(&self, slot: SlotId) -> Result<()> {
        self.call(&["set-primary", slot.as_str()]).map(drop)
    }
}

/// Reads up to [`MAX_OUTPUT_BYTES`]; the rest is drained and discarded so the
/// writer never blocks. The flag says whether anything was discarded.
fn read_limited(pipe: impl Read) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut limited = pipe.take(MAX_OUTPUT_BYTES as u64 + 1);
    if limited.read_to_end(&mut kept).is_err() {
        return (kept, false);
    }
    let over = kept.len() > MAX_OUTPUT_BYTES;
    kept.truncate(MAX_OUTPUT_BYTES);
    if over {
        let _ = std::io::copy(&mut limited.into_inner(), &mut std::io::sink());
    }
    (kept, over)
}

fn kill_group(child: &mut std::process::Child) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        // process_group(0) made the child the leader of a group with its own pid.
        if let Err(e) = killpg(Pid::from_raw(pid), Signal::SIGKILL) {
            tracing::warn!(error = %e, "killing the custom bootloader's process group failed");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Bootloader for CustomBootloader {
    fn primary(&self) -> Result<SlotId> {
        self.get_primary()
    }

    fn set_try_once(&mut self, slot: SlotId) -> Result<()> {
        // RAUC's order: the slot is good before it becomes primary, so the
        // program never holds a primary it considers bad.
        self.set_state(slot, SlotState::Good)?;
        self.set_primary(slot)
    }

    fn mark_good(&mut self, slot: SlotId) -> Result<()> {
        self.set_state(slot, SlotState::Good)?;
        self.set_primary(slot)
    }

    fn mark_bad(&mut self, slot: SlotId) -> Result<()> {
        self.set_state(slot, SlotState::Bad)?;
        if self.get_primary()? == slot {
            self.set_primary(slot.other())?;
        }
        Ok(())
    }
}
