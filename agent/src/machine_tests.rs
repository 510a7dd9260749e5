//! The state machine's resume and poll rules, on real files: a simulated
//! device (slots as files, the sim bootloader's environment, a kernel command
//! line and boot id the "firmware" writes at each power-on), real health-check
//! and reboot commands. Only the TUF repository is replaced, by verified
//! targets held in memory.

use super::*;
use crate::bootloader::sim::{self, SimBootloader};
use crate::report::MemoryReporter;
use crate::rollout::MemoryHolds;
use crate::state::tests::target_ref;
use ota_common::tuf::{RefreshOutcome, Target};
use ota_common::wire::RolloutState;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HW: &str = "board-a";

/// A simulated device on temp files.
struct Device {
    dir: tempfile::TempDir,
    boots: u32,
    reporter: Arc<MemoryReporter>,
    holds: Arc<MemoryHolds>,
    groups: Vec<String>,
}

impl Device {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.img"), b"factory image 1.0.0").expect("slot a");
        let d = Device {
            dir,
            boots: 0,
            reporter: Arc::new(MemoryReporter::default()),
            holds: Arc::new(MemoryHolds::default()),
            groups: Vec::new(),
        };
        d.set_healthy(true);
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> Config {
        let p = |n: &str| self.path(n).display().to_string();
        let text = format!(
            r#"
server_url = "http://127.0.0.1:9"
trusted_root = "{root}"
state_dir = "{state}"
hardware_id = "{HW}"
device_id = "dev-1"
initial_version = "1.0.0"
reboot_command = ["sh", "-c", "echo reboot >> '{reboots}'"]
reboot_timeout_secs = 0
[download]
retries = 3
retry_initial_ms = 1
retry_max_ms = 5
checkpoint_bytes = 65536
checkpoint_interval_ms = 0
[slots]
a = "{a}"
b = "{b}"
[boot]
backend = "sim"
sim_state = "{sim}"
cmdline_path = "{cmdline}"
boot_id_path = "{boot_id}"
[[health_check]]
name = "app"
command = ["sh", "-c", "test -e '{healthy}'"]
timeout_secs = 5
"#,
            root = p("root.json"),
            state = p("state"),
            reboots = p("reboots"),
            a = p("a.img"),
            b = p("b.img"),
            sim = p("boot.json"),
            cmdline = p("cmdline"),
            boot_id = p("boot_id"),
            healthy = p("healthy"),
        );
        let mut config = Config::parse(&text, Path::new("test.toml")).expect("config");
        config.rollout_groups = self.groups.clone();
        config
    }

