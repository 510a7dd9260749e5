//! Full-system tests: real firmware, bootloader, kernel and systemd in QEMU
//! (docs/FULL-SYSTEM.md). This module builds a reference board's disk with
//! `integration-tests/full-system/build-*.sh`, runs it, and gives the test
//! two windows into it: the serial console (a log file per run) and a root
//! shell on the second serial port (a virtio console on board 3).

use anyhow::{bail, Context};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A reference board: how its disk is built and how its agent is configured.
/// Both x86 boards run the same slot images on the same QEMU machine; only
/// the firmware's next step, the bootloader, differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    /// Board 1: OVMF + GRUB with the shipped grub.cfg and grubenv.
    X86Grub,
    /// Board 2: OVMF + systemd-boot with the shipped loader.conf and BLS
    /// entries with boot counting.
    X86SystemdBoot,
}

impl Board {
    /// The board's name in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Board::X86Grub => "x86-grub",
            Board::X86SystemdBoot => "x86-sdboot",
        }
    }

    /// The hardware id the board's releases are signed for.
    pub fn hardware_id(self) -> &'static str {
        match self {
            Board::X86Grub => "qemu-x86-grub",
            Board::X86SystemdBoot => "qemu-x86-sdboot",
        }
    }

    /// The ESP's size: the first partition, after 1 MiB of GPT; the slots follow it.
    pub fn esp_mib(self) -> u64 {
        match self {
            Board::X86Grub => 40,
            // Each slot's kernel and initramfs live on it.
            Board::X86SystemdBoot => 64,
        }
    }

    fn builder(self) -> PathBuf {
        builder_script(match self {
            Board::X86Grub => "build-x86-grub.sh",
            Board::X86SystemdBoot => "build-x86-sdboot.sh",
        })
    }

    /// The `[boot]` table of the agent's configuration.
    fn boot_toml(self) -> &'static str {
        match self {
            Board::X86Grub => "backend = \"grub\"\ngrubenv = \"/boot/efi/grub/grubenv\"\n",
            Board::X86SystemdBoot => {
                "backend = \"systemd-boot\"\nesp_entries_dir = \"/boot/efi/loader/entries\"\nentry_a = \"ota-a\"\nentry_b = \"ota-b\"\n"
            }
        }
    }
}

/// What the harness needs to know of a reference board to build its slots
/// and disk. The x86 boards ([`Board`]) share one QEMU machine; board 3
/// ([`Arm64UBoot`]) is another architecture, kept a type of its own so that
/// code matching on [`Board`] stays about the x86 boards.
pub trait ReferenceBoard: Copy + std::fmt::Debug {
    /// The board's name in logs and reports.
    fn board_name(self) -> &'static str;
    /// The hardware id the board's releases are signed for.
    fn hardware_id(self) -> &'static str;
    /// Where slot A's partition starts, in MiB (the slots are adjacent).
    fn slot_a_offset_mib(self) -> u64;
    /// The board's build script under integration-tests/full-system/.
    fn builder(self) -> PathBuf;
    /// The `[boot]` table of the agent's configuration.
    fn boot_toml(self) -> &'static str;
    /// Slot A's and slot B's block devices in the guest.
    fn slot_devices(self) -> (&'static str, &'static str);
    /// The ota-agent binary built for the board's architecture.
    fn agent_binary(self) -> anyhow::Result<PathBuf>;
}

fn builder_script(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("full-system")
        .join(script)
}

impl ReferenceBoard for Board {
    fn board_name(self) -> &'static str {
        self.name()
    }
    fn hardware_id(self) -> &'static str {
        Board::hardware_id(self)
    }
    fn slot_a_offset_mib(self) -> u64 {
        1 + self.esp_mib()
    }
    fn builder(self) -> PathBuf {
        Board::builder(self)
    }
    fn boot_toml(self) -> &'static str {
        Board::boot_toml(self)
    }
    fn slot_devices(self) -> (&'static str, &'static str) {
        ("/dev/sda2", "/dev/sda3")
    }
    fn agent_binary(self) -> anyhow::Result<PathBuf> {
        crate::bins::path("ota-agent")
    }
}

