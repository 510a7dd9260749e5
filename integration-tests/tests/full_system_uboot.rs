//! Reference board 3 in QEMU: aarch64 `virt`, Debian's U-Boot (qemu_arm64)
//! running the shipped boot/uboot/boot.cmd, Debian 12's arm64 kernel and
//! systemd, the cross-built `ota-agent` with its U-Boot backend writing a
//! redundant environment on a partition of its own (docs/FULL-SYSTEM.md,
//! board 3). Always TCG: an x86 host cannot run aarch64 guests under KVM.
//!
//! Needs root, qemu-system-arm, u-boot-qemu, mmdebstrap with qemu-user-static,
//! u-boot-tools, libubootenv-tool and the aarch64 agent (`./test` installs
//! and builds them). A machine that does not boot fails its test: nothing
//! here skips. The CI subset (`./test`) runs the update, which boots the
//! board three times through the real firmware and script; every guest here
//! is TCG, so the other scenarios (`#[ignore]`d) run with `./test
//! --full-system`.

use anyhow::{bail, ensure, Context};
use integration_tests::full_system::{
    self as fs, Arm64UBoot, Behaviour, Machine, ReferenceBoard, SlotSpec, HANGING_INIT_ARMED,
};
use integration_tests::repo::Repo;
use integration_tests::server::Server;
use ota_common::wire::{DeviceEvent, UpdateStatus};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An aarch64 boot under TCG takes two to four minutes on a loaded machine.
const BOOT: Duration = Duration::from_secs(12 * 60);
const UPDATE: Duration = Duration::from_secs(40 * 60);

/// One emulated aarch64 machine at a time: they are slow and CPU-bound.
static ONE_MACHINE: Mutex<()> = Mutex::new(());

const BOARD: Arm64UBoot = Arm64UBoot;
/// The environment partition's copies (fw_env.config in the slots).
const ENV_COPY: u64 = 0x4000;