    fn set_healthy(&self, healthy: bool) {
        let path = self.path("healthy");
        if healthy {
            std::fs::write(path, b"").expect("healthy");
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Power-on: the firmware picks a slot and boots a kernel with a new boot id.
    fn power_on(&mut self) -> SlotId {
        let slot = sim::firmware_boot(&self.path("boot.json")).expect("firmware");
        self.boots += 1;
        std::fs::write(
            self.path("cmdline"),
            format!("console=ttyS0 ota.slot={slot} quiet\n"),
        )
        .expect("cmdline");
        std::fs::write(self.path("boot_id"), format!("boot-{}\n", self.boots)).expect("boot id");
        slot
    }

    /// Starts the agent (as after a boot or a restart).
    fn agent(&self) -> Machine {
        let config = self.config();
        let bl = SimBootloader::new(self.path("boot.json"));
        Machine::new(
            config,
            Box::new(bl),
            Box::new(self.reporter.clone()),
            Box::new(self.holds.clone()),
        )
        .expect("machine")
    }

    fn reboots(&self) -> usize {
        std::fs::read_to_string(self.path("reboots"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn primary(&self) -> SlotId {
        SimBootloader::new(self.path("boot.json"))
            .primary()
            .expect("primary")
    }

    fn statuses(&self) -> Vec<(UpdateStatus, Option<String>)> {
        self.reporter
            .taken()
            .into_iter()
            .map(|r| (r.status, r.reason))
            .collect()
    }

    fn store(&self) -> StateStore {
        std::fs::create_dir_all(self.path("state")).expect("state dir");
        StateStore::new(self.path("state").join("state.json"))
    }
}

/// Verified targets held in memory, served as the TUF client would.
struct Repo {
    targets: Vec<(Target, Vec<u8>)>,
}

fn release(name: &str, version: &str, hw: &[&str], data: &[u8]) -> (Target, Vec<u8>) {
    let target = Target {
        name: name.into(),
        length: data.len() as u64,
        digests: crate::slot::tests::digests_of(data),
        custom: serde_json::json!({"version": version, "hardware_ids": hw}),
    };
    (target, data.to_vec())
}

impl Repo {
    fn with(targets: Vec<(Target, Vec<u8>)>) -> Self {
        Repo { targets }
    }
}

impl UpdateSource for Repo {
    fn refresh(&mut self) -> Result<RefreshOutcome, TufError> {
        Ok(RefreshOutcome::Unchanged)
    }
    fn targets(&self) -> Result<Vec<Target>, TufError> {
        Ok(self.targets.iter().map(|(t, _)| t.clone()).collect())
    }
    fn open(
        &self,
        target: &Target,
        offset: u64,
    ) -> Result<Box<dyn std::io::Read + Send>, TufError> {
        let data = self
            .targets
            .iter()
            .find(|(t, _)| t.name == target.name)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        Ok(Box::new(std::io::Cursor::new(data[start..].to_vec())))
    }
}

fn v2_repo() -> Repo {
    Repo::with(vec![release(
        "board-a/img-2.0.0",
        "2.0.0",
        &[HW],
        &[0x42; 300_000],
    )])
}

/// Boots A, polls a repository with 2.0.0: ends in Trying with a reboot requested.
fn install_v2(dev: &mut Device) -> Machine {
    assert_eq!(dev.power_on(), SlotId::A);
    let mut m = dev.agent();
    assert_eq!(m.resume_after_boot().expect("resume"), Resumed::Idle);
    assert_eq!(
        m.poll_once(&mut v2_repo()).expect("poll"),
        Polled::RebootRequested
    );
    assert!(matches!(
        m.state().phase,
        Phase::Trying {
            slot: SlotId::B,
            previous: SlotId::A,
            ..
        }
    ));
    assert_eq!(dev.reboots(), 1);
    assert_eq!(dev.primary(), SlotId::B);
    m
}

#[test]
fn update_commits_after_healthy_boot() {
    let mut dev = Device::new();
    install_v2(&mut dev);
    assert_eq!(
        std::fs::read(dev.path("b.img")).expect("b"),
        vec![0x42; 300_000]
    );
    assert_eq!(
        std::fs::read(dev.path("a.img")).expect("a"),
        b"factory image 1.0.0"
    );
    assert_eq!(
        dev.statuses().into_iter().map(|s| s.0).collect::<Vec<_>>(),
        [
            UpdateStatus::Downloading,
            UpdateStatus::Installed,
            UpdateStatus::Rebooting
        ]
    );

    assert_eq!(dev.power_on(), SlotId::B);
    let mut m = dev.agent();
    assert_eq!(m.resume_after_boot().expect("resume"), Resumed::Committed);
    assert_eq!(m.state().phase, Phase::Idle);
    assert_eq!(m.running_version(), semver::Version::new(2, 0, 0));
    assert_eq!(dev.statuses(), [(UpdateStatus::Committed, None)]);
    // Committed is permanent: B boots from now on.
    for _ in 0..4 {
        assert_eq!(dev.power_on(), SlotId::B);
        dev.agent().resume_after_boot().expect("resume");
    }
    // Nothing newer: one Idle report, then silence.
    let mut m = dev.agent();
    assert_eq!(m.poll_once(&mut v2_repo()).expect("poll"), Polled::UpToDate);
    assert_eq!(m.poll_once(&mut v2_repo()).expect("poll"), Polled::UpToDate);
    assert_eq!(dev.statuses(), [(UpdateStatus::Idle, None)]);
}

#[test]
fn failed_health_check_rolls_back_and_rejects_the_release() {
    let mut dev = Device::new();
    install_v2(&mut dev);
    dev.statuses();
    dev.set_healthy(false);

    assert_eq!(dev.power_on(), SlotId::B);
    let mut m = dev.agent();
    assert_eq!(
        m.resume_after_boot().expect("resume"),
        Resumed::RebootRequested
    );
    assert!(matches!(&m.state().phase, Phase::RollingBack { reason, .. }
        if reason == "health check 'app' exited with status 1"));
    assert_eq!(dev.primary(), SlotId::A);
    assert_eq!(dev.reboots(), 2);

    assert_eq!(dev.power_on(), SlotId::A);
    let mut m = dev.agent();
    let reason = "health check 'app' exited with status 1".to_owned();
    assert_eq!(
        m.resume_after_boot().expect("resume"),
        Resumed::RolledBack {
            reason: reason.clone()
        }
    );
    assert_eq!(dev.statuses(), [(UpdateStatus::RolledBack, Some(reason))]);
    assert_eq!(m.running_version(), semver::Version::new(1, 0, 0));
    // The rejected release is not installed again.
    assert_eq!(m.poll_once(&mut v2_repo()).expect("poll"), Polled::UpToDate);
    assert_eq!(dev.reboots(), 2);
}

#[test]
fn new_slot_that_never_comes_up_is_rolled_back() {
    let mut dev = Device::new();
    install_v2(&mut dev);
    dev.statuses();
    // B boots once, hangs before the agent runs, the watchdog resets: A again.
    assert_eq!(dev.power_on(), SlotId::B);
    assert_eq!(dev.power_on(), SlotId::A);
    let mut m = dev.agent();
    assert_eq!(
        m.resume_after_boot().expect("resume"),
        Resumed::RolledBack {
            reason: "new slot did not come up".into()
        }
    );
    assert_eq!(m.state().phase, Phase::Idle);
    assert_eq!(m.state().rejected.len(), 1);
    assert_eq!(dev.primary(), SlotId::A);
    assert_eq!(
        dev.statuses(),
        [(
            UpdateStatus::RolledBack,
            Some("new slot did not come up".into())
        )]
    );
}

#[test]
fn restart_before_the_reboot_happened_asks_again() {
    let mut dev = Device::new();
    install_v2(&mut dev);
    // Same boot id: the agent restarted, the system never went down.
    let mut m = dev.agent();
    assert_eq!(
        m.resume_after_boot().expect("resume"),
        Resumed::RebootRequested
    );
    assert_eq!(dev.reboots(), 2);
    assert!(matches!(m.state().phase, Phase::Trying { .. }));
    assert_eq!(dev.primary(), SlotId::B);
}

#[test]
fn interrupted_download_of_another_release_starts_over() {
    let mut dev = Device::new();
    dev.power_on();
    let mut state = AgentState::fresh(SlotId::A, &semver::Version::new(1, 0, 0));
    state.phase = Phase::Downloading {
        slot: SlotId::B,
        target: target_ref("img", "2.0.0", b"x"),
        checkpoint: 0,
    };
    dev.store().save(&state).expect("save");
    let mut m = dev.agent();
    assert_eq!(m.resume_after_boot().expect("resume"), Resumed::Idle);
    // Left to the poll, which resumes only the same release.
    assert!(matches!(m.state().phase, Phase::Downloading { .. }));
    assert_eq!(dev.primary(), SlotId::A);
    assert_eq!(dev.reboots(), 0);
    // The repository offers another release: the poll starts over and completes.
    assert_eq!(
        m.poll_once(&mut v2_repo()).expect("poll"),
        Polled::RebootRequested
    );
}

#[test]
fn installed_but_not_armed_is_rearmed() {
    let mut dev = Device::new();
    dev.power_on();
    let data = vec![0x42; 300_000];
    std::fs::write(dev.path("b.img"), &data).expect("b");
    let mut state = AgentState::fresh(SlotId::A, &semver::Version::new(1, 0, 0));
    state.phase = Phase::Installed {
        slot: SlotId::B,
        target: target_ref("img", "2.0.0", &data),
    };
    dev.store().save(&state).expect("save");
    assert_eq!(dev.primary(), SlotId::A);
    let mut m = dev.agent();
    assert_eq!(
        m.resume_after_boot().expect("resume"),
        Resumed::RebootRequested
    );
    assert!(matches!(&m.state().phase, Phase::Trying { boot_id, .. } if boot_id == "boot-1"));
    assert_eq!(dev.primary(), SlotId::B);
    assert_eq!(dev.power_on(), SlotId::B);
    assert_eq!(
        dev.agent().resume_after_boot().expect("resume"),
        Resumed::Committed
    );
}

#[test]
fn armed_then_power_cut_before_trying_was_saved_still_commits() {
    let mut dev = Device::new();
    dev.power_on();
    let mut state = AgentState::fresh(SlotId::A, &semver::Version::new(1, 0, 0));
    state.phase = Phase::Installed {
        slot: SlotId::B,
        target: target_ref("img", "2.0.0", b"x"),
    };
    dev.store().save(&state).expect("save");
    SimBootloader::new(dev.path("boot.json"))
        .set_try_once(SlotId::B)
        .expect("arm");
    assert_eq!(dev.power_on(), SlotId::B);
    let mut m = dev.agent();
    assert_eq!(m.resume_after_boot().expect("resume"), Resumed::Committed);
    assert_eq!(m.running_version(), semver::Version::new(2, 0, 0));
}

#[test]
fn rolling_back_on_the_bad_slot_marks_it_bad_again_and_reboots() {
    let mut dev = Device::new();
    install_v2(&mut dev);
    dev.set_healthy(false);
    assert_eq!(dev.power_on(), SlotId::B);
    dev.agent().resume_after_boot().expect("resume");
    // Power cut after RollingBack was saved but before mark_bad stuck: re-arm B by hand.
    SimBootloader::new(dev.path("boot.json"))
        .set_try_once(SlotId::B)
        .expect("arm");
    assert_eq!(dev.power_on(), SlotId::B);
    let mut m = dev.agent();
    assert_eq!(
        m.resume_after_boot().expect("resume"),
        Resumed::RebootRequested
    );
    assert_eq!(dev.primary(), SlotId::A);
    assert_eq!(dev.power_on(), SlotId::A);
    assert!(matches!(
        dev.agent().resume_after_boot().expect("resume"),
        Resumed::RolledBack { .. }
    ));
}

#[test]
fn failed_install_leaves_the_device_running_and_is_reported() {
    let mut dev = Device::new();
    dev.power_on();
    let (target, mut data) = release("board-a/img-2.0.0", "2.0.0", &[HW], &[7; 10_000]);
    data[5_000] ^= 1; // the server (or the network) serves tampered bytes
    let mut repo = Repo::with(vec![(target, data)]);
    let mut m = dev.agent();
    let Polled::Failed { reason } = m.poll_once(&mut repo).expect("poll") else {
        panic!("expected a failed install");
    };
    assert!(
        reason.contains("sha256 mismatch") || reason.contains("sha512 mismatch"),
        "{reason}"
    );
    assert_eq!(m.state().phase, Phase::Idle);
    assert!(
        m.state().rejected.is_empty(),
        "a download failure is retried at the next poll"
    );
    assert_eq!(dev.primary(), SlotId::A);
    assert_eq!(dev.reboots(), 0);
    assert_eq!(
        std::fs::read(dev.path("a.img")).expect("a"),
        b"factory image 1.0.0"
    );
    let statuses = dev.statuses();
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[1], (UpdateStatus::Failed, Some(reason)));
}

#[test]
fn a_delta_release_installed_in_full_reports_why() {
    let mut dev = Device::new();
    dev.power_on();
    let (mut target, data) = release("board-a/img-2.0.0", "2.0.0", &[HW], &[9; 50_000]);
    target.custom["delta"] =
        serde_json::json!({"index_sha256": "ab".repeat(32), "index_length": 1000});
    // This source has no chunk store: the delta cannot be used.
    let mut repo = Repo::with(vec![(target, data.clone())]);
    let mut m = dev.agent();
    assert_eq!(
        m.poll_once(&mut repo).expect("poll"),
        Polled::RebootRequested
    );
    assert_eq!(
        std::fs::read(dev.path("b.img")).expect("b")[..data.len()],
        data[..]
    );
    let statuses = dev.statuses();
    assert_eq!(statuses[0], (UpdateStatus::Downloading, None));
    assert_eq!(
        statuses[1],
        (
            UpdateStatus::Downloading,
            Some(
                "installing the full image instead of the delta: this update source has no \
                 chunk store"
                    .into()
            )
        ),
        "{statuses:?}"
    );
    assert_eq!(statuses[2], (UpdateStatus::Installed, None));
}

#[test]
fn chooses_the_newest_compatible_release() {
    let mut dev = Device::new();
    dev.power_on();
    let mut repo = Repo::with(vec![
        release("old", "0.9.0", &[HW], b"old"),
        release("same", "1.0.0", &[HW], b"same"),
        release("other-board", "9.0.0", &["board-z"], b"other"),
        release("v2", "2.0.0", &[HW], b"two"),
        release("v3", "3.0.0-rc.1", &["board-z", HW], b"three"),
    ]);
    let mut m = dev.agent();
    assert_eq!(
        m.poll_once(&mut repo).expect("poll"),
        Polled::RebootRequested
    );
    assert!(matches!(&m.state().phase, Phase::Trying { target, .. } if target.name == "v3"));
    assert_eq!(std::fs::read(dev.path("b.img")).expect("b"), b"three");
    // Busy until the reboot is handled.
    assert_eq!(m.poll_once(&mut repo).expect("poll"), Polled::Busy);
}

#[test]
fn corrupt_state_at_start_is_recovered() {
    let mut dev = Device::new();
    dev.power_on();
    std::fs::create_dir_all(dev.path("state")).expect("dir");
    std::fs::write(dev.path("state").join("state.json"), b"{\"phase\": ").expect("corrupt");
    let mut m = dev.agent();
    assert_eq!(m.resume_after_boot().expect("resume"), Resumed::Idle);
    assert_eq!(m.running_version(), semver::Version::new(1, 0, 0));
    assert_eq!(
        m.poll_once(&mut v2_repo()).expect("poll"),
        Polled::RebootRequested
    );
    assert!(dev.store().load().expect("load").is_some());
}

#[test]
fn idle_agent_keeps_the_running_slot_primary() {
    let mut dev = Device::new();
    install_v2(&mut dev);
    assert_eq!(dev.power_on(), SlotId::B);
    assert_eq!(
        dev.agent().resume_after_boot().expect("resume"),
        Resumed::Committed
    );
    // Three boots spend B's tries; the bootloader would now boot A next.
    for _ in 0..3 {
        assert_eq!(dev.power_on(), SlotId::B);
    }
    assert_eq!(dev.primary(), SlotId::A);
    assert_eq!(
        dev.agent().resume_after_boot().expect("resume"),
        Resumed::Idle
    );
    assert_eq!(dev.primary(), SlotId::B);
    // When the bootloader already agrees, its environment is not rewritten.
    let before = std::fs::metadata(dev.path("boot.json"))
        .expect("stat")
        .modified()
        .expect("mtime");
    std::thread::sleep(std::time::Duration::from_millis(20));
    dev.agent().resume_after_boot().expect("resume");
    let after = std::fs::metadata(dev.path("boot.json"))
        .expect("stat")
        .modified()
        .expect("mtime");
    assert_eq!(before, after);
}

/// A repository whose image streams break off: each `open` serves at most
/// `cuts[i]` bytes (then a connection-reset error), later opens serve to the end.
struct Flaky {
    repo: Repo,
    cuts: std::cell::RefCell<Vec<usize>>,
    opened_at: std::cell::RefCell<Vec<u64>>,
}

impl Flaky {
    fn new(repo: Repo, cuts: &[usize]) -> Self {
        Flaky {
            repo,
            cuts: std::cell::RefCell::new(cuts.iter().rev().copied().collect()),
            opened_at: std::cell::RefCell::new(Vec::new()),
        }
    }
}

/// Serves `limit` bytes of `inner`, then fails like a dropped connection.
struct CutAfter {
    inner: Box<dyn std::io::Read + Send>,
    limit: usize,
}

impl std::io::Read for CutAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.limit == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            ));
        }
        let want = buf.len().min(self.limit);
        let n = self.inner.read(&mut buf[..want])?;
        self.limit -= n;
        Ok(n)
    }
}

