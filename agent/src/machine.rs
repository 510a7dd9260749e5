//! THE update state machine. Every transition is in this file.
//!
//! ```text
//!     poll: newer release, mark_bad(new)   stream + verify + read back OK
//!   Idle ─────────────────────────▶ Downloading ───────────────────────▶ Installed
//!    ▲  ▲  failed (active slot untouched) │                                  │ set_try_once(new)
//!    │  └─────────────────────────────────┘                                  ▼
//!    │                                                         Trying (reboot requested in boot X)
//!    │     booted new slot, health checks pass: mark_good           │              │
//!    ├──────────────────────────────────────────────────────────────┘              │ booted new slot,
//!    │     booted previous slot in a new boot: mark_bad, reject                    │ checks fail
//!    ├──────────────────────────── (new slot never came up) ◀──────────────────────┤
//!    │                                                                              ▼
//!    └──────────── booted previous slot: reject ◀──────────── RollingBack: mark_bad(new), reboot
//! ```
//!
//! Safety of interruption: the state is persisted (atomically) *before*
//! each step whose effect it must describe after a power cut:
//! * `mark_bad(inactive)` before `Downloading` and every resume (from then
//!   on the slot holds a partial image the bootloader must never fall back
//!   to; each boot in `Downloading` marks it again and keeps the running
//!   slot primary);
//! * `Downloading` before the first byte is written (the slot is untrusted
//!   from then on), and again with a new `checkpoint` each time the slot has
//!   been fsynced up to it; a restart leaves it to the next poll, which
//!   resumes at the checkpoint (re-hashing the bytes before it) when the same
//!   release is still the one to install, else starts over. A network failure
//!   within a poll is retried with a Range request from the last written byte;
//!   when retries run out the phase stays `Downloading` for the next poll. A
//!   verification or slot failure goes back to `Idle` (start over);
//! * `Installed` before `set_try_once` (a restart re-arms, which is idempotent);
//! * `Trying` with the current boot id before the reboot command (a restart in
//!   the same boot just asks for the reboot again);
//! * `RollingBack` before `mark_bad` (a restart in the bad slot marks it bad again);
//! * `mark_good` before `Idle` on commit (a restart re-runs the checks and
//!   marks good again).
//!
//! The booted slot is never written: `slot::SlotWriter::open` refuses it.

use crate::booted::{self, BootedError};
use crate::bootloader::{BootError, Bootloader};
use crate::config::Config;
use crate::crashpoint::{self as crash, hit};
use crate::health::{self, CheckContext};
use crate::install::delta::{DeltaError, NoDelta};
use crate::install::{self, Download, InstallError, InstallHooks, RetryPolicy};
use crate::report::{clamp_reason, ReportSink};
use crate::rollout::{self, Gate, RolloutHolds};
use crate::slot::{SlotId, Slots};
use crate::source::UpdateSource;
use crate::state::{
    AgentState, InstalledRelease, LastReport, Phase, StateError, StateStore, TargetRef,
};
use chrono::{DateTime, Utc};
use ota_common::payload::Payload;
use ota_common::rollout::RolloutPlan;
use ota_common::tuf::{Target, TufError};
use ota_common::wire::{DeviceReport, UpdateStatus};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// A liveness signal the machine gives while it works (every image chunk,
/// during retry waits and the reboot wait): the daemon feeds its watchdogs
/// from it, so they are fed only while the loop itself makes progress.
#[derive(Default)]
pub struct Heartbeat(Option<Box<dyn FnMut() + Send>>);

impl Heartbeat {
    pub fn new(beat: impl FnMut() + Send + 'static) -> Self {
        Heartbeat(Some(Box::new(beat)))
    }

    pub fn beat(&mut self) {
        if let Some(f) = self.0.as_mut() {
            f()
        }
    }

    /// Sleeps `duration`, beating at least every second meanwhile.
    pub fn sleep(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        loop {
            self.beat();
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_secs(1)));
        }
    }
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Heartbeat(set)"
        } else {
            "Heartbeat(none)"
        })
    }
}

/// Why the machine could not go on. The persisted state still describes
/// where it is, so the next start resumes from there.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Booted(#[from] BootedError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("TUF: {0}")]
    Tuf(#[from] TufError),
    #[error("creating state_dir {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What resuming after a (re)start did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// Nothing was in progress (or an interrupted download was abandoned).
    Idle,
    /// The new slot passed its health checks and is now permanent.
    Committed,
    /// Back on the previous slot; the release is rejected.
    RolledBack { reason: String },
    /// A reboot was requested (and the system did not go down).
    RebootRequested,
}

