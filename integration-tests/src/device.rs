//! A simulated device: two file-backed slots, a bootloader (the simulated
//! one, `ota_agent::bootloader::sim`, a U-Boot or GRUB environment, systemd-boot
//! entries or the example custom script's state, with the firmware's logic in
//! [`crate::firmware`]), a kernel command line
//! file and a boot id file, and the real `ota-agent` binary. "Rebooting" kills the agent (as a
//! power cut or `systemctl reboot` would), lets the simulated firmware pick a
//! slot, and starts the agent again in it.

use crate::firmware::{Backend, Firmware};
use anyhow::{bail, Context};
use ota_agent::slot::SlotId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SimDevice {
    pub id: String,
    pub hardware_id: String,
    pub dir: PathBuf,
    /// The bootloader it was provisioned with.
    pub backend: Backend,
}

/// How a run of the agent armed with a crash point ended
/// (see [`SimDevice::run_agent_with_crash_point`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashRunEnd {
    /// The agent aborted (SIGABRT) and its log names the point.
    Crashed,
    /// It asked for a reboot and did not crash within the grace period; the harness cut its power.
    RebootRequested,
    /// It exited on its own (the point was not on its path in this boot).
    Exited(i32),
}

/// How one run of the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The agent finished its poll and exited with this code.
    Exited(i32),
    /// The agent asked for a reboot; the harness cut its power.
    RebootRequested,
    /// The harness cut its power on purpose (see [`SimDevice::run_agent_until`]).
    PowerCut,
}

/// One boot of the device: the slot the firmware chose and how the agent's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub slot: SlotId,
    pub release: Option<String>,
    pub end: RunEnd,
}

impl SimDevice {
    /// Builds a device in `dir` whose slot A holds `factory_image` (version
    /// `factory_version`) and whose slot B is empty, trusting `root`.
    pub fn provision(
        dir: &Path,
        id: &str,
        hardware_id: &str,
        server_url: &str,
        root: &Path,
        factory_image: &Path,
        factory_version: &str,
    ) -> anyhow::Result<SimDevice> {
        Self::provision_with_backend(
            dir,
            id,
            hardware_id,
            server_url,
            root,
            factory_image,
            factory_version,
            Backend::Sim,
        )
    }

    /// [`SimDevice::provision`] with the bootloader `backend` (its factory
    /// environment created, and the matching `[boot]` configuration).
    #[allow(clippy::too_many_arguments)]
    pub fn provision_with_backend(
        dir: &Path,
        id: &str,
        hardware_id: &str,
        server_url: &str,
        root: &Path,
        factory_image: &Path,
        factory_version: &str,
        backend: Backend,
    ) -> anyhow::Result<SimDevice> {
        std::fs::create_dir_all(dir.join("state"))?;
        std::fs::copy(factory_image, dir.join("slot-a.img")).context("writing slot A")?;
        std::fs::write(dir.join("slot-b.img"), b"")?;
        std::fs::copy(root, dir.join("root.json")).context("copying the trusted root")?;
        let device = SimDevice {
            id: id.to_owned(),
            hardware_id: hardware_id.to_owned(),
            dir: dir.to_path_buf(),
            backend,
        };
        device.write_config(server_url, factory_version)?;
        Ok(device)
    }

    fn firmware(&self) -> Firmware {
        Firmware::new(self.backend, &self.dir)
    }