impl UpdateSource for Flaky {
    fn refresh(&mut self) -> Result<RefreshOutcome, TufError> {
        self.repo.refresh()
    }
    fn targets(&self) -> Result<Vec<Target>, TufError> {
        self.repo.targets()
    }
    fn open(
        &self,
        target: &Target,
        offset: u64,
    ) -> Result<Box<dyn std::io::Read + Send>, TufError> {
        self.opened_at.borrow_mut().push(offset);
        let inner = self.repo.open(target, offset)?;
        Ok(match self.cuts.borrow_mut().pop() {
            Some(limit) => Box::new(CutAfter { inner, limit }),
            None => inner,
        })
    }
}

/// The install's chunk: the tests below cut streams inside chunks.
const C: usize = crate::install::CHUNK;

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn broken_stream_is_resumed_with_a_range_request_in_the_same_poll() {
    let mut dev = Device::new();
    dev.power_on();
    let data = image(C * 4 - C / 5);
    let repo = Repo::with(vec![release("img-2", "2.0.0", &[HW], &data)]);
    // The connection drops mid-way through the second chunk.
    let mut flaky = Flaky::new(repo, &[C + C / 6]);
    let mut m = dev.agent();
    assert_eq!(
        m.poll_once(&mut flaky).expect("poll"),
        Polled::RebootRequested
    );
    // One resumed request, from the last byte written (a chunk boundary: the
    // broken chunk's bytes were dropped, never written unverified).
    let opened = flaky.opened_at.borrow().clone();
    assert_eq!(opened, [0, crate::install::CHUNK as u64], "{opened:?}");
    assert_eq!(std::fs::read(dev.path("b.img")).expect("b"), data);
    assert!(!dev
        .statuses()
        .iter()
        .any(|(s, _)| *s == UpdateStatus::Failed));
}