/// What one poll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// An update is in progress; `resume_after_boot` handles it.
    Busy,
    /// No newer, compatible, non-rejected release.
    UpToDate,
    /// Installing failed before the bootloader was touched; the active slot runs on.
    Failed { reason: String },
    /// Installed, armed, reboot requested (and the system did not go down).
    RebootRequested,
}

/// The agent's state machine over its state file, bootloader and slots.
#[derive(Debug)]
pub struct Machine {
    config: Config,
    slots: Slots,
    bootloader: Box<dyn Bootloader>,
    reporter: Box<dyn ReportSink>,
    holds: Box<dyn RolloutHolds>,
    store: StateStore,
    state: AgentState,
    booted: SlotId,
    boot_id: String,
    heartbeat: Heartbeat,
}

impl Machine {
    /// Reads the booted slot and boot id from the kernel and loads (or recovers) the state.
    pub fn new(
        config: Config,
        bootloader: Box<dyn Bootloader>,
        reporter: Box<dyn ReportSink>,
        holds: Box<dyn RolloutHolds>,
    ) -> Result<Self, MachineError> {
        let roots = booted::SlotRoots {
            a: &config.slots.a,
            b: &config.slots.b,
            a_partuuid: config.slots.a_partuuid.as_deref(),
            b_partuuid: config.slots.b_partuuid.as_deref(),
        };
        let booted = booted::booted_slot_with_root(
            &config.boot.cmdline_path,
            &config.boot.slot_param,
            &roots,
        )?;
        let boot_id = booted::boot_id(&config.boot.boot_id_path)?;
        ota_common::atomic::create_dir_all_durable(&config.state_dir).map_err(|source| {
            MachineError::StateDir {
                path: config.state_dir.clone(),
                source,
            }
        })?;
        let store = StateStore::new(config.state_path());
        let slots = Slots::new(
            config.slots.a.clone(),
            config.slots.b.clone(),
            config.slots.max_image_bytes,
        );
        let state = match store.load() {
            Ok(Some(state)) => state,
            Ok(None) => {
                let state = recover_state(&config, &*bootloader, &slots, booted, None);
                // Written at once, so `status` shows what the agent assumes.
                store.save(&state)?;
                state
            }
            Err(e) => {
                let state = recover_state(&config, &*bootloader, &slots, booted, Some(&e));
                store.save(&state)?;
                state
            }
        };
        // Built anew each cycle (the state is re-read): the daemon says
        // "agent started" once (main.rs), this only when debugging.
        tracing::debug!(slot = %booted, %boot_id, phase = state.phase.name(),
            version = %state.version_of(booted, &config.initial_version), "state loaded");
        Ok(Machine {
            config,
            slots,
            bootloader,
            reporter,
            holds,
            store,
            state,
            booted,
            boot_id,
            heartbeat: Heartbeat::default(),
        })
    }

