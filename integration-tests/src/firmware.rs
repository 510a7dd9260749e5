//! What each bootloader does at power-on, for the simulated device: the
//! slot choice of the shipped boot scripts, run against the same on-disk
//! environments the agent's backends write.
//!
//! * [`Backend::Sim`]: the sim backend's own `firmware_boot`.
//! * [`Backend::UBoot`]: the logic of `boot/uboot/boot.cmd` over a U-Boot environment
//!   (single copy, or redundant copies as `fw_env.config` describes them),
//!   plus U-Boot's boot counter (`CONFIG_BOOTCOUNT_ENV`).
//! * [`Backend::Grub`]: the logic of `boot/grub/grub.cfg` over a GRUB environment block.
//! * [`Backend::SystemdBoot`]: systemd-boot's automatic boot assessment over
//!   the shipped `boot/systemd-boot/` entries and loader.conf.
//! * [`Backend::Custom`]: the firmware side of `boot/custom/bootloader-custom.sh`
//!   (PRIMARY, or the other slot when PRIMARY is bad; no try counter).
//!
//! Each function follows its script line by line, including the variables
//! the script saves, so the agent sees exactly what a real board leaves.

use anyhow::{bail, Context};
use ota_agent::bootloader::grub_env::{self, GrubEnv};
use ota_agent::bootloader::systemd_boot::{default_pattern, glob_match};
use ota_agent::bootloader::uboot_env::{
    encode_copy, EnvError, EnvStore, EnvVars, FwEnvConfig, Layout,
};
use ota_agent::slot::SlotId;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Size of one U-Boot environment copy (`fw_env.config` says 0x2000).
pub const UBOOT_ENV_SIZE: usize = 0x2000;

/// The bootloader a simulated device is provisioned with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sim,
    /// U-Boot; `redundant`: two environment copies.
    UBoot {
        redundant: bool,
    },
    Grub,
    /// systemd-boot with Boot Loader Specification entries and boot counting.
    SystemdBoot,
    /// The example custom backend script, `boot/custom/bootloader-custom.sh`.
    Custom,
}

impl Backend {
    /// Every backend, for tests that loop over them.
    pub const ALL: [Backend; 6] = [
        Backend::Sim,
        Backend::UBoot { redundant: false },
        Backend::UBoot { redundant: true },
        Backend::Grub,
        Backend::SystemdBoot,
        Backend::Custom,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sim => "sim",
            Backend::UBoot { redundant: false } => "uboot-single",
            Backend::UBoot { redundant: true } => "uboot-redundant",
            Backend::Grub => "grub",
            Backend::SystemdBoot => "systemd-boot",
            Backend::Custom => "custom",
        }
    }
}

/// Where a device's bootloader keeps its state, under the device directory.
#[derive(Debug, Clone)]
pub struct Firmware {
    pub backend: Backend,
    pub dir: PathBuf,
}

impl Firmware {
    pub fn new(backend: Backend, dir: &Path) -> Self {
        Firmware {
            backend,
            dir: dir.to_path_buf(),
        }
    }

    pub fn sim_state(&self) -> PathBuf {
        self.dir.join("bootloader.json")
    }
    pub fn fw_env_config(&self) -> PathBuf {
        self.dir.join("fw_env.config")
    }
    pub fn uboot_env(&self) -> PathBuf {
        self.dir.join("uboot.env")
    }
    pub fn grubenv(&self) -> PathBuf {
        self.dir.join("grubenv")
    }
    /// The ESP's `loader/entries/` (systemd-boot).
    pub fn esp_entries(&self) -> PathBuf {
        self.dir.join("esp").join("loader").join("entries")
    }
    /// The ESP's `loader/loader.conf` (systemd-boot).
    pub fn loader_conf(&self) -> PathBuf {
        self.dir.join("esp").join("loader").join("loader.conf")
    }
    /// The example custom script's state file.
    pub fn custom_state(&self) -> PathBuf {
        self.dir.join("custom.state")
    }