#[test]
fn download_interrupted_across_restarts_resumes_from_the_checkpoint() {
    let mut dev = Device::new();
    dev.power_on();
    let data = image(C * 4 - C / 5);
    let repo = || Repo::with(vec![release("img-2", "2.0.0", &[HW], &data)]);
    // Every try breaks off in the third chunk: retries run out, the poll fails.
    let mut flaky = Flaky::new(repo(), &[C * 2 + C / 3, 0, 0, 0]);
    let mut m = dev.agent();
    let Polled::Failed { reason } = m.poll_once(&mut flaky).expect("poll") else {
        panic!("expected a failed download");
    };
    assert!(reason.contains("connection reset"), "{reason}");
    let Phase::Downloading { checkpoint, .. } = m.state().phase.clone() else {
        panic!("stays in downloading: {:?}", m.state().phase);
    };
    // Checkpoints every 64 KiB, at chunk ends: the last one before the break.
    assert_eq!(checkpoint, 2 * crate::install::CHUNK as u64);
    drop(m);

    // The agent restarts (same boot): the post-boot stage leaves the download
    // to the poll, which re-hashes the slot's first bytes and fetches the rest.
    let mut m = dev.agent();
    assert_eq!(m.resume_after_boot().expect("resume"), Resumed::Idle);
    assert!(matches!(m.state().phase, Phase::Downloading { .. }));
    let mut good = Flaky::new(repo(), &[]);
    assert_eq!(
        m.poll_once(&mut good).expect("poll"),
        Polled::RebootRequested
    );
    assert_eq!(*good.opened_at.borrow(), [checkpoint]);
    assert_eq!(std::fs::read(dev.path("b.img")).expect("b"), data);
}

