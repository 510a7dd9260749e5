//! The agent's TOML configuration (`/etc/ota/agent.toml` by default).
//!
//! Unknown keys are refused (a typo such as `pol_interval_secs` must not
//! silently fall back to a default), and every validation error names the key
//! that is wrong. See `agent/agent.example.toml` for an annotated example.

use ota_common::wire::is_valid_id;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use url::Url;

/// Where the device id comes from when `device_id` is not set.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {detail}")]
    Invalid { key: String, detail: String },
    #[error("device_id is not set and {path} could not be used: {detail}")]
    MachineId { path: PathBuf, detail: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the OTA server; metadata under `metadata/`, images under `targets/`.
    pub server_url: Url,
    /// PEM CA certificate(s) that sign an https server's certificate, for a
    /// server under a private CA (e.g. the fleet CA of mutual TLS). They
    /// replace the built-in web roots for metadata, images and reports.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// The initial (factory) root.json, copied into the TUF metadata directory on first start.
    pub trusted_root: PathBuf,
    /// Agent state, TUF metadata and the lock file live here.
    pub state_dir: PathBuf,
    pub hardware_id: String,
    /// Defaults to the content of /etc/machine-id (filled in by [`Config::load`]).
    #[serde(default)]
    pub device_id: Option<String>,
    /// Rollout groups this device belongs to (e.g. `["bench"]`): a signed
    /// rollout wave that names one of them holds this device.
    #[serde(default)]
    pub rollout_groups: Vec<String>,
    /// Version of the factory image, used for the booted slot while the state knows none.
    pub initial_version: semver::Version,
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// A random 0..=jitter seconds is added to each interval so a fleet does not poll in step.
    #[serde(default)]
    pub poll_jitter_secs: u64,
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
    /// How long to wait for the system to go down after the reboot command.
    #[serde(default = "default_reboot_timeout")]
    pub reboot_timeout_secs: u64,
    /// Timeout of each HTTP request (metadata, report; an image stream's reads).
    #[serde(default = "default_http_timeout")]
    pub http_timeout_secs: u64,
    pub slots: SlotsConfig,
    pub boot: BootConfig,
    #[serde(default)]
    pub health_check: Vec<HealthCheckConfig>,
    #[serde(default)]
    pub download: DownloadConfig,
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    #[serde(default)]
    pub report: ReportConfig,
}

/// `[report]`: how the device proves who it is when it reports its status
/// (the server's `device_auth`). Metadata and images need no credentials:
/// they are verified by signature, not by who served them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// File holding this device's token (`ota-server device add ID`), sent
    /// as `Authorization: Bearer`. Never logged.
    pub device_token_file: Option<PathBuf>,
    /// PEM client certificate (subject CN = device id) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// Most chunk requests a delta keeps in flight: beyond a few the link, not
/// the round trips, is the limit, and each one holds up to two chunks.
pub const MAX_PARALLEL_FETCHES: u32 = 32;