/// Board 3: aarch64 QEMU `virt`, Debian's U-Boot (qemu_arm64) running the
/// shipped boot/uboot/boot.cmd, the U-Boot environment on a partition of its
/// own (docs/FULL-SYSTEM.md, board 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm64UBoot;

/// The target the aarch64 agent is cross-built for (.cargo/config.toml).
pub const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";

impl Arm64UBoot {
    /// GPT, then the boot partition holding boot.scr.
    pub const BOOT_MIB: u64 = 16;
    /// The agent's data partition after the slots, then the environment's.
    pub const DATA_MIB: u64 = 64;
}

impl ReferenceBoard for Arm64UBoot {
    fn board_name(self) -> &'static str {
        "arm64-uboot"
    }
    fn hardware_id(self) -> &'static str {
        "qemu-arm64-uboot"
    }
    fn slot_a_offset_mib(self) -> u64 {
        1 + Self::BOOT_MIB
    }
    fn builder(self) -> PathBuf {
        builder_script("build-arm64-uboot.sh")
    }
    fn boot_toml(self) -> &'static str {
        "backend = \"uboot\"\nfw_env_config = \"/etc/fw_env.config\"\n"
    }
    fn slot_devices(self) -> (&'static str, &'static str) {
        ("/dev/vda2", "/dev/vda3")
    }
    /// target/aarch64-unknown-linux-gnu/debug/ota-agent, beside the host's
    /// target/debug; `./test --full-system` builds it.
    fn agent_binary(self) -> anyhow::Result<PathBuf> {
        let host = crate::bins::path("ota-agent")?;
        let profile = host
            .parent()
            .and_then(Path::file_name)
            .context("ota-agent is not in a profile directory")?
            .to_owned();
        let agent = target_dir()?
            .join(ARM64_TARGET)
            .join(profile)
            .join("ota-agent");
        if !agent.is_file() {
            bail!(
                "{} is missing: cargo build -p ota-agent --target {ARM64_TARGET}",
                agent.display()
            );
        }
        Ok(agent)
    }
}