#[test]
fn corrupted_bytes_before_the_checkpoint_fail_the_install_and_the_next_poll_starts_over() {
    let mut dev = Device::new();
    dev.power_on();
    let data = image(C * 2 + C * 2 / 3);
    let repo = || Repo::with(vec![release("img-2", "2.0.0", &[HW], &data)]);
    let mut m = dev.agent();
    let mut flaky = Flaky::new(repo(), &[C * 2 + C / 3, 0, 0, 0]);
    assert!(matches!(
        m.poll_once(&mut flaky).expect("poll"),
        Polled::Failed { .. }
    ));
    // The medium flips a byte the checkpoint vouched for.
    let mut b = std::fs::read(dev.path("b.img")).expect("b");
    b[1000] ^= 0xff;
    std::fs::write(dev.path("b.img"), &b).expect("corrupt");
    let mut good = Flaky::new(repo(), &[]);
    let Polled::Failed { reason } = m.poll_once(&mut good).expect("poll") else {
        panic!("the corrupted prefix must be caught");
    };
    assert!(reason.contains("mismatch"), "{reason}");
    assert_eq!(m.state().phase, Phase::Idle);
    let mut good = Flaky::new(repo(), &[]);
    assert_eq!(
        m.poll_once(&mut good).expect("poll"),
        Polled::RebootRequested
    );
    assert_eq!(*good.opened_at.borrow(), [0]);
    assert_eq!(std::fs::read(dev.path("b.img")).expect("b"), data);
}