    /// Sets the liveness signal (see [`Heartbeat`]).
    pub fn set_heartbeat(&mut self, heartbeat: Heartbeat) {
        self.heartbeat = heartbeat;
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn booted(&self) -> SlotId {
        self.booted
    }

    /// Version the booted slot runs.
    pub fn running_version(&self) -> semver::Version {
        self.state
            .version_of(self.booted, &self.config.initial_version)
    }

    /// The post-boot stage: finishes whatever the persisted phase left open,
    /// according to which slot booted and whether this is a new boot.
    pub fn resume_after_boot(&mut self) -> Result<Resumed, MachineError> {
        let booted = self.booted;
        let new_boot = |recorded: &str| recorded != self.boot_id;
        match self.state.phase.clone() {
            Phase::Idle => {
                self.keep_running_slot_primary();
                Ok(Resumed::Idle)
            }

            // An interrupted download: the next poll resumes it from its durable
            // checkpoint if the same release is still the one to install. Unless
            // the slot being written is somehow the one that booted. Meanwhile
            // the half-written slot must stay unbootable and the running one
            // primary: this boot spent a try of the running slot (GRUB marks
            // it tried until confirmed; U-Boot's script resets both counters
            // once both run out), and the next boot must not fall back to a
            // partial image. An agent from before the mark at download start
            // may have left it bootable.
            Phase::Downloading {
                slot,
                target,
                checkpoint,
            } => {
                if slot == booted {
                    warn!(%slot, target = %target.name, "booted the slot an interrupted download was writing; abandoning the download");
                    self.enter(Phase::Idle)?;
                } else {
                    info!(%slot, target = %target.name, version = %target.version, checkpoint,
                        "download was interrupted; the next poll resumes it");
                    self.mark_bad_best_effort(slot);
                    self.keep_running_slot_primary();
                }
                Ok(Resumed::Idle)
            }

            // Written and verified, bootloader perhaps not armed yet: arm (idempotent) and reboot.
            Phase::Installed { slot, target } if booted != slot => {
                self.arm_and_reboot(slot, target)
            }

            // Reboot requested in this very boot: the agent restarted before the system went down.
            Phase::Trying {
                slot,
                target,
                boot_id,
                ..
            } if !new_boot(&boot_id) => {
                info!(%slot, target = %target.name, version = %target.version,
                    "reboot into the new slot was requested but has not happened; requesting it again");
                self.reboot();
                Ok(Resumed::RebootRequested)
            }

            // The new slot is running: check its health, then commit or roll back.
            // (Installed on the new slot: armed, then a power cut before Trying was persisted.)
            Phase::Installed { slot, target } => self.check_new_slot(slot, target),
            Phase::Trying { slot, target, .. } if booted == slot => {
                self.check_new_slot(slot, target)
            }

            // A new boot, but of the previous slot: the new one never came up (tries ran out).
            Phase::Trying {
                slot,
                previous,
                target,
                ..
            } => {
                let reason = "new slot did not come up".to_owned();
                warn!(%slot, %previous, target = %target.name, version = %target.version, %reason,
                    "booted the previous slot instead of the new one");
                hit(crash::TRIAL_LOST_BEFORE_MARK_BAD);
                self.bootloader.mark_bad(slot)?;
                hit(crash::TRIAL_LOST_AFTER_MARK_BAD);
                self.finish_rollback(target, reason)
            }

            // Back on the previous slot after a failed health check: done rolling back.
            // mark_bad again (idempotent): a power cut may have come before it, and
            // some firmware (GRUB, once every slot is tried) would boot the bad slot next.
            Phase::RollingBack {
                slot,
                target,
                reason,
                ..
            } if booted != slot => {
                self.mark_bad_best_effort(slot);
                self.finish_rollback(target, reason)
            }

            // Still (or again) on the bad slot: mark it bad again and reboot.
            Phase::RollingBack {
                slot,
                target,
                reason,
                ..
            } => {
                warn!(%slot, target = %target.name, %reason, "still on the failed slot; marking it bad and rebooting");
                self.mark_bad_best_effort(slot);
                self.reboot();
                Ok(Resumed::RebootRequested)
            }
        }
    }

    /// One poll: refresh TUF metadata, pick the newest compatible release
    /// newer than the running one and not rejected, install it into the
    /// inactive slot, arm the bootloader and reboot.
    pub fn poll_once(&mut self, source: &mut dyn UpdateSource) -> Result<Polled, MachineError> {
        // An interrupted download is resumed by the poll; any other phase is
        // the post-boot stage's business.
        let interrupted = match &self.state.phase {
            Phase::Idle => None,
            Phase::Downloading {
                slot,
                target,
                checkpoint,
            } => Some((*slot, target.clone(), *checkpoint)),
            _ => return Ok(Polled::Busy),
        };
        self.heartbeat.beat();
        if let Err(e) = source.refresh() {
            self.report(
                UpdateStatus::Failed,
                None,
                Some(&format!("TUF refresh: {e}")),
            );
            return Err(e.into());
        }
        let targets = match source.targets() {
            Ok(t) => t,
            Err(e) => {
                self.report(
                    UpdateStatus::Failed,
                    None,
                    Some(&format!("TUF targets: {e}")),
                );
                return Err(e.into());
            }
        };
        let now = source.now();
        let (chosen, undecided) = self.choose(targets, now);
        if let Some((slot, old, _)) = &interrupted {
            if undecided.contains(&old.name) {
                // Nothing says the release was withdrawn or held: keep its
                // fsynced bytes for the next poll rather than start over (or
                // start a lower-ranked release in its place).
                info!(%slot, target = %old.name,
                    "rollout hold unknown; the interrupted download waits for the next poll");
                return Ok(Polled::UpToDate);
            }
        }
        let Some((target, tref)) = chosen else {
            if let Some((slot, old, _)) = interrupted {
                info!(%slot, target = %old.name, "the interrupted download's release is no longer offered; abandoning it");
                self.enter(Phase::Idle)?;
            }
            let last = self.state.last_report.as_ref().map(|r| r.status);
            if last != Some(UpdateStatus::Idle) {
                self.report(UpdateStatus::Idle, None, None);
            }
            info!(version = %self.running_version(), "up to date");
            return Ok(Polled::UpToDate);
        };

        let slot = self.booted.other();
        // Resume only the very same release (name, length and digests) into the same slot.
        let resume_from = match interrupted {
            Some((s, old, checkpoint))
                if s == slot && old.same_release(&tref) && old.length == tref.length =>
            {
                checkpoint
            }
            Some((_, old, _)) => {
                info!(target = %old.name, new_target = %tref.name,
                    "another release replaces the interrupted download; starting over");
                0
            }
            None => 0,
        };
        // The slot is about to hold a partial image: the bootloader must not
        // boot it from now until it is armed with the verified one. It was
        // the fallback until now, and a boot that found the running slot
        // tried or out of tries would take it (RAUC marks the target slot
        // bad before writing too). Durable before the first byte; without
        // it, nothing is written.
        if let Err(e) = self.bootloader.mark_bad(slot) {
            let reason = format!("marking slot {slot} unbootable before writing it: {e}");
            error!(%slot, target = %tref.name, %reason, "install not started; the running slot is untouched");
            self.report(UpdateStatus::Failed, Some(&tref), Some(&reason));
            return Ok(Polled::Failed { reason });
        }
        if resume_from == 0 {
            hit(crash::DOWNLOAD_BEFORE_PERSIST);
            // The slot's old content is gone from the moment the first byte lands.
            *self.state.slot_mut(slot) = None;
            self.enter(Phase::Downloading {
                slot,
                target: tref.clone(),
                checkpoint: 0,
            })?;
            hit(crash::DOWNLOAD_PERSISTED);
        }
        self.report(UpdateStatus::Downloading, Some(&tref), None);

        if let Err(e) = self.download(&*source, &target, &tref, slot, resume_from) {
            let reason = e.to_string();
            if e.keeps_checkpoint() {
                // The bytes up to the checkpoint are good: stay in Downloading so
                // the next poll (or a restart) resumes there.
                error!(%slot, target = %tref.name, version = %tref.version, %reason,
                    "download failed; the next poll resumes it; the running slot is untouched");
            } else {
                error!(%slot, target = %tref.name, version = %tref.version, %reason, "install failed; the running slot is untouched");
                self.enter(Phase::Idle)?;
            }
            self.report(UpdateStatus::Failed, Some(&tref), Some(&reason));
            return Ok(Polled::Failed { reason });
        }

        hit(crash::INSTALL_VERIFIED);
        self.enter(Phase::Installed {
            slot,
            target: tref.clone(),
        })?;
        hit(crash::INSTALLED_PERSISTED);
        self.report(UpdateStatus::Installed, Some(&tref), None);
        match self.arm_and_reboot(slot, tref)? {
            Resumed::RebootRequested => Ok(Polled::RebootRequested),
            Resumed::RolledBack { reason } => Ok(Polled::Failed { reason }),
            Resumed::Idle | Resumed::Committed => Ok(Polled::UpToDate),
        }
    }

    /// The newest target for our hardware, newer than what runs, not
    /// rejected, and (for a staged rollout) whose signed wave for this
    /// device is open at `now` and which the server does not hold.
    /// Also returns the staged releases passed over only because the
    /// server's hold could not be learnt.
    fn choose(
        &self,
        targets: Vec<Target>,
        now: DateTime<Utc>,
    ) -> (Option<(Target, TargetRef)>, Vec<String>) {
        let running = self.running_version();
        let hardware_id = &self.config.hardware_id;
        let mut candidates: Vec<(Target, TargetRef, Option<RolloutPlan>)> = Vec::new();
        for target in targets {
            let release = match target.release() {
                Ok(r) => r,
                Err(e) => {
                    warn!(target = %target.name, error = %e, "ignoring target without valid release fields");
                    continue;
                }
            };
            if !release.hardware_ids.iter().any(|h| h == hardware_id) || release.version <= running
            {
                continue;
            }
            let image = match target.slot_image() {
                Ok(image) => image,
                Err(e) => {
                    warn!(target = %target.name, error = %e, "ignoring target with an invalid payload");
                    continue;
                }
            };
            let tref = TargetRef::new(&target, release.version, &image);
            if self.state.is_rejected(&tref) {
                info!(target = %tref.name, version = %tref.version, "skipping release that failed on this device before");
                continue;
            }
            candidates.push((target, tref, release.rollout));
        }
        // Highest version first; equal versions: the greater name, so the choice is deterministic.
        candidates
            .sort_by(|(_, a, _), (_, b, _)| (&b.version, &b.name).cmp(&(&a.version, &a.name)));
        // The rollout gate may ask the server, so it runs only for the best
        // candidates, in order, until one may go.
        let mut undecided = Vec::new();
        let chosen = candidates.into_iter().find_map(|(target, tref, plan)| {
            let Some(plan) = plan else {
                return Some((target, tref));
            };
            match rollout::gate(
                &tref.name,
                &plan,
                self.config.device_id(),
                &self.config.rollout_groups,
                now,
                &*self.holds,
            ) {
                Gate::Go => Some((target, tref)),
                Gate::Wait(why) => {
                    info!(target = %tref.name, version = %tref.version, "staged rollout: not yet: {why}");
                    None
                }
                Gate::Unknown(why) => {
                    warn!(target = %tref.name, version = %tref.version, "staged rollout: not yet: {why}");
                    undecided.push(tref.name.clone());
                    None
                }
                Gate::NotForThisDevice => {
                    info!(target = %tref.name, version = %tref.version,
                        "staged rollout: no wave holds this device; release skipped");
                    None
                }
            }
        });
        (chosen, undecided)
    }

    /// Streams the target into `slot`, from the durable checkpoint `resume_from`.
    fn download(
        &mut self,
        source: &dyn UpdateSource,
        target: &Target,
        tref: &TargetRef,
        slot: SlotId,
        resume_from: u64,
    ) -> Result<(), InstallError> {
        let payload = Payload::of(target).map_err(InstallError::Open)?;
        let image = payload.image();
        let length = image.length;
        let compressed = match &payload {
            Payload::Compressed(c) => Some(c),
            Payload::Raw(_) => None,
        };
        info!(%slot, target = %target.name, length, resume_from,
            encoding = compressed.map_or("raw", |c| c.encoding.as_str()),
            "streaming image into the inactive slot");
        // Owned, so that the fallback can be reported between the delta and
        // the full install.
        let dl = self.config.download.clone();
        let (target_slot, booted_slot) = (
            self.slots.get(slot).clone(),
            self.slots.get(self.booted).clone(),
        );
        let job = Download {
            length,
            digests: &image.digests,
            payload: compressed,
            max_window: dl.max_decompression_window,
            slot: &target_slot,
            booted: &booted_slot,
            resume_from,
            checkpoint_every: dl.checkpoint_bytes,
            checkpoint_interval: Duration::from_millis(dl.checkpoint_interval_ms),
            retry: RetryPolicy {
                retries: dl.retries,
                initial: Duration::from_millis(dl.retry_initial_ms),
                max: Duration::from_millis(dl.retry_max_ms),
            },
        };
        let running = &booted_slot.path;
        let running_target = running_target(self.state.slot(self.booted), source);
        let fallback = {
            let mut hooks = MachineHooks {
                source,
                target,
                store: &self.store,
                state: &mut self.state,
                heartbeat: &mut self.heartbeat,
                slot,
                length,
                next_log: length / 4,
            };
            match install::delta::try_plan(
                &dl,
                source,
                target,
                length,
                running,
                running_target.as_ref(),
                &mut || hooks.heartbeat.beat(),
            ) {
                Err(NoDelta::NotDelta) => None,
                Err(NoDelta::FallBack(why)) => Some(why),
                Ok(plan) => {
                    // The delta stream is the slot image itself, never encoded.
                    let delta_job = Download {
                        payload: None,
                        ..job.clone()
                    };
                    let parallel = dl.delta_parallel_fetches;
                    match install::delta::install(
                        &delta_job, &mut hooks, source, plan, running, parallel,
                    ) {
                        Ok(fetched) => {
                            info!(%slot, target = %target.name, fetched_bytes = fetched,
                                "delta image written, read back and verified");
                            return Ok(());
                        }
                        Err(DeltaError::Install(
                            e @ (InstallError::Slot(_) | InstallError::Checkpoint(_)),
                        )) => return Err(e),
                        Err(DeltaError::Refused(why)) => {
                            warn!(%slot, target = %target.name, reason = %why,
                                "delta refused; installing the full image instead");
                            Some(why)
                        }
                        Err(DeltaError::Install(e)) => {
                            warn!(%slot, target = %target.name, reason = %e,
                                "delta install failed; installing the full image instead");
                            Some(format!("the delta install failed: {e}"))
                        }
                    }
                }
            }
        };
        if let Some(why) = fallback {
            // The operator's answer to "why did this device fetch the whole
            // image?", in the events of this install.
            self.report(
                UpdateStatus::Downloading,
                Some(tref),
                Some(&format!(
                    "installing the full image instead of the delta: {why}"
                )),
            );
        }
        let mut hooks = MachineHooks {
            source,
            target,
            store: &self.store,
            state: &mut self.state,
            heartbeat: &mut self.heartbeat,
            slot,
            length,
            next_log: length / 4,
        };
        let job = Download {
            resume_from: match &hooks.state.phase {
                Phase::Downloading { checkpoint, .. } => *checkpoint,
                _ => resume_from,
            },
            ..job
        };
        install::install(&job, &mut hooks)?;
        info!(%slot, target = %target.name, "image written, read back and verified");
        Ok(())
    }

    /// Installed → Trying: arm the bootloader, persist Trying with this boot's id, reboot.
    fn arm_and_reboot(&mut self, slot: SlotId, target: TargetRef) -> Result<Resumed, MachineError> {
        if let Err(e) = self.bootloader.set_try_once(slot) {
            let reason = format!("arming the bootloader for slot {slot}: {e}");
            error!(%slot, target = %target.name, %reason, "giving up on this install; the running slot is untouched");
            self.mark_bad_best_effort(slot);
            self.enter(Phase::Idle)?;
            self.report(UpdateStatus::Failed, Some(&target), Some(&reason));
            return Ok(Resumed::RolledBack { reason });
        }
        hit(crash::ARM_AFTER_SET_TRY_ONCE);
        self.enter(Phase::Trying {
            slot,
            previous: self.booted,
            target: target.clone(),
            boot_id: self.boot_id.clone(),
        })?;
        hit(crash::ARM_TRYING_PERSISTED);
        self.report(UpdateStatus::Rebooting, Some(&target), None);
        self.reboot();
        Ok(Resumed::RebootRequested)
    }

    /// Trying/Installed on the new slot → health checks → Idle (commit) or RollingBack.
    fn check_new_slot(&mut self, slot: SlotId, target: TargetRef) -> Result<Resumed, MachineError> {
        info!(%slot, target = %target.name, version = %target.version, "booted the new slot; running health checks");
        let slot_path = self.slots.get(slot).path.clone();
        let ctx = CheckContext {
            slot,
            slot_path: &slot_path,
            version: &target.version,
        };
        // The heartbeat goes on while a check runs: a slow check is not a hung agent.
        let heartbeat = &mut self.heartbeat;
        let checks =
            health::run_checks_with_heartbeat(&self.config.health_check, &ctx, &mut || {
                heartbeat.beat()
            });
        match checks {
            Ok(()) => {
                hit(crash::COMMIT_CHECKS_PASSED);
                self.bootloader.mark_good(slot)?;
                hit(crash::COMMIT_AFTER_MARK_GOOD);
                *self.state.slot_mut(slot) = Some(InstalledRelease::from_target(&target));
                self.enter(Phase::Idle)?;
                hit(crash::COMMIT_IDLE_PERSISTED);
                info!(%slot, target = %target.name, version = %target.version, "update committed");
                self.report(UpdateStatus::Committed, Some(&target), None);
                Ok(Resumed::Committed)
            }
            Err(reason) => {
                warn!(%slot, target = %target.name, version = %target.version, %reason, "health check failed; rolling back");
                hit(crash::ROLLBACK_CHECKS_FAILED);
                self.enter(Phase::RollingBack {
                    slot,
                    previous: slot.other(),
                    target,
                    reason,
                    boot_id: self.boot_id.clone(),
                })?;
                hit(crash::ROLLBACK_PERSISTED);
                // Even if marking fails, the try-once arming already makes the next boot fall back.
                self.mark_bad_best_effort(slot);
                hit(crash::ROLLBACK_AFTER_MARK_BAD);
                self.reboot();
                Ok(Resumed::RebootRequested)
            }
        }
    }

    /// Back on the previous slot: reject the release, Idle, report why.
    fn finish_rollback(
        &mut self,
        target: TargetRef,
        reason: String,
    ) -> Result<Resumed, MachineError> {
        self.state.reject(&target);
        hit(crash::ROLLBACK_BEFORE_IDLE);
        self.enter(Phase::Idle)?;
        hit(crash::ROLLBACK_IDLE_PERSISTED);
        warn!(slot = %self.booted, target = %target.name, version = %target.version, %reason,
            "rolled back; this release will not be installed again");
        self.report(UpdateStatus::RolledBack, Some(&target), Some(&reason));
        Ok(Resumed::RolledBack { reason })
    }

    /// The running slot is the good one. If the bootloader would boot the
    /// other one next (its try counter ran down over several boots, or it
    /// fell back on its own), make the running slot primary again. Only
    /// then: bootloader environments live on flash that wears.
    fn keep_running_slot_primary(&mut self) {
        let booted = self.booted;
        match self.bootloader.primary() {
            Ok(primary) if primary == booted => {}
            Ok(primary) => {
                info!(slot = %booted, next = %primary, "bootloader would boot the other slot next; marking the running slot good");
                if let Err(e) = self.bootloader.mark_good(booted) {
                    warn!(slot = %booted, error = %e, "could not mark the running slot good");
                }
            }
            Err(e) => warn!(error = %e, "could not read the bootloader state"),
        }
    }

    fn mark_bad_best_effort(&mut self, slot: SlotId) {
        if let Err(e) = self.bootloader.mark_bad(slot) {
            error!(%slot, error = %e, "could not mark the slot bad");
        }
    }

    /// Persists `phase` (atomically) and logs the transition.
    fn enter(&mut self, phase: Phase) -> Result<(), StateError> {
        let from = self.state.phase.name();
        let to = phase.name();
        let (slot, target, version) = match &phase {
            Phase::Idle => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            Phase::Downloading { slot, target, .. }
            | Phase::Installed { slot, target }
            | Phase::Trying { slot, target, .. }
            | Phase::RollingBack { slot, target, .. } => (
                slot.to_string(),
                target.name.clone(),
                target.version.to_string(),
            ),
        };
        self.state.phase = phase;
        self.store.save(&self.state)?;
        info!(from, to, %slot, %target, %version,
            running = %self.running_version(), "state transition");
        Ok(())
    }

    /// Best-effort report; remembered when delivered (for de-duplicating Idle).
    fn report(&mut self, status: UpdateStatus, target: Option<&TargetRef>, reason: Option<&str>) {
        let report = DeviceReport {
            hardware_id: self.config.hardware_id.clone(),
            installed_version: self.running_version().to_string(),
            booted_slot: Some(self.booted.to_string()),
            status,
            target: target.map(|t| t.name.clone()),
            target_version: target.map(|t| t.version.to_string()),
            reason: reason.map(clamp_reason),
            groups: self.config.rollout_groups.clone(),
        };
        match self.reporter.send(&report) {
            Ok(()) => {
                self.state.last_report = Some(LastReport {
                    status,
                    target: report.target,
                });
                if let Err(e) = self.store.save(&self.state) {
                    warn!(error = %e, "could not record the delivered report");
                }
            }
            Err(e) => warn!(%status, error = %e, "report not delivered; carrying on"),
        }
    }

    /// Runs the reboot command, then waits for the system to go down.
    fn reboot(&mut self) {
        let argv = &self.config.reboot_command;
        info!(command = ?argv, "requesting reboot");
        hit(crash::REBOOT_BEFORE_COMMAND);
        if let Some((program, args)) = argv.split_first() {
            match std::process::Command::new(program).args(args).status() {
                Ok(s) if s.success() => {}
                Ok(s) => error!(command = ?argv, status = %s, "reboot command failed"),
                Err(e) => error!(command = ?argv, error = %e, "reboot command could not run"),
            }
        }
        hit(crash::REBOOT_AFTER_COMMAND);
        let timeout = self.config.reboot_timeout_secs;
        // Still alive while waiting: the watchdogs must not fire before the reboot does.
        self.heartbeat.sleep(Duration::from_secs(timeout));
        error!(
            timeout_secs = timeout,
            "the system did not go down after the reboot command; carrying on"
        );
    }
}

/// Rebuilds a missing (`why` = None) or unusable state.json from what
/// survives it: the bootloader's view (does it still consider the booted
/// slot on trial?) and the trusted TUF metadata on disk (which signed release
/// does the booted slot hold?). The rejected list and reports are lost; the
/// worst that costs is trying a bad release once more.
///
/// * booted slot holds a signed release and the bootloader would boot the
///   other slot next: the slot is on trial (or failed it). Resume as
///   `Trying` in an unknown boot, so the health checks decide: commit, or
///   roll back. Never mark an unchecked slot good.
/// * otherwise `Idle`, the booted slot running the release it holds (or
///   `initial_version` when it matches none: the factory image).
fn recover_state(
    config: &Config,
    bootloader: &dyn Bootloader,
    slots: &Slots,
    booted: SlotId,
    why: Option<&StateError>,
) -> AgentState {
    let mut state = AgentState::fresh(booted, &config.initial_version);
    let candidates = trusted_releases(config);
    let slot_path = &slots.get(booted).path;
    let release = match crate::state::identify_release(slot_path, &candidates) {
        Ok(r) => r,
        Err(e) => {
            warn!(slot = %booted, path = %slot_path.display(), error = %e, "could not read the booted slot to identify its release");
            None
        }
    };
    if let Some(t) = &release {
        *state.slot_mut(booted) = Some(InstalledRelease::from_target(t));
    }
    let primary = bootloader.primary();
    let why = match why {
        None => "missing".to_owned(),
        Some(e) => format!("unusable ({e})"),
    };
    match (release, primary) {
        (Some(target), Ok(primary)) if primary != booted => {
            warn!(state = %why, slot = %booted, next = %primary, target = %target.name, version = %target.version,
                "agent state recovered from the bootloader's view and trusted metadata: the booted slot holds a signed release the bootloader does not boot next, so it is on trial; its health checks decide");
            state.phase = Phase::Trying {
                slot: booted,
                previous: booted.other(),
                target,
                boot_id: String::new(),
            };
        }
        (release, primary) => {
            let version = state.version_of(booted, &config.initial_version);
            let primary = primary
                .map(|p| p.to_string())
                .unwrap_or_else(|e| e.to_string());
            let msg = "agent state recovered from the bootloader's view and trusted metadata: idle";
            match (why.as_str(), &release) {
                // A device's very first start: nothing was lost.
                ("missing", None) => {
                    info!(state = %why, slot = %booted, next = %primary, %version, "{msg}")
                }
                _ => warn!(state = %why, slot = %booted, next = %primary, %version,
                    target = release.as_ref().map_or("-", |t| t.name.as_str()), "{msg}"),
            }
        }
    }
    state
}

/// Releases for this device in the trusted top-level targets metadata on
/// disk (verified on load; no network). Empty when there is none yet.
fn trusted_releases(config: &Config) -> Vec<TargetRef> {
    let options = match (config.metadata_url(), config.targets_url()) {
        (Ok(m), Ok(t)) => ota_common::tuf::ClientOptions::new(m, t),
        _ => return Vec::new(),
    };
    let targets = ota_common::tuf::TufClient::open(
        &config.tuf_dir(),
        options,
        ota_common::tuf::FileTransport,
    )
    .and_then(|c| c.all_targets());
    let targets = match targets {
        Ok(t) => t,
        Err(e) => {
            info!(error = %e, "no trusted targets metadata to identify the slots' releases with");
            return Vec::new();
        }
    };
    targets
        .iter()
        .filter_map(|t| {
            let release = t.release().ok()?;
            let image = t.slot_image().ok()?;
            release
                .hardware_ids
                .contains(&config.hardware_id)
                .then(|| TargetRef::new(t, release.version, &image))
        })
        .collect()
}

/// The verified target the running slot holds, when the state names it and
/// the trusted metadata still lists it with the same image sha256: its
/// signed length bounds a delta scan and its signed chunk index, when it
/// has one, replaces the scan. `None` (the factory image, a target no
/// longer listed): the whole device is scanned.
fn running_target(
    running: Option<&crate::state::InstalledRelease>,
    source: &dyn UpdateSource,
) -> Option<Target> {
    let running = running?;
    let (name, sha256) = (running.target.as_ref()?, running.sha256.as_ref()?);
    let targets = source.targets().ok()?;
    targets.into_iter().find(|t| {
        t.slot_image().is_ok_and(|image| {
            &t.name == name && image.digests.sha256.map(hex::encode).as_ref() == Some(sha256)
        })
    })
}

/// The install's view of the machine: the image stream, the checkpoint in
/// state.json, progress logs and the heartbeat.
struct MachineHooks<'a> {
    source: &'a dyn UpdateSource,
    target: &'a Target,
    store: &'a StateStore,
    state: &'a mut AgentState,
    heartbeat: &'a mut Heartbeat,
    slot: SlotId,
    /// Bytes the slot receives (the decoded image of a compressed release).
    length: u64,
    next_log: u64,
}