/// The workspace's `target/` directory (where the running test binary lives).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let agent = crate::bins::path("ota-agent")?;
    // target/debug/ota-agent
    agent
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("ota-agent has no target directory")
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cached Debian tree every slot of `board` starts from: built once
/// (mmdebstrap) and reused while its recipe is unchanged.
pub fn rootfs<B: ReferenceBoard>(board: B) -> anyhow::Result<PathBuf> {
    // By build script and board (one script, one cached tree for boards 1
    // and 2); held while building, so concurrent tests wait for one build
    // and the second board finds the first one's finished tree.
    type Trees = Mutex<HashMap<String, Result<PathBuf, String>>>;
    static TREES: OnceLock<Trees> = OnceLock::new();
    let mut trees = TREES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    trees
        .entry(board.board_name().to_owned())
        .or_insert_with(|| {
            let cache = target_dir().map_err(|e| e.to_string())?.join("full-system");
            let out = run(Command::new(board.builder()).arg("rootfs").arg(&cache))
                .map_err(|e| format!("building the root filesystem: {e:#}"))?;
            Ok(PathBuf::from(out.trim()))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// What a release does when it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Boots and passes its health check.
    Healthy,
    /// Boots, but its health check fails.
    FailsHealthCheck,
    /// Its init exits at once: the kernel panics (and resets, `panic=5`).
    KernelPanics,
    /// Its init arms the hardware watchdog (i6300esb, 10 s) and hangs:
    /// only the watchdog can reset the machine.
    HangsWithWatchdogArmed,
}

/// Everything a release's slot image carries that differs per run: the
/// agent's configuration (the server's port is only known at run time) and
/// the trusted root of this run's repository.
#[derive(Debug, Clone)]
pub struct SlotSpec<'a, B: ReferenceBoard = Board> {
    pub board: B,
    pub version: &'a str,
    pub behaviour: Behaviour,
    pub server_port: u16,
    pub device_id: &'a str,
    pub trusted_root: &'a Path,
    /// How often the agent polls (short: each poll is a test's wait).
    pub poll_interval_secs: u64,
}

fn agent_toml<B: ReferenceBoard>(spec: &SlotSpec<B>) -> String {
    let check = match spec.behaviour {
        Behaviour::FailsHealthCheck => {
            r#"["/bin/sh", "-c", "echo this release is broken >&2; exit 1"]"#
        }
        _ => r#"["/usr/bin/test", "-x", "/usr/bin/ota-agent"]"#,
    };
    format!(
        r#"# The reference board's agent configuration (release {version}).
server_url = "http://10.0.2.2:{port}"
trusted_root = "/etc/ota/root.json"
state_dir = "/var/lib/ota-agent"
hardware_id = "{hw}"
device_id = "{device}"
initial_version = "1.0.0"
poll_interval_secs = {poll}
reboot_command = ["systemctl", "reboot"]

[slots]
a = "{slot_a}"
b = "{slot_b}"

[boot]
{boot}
[download]
checkpoint_bytes = 8388608
checkpoint_interval_ms = 2000

# Longer than systemd's WatchdogSec plus RestartSec (120 s + 30 s shipped,
# 30 s + 2 s in the test boards' drop-in): a hung agent is systemd's to
# restart; the hardware resets a hung system.
[watchdog]
device = "/dev/watchdog"
timeout_secs = 240

[[health_check]]
name = "release self-test"
command = {check}
timeout_secs = 60
"#,
        version = spec.version,
        port = spec.server_port,
        hw = spec.board.hardware_id(),
        boot = spec.board.boot_toml(),
        device = spec.device_id,
        poll = spec.poll_interval_secs,
        slot_a = spec.board.slot_devices().0,
        slot_b = spec.board.slot_devices().1,
    )
}

/// The init of a release that hangs with the hardware watchdog armed, as a
/// release whose init deadlocks after its kernel started the watchdog
/// would. The reset that follows can only come from the watchdog: nothing
/// panics and nothing else runs. Opening the device starts its timer
/// (initramfs-tools has moved /dev, /proc and /sys onto the root by now).
pub const HANGING_INIT: &str = "#!/bin/sh
modprobe i6300esb heartbeat=10
for i in 1 2 3 4 5; do [ -c /dev/watchdog ] && break; sleep 1; done
if [ ! -c /dev/watchdog ]; then echo 'release init: no /dev/watchdog'; exit 1; fi
exec 3>/dev/watchdog
echo 'release init: watchdog armed, hanging'
while :; do sleep 3600; done
";

/// What [`HANGING_INIT`] prints once the watchdog is armed.
pub const HANGING_INIT_ARMED: &str = "release init: watchdog armed, hanging";

/// Builds the slot image of one release into `out`.
pub fn build_slot<B: ReferenceBoard>(
    spec: &SlotSpec<B>,
    work: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let overlay = work.join(format!("overlay-{}", spec.version));
    let _ = std::fs::remove_dir_all(&overlay);
    let etc = overlay.join("etc/ota");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(etc.join("agent.toml"), agent_toml(spec))?;
    std::fs::copy(spec.trusted_root, etc.join("root.json"))?;
    std::fs::write(
        overlay.join("etc/ota-release"),
        format!("{}\n", spec.version),
    )?;
    // usr/sbin/init (sbin is a link to it) replaced: a release that never
    // comes up.
    let broken_init = match spec.behaviour {
        Behaviour::KernelPanics => Some("#!/bin/sh\necho 'release init: exiting'\nexit 1\n"),
        Behaviour::HangsWithWatchdogArmed => Some(HANGING_INIT),
        Behaviour::Healthy | Behaviour::FailsHealthCheck => None,
    };
    if let Some(script) = broken_init {
        let init = overlay.join("usr/sbin/init");
        std::fs::create_dir_all(init.parent().context("init has a parent")?)?;
        std::fs::write(&init, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    }
    let rootfs = rootfs(spec.board)?;
    let agent = spec.board.agent_binary()?;
    run(Command::new(spec.board.builder())
        .arg("slot")
        .arg(&rootfs)
        .arg(&agent)
        .arg(&overlay)
        .arg(out))?;
    std::fs::remove_dir_all(&overlay)?;
    Ok(())
}

/// Builds `board`'s factory disk with `slot_a` in slot A and slots of `slot_mib`.
pub fn build_disk<B: ReferenceBoard>(
    board: B,
    slot_a: &Path,
    slot_mib: u64,
    out: &Path,
) -> anyhow::Result<()> {
    run(Command::new(board.builder())
        .arg("disk")
        .arg(slot_a)
        .arg(slot_mib.to_string())
        .arg(out))?;
    Ok(())
}

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// KVM when it really runs a guest here (an existing /dev/kvm may still fail
/// under nested virtualisation), TCG otherwise. Decided once per process by
/// booting the firmware alone for a few seconds.
pub fn accel() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| {
        if let Ok(forced) = std::env::var("OTA_FULLSYS_ACCEL") {
            return if forced == "kvm" {
                Accel::Kvm
            } else {
                Accel::Tcg
            };
        }
        if probe_kvm().unwrap_or(false) {
            Accel::Kvm
        } else {
            eprintln!("full-system: KVM is not usable here, running the guests under TCG");
            Accel::Tcg
        }
    })
}