#[test]
fn a_newer_release_replaces_an_interrupted_download() {
    let mut dev = Device::new();
    dev.power_on();
    let old = image(500_000);
    let mut flaky = Flaky::new(
        Repo::with(vec![release("img-2", "2.0.0", &[HW], &old)]),
        &[400_000, 0, 0, 0],
    );
    let mut m = dev.agent();
    assert!(matches!(
        m.poll_once(&mut flaky).expect("poll"),
        Polled::Failed { .. }
    ));
    let new = vec![9u8; 300_000];
    let mut repo = Flaky::new(
        Repo::with(vec![
            release("img-2", "2.0.0", &[HW], &old),
            release("img-3", "3.0.0", &[HW], &new),
        ]),
        &[],
    );
    assert_eq!(
        m.poll_once(&mut repo).expect("poll"),
        Polled::RebootRequested
    );
    assert_eq!(*repo.opened_at.borrow(), [0]);
    assert_eq!(std::fs::read(dev.path("b.img")).expect("b"), new);
}

/// A release carrying a signed rollout plan with one wave: `who` (groups or
/// a percent) from `not_before`.
fn staged(name: &str, version: &str, data: &[u8], wave: serde_json::Value) -> (Target, Vec<u8>) {
    let (mut target, data) = release(name, version, &[HW], data);
    target.custom["rollout"] = serde_json::json!({"seed": "00112233aabbccdd", "waves": [wave]});
    (target, data)
}