    /// Creates the factory bootloader state; returns the `[boot]` keys
    /// (besides cmdline and boot id) the agent's configuration needs.
    pub fn provision(&self) -> anyhow::Result<String> {
        let q = |p: PathBuf| format!("{:?}", p.to_string_lossy());
        match self.backend {
            // The sim bootloader's missing file is its factory default.
            Backend::Sim => Ok(format!(
                "backend = \"sim\"\nsim_state = {}\n",
                q(self.sim_state())
            )),
            Backend::UBoot { redundant } => {
                // The board's default environment (what mkenvimage would
                // build from the board's defaults): no slot variables yet,
                // so the script's defaults apply.
                let mut vars = EnvVars::new();
                vars.set("bootcmd", "run ota_boot")?;
                vars.set("bootlimit", "1")?;
                vars.set("altbootcmd", "run ota_boot")?;
                let env = self.uboot_env();
                let mut bytes = Vec::new();
                let mut config = String::from("# device offset size\n");
                if redundant {
                    bytes.extend(encode_copy(&vars, UBOOT_ENV_SIZE, Layout::Redundant, 1)?);
                    bytes.extend(encode_copy(&vars, UBOOT_ENV_SIZE, Layout::Redundant, 0)?);
                    config.push_str(&format!(
                        "{0} 0x0 0x{1:x}\n{0} 0x{1:x} 0x{1:x}\n",
                        env.display(),
                        UBOOT_ENV_SIZE
                    ));
                } else {
                    bytes.extend(encode_copy(&vars, UBOOT_ENV_SIZE, Layout::Single, 0)?);
                    config.push_str(&format!("{} 0x0 0x{:x}\n", env.display(), UBOOT_ENV_SIZE));
                }
                std::fs::write(&env, bytes).context("writing the U-Boot environment")?;
                std::fs::write(self.fw_env_config(), config).context("writing fw_env.config")?;
                Ok(format!(
                    "backend = \"uboot\"\nfw_env_config = {}\n",
                    q(self.fw_env_config())
                ))
            }
            Backend::Grub => {
                // `grub-editenv grubenv create`: an empty 1024-byte block.
                grub_env::write_file(&self.grubenv(), &GrubEnv::new())
                    .context("creating grubenv")?;
                Ok(format!(
                    "backend = \"grub\"\ngrubenv = {}\n",
                    q(self.grubenv())
                ))
            }
            Backend::SystemdBoot => {
                // The shipped files, as an image build installs them on the ESP.
                let shipped = shipped("boot/systemd-boot");
                let entries = self.esp_entries();
                std::fs::create_dir_all(&entries).context("creating the ESP entries directory")?;
                for name in [SD_ENTRY_A_FACTORY, SD_ENTRY_B_FACTORY] {
                    std::fs::copy(shipped.join("entries").join(name), entries.join(name))
                        .with_context(|| format!("installing the shipped entry {name}"))?;
                }
                std::fs::copy(shipped.join("loader.conf"), self.loader_conf())
                    .context("installing the shipped loader.conf")?;
                Ok(format!(
                    "backend = \"systemd-boot\"\nesp_entries_dir = {}\nloader_conf = {}\nentry_a = {:?}\nentry_b = {:?}\n",
                    q(entries),
                    q(self.loader_conf()),
                    SD_NAME_A,
                    SD_NAME_B
                ))
            }
            Backend::Custom => {
                // The script's missing state file is its factory state (A good, B bad).
                let script = custom_script()?;
                let command = [
                    "env".to_owned(),
                    format!("OTA_CUSTOM_STATE={}", self.custom_state().to_string_lossy()),
                    "sh".to_owned(),
                    script.to_string_lossy().into_owned(),
                ];
                let list: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
                Ok(format!(
                    "backend = \"custom\"\ncustom_command = [{}]\n",
                    list.join(", ")
                ))
            }
        }
    }

    /// Power-on: the firmware chooses a slot (and saves what its script saves).
    pub fn boot(&self) -> anyhow::Result<SlotId> {
        match self.backend {
            Backend::Sim => ota_agent::bootloader::sim::firmware_boot(&self.sim_state())
                .map_err(|e| anyhow::anyhow!("simulated firmware: {e}")),
            Backend::UBoot { .. } => self.uboot_boot(),
            Backend::Grub => self.grub_boot(),
            Backend::SystemdBoot => self.systemd_boot_boot(),
            Backend::Custom => self.custom_boot(),
        }
    }

