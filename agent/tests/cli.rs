//! The `ota-agent` binary: exit codes, `status`, and the post-boot `health`
//! stage on a simulated device (slots as files, the sim bootloader).

use ota_agent::bootloader::sim::{self, SimBootloader, SimState};
use ota_agent::bootloader::Bootloader;
use ota_agent::slot::SlotId;
use ota_agent::state::{AgentState, Phase, StateStore, TargetRef};
use std::path::PathBuf;
use std::process::{Command, Output};

struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    fn new(health_script: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Device { dir };
        std::fs::write(d.path("a.img"), b"factory").expect("a");
        let p = |n: &str| d.path(n).display().to_string();
        let config = format!(
            r#"
server_url = "http://127.0.0.1:9"
trusted_root = "{root}"
state_dir = "{state}"
hardware_id = "board-a"
device_id = "cli-test"
initial_version = "1.0.0"
reboot_command = ["sh", "-c", "echo reboot >> '{reboots}'"]
reboot_timeout_secs = 0
http_timeout_secs = 2
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
command = ["sh", "-c", "{health_script}"]
timeout_secs = 5
"#,
            root = p("missing-root.json"),
            state = p("state"),
            reboots = p("reboots"),
            a = p("a.img"),
            b = p("b.img"),
            sim = p("boot.json"),
            cmdline = p("cmdline"),
            boot_id = p("boot_id"),
        );
        std::fs::write(d.path("agent.toml"), config).expect("config");
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn boot(&self, boot_no: u32) -> SlotId {
        let slot = sim::firmware_boot(&self.path("boot.json")).expect("firmware");
        std::fs::write(
            self.path("cmdline"),
            format!("root=/dev/x ota.slot={slot}\n"),
        )
        .expect("cmdline");
        std::fs::write(self.path("boot_id"), format!("boot-{boot_no}\n")).expect("boot id");
        slot
    }

    fn agent(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ota-agent"))
            .env("OTA_AGENT_CONFIG", self.path("agent.toml"))
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .expect("run ota-agent")
    }

    fn store(&self) -> StateStore {
        std::fs::create_dir_all(self.path("state")).expect("state dir");
        StateStore::new(self.path("state").join("state.json"))
    }

    /// The state after `poll_once` installed 2.0.0 into B and asked for a reboot in boot 1.
    fn trying_b(&self) {
        assert_eq!(self.boot(1), SlotId::A);
        let mut state = AgentState::fresh(SlotId::A, &semver::Version::new(1, 0, 0));
        state.phase = Phase::Trying {
            slot: SlotId::B,
            previous: SlotId::A,
            target: TargetRef {
                name: "img-2.0.0".into(),
                version: semver::Version::new(2, 0, 0),
                length: 5,
                sha256: Some("00".repeat(32)),
                sha512: None,
            },
            boot_id: "boot-1".into(),
        };
        self.store().save(&state).expect("save");
        SimBootloader::new(self.path("boot.json"))
            .set_try_once(SlotId::B)
            .expect("arm");
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_errors_exit_non_zero_naming_the_key() {
    let d = Device::new("exit 0");
    let text = std::fs::read_to_string(d.path("agent.toml")).expect("read");
    std::fs::write(
        d.path("agent.toml"),
        text.replace("hardware_id = \"board-a\"", "hardware_id = \"a/b\""),
    )
    .expect("write");
    let o = d.agent(&["run", "--once"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("hardware_id"), "{}", stderr(&o));

    let o = Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .args(["--config", "/nonexistent/agent.toml", "status"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/agent.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn health_commits_a_healthy_new_slot() {
    let d = Device::new("test \\\"$OTA_SLOT\\\" = B");
    d.trying_b();
    assert_eq!(d.boot(2), SlotId::B);
    let o = d.agent(&["health"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let state = d.store().load().expect("load").expect("state");
    assert_eq!(state.phase, Phase::Idle);
    assert_eq!(
        state.slot(SlotId::B).map(|r| r.version.to_string()),
        Some("2.0.0".into())
    );
    let sim: SimState = sim::load_state(&d.path("boot.json")).expect("sim");
    assert_eq!(sim.boot_order, [SlotId::B, SlotId::A]);
    assert_eq!(sim.tries(SlotId::B), sim::DEFAULT_TRIES);

    let o = d.agent(&["status"]);
    assert!(o.status.success());
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status is JSON");
    assert_eq!(json["phase"]["phase"], "idle");
    assert_eq!(json["slot_b"]["version"], "2.0.0");
}

#[test]
fn health_failure_rolls_back_and_fails_the_unit() {
    let d = Device::new("exit 3");
    d.trying_b();
    assert_eq!(d.boot(2), SlotId::B);
    let o = d.agent(&["health"]);
    assert!(
        !o.status.success(),
        "the system did not go down: the unit fails"
    );
    assert_eq!(
        std::fs::read_to_string(d.path("reboots"))
            .expect("reboots")
            .lines()
            .count(),
        1
    );
    let state = d.store().load().expect("load").expect("state");
    assert!(
        matches!(&state.phase, Phase::RollingBack { reason, .. } if reason == "health check 'app' exited with status 3")
    );
    // The firmware goes back to A, where the agent finishes the rollback.
    assert_eq!(d.boot(3), SlotId::A);
    let o = d.agent(&["health"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let state = d.store().load().expect("load").expect("state");
    assert_eq!(state.phase, Phase::Idle);
    assert_eq!(state.rejected.len(), 1);
}

#[test]
fn status_without_state_prints_null() {
    let d = Device::new("exit 0");
    let o = d.agent(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "null");
}

#[test]
fn run_once_without_a_trusted_root_names_it() {
    let d = Device::new("exit 0");
    d.boot(1);
    let o = d.agent(&["run", "--once"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing-root.json"), "{}", stderr(&o));
    // The post-boot stage ran before and wrote the fresh state.
    let state = d.store().load().expect("load").expect("state written");
    assert_eq!(
        state.slot(SlotId::A).map(|r| r.version.to_string()),
        Some("1.0.0".into())
    );
}