    fn write_config(&self, server_url: &str, factory_version: &str) -> anyhow::Result<()> {
        let d = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
        let boot_keys = self.firmware().provision()?;
        let config = format!(
            r#"# Simulated device {id}
server_url = "{server_url}"
trusted_root = "{root}"
state_dir = "{state}"
hardware_id = "{hw}"
device_id = "{id}"
initial_version = "{factory_version}"
poll_interval_secs = 1
poll_jitter_secs = 0
reboot_command = ["touch", "{reboot_flag}"]
reboot_timeout_secs = 60

[slots]
a = "{slot_a}"
b = "{slot_b}"

[boot]
{boot_keys}cmdline_path = "{cmdline}"
boot_id_path = "{boot_id}"

[[health_check]]
name = "app"
command = ["sh", "-c", "head -n 2 \"$OTA_SLOT_PATH\" | grep -qx health=ok"]
timeout_secs = 10
"#,
            id = self.id,
            hw = self.hardware_id,
            root = d("root.json"),
            state = d("state"),
            reboot_flag = d("reboot-requested"),
            slot_a = d("slot-a.img"),
            slot_b = d("slot-b.img"),
            cmdline = d("cmdline"),
            boot_id = d("boot_id"),
        );
        std::fs::write(self.config_path(), config)?;
        Ok(())
    }