/// `[download]`: retries and durable checkpoints of the image download.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// Network failures tolerated in a row within one poll, each followed by
    /// a Range request from where the stream broke off.
    pub retries: u32,
    /// First wait before a retry; doubles at each failure in a row (with jitter).
    pub retry_initial_ms: u64,
    /// Longest wait between two tries.
    pub retry_max_ms: u64,
    /// The slot is fsynced and the offset saved in state.json after every
    /// this many bytes, so a restart resumes there instead of at byte 0...
    pub checkpoint_bytes: u64,
    /// ...but not sooner than this many milliseconds after the previous
    /// checkpoint. Each checkpoint is an fsync of the slot and an atomic
    /// rewrite of state.json; on a fast link a 4 MiB cadence alone meant
    /// hundreds of flushes per GiB. A power cut costs at most the larger of
    /// `checkpoint_bytes` and this long a download. 0: by bytes alone.
    pub checkpoint_interval_ms: u64,
    /// Largest history window a compressed release may ask the decoder to
    /// keep (a zstd frame's window, an xz dictionary), in bytes. The
    /// decoder's memory is this window plus fixed buffers, so this bounds
    /// the agent's memory for any compressed image; a stream that asks for
    /// more is refused before the window is allocated.
    pub max_decompression_window: u64,
    /// Install a delta release (`custom.delta`) from the running slot plus
    /// the chunks it lacks; `false`: always the full image.
    pub delta: bool,
    /// A delta whose chunks to fetch weigh more than this share (percent)
    /// of the full download is not worth its slot scan: the full image is
    /// installed instead.
    pub delta_max_fetch_percent: u64,
    /// Chunks of a delta release fetched (or read back from the running
    /// slot) at once, each on its own keep-alive connection: on a link with
    /// latency the round trips, not the bytes, set a delta's time. Memory:
    /// this many compressed plus decoded chunks at most (about 0.5 MiB each
    /// at the default chunk sizes).
    pub delta_parallel_fetches: u32,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            retries: 5,
            retry_initial_ms: 1000,
            retry_max_ms: 30_000,
            checkpoint_bytes: 4 * 1024 * 1024,
            checkpoint_interval_ms: 1000,
            max_decompression_window: 8 * 1024 * 1024,
            delta: true,
            delta_max_fetch_percent: 80,
            delta_parallel_fetches: 4,
        }
    }
}

/// `[watchdog]`: the optional hardware watchdog (the systemd watchdog needs no
/// configuration: it is on when systemd sets `WATCHDOG_USEC`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// Watchdog device such as `/dev/watchdog`; off when absent.
    pub device: Option<PathBuf>,
    /// Hardware timeout to program; the agent pets it at half of that.
    pub timeout_secs: u32,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            device: None,
            timeout_secs: 60,
        }
    }
}

/// `[slots]`: the two A/B slots (files or block devices).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsConfig {
    pub a: PathBuf,
    pub b: PathBuf,
    /// Largest image a slot takes, in bytes. Block devices are also limited by their size.
    #[serde(default)]
    pub max_image_bytes: Option<u64>,
    /// Partition UUID of slot A, to recognise `root=PARTUUID=...` on the
    /// kernel command line when the slot parameter is absent.
    #[serde(default)]
    pub a_partuuid: Option<String>,
    /// Partition UUID of slot B (see `a_partuuid`).
    #[serde(default)]
    pub b_partuuid: Option<String>,
}

/// Which bootloader backend drives A/B selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootBackend {
    /// Simulated U-Boot-like bootloader whose state is a JSON file.
    Sim,
    /// U-Boot environment located by an fw_env.config (RAUC's BOOT_ORDER/BOOT_x_LEFT).
    UBoot,
    /// GRUB environment block (RAUC's ORDER/x_OK/x_TRY).
    Grub,
    /// systemd-boot / Boot Loader Specification entries with boot counting.
    #[serde(rename = "systemd-boot")]
    SystemdBoot,
    /// A device maker's program speaking RAUC's custom bootloader interface.
    Custom,
}

/// `[boot]`: the bootloader backend and how the booted slot is detected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    pub backend: BootBackend,
    /// State file of the simulated bootloader (required with `backend = "sim"`).
    #[serde(default)]
    pub sim_state: Option<PathBuf>,
    #[serde(default = "default_cmdline_path")]
    pub cmdline_path: PathBuf,
    /// Kernel command-line parameter naming the booted slot (`ota.slot=A`).
    #[serde(default = "default_slot_param")]
    pub slot_param: String,
    #[serde(default = "default_boot_id_path")]
    pub boot_id_path: PathBuf,
    /// fw_env.config naming the U-Boot environment (backend = "uboot").
    #[serde(default = "default_fw_env_config")]
    pub fw_env_config: PathBuf,
    /// GRUB environment block (backend = "grub").
    #[serde(default = "default_grubenv")]
    pub grubenv: PathBuf,
    /// Boot Loader Specification entries directory (backend = "systemd-boot");
    /// unset: the first of [`ESP_ENTRIES_DIRS`] that exists.
    #[serde(default)]
    pub esp_entries_dir: Option<PathBuf>,
    /// systemd-boot's loader.conf, whose `default` line the backend writes;
    /// unset: `loader.conf` beside the entries directory.
    #[serde(default)]
    pub loader_conf: Option<PathBuf>,
    /// Entry base names (file `<name>.conf`, `<name>+L-D.conf`) of each slot.
    #[serde(default = "default_entry_a")]
    pub entry_a: String,
    #[serde(default = "default_entry_b")]
    pub entry_b: String,
    /// The custom bootloader program and its leading arguments (backend = "custom").
    #[serde(default = "default_custom_command")]
    pub custom_command: Vec<String>,
    /// The custom program is killed after this long.
    #[serde(default = "default_custom_timeout")]
    pub custom_timeout_secs: u64,
}