#[test]
fn staged_release_waits_for_its_signed_wave() {
    let mut dev = Device::new();
    dev.groups = vec!["bench".into()];
    assert_eq!(dev.power_on(), SlotId::A);
    let mut m = dev.agent();
    m.resume_after_boot().expect("resume");
    // Far in the future: the device does not start, whatever the server says.
    let mut later = Repo::with(vec![staged(
        "img-2.0.0",
        "2.0.0",
        &[0x42; 1000],
        serde_json::json!({"name": "bench", "groups": ["bench"], "not_before": "2999-01-01T00:00:00Z"}),
    )]);
    assert_eq!(m.poll_once(&mut later).expect("poll"), Polled::UpToDate);
    assert_eq!(m.state().phase, Phase::Idle);
    assert!(!dev.path("b.img").exists());

    // A wave that holds other groups only: not for this device.
    let mut others = Repo::with(vec![staged(
        "img-2.0.0",
        "2.0.0",
        &[0x42; 1000],
        serde_json::json!({"name": "lab", "groups": ["lab"], "not_before": "2000-01-01T00:00:00Z"}),
    )]);
    assert_eq!(m.poll_once(&mut others).expect("poll"), Polled::UpToDate);

    // Open and not held: installs.
    let mut open = Repo::with(vec![staged(
        "img-2.0.0",
        "2.0.0",
        &[0x42; 1000],
        serde_json::json!({"name": "bench", "groups": ["bench"], "not_before": "2000-01-01T00:00:00Z"}),
    )]);
    assert_eq!(
        m.poll_once(&mut open).expect("poll"),
        Polled::RebootRequested
    );
}