fn probe_kvm() -> anyhow::Result<bool> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let dir = tempfile::tempdir()?;
    let vars = dir.path().join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars)?;
    let log = dir.path().join("serial.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-machine", "q35", "-m", "256", "-display", "none",
        ])
        .args(["-nodefaults", "-no-user-config", "-net", "none"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // The firmware prints its boot manager lines within a second or two under KVM.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut works = false;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::fs::read(&log).is_ok_and(|b| b.windows(6).any(|w| w == b"BdsDxe")) {
            works = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(works)
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// One reference board: its disk, firmware variables and the QEMU process
/// running it (none between a power cut and the next power-on).
#[derive(Debug)]
pub struct Machine {
    pub dir: PathBuf,
    pub disk: PathBuf,
    kind: MachineKind,
    /// OVMF's variables (x86 boards only).
    vars: PathBuf,
    /// The serial console of every power-on, appended.
    pub serial_log: PathBuf,
    shell_socket: PathBuf,
    child: Option<Child>,
    pub power_ons: u32,
}

/// The QEMU machine a board runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MachineKind {
    /// q35 with OVMF, the disk on AHCI (boards 1 and 2).
    X86Q35,
    /// aarch64 `virt` with Debian's U-Boot, the disk on virtio (board 3).
    Arm64Virt,
}

/// Debian's U-Boot for QEMU's aarch64 `virt` (u-boot-qemu).
pub const UBOOT_QEMU_ARM64: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

impl Machine {
    /// A machine in `dir` (which must be short enough for a unix socket path)
    /// booting `disk`, with fresh firmware variables: an x86 board's q35.
    pub fn new(dir: &Path, disk: &Path) -> anyhow::Result<Machine> {
        std::fs::create_dir_all(dir)?;
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).with_context(|| format!("copying {OVMF_VARS}"))?;
        Machine::with_kind(MachineKind::X86Q35, dir, disk, vars)
    }

    /// Board 3's aarch64 `virt` machine in `dir` booting `disk` through
    /// U-Boot. Always TCG: an x86 host's KVM cannot run aarch64 guests.
    pub fn arm64_virt(dir: &Path, disk: &Path) -> anyhow::Result<Machine> {
        std::fs::create_dir_all(dir)?;
        if !Path::new(UBOOT_QEMU_ARM64).is_file() {
            bail!("{UBOOT_QEMU_ARM64} is missing: apt-get install u-boot-qemu");
        }
        Machine::with_kind(MachineKind::Arm64Virt, dir, disk, PathBuf::new())
    }

    fn with_kind(
        kind: MachineKind,
        dir: &Path,
        disk: &Path,
        vars: PathBuf,
    ) -> anyhow::Result<Machine> {
        Ok(Machine {
            dir: dir.to_path_buf(),
            disk: disk.to_path_buf(),
            kind,
            vars,
            serial_log: dir.join("serial.log"),
            shell_socket: dir.join("shell.sock"),
            child: None,
            power_ons: 0,
        })
    }

    /// Powers the machine on (QEMU starts; the firmware boots the disk).
    pub fn power_on(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("machine is already running");
        }
        let _ = std::fs::remove_file(&self.shell_socket);
        self.power_ons += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.serial_log)?;
        writeln!(log, "\n===== power-on {} =====", self.power_ons)?;
        drop(log);
        let mut command = match self.kind {
            MachineKind::X86Q35 => self.x86_command()?,
            MachineKind::Arm64Virt => self.arm64_command()?,
        };
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {:?}", command.get_program()))?,
        );
        Ok(())
    }

    /// Board 3: `virt` with a Cortex-A57, Debian's U-Boot as the firmware,
    /// the disk, network and i6300esb watchdog on PCI; the console on the
    /// one UART, the test's shell on a virtio console (/dev/hvc0).
    fn arm64_command(&self) -> anyhow::Result<Command> {
        let mut command = Command::new("qemu-system-aarch64");
        command
            .args(["-accel", "tcg", "-machine", "virt", "-cpu", "cortex-a57"])
            .args(["-m", "768", "-smp", "1"])
            .args(["-display", "none", "-nodefaults", "-no-user-config"])
            .args(["-bios", UBOOT_QEMU_ARM64])
            .arg("-drive")
            .arg(format!(
                "if=none,id=disk,format=raw,file={}",
                self.disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=disk"])
            .args([
                "-netdev",
                "user,id=net0",
                "-device",
                "virtio-net-pci,netdev=net0",
            ])
            .args(["-device", "i6300esb", "-watchdog-action", "reset"])
            .arg("-chardev")
            .arg(format!(
                "file,id=console,path={},append=on",
                self.serial_log.display()
            ))
            .args(["-serial", "chardev:console"])
            .args(["-device", "virtio-serial-pci"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=shell,path={},server=on,wait=off",
                self.shell_socket.display()
            ))
            .args(["-device", "virtconsole,chardev=shell"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("qemu.stderr"))?);
        Ok(command)
    }

    fn x86_command(&self) -> anyhow::Result<Command> {
        let accel = match accel() {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        };
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", accel, "-machine", "q35", "-m", "768", "-smp", "1"])
            .args(["-display", "none", "-nodefaults", "-no-user-config"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", self.vars.display()))
            // AHCI: the disk is /dev/sda, as the boards' kernel command lines expect.
            .arg("-drive")
            .arg(format!(
                "if=none,id=disk,format=raw,file={}",
                self.disk.display()
            ))
            .args(["-device", "ide-hd,drive=disk,bus=ide.0"])
            // User-mode networking: the host's loopback is 10.0.2.2 to the guest.
            .args([
                "-netdev",
                "user,id=net0",
                "-device",
                "virtio-net-pci,netdev=net0",
            ])
            .args(["-device", "i6300esb", "-watchdog-action", "reset"])
            .arg("-chardev")
            .arg(format!(
                "file,id=console,path={},append=on",
                self.serial_log.display()
            ))
            .args(["-serial", "chardev:console"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=shell,path={},server=on,wait=off",
                self.shell_socket.display()
            ))
            .args(["-serial", "chardev:shell"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("qemu.stderr"))?);
        Ok(command)
    }

    /// The power cut: SIGKILL to QEMU, no shutdown of any kind.
    pub fn cut_power(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Fails when QEMU has exited by itself (it never should: a reset reboots).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.as_mut().map(Child::try_wait) {
            None => bail!("machine is powered off"),
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => {
                let stderr =
                    std::fs::read_to_string(self.dir.join("qemu.stderr")).unwrap_or_default();
                bail!("qemu exited ({status}): {stderr}")
            }
            Some(Err(e)) => bail!("qemu: {e}"),
        }
    }

    /// A hung agent: stops `ota-agent.service`'s process (SIGSTOP) and
    /// waits, up to `timeout`, for systemd's `WatchdogSec` to kill it;
    /// `Restart=` then brings it back and it resumes from its checkpoint.
    /// `shell_timeout` bounds the wait for the guest's shell.
    pub fn hang_agent_until_watchdog(
        &mut self,
        shell_timeout: Duration,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.shell(
            "kill -STOP $(systemctl show -P MainPID ota-agent.service)",
            shell_timeout,
        )?;
        wait_for(
            "systemd's watchdog to kill the stopped agent",
            timeout,
            || {
                self.check_running()?;
                Ok(self
                    .console()
                    .contains("ota-agent.service: Watchdog timeout")
                    .then_some(()))
            },
        )
    }

    /// The serial console so far, without terminal colour codes (the
    /// agent's log lines carry them), so its words can be searched.
    pub fn console(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&self.serial_log).unwrap_or_default(),
        ))
    }

    /// Runs `command` in the guest's root shell (ttyS1) and returns its
    /// exit status and output. Retries while the guest has no shell yet
    /// (booting), up to `timeout`. Use idempotent commands: a command sent
    /// while the shell was starting may run late, and then run again.
    pub fn shell(&mut self, command: &str, timeout: Duration) -> anyhow::Result<(i32, String)> {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        while Instant::now() < deadline {
            self.check_running()?;
            match self.shell_once(command, Duration::from_secs(20).min(timeout), deadline) {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bail!(
            "no answer from the guest's shell to {command:?} within {timeout:?} (last error: {last_err:?}); console: {}",
            self.serial_log.display()
        )
    }

    /// One try: `wait` for the shell to start the command, then (a long
    /// command such as `ota-agent verify` under TCG) until `until` for it
    /// to finish; sending it again meanwhile would only queue a second run.
    fn shell_once(
        &self,
        command: &str,
        wait: Duration,
        until: Instant,
    ) -> anyhow::Result<Option<(i32, String)>> {
        let mut stream = UnixStream::connect(&self.shell_socket)?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        // The markers are split by quotes so the tty's echo of the command
        // line never looks like the command's output; the command has lines
        // of its own, so it may end in `&`; no prompts between those lines.
        let line =
            format!("\nstty -echo; PS1=''; PS2=''; echo '@@BE''GIN@@'\n{command}\necho \"@@E\"\"ND $?@@\"\n");
        stream.write_all(line.as_bytes())?;
        let mut deadline = Instant::now() + wait;
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some(answer) = parse_shell_answer(&text) {
                return Ok(Some(answer));
            }
            if text.contains("@@BEGIN@@") {
                deadline = until;
            }
        }
        Ok(None)
    }

    /// The slot the running kernel was booted from (`ota.slot=` on its
    /// command line), asked through the shell.
    pub fn booted_slot(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let (_, out) = self.shell("cat /proc/cmdline", timeout)?;
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("ota.slot="))
            .map(str::to_owned)
            .with_context(|| format!("no ota.slot= in the guest's command line: {out:?}"))
    }

    /// The guest's boot id, to tell one boot from the next.
    pub fn boot_id(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let (_, out) = self.shell("cat /proc/sys/kernel/random/boot_id", timeout)?;
        Ok(out.trim().to_owned())
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.cut_power();
    }
}