impl InstallHooks<'static> for MachineHooks<'_> {
    fn open(&mut self, offset: u64) -> Result<Box<dyn std::io::Read + Send>, TufError> {
        self.heartbeat.beat();
        if offset > 0 {
            info!(slot = %self.slot, target = %self.target.name, offset, "requesting the rest of the image (Range)");
        }
        self.source.open(self.target, offset)
    }

    fn progress(&mut self, done: u64) {
        self.heartbeat.beat();
        let length = self.length;
        if done >= self.next_log && length > 0 {
            info!(slot = %self.slot, done, length, percent = done * 100 / length, "download progress");
            self.next_log = self.next_log.saturating_add((length / 4).max(1));
        }
    }

    fn checkpoint(&mut self, durable: u64) -> Result<(), String> {
        let Phase::Downloading { checkpoint, .. } = &mut self.state.phase else {
            return Err(format!(
                "phase is {}, not downloading",
                self.state.phase.name()
            ));
        };
        *checkpoint = durable;
        self.store.save(self.state).map_err(|e| e.to_string())?;
        hit(crash::DOWNLOAD_CHECKPOINT_SAVED);
        tracing::debug!(slot = %self.slot, checkpoint = durable, "download checkpoint saved");
        Ok(())
    }

    fn wait(&mut self, delay: Duration) {
        self.heartbeat.sleep(delay);
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