    /// Puts the device in staged-rollout groups (`rollout_groups`, a
    /// top-level key, so it goes right after `device_id`).
    pub fn set_rollout_groups(&self, groups: &[&str]) -> anyhow::Result<()> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path)?;
        let line = format!("device_id = \"{}\"\n", self.id);
        anyhow::ensure!(
            text.contains(&line),
            "no device_id line in {}",
            path.display()
        );
        let list = groups
            .iter()
            .map(|g| format!("{g:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = text.replacen(&line, &format!("{line}rollout_groups = [{list}]\n"), 1);
        std::fs::write(&path, text)?;
        Ok(())
    }

    /// Appends TOML (e.g. a `[report]` table) to the agent's configuration.
    pub fn append_config(&self, toml: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.config_path())?;
        writeln!(file, "\n{toml}")?;
        Ok(())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    pub fn slot_path(&self, slot: SlotId) -> PathBuf {
        self.dir.join(match slot {
            SlotId::A => "slot-a.img",
            SlotId::B => "slot-b.img",
        })
    }

    /// Power-on: the simulated firmware picks a slot (consuming a try), and
    /// the kernel command line and boot id say so to the agent.
    pub fn power_on(&self) -> anyhow::Result<SlotId> {
        let slot = self.firmware().boot()?;
        std::fs::write(
            self.dir.join("cmdline"),
            format!("console=ttyS0 root=/dev/vda ota.slot={slot} quiet\n"),
        )?;
        let boot_id = format!("{:032x}", rand::random::<u128>());
        std::fs::write(self.dir.join("boot_id"), boot_id)?;
        let _ = std::fs::remove_file(self.dir.join("reboot-requested"));
        Ok(slot)
    }

    /// The slot the device is running now.
    pub fn booted_slot(&self) -> anyhow::Result<SlotId> {
        let cmdline = std::fs::read_to_string(self.dir.join("cmdline"))?;
        if cmdline.contains("ota.slot=B") {
            Ok(SlotId::B)
        } else {
            Ok(SlotId::A)
        }
    }

    /// The release written in the booted slot's image.
    pub fn running_release(&self) -> anyhow::Result<Option<String>> {
        Ok(crate::image::release_in(
            &self.slot_path(self.booted_slot()?),
        ))
    }

    fn spawn_agent(&self) -> anyhow::Result<Child> {
        self.spawn_agent_with_env(&[])
    }

    fn spawn_agent_with_env(&self, env: &[(&str, &str)]) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        Command::new(crate::bins::path("ota-agent")?)
            .arg("--config")
            .arg(self.config_path())
            .arg("run")
            .arg("--once")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting ota-agent")
    }

    /// Runs the agent once (resume after boot, then one poll) and waits for it
    /// to exit or to ask for a reboot. `cut_power_when` is checked every
    /// millisecond; when it returns true the agent is killed with SIGKILL.
    pub fn run_agent_until(
        &self,
        timeout: Duration,
        mut cut_power_when: impl FnMut(&SimDevice) -> bool,
    ) -> anyhow::Result<RunEnd> {
        let mut child = self.spawn_agent()?;
        let flag = self.dir.join("reboot-requested");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(RunEnd::Exited(status.code().unwrap_or(-1)));
            }
            let end = if flag.exists() {
                Some(RunEnd::RebootRequested)
            } else if cut_power_when(self) {
                Some(RunEnd::PowerCut)
            } else {
                None
            };
            if let Some(end) = end {
                // A reboot is a power cut as far as the agent is concerned.
                let _ = child.kill();
                let _ = child.wait();
                return Ok(end);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("device {}: agent still running after {timeout:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Boots and runs the agent until a run ends without a reboot, or
    /// `max_boots` boots have happened. Returns every boot.
    pub fn run_until_settled(&self, max_boots: usize) -> anyhow::Result<Vec<Boot>> {
        let mut boots = Vec::new();
        for _ in 0..max_boots {
            let slot = self.power_on()?;
            let release = crate::image::release_in(&self.slot_path(slot));
            let end = self.run_agent_until(Duration::from_secs(120), |_| false)?;
            boots.push(Boot { slot, release, end });
            if let RunEnd::Exited(code) = end {
                if code != 0 {
                    bail!(
                        "device {}: agent exited with {code}; log:\n{}",
                        self.id,
                        self.log_tail()
                    );
                }
                return Ok(boots);
            }
        }
        bail!("device {} did not settle within {max_boots} boots", self.id)
    }

    /// Runs the agent once with `OTA_AGENT_CRASH_AT=point` until it aborts
    /// there, exits, or asks for a reboot. After a reboot request the agent
    /// gets `grace` to reach a point that lies after the reboot command
    /// (a real system takes a moment to go down, too). A crash counts only
    /// if the process died of SIGABRT and its log (this run's part) names `point`.
    pub fn run_agent_with_crash_point(
        &self,
        point: &str,
        grace: Duration,
        timeout: Duration,
    ) -> anyhow::Result<CrashRunEnd> {
        use std::os::unix::process::ExitStatusExt;
        let log_path = self.dir.join("agent.log");
        let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let mut child = self.spawn_agent_with_env(&[(ota_agent::crashpoint::ENV_VAR, point)])?;
        let flag = self.dir.join("reboot-requested");
        let deadline = Instant::now() + timeout;
        let mut reboot_deadline: Option<Instant> = None;
        loop {
            if let Some(status) = child.try_wait()? {
                if status.signal() == Some(nix::libc::SIGABRT) {
                    let log = std::fs::read(&log_path).unwrap_or_default();
                    let this_run =
                        String::from_utf8_lossy(log.get(log_start as usize..).unwrap_or_default());
                    let marker = ota_agent::crashpoint::marker(point);
                    if !this_run.lines().any(|l| l.contains(&marker)) {
                        bail!(
                            "device {}: agent aborted but its log does not say {marker:?}:\n{}",
                            self.id,
                            self.log_tail()
                        );
                    }
                    return Ok(CrashRunEnd::Crashed);
                }
                return Ok(CrashRunEnd::Exited(status.code().unwrap_or(-1)));
            }
            let now = Instant::now();
            if reboot_deadline.is_none() && flag.exists() {
                reboot_deadline = Some(now + grace);
            }
            if reboot_deadline.is_some_and(|d| now >= d) {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(CrashRunEnd::RebootRequested);
            }
            if now > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("device {}: agent still running after {timeout:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The agent's view of this device's bootloader (its configured backend).
    pub fn bootloader(&self) -> anyhow::Result<Box<dyn ota_agent::bootloader::Bootloader>> {
        let config = ota_agent::config::Config::load(&self.config_path())?;
        Ok(ota_agent::bootloader::from_config(&config.boot)?)
    }

    /// `ota-agent status`: the agent's persisted state as JSON.
    pub fn agent_status(&self) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(crate::bins::path("ota-agent")?)
            .arg("--config")
            .arg(self.config_path())
            .arg("status")
            .output()?;
        if !out.status.success() {
            bail!("ota-agent status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The end of the agent's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}