/// Where the ESP's `loader/entries` usually is, in the order tried.
pub const ESP_ENTRIES_DIRS: [&str; 2] = ["/boot/efi/loader/entries", "/efi/loader/entries"];

fn default_entry_a() -> String {
    "ota-a".into()
}
fn default_entry_b() -> String {
    "ota-b".into()
}
fn default_custom_command() -> Vec<String> {
    vec!["/usr/lib/ota/bootloader-custom".into()]
}
fn default_custom_timeout() -> u64 {
    30
}

/// A Boot Loader Specification entry base name the systemd-boot backend can
/// own: no `+` (it starts the boot counter), no path or glob characters.
fn valid_entry_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn default_fw_env_config() -> PathBuf {
    PathBuf::from("/etc/fw_env.config")
}
fn default_grubenv() -> PathBuf {
    PathBuf::from("/boot/grub/grubenv")
}

/// `[[health_check]]`: a command that must exit 0 on a freshly booted slot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub name: String,
    /// A command (argv, no shell) that must exit 0 ...
    #[serde(default)]
    pub command: Vec<String>,
    /// ... or a systemd unit that must be active ...
    #[serde(default)]
    pub unit: Option<String>,
    /// ... or a URL (e.g. the OTA server's `/healthz`) that must answer 2xx.
    #[serde(default)]
    pub url: Option<Url>,
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: u64,
}

fn default_poll_interval() -> u64 {
    3600
}
fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}
fn default_reboot_timeout() -> u64 {
    300
}
fn default_http_timeout() -> u64 {
    30
}
fn default_cmdline_path() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}
fn default_slot_param() -> String {
    "ota.slot".into()
}
fn default_boot_id_path() -> PathBuf {
    PathBuf::from("/proc/sys/kernel/random/boot_id")
}
fn default_health_timeout() -> u64 {
    60
}

fn invalid(key: &str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        detail: detail.into(),
    }
}