#[test]
fn server_hold_stops_a_staged_release_and_an_older_one_may_go() {
    let mut dev = Device::new();
    assert_eq!(dev.power_on(), SlotId::A);
    let mut m = dev.agent();
    m.resume_after_boot().expect("resume");
    let everyone =
        serde_json::json!({"name": "all", "percent": 100, "not_before": "2000-01-01T00:00:00Z"});
    let mut repo = Repo::with(vec![
        staged("img-3.0.0", "3.0.0", &[0x33; 1000], everyone),
        release("img-2.0.0", "2.0.0", &[HW], &[0x22; 1000]),
    ]);
    dev.holds.set("img-3.0.0", RolloutState::Paused);
    assert_eq!(
        m.poll_once(&mut repo).expect("poll"),
        Polled::RebootRequested
    );
    match &m.state().phase {
        Phase::Trying { target, .. } => assert_eq!(target.name, "img-2.0.0"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn aborted_staged_release_is_not_started() {
    let mut dev = Device::new();
    assert_eq!(dev.power_on(), SlotId::A);
    let mut m = dev.agent();
    m.resume_after_boot().expect("resume");
    let everyone =
        serde_json::json!({"name": "all", "percent": 100, "not_before": "2000-01-01T00:00:00Z"});
    let mut repo = Repo::with(vec![staged("img-3.0.0", "3.0.0", &[0x33; 1000], everyone)]);
    dev.holds.set("img-3.0.0", RolloutState::Aborted);
    assert_eq!(m.poll_once(&mut repo).expect("poll"), Polled::UpToDate);
    dev.holds.set("img-3.0.0", RolloutState::Active);
    assert_eq!(
        m.poll_once(&mut repo).expect("poll"),
        Polled::RebootRequested
    );
}

#[test]
fn malformed_rollout_plan_makes_the_release_invalid() {
    let mut dev = Device::new();
    assert_eq!(dev.power_on(), SlotId::A);
    let mut m = dev.agent();
    m.resume_after_boot().expect("resume");
    // Percent 0 is not a valid wave: the device must not guess a schedule.
    let bad = serde_json::json!({"name": "x", "percent": 0, "not_before": "2000-01-01T00:00:00Z"});
    let mut repo = Repo::with(vec![staged("img-2.0.0", "2.0.0", &[0x22; 1000], bad)]);
    assert_eq!(m.poll_once(&mut repo).expect("poll"), Polled::UpToDate);
}

#[test]
fn unknown_hold_keeps_an_interrupted_staged_download_for_the_next_poll() {
    let mut dev = Device::new();
    dev.power_on();
    let data = image(C * 4 - C / 5);
    let everyone =
        serde_json::json!({"name": "all", "percent": 100, "not_before": "2000-01-01T00:00:00Z"});
    let repo = || {
        Repo::with(vec![
            staged("img-3", "3.0.0", &data, everyone.clone()),
            release("img-2", "2.0.0", &[HW], &[0x22; 1000]),
        ])
    };
    let mut m = dev.agent();
    let mut flaky = Flaky::new(repo(), &[C * 2 + C / 3, 0, 0, 0]);
    assert!(matches!(
        m.poll_once(&mut flaky).expect("poll"),
        Polled::Failed { .. }
    ));
    let Phase::Downloading {
        checkpoint, target, ..
    } = m.state().phase.clone()
    else {
        panic!("stays in downloading: {:?}", m.state().phase);
    };
    assert_eq!(target.name, "img-3");
    assert!(checkpoint > 0);

    // The server cannot be asked: the download (and its checkpoint) waits;
    // the lower release is not started in its place.
    dev.holds
        .unreachable
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut good = Flaky::new(repo(), &[]);
    assert_eq!(m.poll_once(&mut good).expect("poll"), Polled::UpToDate);
    assert!(
        matches!(&m.state().phase, Phase::Downloading { checkpoint: c, .. } if *c == checkpoint),
        "{:?}",
        m.state().phase
    );
    assert!(good.opened_at.borrow().is_empty());

    // Reachable again: it resumes from the checkpoint.
    dev.holds
        .unreachable
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        m.poll_once(&mut good).expect("poll"),
        Polled::RebootRequested
    );
    assert_eq!(*good.opened_at.borrow(), [checkpoint]);

    // An explicit hold, by contrast, abandons an interrupted download.
    let mut dev = Device::new();
    dev.power_on();
    let mut m = dev.agent();
    let mut flaky = Flaky::new(repo(), &[C * 2 + C / 3, 0, 0, 0]);
    assert!(matches!(
        m.poll_once(&mut flaky).expect("poll"),
        Polled::Failed { .. }
    ));
    dev.holds.set("img-3", RolloutState::Paused);
    let mut good = Flaky::new(repo(), &[]);
    assert_eq!(
        m.poll_once(&mut good).expect("poll"),
        Polled::RebootRequested
    );
    match &m.state().phase {
        Phase::Trying { target, .. } => assert_eq!(target.name, "img-2"),
        other => panic!("{other:?}"),
    }
}

/// Found by the power cuts on the GRUB reference board: after an update
/// committed on B, a download into A broke off, and a later boot fell back
/// to A's partial image (GRUB marks the running slot tried at every boot
/// until the agent confirms it). The slot being written is unbootable from
/// before its first byte, and every boot in `Downloading` keeps the running
/// slot primary.
#[test]
fn a_slot_being_written_is_never_booted() {
    let mut dev = Device::new();
    install_v2(&mut dev);
    assert_eq!(dev.power_on(), SlotId::B);
    assert_eq!(
        dev.agent().resume_after_boot().expect("resume"),
        Resumed::Committed
    );
    // A, the fallback until now, is about to be overwritten with 3.0.0.
    let sim = || SimBootloader::new(dev.path("boot.json"));
    assert!(sim().state().expect("state").tries(SlotId::A) > 0);
    let data = image(C * 3);
    let mut flaky = Flaky::new(
        Repo::with(vec![release("img-3", "3.0.0", &[HW], &data)]),
        &[C + 10, 0, 0, 0],
    );
    let mut m = dev.agent();
    assert!(matches!(
        m.poll_once(&mut flaky).expect("poll"),
        Polled::Failed { .. }
    ));
    assert!(matches!(
        m.state().phase,
        Phase::Downloading {
            slot: SlotId::A,
            ..
        }
    ));
    assert_eq!(sim().state().expect("state").tries(SlotId::A), 0);
    drop(m);
    // Boot after boot (more than B's tries), the running slot comes back.
    for _ in 0..8 {
        assert_eq!(dev.power_on(), SlotId::B);
        assert_eq!(
            dev.agent().resume_after_boot().expect("resume"),
            Resumed::Idle
        );
    }
}

/// An environment an agent without the mark above may have left: A, half
/// written, still has tries, and this boot spent B's last. The post-boot
/// stage marks A unbootable again and makes B primary.
#[test]
fn a_boot_during_a_download_repairs_a_bootable_partial_slot() {
    let mut dev = Device::new();
    dev.power_on();
    let data = image(C * 3);
    let mut flaky = Flaky::new(
        Repo::with(vec![release("img-2", "2.0.0", &[HW], &data)]),
        &[C + 10, 0, 0, 0],
    );
    let mut m = dev.agent();
    assert!(matches!(
        m.poll_once(&mut flaky).expect("poll"),
        Polled::Failed { .. }
    ));
    drop(m);
    // B is the slot being written; make it look bootable and A spent.
    std::fs::write(
        dev.path("boot.json"),
        r#"{"boot_order": ["A", "B"], "tries_left": {"A": 1, "B": 3}}"#,
    )
    .expect("old environment");
    assert_eq!(dev.power_on(), SlotId::A);
    assert_eq!(
        dev.agent().resume_after_boot().expect("resume"),
        Resumed::Idle
    );
    assert_eq!(dev.primary(), SlotId::A);
    assert_eq!(
        SimBootloader::new(dev.path("boot.json"))
            .state()
            .expect("state")
            .tries(SlotId::B),
        0
    );
    assert_eq!(dev.power_on(), SlotId::A);
}