/// `text` without CSI escape sequences (`ESC [ ... final byte`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The status and output between the markers, once both have arrived.
fn parse_shell_answer(text: &str) -> Option<(i32, String)> {
    let start = text.rfind("@@BEGIN@@")? + "@@BEGIN@@".len();
    let rest = &text[start..];
    let end = rest.find("@@END ")?;
    let tail = &rest[end + "@@END ".len()..];
    let code_end = tail.find("@@")?;
    let code = tail[..code_end].trim().parse().ok()?;
    let output = rest[..end].replace('\r', "");
    Some((code, output.trim_start_matches('\n').to_owned()))
}

/// Where a run keeps its files (and, on failure, the serial logs for CI).
pub fn run_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = target_dir()?.join("full-system").join("runs").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Polls `check` every second until it gives a value or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_shell_answer, strip_ansi};

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[3mto\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"installed\""),
            "to=\"installed\""
        );
    }

    #[test]
    fn shell_answer_is_what_lies_between_the_markers() {
        let text = "# stty -echo; echo '@@BE''GIN@@'; x\r\n@@BEGIN@@\r\nhello\r\n@@END 3@@\r\n# ";
        assert_eq!(parse_shell_answer(text), Some((3, "hello\n".to_owned())));
        assert_eq!(parse_shell_answer("@@BEGIN@@\nhalf"), None);
    }
}