impl Config {
    /// Reads, parses and validates `path`, and fills in `device_id` from
    /// /etc/machine-id when it is not set.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        if config.device_id.is_none() {
            config.device_id = Some(read_machine_id(Path::new(MACHINE_ID_PATH))?);
        }
        Ok(config)
    }

    /// Parses and validates TOML text; `origin` only names it in errors.
    /// Leaves `device_id` as written (see [`Config::load`]).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            // toml's message names the key and shows the offending line.
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.report.client_cert.is_some() != self.report.client_key.is_some() {
            return Err(invalid(
                "report.client_cert",
                "client_cert and client_key must be given together",
            ));
        }
        if self.ca_cert.is_some() && self.server_url.scheme() != "https" {
            return Err(invalid(
                "ca_cert",
                "is only used with an https:// server_url",
            ));
        }
        match self.server_url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(invalid(
                    "server_url",
                    format!("scheme {other:?} is not http or https"),
                ))
            }
        }
        if self.server_url.cannot_be_a_base() || self.server_url.host().is_none() {
            return Err(invalid("server_url", "must be an absolute URL with a host"));
        }
        if self.server_url.query().is_some() || self.server_url.fragment().is_some() {
            return Err(invalid("server_url", "must not have a query or fragment"));
        }
        if !is_valid_id(&self.hardware_id) {
            return Err(invalid(
                "hardware_id",
                "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -",
            ));
        }
        if let Some(id) = &self.device_id {
            if !is_valid_id(id) {
                return Err(invalid(
                    "device_id",
                    "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -",
                ));
            }
        }
        if let Some(g) = self.rollout_groups.iter().find(|g| !is_valid_id(g)) {
            return Err(invalid(
                "rollout_groups",
                format!("{g:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"),
            ));
        }
        if self.poll_interval_secs == 0 {
            return Err(invalid("poll_interval_secs", "must be at least 1"));
        }
        if self.http_timeout_secs == 0 {
            return Err(invalid("http_timeout_secs", "must be at least 1"));
        }
        if self.reboot_command.first().is_none_or(|p| p.is_empty()) {
            return Err(invalid("reboot_command", "must name a program"));
        }
        if self.slots.a == self.slots.b {
            return Err(invalid("slots.b", "must not be the same path as slots.a"));
        }
        if self.slots.a.as_os_str().is_empty() {
            return Err(invalid("slots.a", "must not be empty"));
        }
        if self.slots.b.as_os_str().is_empty() {
            return Err(invalid("slots.b", "must not be empty"));
        }
        for (key, uuid) in [
            ("slots.a_partuuid", &self.slots.a_partuuid),
            ("slots.b_partuuid", &self.slots.b_partuuid),
        ] {
            if let Some(uuid) = uuid {
                let ok = !uuid.is_empty()
                    && uuid.len() <= 64
                    && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
                if !ok {
                    return Err(invalid(key, "must be a partition UUID (hex digits and -)"));
                }
            }
        }
        if self.slots.a_partuuid.is_some()
            && self
                .slots
                .a_partuuid
                .as_deref()
                .map(str::to_ascii_lowercase)
                == self
                    .slots
                    .b_partuuid
                    .as_deref()
                    .map(str::to_ascii_lowercase)
        {
            return Err(invalid(
                "slots.b_partuuid",
                "must differ from slots.a_partuuid",
            ));
        }
        if self.download.retry_initial_ms == 0 {
            return Err(invalid("download.retry_initial_ms", "must be at least 1"));
        }
        if self.download.retry_max_ms < self.download.retry_initial_ms {
            return Err(invalid(
                "download.retry_max_ms",
                "must be at least download.retry_initial_ms",
            ));
        }
        if self.download.retries > 100 {
            return Err(invalid("download.retries", "must be at most 100"));
        }
        if self.download.checkpoint_bytes == 0 {
            return Err(invalid("download.checkpoint_bytes", "must be at least 1"));
        }
        if !(64 * 1024..=1 << 30).contains(&self.download.max_decompression_window) {
            return Err(invalid(
                "download.max_decompression_window",
                "must be between 65536 (64 KiB) and 1073741824 (1 GiB)",
            ));
        }
        if self.download.delta_max_fetch_percent > 100 {
            return Err(invalid(
                "download.delta_max_fetch_percent",
                "must be at most 100",
            ));
        }
        if !(1..=MAX_PARALLEL_FETCHES).contains(&self.download.delta_parallel_fetches) {
            return Err(invalid(
                "download.delta_parallel_fetches",
                "must be between 1 (one chunk at a time) and 32",
            ));
        }
        if self.download.checkpoint_interval_ms > 600_000 {
            return Err(invalid(
                "download.checkpoint_interval_ms",
                "must be at most 600000 (ten minutes)",
            ));
        }
        if let Some(device) = &self.watchdog.device {
            if device.as_os_str().is_empty() {
                return Err(invalid("watchdog.device", "must not be empty"));
            }
            if !(2..=3600).contains(&self.watchdog.timeout_secs) {
                return Err(invalid(
                    "watchdog.timeout_secs",
                    "must be between 2 and 3600",
                ));
            }
        }
        if self.slots.max_image_bytes == Some(0) {
            return Err(invalid("slots.max_image_bytes", "must be at least 1"));
        }
        match self.boot.backend {
            BootBackend::Sim if self.boot.sim_state.is_none() => {
                return Err(invalid(
                    "boot.sim_state",
                    "is required with backend = \"sim\"",
                ));
            }
            BootBackend::SystemdBoot => {
                for (key, name) in [
                    ("boot.entry_a", &self.boot.entry_a),
                    ("boot.entry_b", &self.boot.entry_b),
                ] {
                    if !valid_entry_name(name) {
                        return Err(invalid(
                            key,
                            "must be 1 to 128 characters of A-Z a-z 0-9 . _ - (no '+', not starting with '.')",
                        ));
                    }
                }
                // systemd-boot folds entry ids to lower case.
                if self.boot.entry_a.eq_ignore_ascii_case(&self.boot.entry_b) {
                    return Err(invalid("boot.entry_b", "must differ from boot.entry_a"));
                }
            }
            BootBackend::Custom => {
                if self
                    .boot
                    .custom_command
                    .first()
                    .is_none_or(|p| p.is_empty())
                {
                    return Err(invalid("boot.custom_command", "must name a program"));
                }
                if !(1..=3600).contains(&self.boot.custom_timeout_secs) {
                    return Err(invalid(
                        "boot.custom_timeout_secs",
                        "must be between 1 and 3600",
                    ));
                }
            }
            BootBackend::Sim | BootBackend::UBoot | BootBackend::Grub => {}
        }
        let param = &self.boot.slot_param;
        if param.is_empty() || param.contains(['=', ' ', '\t', '\n']) {
            return Err(invalid(
                "boot.slot_param",
                "must be a parameter name without '=' or spaces",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, check) in self.health_check.iter().enumerate() {
            let key = |field: &str| format!("health_check[{i}].{field}");
            if check.name.is_empty() || check.name.len() > 64 {
                return Err(invalid(&key("name"), "must be 1 to 64 characters"));
            }
            if !names.insert(check.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is used twice", check.name),
                ));
            }
            let kinds = usize::from(!check.command.is_empty())
                + usize::from(check.unit.is_some())
                + usize::from(check.url.is_some());
            if kinds != 1 {
                return Err(invalid(
                    &key("command"),
                    "give exactly one of command, unit or url",
                ));
            }
            if !check.command.is_empty() && check.command[0].is_empty() {
                return Err(invalid(&key("command"), "must name a program"));
            }
            if let Some(unit) = &check.unit {
                let valid = !unit.is_empty()
                    && unit.len() <= 256
                    && !unit.starts_with('-')
                    && unit
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b));
                if !valid {
                    return Err(invalid(&key("unit"), "is not a systemd unit name"));
                }
            }
            if let Some(url) = &check.url {
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(invalid(&key("url"), "must be an http or https URL"));
                }
            }
            if check.timeout_secs == 0 {
                return Err(invalid(&key("timeout_secs"), "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The device id (set, or read from /etc/machine-id by [`Config::load`]).
    pub fn device_id(&self) -> &str {
        self.device_id.as_deref().unwrap_or_default()
    }

    /// `{server_url}/metadata/`.
    pub fn metadata_url(&self) -> Result<Url, ConfigError> {
        self.server_join("metadata/")
    }

    /// `{server_url}/targets/`.
    pub fn targets_url(&self) -> Result<Url, ConfigError> {
        self.server_join("targets/")
    }

    /// `{server_url}/api/v1/devices/{device_id}/reports`.
    pub fn report_url(&self) -> Result<Url, ConfigError> {
        // device_id is validated to URL-safe characters.
        self.server_join(&format!("api/v1/devices/{}/reports", self.device_id()))
    }

    fn server_join(&self, rel: &str) -> Result<Url, ConfigError> {
        let mut base = self.server_url.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.join(rel)
            .map_err(|e| invalid("server_url", format!("cannot join {rel:?}: {e}")))
    }

    /// Where the TUF client keeps trusted metadata.
    /// The TLS trust anchors `ca_cert` names; empty without it (the
    /// built-in web roots are trusted then).
    pub fn server_trust_anchors(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        /// Far more than any CA bundle; keeps a wrong path (a device node,
        /// a huge file) from being read into memory.
        const MAX_CA_BYTES: u64 = 1024 * 1024;
        let Some(path) = &self.ca_cert else {
            return Ok(Vec::new());
        };
        let err = |detail: String| invalid("ca_cert", format!("{}: {detail}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut pem = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_CA_BYTES + 1), &mut pem)
            .map_err(|e| err(e.to_string()))?;
        if pem.len() as u64 > MAX_CA_BYTES {
            return Err(err(format!("larger than {MAX_CA_BYTES} bytes")));
        }
        ota_common::tuf::http::ca_certificates(&pem).map_err(err)
    }

    pub fn tuf_dir(&self) -> PathBuf {
        self.state_dir.join("tuf")
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("lock")
    }
}

/// Reads and validates a machine-id file (32 lowercase hex digits on systemd systems).
pub fn read_machine_id(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::MachineId {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    let id = text.trim().to_owned();
    if !is_valid_id(&id) {
        return Err(ConfigError::MachineId {
            path: path.to_owned(),
            detail: "content is not a valid device id".into(),
        });
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
server_url = "http://127.0.0.1:8080"
trusted_root = "/etc/ota/root.json"
state_dir = "/var/lib/ota"
hardware_id = "board-a"
device_id = "dev-1"
initial_version = "1.0.0"
[slots]
a = "/dev/mmcblk0p2"
b = "/dev/mmcblk0p3"
[boot]
backend = "sim"
sim_state = "/tmp/boot.json"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn ca_cert_needs_https_and_a_readable_bundle() {
        let with_ca = |url: &str, ca: &str| {
            MINIMAL.replace("http://127.0.0.1:8080", url).replacen(
                "trusted_root",
                &format!("ca_cert = \"{ca}\"\ntrusted_root"),
                1,
            )
        };
        let err = parse(&with_ca("http://127.0.0.1:8080", "/etc/ota/ca.pem"))
            .expect_err("plain http")
            .to_string();
        assert!(err.contains("ca_cert") && err.contains("https"), "{err}");

        assert!(parse(MINIMAL)
            .expect("no ca_cert")
            .server_trust_anchors()
            .expect("none")
            .is_empty());
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        for path in [&missing, &garbage] {
            let config = parse(&with_ca("https://ota.example", &path.display().to_string()))
                .expect("parses; the file is read when the clients are built");
            let err = config
                .server_trust_anchors()
                .expect_err("unusable")
                .to_string();
            assert!(
                err.contains("ca_cert") && err.contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.poll_interval_secs, 3600);
        assert_eq!(c.poll_jitter_secs, 0);
        assert_eq!(c.reboot_command, ["systemctl", "reboot"]);
        assert_eq!(c.boot.slot_param, "ota.slot");
        assert_eq!(c.boot.cmdline_path, Path::new("/proc/cmdline"));
        assert!(c.health_check.is_empty());
        assert_eq!(
            c.metadata_url().expect("url").as_str(),
            "http://127.0.0.1:8080/metadata/"
        );
        assert_eq!(
            c.targets_url().expect("url").as_str(),
            "http://127.0.0.1:8080/targets/"
        );
        assert_eq!(
            c.report_url().expect("url").as_str(),
            "http://127.0.0.1:8080/api/v1/devices/dev-1/reports"
        );
    }

    #[test]
    fn server_url_with_path_keeps_its_path() {
        let text = MINIMAL.replace("http://127.0.0.1:8080", "https://ota.example/fleet");
        let c = parse(&text).expect("valid");
        assert_eq!(
            c.metadata_url().expect("url").as_str(),
            "https://ota.example/fleet/metadata/"
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = format!("pol_interval_secs = 5\n{MINIMAL}");
        let err = parse(&text).expect_err("typo").to_string();
        assert!(err.contains("pol_interval_secs"), "{err}");
    }

    #[test]
    fn missing_keys_are_named() {
        let text = MINIMAL.replace("hardware_id = \"board-a\"\n", "");
        let err = parse(&text).expect_err("missing").to_string();
        assert!(err.contains("hardware_id"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (MINIMAL.replace("board-a", "board a"), "hardware_id"),
            (
                MINIMAL.replace("device_id = \"dev-1\"", "device_id = \"dev-1\"\nrollout_groups = [\"ok\", \"not ok\"]"),
                "rollout_groups",
            ),
            (
                MINIMAL.replace("http://127.0.0.1:8080", "ftp://x"),
                "server_url",
            ),
            (
                MINIMAL.replace("/dev/mmcblk0p3", "/dev/mmcblk0p2"),
                "slots.b",
            ),
            (
                MINIMAL.replace("sim_state = \"/tmp/boot.json\"\n", ""),
                "boot.sim_state",
            ),
            (
                format!("{MINIMAL}[[health_check]]\nname = \"app\"\ncommand = []\n"),
                "health_check[0].command",
            ),
            (
                format!("{MINIMAL}[[health_check]]\nname = \"app\"\ncommand = [\"true\"]\nunit = \"app.service\"\n"),
                "health_check[0].command",
            ),
            (
                format!("{MINIMAL}[[health_check]]\nname = \"app\"\nunit = \"--force\"\n"),
                "health_check[0].unit",
            ),
            (
                format!("{MINIMAL}[[health_check]]\nname = \"app\"\nurl = \"file:///etc/passwd\"\n"),
                "health_check[0].url",
            ),
            (MINIMAL.replace("\"1.0.0\"", "\"one\""), "initial_version"),
            (
                format!("{MINIMAL}[download]\ndelta_parallel_fetches = 0\n"),
                "download.delta_parallel_fetches",
            ),
            (
                format!("{MINIMAL}[download]\ndelta_parallel_fetches = 33\n"),
                "download.delta_parallel_fetches",
            ),
            (
                MINIMAL.replace(
                    "backend = \"sim\"",
                    "backend = \"systemd-boot\"\nentry_a = \"ota+a\"",
                ),
                "boot.entry_a",
            ),
            (
                MINIMAL.replace(
                    "backend = \"sim\"",
                    "backend = \"systemd-boot\"\nentry_b = \"OTA-A\"\nentry_a = \"ota-a\"",
                ),
                "boot.entry_b",
            ),
            (
                MINIMAL.replace(
                    "backend = \"sim\"",
                    "backend = \"custom\"\ncustom_command = []",
                ),
                "boot.custom_command",
            ),
            (
                MINIMAL.replace(
                    "backend = \"sim\"",
                    "backend = \"custom\"\ncustom_timeout_secs = 0",
                ),
                "boot.custom_timeout_secs",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn systemd_boot_and_custom_backends_get_defaults() {
        let c = parse(&MINIMAL.replace("backend = \"sim\"", "backend = \"systemd-boot\""))
            .expect("systemd-boot");
        assert_eq!(c.boot.backend, BootBackend::SystemdBoot);
        assert_eq!(
            (c.boot.entry_a.as_str(), c.boot.entry_b.as_str()),
            ("ota-a", "ota-b")
        );
        assert!(c.boot.esp_entries_dir.is_none() && c.boot.loader_conf.is_none());
        let c =
            parse(&MINIMAL.replace("backend = \"sim\"", "backend = \"custom\"")).expect("custom");
        assert_eq!(c.boot.backend, BootBackend::Custom);
        assert_eq!(c.boot.custom_command, ["/usr/lib/ota/bootloader-custom"]);
        assert_eq!(c.boot.custom_timeout_secs, 30);
    }

    #[test]
    fn the_annotated_example_is_valid() {
        let text = include_str!("../agent.example.toml");
        let c = parse(text).expect("agent.example.toml");
        assert_eq!(c.health_check.len(), 3);
        assert_eq!(c.health_check[0].unit.as_deref(), Some("app.service"));
        assert!(c.health_check[1].url.is_some());
        assert_eq!(c.poll_jitter_secs, 600);
    }

    #[test]
    fn machine_id_is_trimmed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("machine-id");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write");
        assert_eq!(
            read_machine_id(&path).expect("id"),
            "0123456789abcdef0123456789abcdef"
        );
        std::fs::write(&path, "../../etc\n").expect("write");
        assert!(read_machine_id(&path).is_err());
        assert!(read_machine_id(&dir.path().join("none")).is_err());
    }
}