fn sha256_file(path: &Path, limit: u64) -> anyhow::Result<String> {
    let mut reader = std::fs::File::open(path)?.take(limit);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A repository, a server and the board with 1.0.0 in slot A.
struct Rig {
    dir: PathBuf,
    repo: Repo,
    server: Server,
    machine: Machine,
    device_id: String,
    slot_mib: u64,
    published: usize,
    /// Slot images by version, and their sha256.
    images: Vec<(String, PathBuf, String)>,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Rig {
    fn new(name: &str, releases: &[(&str, Behaviour)], published: usize) -> anyhow::Result<Rig> {
        let one = ONE_MACHINE.lock().unwrap_or_else(|e| e.into_inner());
        let dir = fs::run_dir(name)?;
        let repo = Repo::init(&dir.join("repo"), &[])?;
        let server = Server::start(&dir.join("server"))?;
        let port: u16 = server
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .with_context(|| format!("no port in {}", server.url))?;
        let device_id = format!("fullsys-{name}");
        let mut images = Vec::new();
        let mut all = vec![("1.0.0", Behaviour::Healthy)];
        all.extend_from_slice(releases);
        for (version, behaviour) in all {
            let image = dir.join(format!("rootfs-{version}.img"));
            let spec = SlotSpec {
                board: BOARD,
                version,
                behaviour,
                server_port: port,
                device_id: &device_id,
                trusted_root: &repo.initial_root(),
                poll_interval_secs: 5,
            };
            fs::build_slot(&spec, &dir, &image)?;
            if images.len() <= published {
                repo.add(&image, version, &[BOARD.hardware_id()])?;
            }
            let sha = sha256_file(&image, u64::MAX)?;
            images.push((version.to_owned(), image, sha));
        }
        repo.publish(&server)?;
        let largest = images
            .iter()
            .map(|(_, p, _)| std::fs::metadata(p).map(|m| m.len()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        let slot_mib = largest.div_ceil(1 << 20) + 4;
        let disk = dir.join("disk.img");
        fs::build_disk(BOARD, &images[0].1, slot_mib, &disk)?;
        let machine = Machine::arm64_virt(&dir.join("m"), &disk)?;
        Ok(Rig {
            dir,
            repo,
            server,
            machine,
            device_id,
            slot_mib,
            published: published + 1,
            images,
            _one: one,
        })
    }

    fn publish_next(&mut self) -> anyhow::Result<String> {
        let (version, image, _) = self
            .images
            .get(self.published)
            .cloned()
            .context("no release left to publish")?;
        self.repo.add(&image, &version, &[BOARD.hardware_id()])?;
        self.repo.publish(&self.server)?;
        self.published += 1;
        Ok(version)
    }

    fn events(&self) -> anyhow::Result<Vec<DeviceEvent>> {
        Ok(self.server.events(&self.device_id).unwrap_or_default())
    }

    fn wait_event(
        &mut self,
        status: UpdateStatus,
        version: &str,
        timeout: Duration,
    ) -> anyhow::Result<DeviceEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            self.machine.check_running()?;
            let events = self.events()?;
            if let Some(e) = events
                .iter()
                .find(|e| e.status == status && e.target_version.as_deref() == Some(version))
            {
                return Ok(e.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for a {} report for {version}; reports so far: {:?}",
                    status.as_str(),
                    events
                        .iter()
                        .map(|e| format!("{} {:?}", e.status.as_str(), e.target_version))
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn slot_offset(&self, slot: &str) -> u64 {
        let a = BOARD.slot_a_offset_mib() << 20;
        match slot {
            "A" => a,
            _ => a + (self.slot_mib << 20),
        }
    }

    /// The version whose complete signed image `slot` holds, read from the host.
    fn slot_release(&self, slot: &str) -> anyhow::Result<Option<String>> {
        for (version, image, sha) in &self.images {
            let len = std::fs::metadata(image)?.len();
            let mut disk = std::fs::File::open(&self.machine.disk)?;
            disk.seek(SeekFrom::Start(self.slot_offset(slot)))?;
            let mut hasher = Sha256::new();
            let mut reader = disk.take(len);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            if &hex::encode(hasher.finalize()) == sha {
                return Ok(Some(version.clone()));
            }
        }
        Ok(None)
    }

    /// The U-Boot environment on partition 5 as libubootenv's `fw_printenv`
    /// on the host reads it: an implementation other than the agent's and
    /// the boot script's, both of which write it.
    fn uboot_env(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let env_offset =
            (BOARD.slot_a_offset_mib() + 2 * self.slot_mib + Arm64UBoot::DATA_MIB) << 20;
        let config = self.dir.join("fw_env.config");
        let disk = self.machine.disk.display();
        std::fs::write(
            &config,
            format!(
                "{disk} {env_offset:#x} {ENV_COPY:#x}\n{disk} {:#x} {ENV_COPY:#x}\n",
                env_offset + ENV_COPY
            ),
        )?;
        let out = Command::new("fw_printenv")
            .arg("-c")
            .arg(&config)
            .output()
            .context("running fw_printenv (libubootenv-tool)")?;
        ensure!(
            out.status.success(),
            "fw_printenv: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect())
    }

    fn ensure_env(&self, expected: &[(&str, &str)]) -> anyhow::Result<()> {
        let env = self.uboot_env()?;
        for (name, value) in expected {
            ensure!(
                env.get(*name).map(String::as_str) == Some(*value),
                "U-Boot environment: {name} should be {value:?}: {env:?}"
            );
        }
        Ok(())
    }

    fn guest_verify(&mut self) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
        let (code, out) = self
            .machine
            .shell("ota-agent verify --json 2>/dev/null", BOOT)?;
        let json: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("ota-agent verify --json (exit {code}) printed {out:?}"))?;
        let slots = json.as_array().context("verify --json is not an array")?;
        Ok(slots
            .iter()
            .map(|s| {
                (
                    s["slot"].as_str().unwrap_or_default().to_owned(),
                    s["verdict"].as_str().unwrap_or_default().to_owned(),
                    s["signed"]["sha256"].as_str().map(str::to_owned),
                )
            })
            .collect())
    }

    fn sha_of(&self, version: &str) -> String {
        self.images
            .iter()
            .find(|(v, _, _)| v == version)
            .map(|(_, _, s)| s.clone())
            .unwrap_or_default()
    }

    fn reboot(&mut self) -> anyhow::Result<()> {
        let before = self.machine.boot_id(BOOT)?;
        self.machine
            .shell("(sleep 1; systemctl reboot) >/dev/null 2>&1 &", BOOT)?;
        fs::wait_for("the guest to come back from its reboot", BOOT, || {
            Ok(match self.machine.boot_id(Duration::from_secs(30)) {
                Ok(id) if id != before => Some(()),
                _ => None,
            })
        })
    }

    /// On failure keeps the console under target/full-system/logs/; on
    /// success frees the disk space.
    fn finish(self, name: &str, result: anyhow::Result<()>) -> anyhow::Result<()> {
        let Rig {
            dir, mut machine, ..
        } = self;
        machine.cut_power();
        match result {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            }
            Err(e) => {
                let logs = fs::target_dir()?.join("full-system").join("logs");
                std::fs::create_dir_all(&logs)?;
                let kept = logs.join(format!("{name}-serial.log"));
                let _ = std::fs::copy(&machine.serial_log, &kept);
                let console = machine.console();
                let tail: String = console
                    .chars()
                    .skip(console.chars().count().saturating_sub(4000))
                    .collect();
                eprintln!(
                    "--- end of the serial console ({}) ---\n{tail}",
                    kept.display()
                );
                let _ = std::fs::remove_file(&machine.disk);
                Err(e.context(format!(
                    "scenario {name}; serial console kept in {}",
                    kept.display()
                )))
            }
        }
    }
}

fn scenario(
    name: &str,
    releases: &[(&str, Behaviour)],
    body: impl FnOnce(&mut Rig) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut rig = Rig::new(name, releases, releases.len())?;
    let result = body(&mut rig);
    rig.finish(name, result)
}

/// Boot A; the agent starts installing 1.1.0 into B, hangs (stopped) and
/// is restarted by systemd's watchdog, finishes and arms U-Boot; U-Boot's
/// boot script boots B with its one try (and saves the spent try first);
/// the health check commits; a second reboot stays on B; `verify` agrees.
#[test]
fn uboot_update_commits_and_a_hung_agent_is_restarted() -> anyhow::Result<()> {
    scenario("uboot-update", &[("1.1.0", Behaviour::Healthy)], |rig| {
        let started = Instant::now();
        rig.machine.power_on()?;
        let first = rig.wait_event(UpdateStatus::Downloading, "1.1.0", UPDATE)?;
        eprintln!(
            "uboot update: downloading after {:?} ({first:?})",
            started.elapsed()
        );
        rig.machine.hang_agent_until_watchdog(BOOT, UPDATE)?;
        eprintln!("uboot update: watchdog fired after {:?}", started.elapsed());
        let committed = rig.wait_event(UpdateStatus::Committed, "1.1.0", UPDATE)?;
        let boot_to_committed = started.elapsed();
        eprintln!("uboot update: committed 1.1.0 {boot_to_committed:?} after power-on");
        ensure!(
            committed.booted_slot.as_deref() == Some("B"),
            "committed on {:?}",
            committed.booted_slot
        );
        ensure!(
            rig.machine.booted_slot(BOOT)? == "B",
            "not running slot B after the commit"
        );
        // U-Boot spent B's one try on the trial boot and saved that before
        // starting the kernel: the console shows it, in this order.
        let console = rig.machine.console();
        let trial = console
            .match_indices("OTA: booting slot B (")
            .map(|(at, _)| at)
            .find(|at| {
                console[*at..]
                    .lines()
                    .next()
                    .is_some_and(|l| l.trim_end().ends_with("B left 0)"))
            })
            .context("U-Boot's boot script never booted B on trial (B left 0)")?;
        ensure!(
            console[trial..]
                .find("OTA: environment saved")
                .is_some_and(|saved| console[trial..]
                    .find("Starting kernel")
                    .is_some_and(|kernel| saved < kernel)),
            "the spent try was not saved before the kernel started"
        );
        fs::wait_for(
            "the health check, boot-complete.target and the agent to be active",
            BOOT,
            || {
                let (_, units) = rig.machine.shell(
                    "systemctl is-active ota-health-check.service boot-complete.target ota-agent.service",
                    BOOT,
                )?;
                Ok(
                    (units.split_whitespace().collect::<Vec<_>>()
                        == ["active", "active", "active"])
                    .then_some(()),
                )
            },
        )?;
        // The agent's commit, read by libubootenv from the same partition.
        rig.ensure_env(&[
            ("BOOT_ORDER", "B A"),
            ("BOOT_B_LEFT", "3"),
            ("upgrade_available", "0"),
        ])?;

        rig.reboot()?;
        ensure!(
            rig.machine.booted_slot(BOOT)? == "B",
            "the second boot left slot B"
        );
        ensure!(
            rig.slot_release("B")?.as_deref() == Some("1.1.0"),
            "slot B does not hold 1.1.0"
        );
        // The second boot spent one of B's three and saved it.
        rig.ensure_env(&[("BOOT_ORDER", "B A"), ("BOOT_B_LEFT", "2")])?;
        let verdicts = rig.guest_verify()?;
        let b = verdicts
            .iter()
            .find(|(slot, _, _)| slot == "B")
            .context("verify reports no slot B")?;
        ensure!(
            b.1 == "verified" && b.2.as_deref() == Some(rig.sha_of("1.1.0").as_str()),
            "ota-agent verify on slot B: {b:?}, the test wrote sha256 {}",
            rig.sha_of("1.1.0")
        );
        ensure!(
            verdicts.iter().all(|(_, v, _)| v != "modified"),
            "a slot is modified: {verdicts:?}"
        );
        println!("full-system arm64-uboot: boot-to-committed {boot_to_committed:?}");
        Ok(())
    })
}

/// The shipped boot.cmd and the board's environment hooks on the real
/// U-Boot, without a kernel (a minute, not ten): the agent's U-Boot backend
/// arms B on the disk image; U-Boot's script reads that, boots B with its
/// one try and saves the spent try before `booti` (which fails: the slots
/// hold no kernel, so the script resets); the next boot finds B spent and
/// takes A. libubootenv's `fw_printenv` and the agent's backend then read
/// what U-Boot wrote.
#[test]
#[ignore = "in ./test --full-system; the CI subset runs board 3's update"]
fn uboot_script_spends_and_saves_tries_on_the_real_firmware() -> anyhow::Result<()> {
    use ota_agent::bootloader::uboot::UBootBootloader;
    use ota_agent::bootloader::uboot_env::{EnvStore, FwEnvConfig};
    use ota_agent::bootloader::Bootloader;
    use ota_agent::slot::SlotId;

    let _one = ONE_MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fs::run_dir("uboot-script")?;
    // A slot whose "kernel" is no Image: booti refuses it and boot.cmd resets.
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("boot"))?;
    std::fs::write(tree.join("boot/vmlinuz"), vec![0x5a; 64 * 1024])?;
    std::fs::write(tree.join("boot/initrd.img"), b"none")?;
    let slot = dir.join("slot.img");
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&slot)
        .arg("4M")
        .output()?;
    ensure!(
        made.status.success(),
        "mke2fs of the kernel-less slot failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let slot_mib = 8;
    let disk = dir.join("disk.img");
    fs::build_disk(BOARD, &slot, slot_mib, &disk)?;

    let env_offset = (BOARD.slot_a_offset_mib() + 2 * slot_mib + Arm64UBoot::DATA_MIB) << 20;
    let config = dir.join("fw_env.config");
    std::fs::write(
        &config,
        format!(
            "{d} {env_offset:#x} {ENV_COPY:#x}\n{d} {:#x} {ENV_COPY:#x}\n",
            env_offset + ENV_COPY,
            d = disk.display()
        ),
    )?;
    let store = EnvStore::new(FwEnvConfig::load(&config)?).with_lock_path(None);
    let mut agent = UBootBootloader::from_store(store, &config);
    ensure!(
        agent.primary()? == SlotId::A,
        "the factory environment boots A"
    );
    agent.set_try_once(SlotId::B)?;

    let mut machine = Machine::arm64_virt(&dir.join("m"), &disk)?;
    let result = (|| -> anyhow::Result<()> {
        machine.power_on()?;
        let trial = "OTA: booting slot B (A left 3, B left 0)";
        let fallback = "OTA: booting slot A (A left 2, B left 0)";
        fs::wait_for("U-Boot to try B, then fall back to A", BOOT, || {
            machine.check_running()?;
            let console = machine.console();
            Ok(console
                .find(trial)
                .is_some_and(|t| console[t..].contains(fallback))
                .then_some(()))
        })?;
        machine.cut_power();
        let console = machine.console();
        let t = console.find(trial).unwrap_or_default();
        let saved = console[t..]
            .find("OTA: environment saved")
            .unwrap_or(usize::MAX);
        let failed = console[t..]
            .find("OTA: slot B did not boot")
            .unwrap_or_default();
        ensure!(
            saved < failed,
            "the spent try must be saved before booti: {}",
            &console[t..]
        );
        Ok(())
    })();
    machine.cut_power();
    if let Err(e) = result {
        let console = machine.console();
        let tail: String = console
            .chars()
            .skip(console.chars().count().saturating_sub(3000))
            .collect();
        return Err(e.context(format!("U-Boot's console:\n{tail}")));
    }

    // What U-Boot wrote, as libubootenv and the agent read it. U-Boot went
    // on resetting until the cut: the environment holds the counters of the
    // last boot whose save the console confirmed, or of the one after it
    // when the cut caught that save in flight.
    let console = machine.console();
    let lines: Vec<&str> = console.lines().map(str::trim_end).collect();
    let counters = |l: &str| -> Option<(String, String)> {
        let rest = l.strip_prefix("OTA: booting slot ")?;
        let a = rest.split("A left ").nth(1)?.split(',').next()?;
        let b = rest.split("B left ").nth(1)?.split(')').next()?;
        Some((a.to_owned(), b.to_owned()))
    };
    let last_saved = lines
        .iter()
        .rposition(|l| l.starts_with("OTA: environment saved"))
        .context("U-Boot never confirmed a save")?;
    let confirmed = lines[..last_saved]
        .iter()
        .rev()
        .find_map(|l| counters(l))
        .context("no boot line before the last save")?;
    let in_flight = lines[last_saved..].iter().find_map(|l| counters(l));
    let out = Command::new("fw_printenv")
        .arg("-c")
        .arg(&config)
        .output()
        .context("running fw_printenv (libubootenv-tool)")?;
    ensure!(
        out.status.success(),
        "fw_printenv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let left = (
        printed.get("BOOT_A_LEFT").cloned().unwrap_or_default(),
        printed.get("BOOT_B_LEFT").cloned().unwrap_or_default(),
    );
    ensure!(
        left == confirmed || Some(&left) == in_flight.as_ref(),
        "fw_printenv reads A/B left {left:?}; the console last saved {confirmed:?} (then {in_flight:?}): {printed:?}"
    );
    ensure!(
        printed.get("BOOT_ORDER").map(String::as_str) == Some("B A"),
        "the script never changes BOOT_ORDER: {printed:?}"
    );
    let env = agent.env()?;
    for name in ["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT"] {
        ensure!(
            env.get_str(name) == printed.get(name).map(String::as_str),
            "the agent reads {name} {:?}, fw_printenv {:?}",
            env.get_str(name),
            printed.get(name)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// U-Boot's record that B failed: no tries left, A first.
fn ensure_b_marked_bad(rig: &Rig) -> anyhow::Result<()> {
    rig.ensure_env(&[("BOOT_ORDER", "A B"), ("BOOT_B_LEFT", "0")])
}

/// 1.1.0's health check fails on its trial boot: the agent marks B bad and
/// reboots, U-Boot's script boots A, the agent reports the rollback.
#[test]
#[ignore = "in ./test --full-system; the CI subset runs board 3's update"]
fn uboot_failing_health_check_rolls_back_to_a() -> anyhow::Result<()> {
    scenario(
        "uboot-health",
        &[("1.1.0", Behaviour::FailsHealthCheck)],
        |rig| {
            let started = Instant::now();
            rig.machine.power_on()?;
            let rolled = rig.wait_event(UpdateStatus::RolledBack, "1.1.0", UPDATE)?;
            eprintln!(
                "uboot health: rolled back {:?} after power-on ({:?})",
                started.elapsed(),
                rolled.reason
            );
            let reason = rolled.reason.clone().unwrap_or_default();
            ensure!(
                reason.contains("release self-test"),
                "the rollback should name the failed check: {rolled:?}"
            );
            ensure!(rig.machine.booted_slot(BOOT)? == "A", "not back on slot A");
            ensure!(
                rig.machine.console().contains("ota.slot=B"),
                "slot B never booted: the health check could not have run"
            );
            ensure_b_marked_bad(rig)?;
            ensure!(
                rig.slot_release("A")?.as_deref() == Some("1.0.0"),
                "slot A changed"
            );
            Ok(())
        },
    )
}

/// 1.1.0's init exits: the kernel panics and resets (`panic=5`).
#[test]
#[ignore = "in ./test --full-system; the CI subset runs board 3's update"]
fn uboot_release_whose_kernel_panics_rolls_back_to_a() -> anyhow::Result<()> {
    never_comes_up("uboot-panic", Behaviour::KernelPanics)
}

/// 1.1.0's init arms the i6300esb on virt's PCI bus and hangs: only the
/// watchdog resets the machine.
#[test]
#[ignore = "in ./test --full-system; the CI subset runs board 3's update"]
fn uboot_release_whose_init_hangs_is_reset_by_the_watchdog() -> anyhow::Result<()> {
    never_comes_up("uboot-watchdog", Behaviour::HangsWithWatchdogArmed)
}

/// 1.1.0 never comes up (a panic, or a hang the watchdog resets). The boot
/// script had saved B's spent try before starting it, so the next boot
/// finds B with none left and boots A; the agent reports the rollback.
fn never_comes_up(name: &str, behaviour: Behaviour) -> anyhow::Result<()> {
    scenario(name, &[("1.1.0", behaviour)], |rig| {
        let started = Instant::now();
        rig.machine.power_on()?;
        let rolled = rig.wait_event(UpdateStatus::RolledBack, "1.1.0", UPDATE)?;
        eprintln!(
            "{name}: rolled back {:?} after power-on ({:?})",
            started.elapsed(),
            rolled.reason
        );
        let console = rig.machine.console();
        let panic = console.find("Kernel panic");
        let reset = if behaviour == Behaviour::HangsWithWatchdogArmed {
            ensure!(
                panic.is_none(),
                "a panic, not the watchdog, reset the machine"
            );
            console.find(HANGING_INIT_ARMED)
        } else {
            panic
        };
        let Some(reset) = reset else {
            bail!("slot B never failed as {behaviour:?} should: no panic or armed watchdog on the console");
        };
        ensure!(
            console[reset..]
                .lines()
                .map(str::trim_end)
                .any(|l| l.starts_with("OTA: booting slot A (") && l.ends_with("B left 0)")),
            "after the reset U-Boot's script should have found B's try spent and booted A"
        );
        ensure!(
            rolled.reason.is_some(),
            "the rollback report gives no reason: {rolled:?}"
        );
        ensure!(rig.machine.booted_slot(BOOT)? == "A", "not back on slot A");
        ensure_b_marked_bad(rig)?;
        Ok(())
    })
}

/// The steps of an update a power cut is aimed at, in order (as board 1's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Download,
    WriteAndReadBack,
    BootloaderSwitch,
    TrialBoot,
    Commit,
}

const STEPS: [Step; 5] = [
    Step::Download,
    Step::WriteAndReadBack,
    Step::BootloaderSwitch,
    Step::TrialBoot,
    Step::Commit,
];

fn rank(status: UpdateStatus) -> u8 {
    match status {
        UpdateStatus::Downloading => 1,
        UpdateStatus::Installed => 2,
        UpdateStatus::Rebooting => 3,
        UpdateStatus::Committed | UpdateStatus::RolledBack => 9,
        UpdateStatus::Idle | UpdateStatus::Failed => 0,
    }
}

impl Step {
    /// How far the reports may have come for this step still to be ahead.
    fn last_rank(self) -> u8 {
        match self {
            Step::Download | Step::WriteAndReadBack => 1,
            Step::BootloaderSwitch => 2,
            Step::TrialBoot | Step::Commit => 3,
        }
    }

    /// The console line that opens this step. The trial boot opens when
    /// U-Boot's script starts B on trial, so a cut lands in the firmware,
    /// the kernel or systemd of that boot.
    fn opened_by(self) -> &'static str {
        match self {
            Step::Download | Step::WriteAndReadBack => "streaming image into the inactive slot",
            Step::BootloaderSwitch => "to=\"installed\"",
            Step::TrialBoot => "to=\"trying\"",
            Step::Commit => "running health checks",
        }
    }

    fn delay(self, rng: &mut rand::rngs::StdRng) -> Duration {
        Duration::from_millis(match self {
            Step::Download => rng.gen_range(0..6000),
            Step::WriteAndReadBack => rng.gen_range(6000..40_000),
            Step::BootloaderSwitch => rng.gen_range(0..1500),
            Step::TrialBoot => rng.gen_range(0..60_000),
            Step::Commit => rng.gen_range(0..3000),
        })
    }
}

fn marker_counts(machine: &Machine) -> [usize; 5] {
    let console = machine.console();
    STEPS.map(|step| console.matches(step.opened_by()).count())
}

/// QEMU killed at seeded random moments in each step of an update; after
/// every cut U-Boot must boot a slot holding a complete signed release, and
/// every update must settle (committed, or rolled back when the cut used up
/// the trial) before the next is published. `OTA_FULLSYS_CUTS` (default 5:
/// one per step; aarch64 TCG is slow, keep it small) and `OTA_FULLSYS_SEED`.
#[test]
#[ignore = "in ./test --full-system; the CI subset runs board 3's update"]
fn uboot_power_cuts_at_random_moments_leave_a_bootable_signed_slot() -> anyhow::Result<()> {
    let cuts: usize = std::env::var("OTA_FULLSYS_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("OTA_FULLSYS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("power cuts: {cuts} cuts, seed {seed} (OTA_FULLSYS_SEED={seed} repeats the moments)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cycles = cuts.div_ceil(STEPS.len()) * 2 + 1;
    let versions: Vec<String> = (1..=cycles).map(|minor| format!("1.{minor}.0")).collect();
    let releases: Vec<(&str, Behaviour)> = versions
        .iter()
        .map(|v| (v.as_str(), Behaviour::Healthy))
        .collect();
    let mut rig = Rig::new("uboot-power-cuts", &releases, 1)?;
    let result = power_cuts(&mut rig, &versions, cuts, seed, &mut rng);
    rig.finish("uboot-power-cuts", result)
}

fn power_cuts(
    rig: &mut Rig,
    versions: &[String],
    cuts: usize,
    seed: u64,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<()> {
    let mut survived = 0usize;
    let mut per_step = [0usize; 5];
    let mut cut_costs = Vec::new();
    let mut outcomes = Vec::new();
    let progress = |rig: &Rig, version: &str| -> anyhow::Result<u8> {
        Ok(rig
            .events()?
            .iter()
            .filter(|e| e.target_version.as_deref() == Some(version))
            .map(|e| rank(e.status))
            .max()
            .unwrap_or(0))
    };
    let mut since = marker_counts(&rig.machine);
    rig.machine.power_on()?;
    for version in versions {
        if survived >= cuts {
            break;
        }
        for (i, step) in STEPS.iter().copied().enumerate() {
            if survived >= cuts {
                break;
            }
            let marker = step.opened_by();
            let before = since[i];
            let open = fs::wait_for(&format!("{version} to reach {step:?}"), UPDATE, || {
                rig.machine.check_running()?;
                if rig.machine.console().matches(marker).count() > before {
                    return Ok(Some(true));
                }
                Ok((progress(rig, version)? > step.last_rank()).then_some(false))
            })?;
            if !open {
                eprintln!("  {version}: {step:?} passed before a cut could land");
                continue;
            }
            let delay = step.delay(rng);
            std::thread::sleep(delay);
            rig.machine.cut_power();
            since = marker_counts(&rig.machine);
            let t = Instant::now();
            survived += 1;
            per_step[i] += 1;
            eprintln!("power cut {survived}: {version} at {step:?} +{delay:?}");
            rig.machine.power_on()?;
            let slot = rig.machine.booted_slot(BOOT)?;
            let Some(held) = rig.slot_release(&slot)? else {
                bail!("after power cut {survived} ({step:?}) U-Boot booted slot {slot}, which holds no complete signed release");
            };
            cut_costs.push(t.elapsed());
            eprintln!(
                "  booted slot {slot} holding {held} ({:?} to a shell)",
                t.elapsed()
            );
        }
        let settled = fs::wait_for(&format!("{version} to settle"), UPDATE, || {
            rig.machine.check_running()?;
            Ok(rig.events()?.into_iter().find(|e| {
                e.target_version.as_deref() == Some(version.as_str())
                    && matches!(e.status, UpdateStatus::Committed | UpdateStatus::RolledBack)
            }))
        })?;
        let slot = rig.machine.booted_slot(BOOT)?;
        let held = rig.slot_release(&slot)?;
        if settled.status == UpdateStatus::Committed {
            ensure!(
                held.as_deref() == Some(version.as_str()),
                "{version} committed but slot {slot} holds {held:?}"
            );
        } else {
            ensure!(
                held.as_deref() != Some(version.as_str()),
                "{version} rolled back but slot {slot} runs it"
            );
        }
        eprintln!(
            "  {version} settled: {} on slot {slot} ({:?}); U-Boot environment {:?}",
            settled.status.as_str(),
            settled.reason,
            rig.uboot_env()?
        );
        outcomes.push(format!("{version}: {}", settled.status.as_str()));
        if survived < cuts {
            since = marker_counts(&rig.machine);
            rig.publish_next()?;
        }
    }
    ensure!(
        survived >= cuts,
        "only {survived} of {cuts} cuts landed (releases ran out)"
    );
    let verdicts = rig.guest_verify()?;
    ensure!(
        verdicts.iter().all(|(_, v, _)| v != "modified"),
        "a slot is modified: {verdicts:?}"
    );
    let mean = cut_costs.iter().sum::<Duration>() / cut_costs.len().max(1) as u32;
    println!(
        "full-system arm64-uboot: {survived} power cuts survived (seed {seed}): download {}, write/read-back {}, bootloader switch {}, trial boot {}, commit {}; outcomes {outcomes:?}; mean power-on to shell after a cut {mean:?}",
        per_step[0], per_step[1], per_step[2], per_step[3], per_step[4]
    );
    Ok(())
}