    /// systemd-boot: automatic boot assessment. Entries are sorted with the
    /// bad ones (0 tries left) last; loader.conf's `default` (a pattern over
    /// entry ids, i.e. file names without the counter) picks the entry,
    /// unless it is bad and a good one exists. A chosen entry with a counter
    /// and tries left is renamed `+(LEFT-1)-(DONE+1)` before it boots: that
    /// rename is the try. Blessing (dropping the counter) is not ours.
    fn systemd_boot_boot(&self) -> anyhow::Result<SlotId> {
        let dir = self.esp_entries();
        let mut entries = Vec::new();
        for item in std::fs::read_dir(&dir).context("reading the ESP entries")? {
            let file = item?.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') {
                continue; // systemd-boot skips hidden files (the agent's temp files)
            }
            let Some(entry) = SdEntry::parse(&file) else {
                continue;
            };
            entries.push(entry);
        }
        // boot_entry_compare: bad ones last, then by id, highest first.
        entries.sort_by(|x, y| {
            (x.is_bad(), std::cmp::Reverse(x.id.to_ascii_lowercase()))
                .cmp(&(y.is_bad(), std::cmp::Reverse(y.id.to_ascii_lowercase())))
        });
        let loader = std::fs::read_to_string(self.loader_conf()).unwrap_or_default();
        let pattern = default_pattern(&loader).map(str::to_owned);
        let matched = pattern
            .as_deref()
            .and_then(|p| entries.iter().position(|e| glob_match(p, &e.id)));
        let index = match matched {
            // A bad default yields to the first good entry (good ones sort first).
            Some(i) if entries[i].is_bad() && entries.first().is_some_and(|e| !e.is_bad()) => 0,
            Some(i) => i,
            None => 0,
        };
        let Some(chosen) = entries.get(index) else {
            bail!("systemd-boot: no boot entries in {}", dir.display());
        };
        let slot = match chosen.id.as_str() {
            id if id.eq_ignore_ascii_case(&format!("{SD_NAME_A}.conf")) => SlotId::A,
            id if id.eq_ignore_ascii_case(&format!("{SD_NAME_B}.conf")) => SlotId::B,
            other => bail!("systemd-boot: chose entry {other:?}, which is no slot's"),
        };
        if let Some((left, done)) = chosen.counter {
            if left > 0 {
                let stem = chosen.id.trim_end_matches(".conf");
                let new = format!("{stem}+{}-{}.conf", left - 1, done + 1);
                ota_common::atomic::rename_durable(&dir.join(&chosen.file), &dir.join(&new))
                    .with_context(|| format!("systemd-boot: counting a try of {}", chosen.file))?;
            }
        }
        Ok(slot)
    }

    /// The custom backend's firmware side: exactly what the example script's
    /// `get-primary` prints for its state file (PRIMARY, unless it is bad and
    /// the other is good). Nothing is counted: the slot keeps booting until
    /// the agent marks it bad.
    fn custom_boot(&self) -> anyhow::Result<SlotId> {
        let out = std::process::Command::new("sh")
            .arg(custom_script()?)
            .arg("get-primary")
            .env("OTA_CUSTOM_STATE", self.custom_state())
            .stdin(std::process::Stdio::null())
            .output()
            .context("running bootloader-custom.sh get-primary")?;
        if !out.status.success() {
            bail!(
                "bootloader-custom.sh get-primary failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        match String::from_utf8_lossy(&out.stdout).trim() {
            "A" => Ok(SlotId::A),
            "B" => Ok(SlotId::B),
            other => bail!("bootloader-custom.sh get-primary printed {other:?}"),
        }
    }

    fn uboot_store(&self) -> anyhow::Result<EnvStore> {
        let config = FwEnvConfig::load(&self.fw_env_config())?;
        // The firmware runs alone on the board: no libubootenv lock.
        Ok(EnvStore::new(config).with_lock_path(None))
    }

    /// U-Boot: the boot counter, then `boot/uboot/boot.cmd`. Its "no slot
    /// has boots left" branch saves and resets the board, which runs the
    /// script again.
    fn uboot_boot(&self) -> anyhow::Result<SlotId> {
        let store = self.uboot_store()?;
        for _reset in 0..3 {
            let mut chosen = None;
            let change = |env: &mut EnvVars| -> Result<(), EnvError> {
                // CONFIG_BOOTCOUNT_ENV: counted (and saved) only during an upgrade.
                if env.get_str("upgrade_available") == Some("1") {
                    let count = env
                        .get_str("bootcount")
                        .and_then(|c| c.parse::<u32>().ok())
                        .unwrap_or(0);
                    env.set("bootcount", &(count + 1).to_string())?;
                }
                chosen = uboot_script(env)?;
                Ok(())
            };
            match store.modify(change) {
                Ok(_) => {}
                // Both copies bad: U-Boot boots with its built-in default
                // environment, and the script's saveenv writes it out.
                Err(EnvError::Corrupt(detail)) => {
                    console(&format!(
                        "U-Boot environment corrupt ({detail}); using the default"
                    ));
                    let mut env = EnvVars::new();
                    chosen = uboot_script(&mut env)?;
                    self.uboot_write_fresh(&env)?;
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(slot) = chosen {
                return Ok(slot);
            }
        }
        bail!("U-Boot script reset the board three times without booting")
    }

    /// Writes `vars` to every copy (flags 1 and 0), as a first saveenv after
    /// a default environment would leave a valid environment.
    fn uboot_write_fresh(&self, vars: &EnvVars) -> anyhow::Result<()> {
        let config = FwEnvConfig::load(&self.fw_env_config())?;
        let layout = config.layout();
        for (i, loc) in config.copies.iter().enumerate() {
            let flag = if i == 0 { 1 } else { 0 };
            let image = encode_copy(vars, config.size(), layout, flag)?;
            let mut f = std::fs::OpenOptions::new().write(true).open(&loc.device)?;
            f.seek(SeekFrom::Start(loc.offset))?;
            f.write_all(&image)?;
            f.sync_all()?;
        }
        Ok(())
    }

    /// GRUB: `boot/grub/grub.cfg`.
    fn grub_boot(&self) -> anyhow::Result<SlotId> {
        let path = self.grubenv();
        // load_env: a missing or unreadable block leaves the defaults (and
        // save_env then fails: GRUB cannot create the block).
        let loaded = grub_env::read_file(&path).ok();
        let get = |name: &str, default: &str| -> String {
            loaded
                .as_ref()
                .and_then(|env| env.get_str(name))
                .unwrap_or(default)
                .to_owned()
        };
        let order = get("ORDER", "A B");
        let a_ok = get("A_OK", "1");
        let mut a_try = get("A_TRY", "0");
        let b_ok = get("B_OK", "0");
        let mut b_try = get("B_TRY", "0");
        let mut slot: Option<SlotId> = None;
        for s in order.split_whitespace() {
            if slot.is_none() {
                if s == "A" && a_ok == "1" && a_try == "0" {
                    slot = Some(SlotId::A);
                    a_try = "1".into();
                } else if s == "B" && b_ok == "1" && b_try == "0" {
                    slot = Some(SlotId::B);
                    b_try = "1".into();
                }
            }
        }
        if slot.is_none() {
            for s in order.split_whitespace() {
                if slot.is_none() {
                    if s == "A" && a_ok == "1" {
                        slot = Some(SlotId::A);
                    } else if s == "B" && b_ok == "1" {
                        slot = Some(SlotId::B);
                    }
                }
            }
        }
        if slot.is_none() {
            slot = order.split_whitespace().find_map(|s| match s {
                "A" => Some(SlotId::A),
                "B" => Some(SlotId::B),
                _ => None,
            });
        }
        let slot = slot.unwrap_or(SlotId::A);
        // save_env ORDER A_OK A_TRY B_OK B_TRY: the block keeps its other variables.
        if let Some(mut env) = loaded {
            env.set("ORDER", &order)?;
            env.set("A_OK", &a_ok)?;
            env.set("A_TRY", &a_try)?;
            env.set("B_OK", &b_ok)?;
            env.set("B_TRY", &b_try)?;
            grub_env::write_file(&path, &env)?;
        }
        Ok(slot)
    }
}

/// `boot.cmd` on the environment `env` (after U-Boot's own boot counter):
/// the slot it boots, or `None` when it found no slot with boots left,
/// gave both 3 and reset the board. `env` holds what its saveenv saves.
fn uboot_script(env: &mut EnvVars) -> Result<Option<SlotId>, EnvError> {
    let default = |env: &mut EnvVars, name: &str, value: &str| -> Result<(), EnvError> {
        // test -n "${name}" || setenv name value
        if env.get(name).is_none_or(|v| v.is_empty()) {
            env.set(name, value)?;
        }
        Ok(())
    };
    default(env, "BOOT_ORDER", "A B")?;
    default(env, "BOOT_A_LEFT", "3")?;
    default(env, "BOOT_B_LEFT", "3")?;
    for (name, value) in [
        ("ota_devtype", "mmc"),
        ("ota_devnum", "0"),
        ("ota_part_A", "2"),
        ("ota_part_B", "3"),
        ("ota_root_A", "/dev/mmcblk0p2"),
        ("ota_root_B", "/dev/mmcblk0p3"),
        ("ota_kernel", "/boot/Image"),
        ("ota_fdt", "/boot/board.dtb"),
    ] {
        default(env, name, value)?;
    }
    // `test ${X} -gt 0` and setexpr read numbers as U-Boot does (simple_strtoul:
    // leading digits, hex for setexpr; both agree for the 0..=3 written here).
    let left = |env: &EnvVars, name: &str| -> u64 {
        let text = env.get_str(name).unwrap_or("");
        let digits: String = text.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        u64::from_str_radix(&digits, 16).unwrap_or(0)
    };
    env.remove("ota_slot");
    let order = env.get_str("BOOT_ORDER").unwrap_or("").to_owned();
    let mut slot = None;
    for s in order.split_whitespace() {
        for (id, var) in [(SlotId::A, "BOOT_A_LEFT"), (SlotId::B, "BOOT_B_LEFT")] {
            if slot.is_none() && s == id.as_str() && left(env, var) > 0 {
                // setexpr stores its result in hexadecimal.
                let n = left(env, var) - 1;
                env.set(var, &format!("{n:x}"))?;
                env.set("ota_slot", id.as_str())?;
                let part = env
                    .get_str(&format!("ota_part_{id}"))
                    .unwrap_or("")
                    .to_owned();
                let root = env
                    .get_str(&format!("ota_root_{id}"))
                    .unwrap_or("")
                    .to_owned();
                env.set("ota_part", &part)?;
                env.set("ota_root", &root)?;
                slot = Some(id);
            }
        }
    }
    if slot.is_none() {
        env.set("BOOT_A_LEFT", "3")?;
        env.set("BOOT_B_LEFT", "3")?;
    }
    Ok(slot)
}

/// The systemd-boot entry base names the device is configured with.
const SD_NAME_A: &str = "ota-a";
const SD_NAME_B: &str = "ota-b";
/// The shipped entries' file names (A good, B bad until the agent arms it).
const SD_ENTRY_A_FACTORY: &str = "ota-a.conf";
const SD_ENTRY_B_FACTORY: &str = "ota-b+0-0.conf";

/// One entry file as systemd-boot sees it: its id (the file name without
/// the boot counter) and the counter `(left, done)`, if any.
struct SdEntry {
    file: String,
    id: String,
    counter: Option<(u32, u32)>,
}

impl SdEntry {
    /// `None` for files that are no entry, or whose counter systemd-boot would
    /// not parse (it then takes the whole stem as the id, uncounted).
    fn parse(file: &str) -> Option<SdEntry> {
        let stem = file.strip_suffix(".conf")?;
        let plain = || SdEntry {
            file: file.to_owned(),
            id: file.to_owned(),
            counter: None,
        };
        let Some((base, counter)) = stem.rsplit_once('+') else {
            return Some(plain());
        };
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        let parsed = match counter.split_once('-') {
            Some((l, d)) => number(l).zip(number(d)),
            None => number(counter).map(|l| (l, 0)),
        };
        Some(match parsed {
            Some(c) => SdEntry {
                file: file.to_owned(),
                id: format!("{base}.conf"),
                counter: Some(c),
            },
            None => plain(),
        })
    }

    fn is_bad(&self) -> bool {
        self.counter.is_some_and(|(left, _)| left == 0)
    }
}

/// A path in the workspace's shipped files (`boot/...`).
fn shipped(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// The example custom script, as an absolute path (the agent runs it from its own directory).
fn custom_script() -> anyhow::Result<PathBuf> {
    let path = shipped("boot/custom/bootloader-custom.sh");
    path.canonicalize()
        .with_context(|| format!("finding {}", path.display()))
}

/// The harness has no logger; firmware messages go to stderr like a serial console.
fn console(message: &str) {
    eprintln!("firmware: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_agent::bootloader::from_config;

    fn boot_config(keys: &str) -> ota_agent::config::BootConfig {
        #[derive(serde::Deserialize)]
        struct Wrap {
            boot: ota_agent::config::BootConfig,
        }
        let text = format!("[boot]\n{keys}");
        toml::from_str::<Wrap>(&text).expect("boot config").boot
    }

    /// The agent's backend and the firmware agree, over a whole update cycle.
    #[test]
    fn every_backend_tries_once_falls_back_and_commits() {
        for backend in Backend::ALL {
            let dir = tempfile::tempdir().expect("tempdir");
            let fw = Firmware::new(backend, dir.path());
            let keys = fw.provision().expect("provision");
            let mut bl = from_config(&boot_config(&keys)).expect("backend");
            let name = backend.name();
            assert_eq!(fw.boot().expect("boot"), SlotId::A, "{name}");
            // A failed trial: B once, then back to A.
            bl.set_try_once(SlotId::B).expect("arm");
            assert_eq!(fw.boot().expect("boot"), SlotId::B, "{name}: trial");
            if backend == Backend::Custom {
                // No try counter: the armed slot boots until it is marked bad.
                assert_eq!(fw.boot().expect("boot"), SlotId::B, "{name}: no counter");
            } else {
                assert_eq!(fw.boot().expect("boot"), SlotId::A, "{name}: fallback");
            }
            bl.mark_bad(SlotId::B).expect("bad");
            assert_eq!(fw.boot().expect("boot"), SlotId::A, "{name}");
            bl.mark_good(SlotId::A).expect("good");
            // A good trial: B, marked good, stays.
            bl.set_try_once(SlotId::B).expect("arm");
            assert_eq!(fw.boot().expect("boot"), SlotId::B, "{name}: trial");
            bl.mark_good(SlotId::B).expect("good");
            for _ in 0..4 {
                assert_eq!(fw.boot().expect("boot"), SlotId::B, "{name}: committed");
                // The agent confirms the running slot whenever the bootloader would leave it.
                if bl.primary().expect("primary") != SlotId::B {
                    bl.mark_good(SlotId::B).expect("confirm");
                }
            }
        }
    }

    #[test]
    fn uboot_without_boots_left_resets_both_and_boots_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fw = Firmware::new(Backend::UBoot { redundant: true }, dir.path());
        fw.provision().expect("provision");
        let store = fw.uboot_store().expect("store");
        store
            .modify(|env| {
                env.set("BOOT_ORDER", "B A")?;
                env.set("BOOT_A_LEFT", "0")?;
                env.set("BOOT_B_LEFT", "0")?;
                Ok(())
            })
            .expect("set");
        assert_eq!(fw.boot().expect("boot"), SlotId::B);
        let env = store.read().expect("read").vars;
        assert_eq!(env.get_str("BOOT_B_LEFT"), Some("2"));
        assert_eq!(env.get_str("BOOT_A_LEFT"), Some("3"));
        assert_eq!(env.get_str("ota_slot"), Some("B"));
    }

    #[test]
    fn systemd_boot_counts_the_try_and_skips_a_bad_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fw = Firmware::new(Backend::SystemdBoot, dir.path());
        let keys = fw.provision().expect("provision");
        let mut bl = from_config(&boot_config(&keys)).expect("backend");
        let entries = |fw: &Firmware| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(fw.esp_entries())
                .expect("entries")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        bl.set_try_once(SlotId::B).expect("arm");
        assert_eq!(entries(&fw), ["ota-a.conf", "ota-b+1-0.conf"]);
        assert_eq!(fw.boot().expect("boot"), SlotId::B);
        // The firmware's rename is the try; the default still names ota-b.conf.
        assert_eq!(entries(&fw), ["ota-a.conf", "ota-b+0-1.conf"]);
        assert_eq!(fw.boot().expect("boot"), SlotId::A, "bad default yields");
        assert_eq!(entries(&fw), ["ota-a.conf", "ota-b+0-1.conf"]);
    }
}
