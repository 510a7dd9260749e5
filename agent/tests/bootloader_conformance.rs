//! One suite for every bootloader backend: the operations the state machine
//! relies on, with the same expected outcome whatever the backend. Each
//! backend is built by the chooser from a `[boot]` section, over files laid
//! out the way a real board has them (environments made by the real tools,
//! the shipped systemd-boot entries, the shipped custom script).

use ota_agent::bootloader::{from_config, Bootloader};
use ota_agent::config::Config;
use ota_agent::slot::SlotId;
use std::path::Path;
use std::process::Command;

const BACKENDS: &[&str] = &["sim", "uboot", "grub", "systemd-boot", "custom"];

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("tool runs (see .ci/run for the Debian packages)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lays out a fresh factory state for `backend` in `dir`, as a board ships.
fn provision(backend: &str, dir: &Path) {
    match backend {
        "uboot" => {
            run(Command::new("mkenvimage")
                .args(["-s", "0x4000", "-o"])
                .arg(dir.join("uboot.env"))
                .arg("/dev/null"));
            std::fs::write(
                dir.join("fw_env.config"),
                format!("{}/uboot.env 0x0 0x4000\n", dir.display()),
            )
            .expect("fw_env.config");
        }
        "grub" => run(Command::new("grub-editenv")
            .arg(dir.join("grubenv"))
            .arg("create")),
        "systemd-boot" => {
            let entries = dir.join("loader/entries");
            std::fs::create_dir_all(&entries).expect("entries dir");
            let shipped = workspace().join("boot/systemd-boot");
            for name in ["ota-a.conf", "ota-b+0-0.conf"] {
                std::fs::copy(shipped.join("entries").join(name), entries.join(name))
                    .expect("shipped entry");
            }
            std::fs::copy(shipped.join("loader.conf"), dir.join("loader/loader.conf"))
                .expect("shipped loader.conf");
        }
        // sim and custom start from a missing state file.
        _ => {}
    }
}

fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `[boot]` keys of `backend` over the files in `dir`.
fn boot_keys(backend: &str, dir: &Path) -> String {
    let d = dir.display();
    match backend {
        "sim" => format!("backend = \"sim\"\nsim_state = \"{d}/sim.json\"\n"),
        "uboot" => format!("backend = \"uboot\"\nfw_env_config = \"{d}/fw_env.config\"\n"),
        "grub" => format!("backend = \"grub\"\ngrubenv = \"{d}/grubenv\"\n"),
        "systemd-boot" => format!(
            "backend = \"systemd-boot\"\nesp_entries_dir = \"{d}/loader/entries\"\nloader_conf = \"{d}/loader/loader.conf\"\n"
        ),
        "custom" => format!(
            "backend = \"custom\"\ncustom_command = [\"env\", \"OTA_CUSTOM_STATE={d}/custom.state\", \"sh\", \"{}\"]\n",
            workspace().join("boot/custom/bootloader-custom.sh").display()
        ),
        other => panic!("no [boot] keys for backend {other}"),
    }
}

/// The backend as the agent builds it at start-up, through the chooser.
fn open(name: &str, dir: &Path) -> Box<dyn Bootloader> {
    let text = format!(
        "server_url = \"http://127.0.0.1:9\"\ntrusted_root = \"/nonexistent/root.json\"\n\
         state_dir = \"{d}/state\"\nhardware_id = \"hw\"\ndevice_id = \"dev\"\n\
         initial_version = \"1.0.0\"\n[slots]\na = \"{d}/a.img\"\nb = \"{d}/b.img\"\n[boot]\n{boot}",
        d = dir.display(),
        boot = boot_keys(name, dir)
    );
    let config = Config::parse(&text, &dir.join("agent.toml")).expect("config parses");
    from_config(&config.boot).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_backend_behaves_the_same() {
    for name in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        provision(name, dir.path());
        let mut bl = open(name, dir.path());
        let primary = |bl: &dyn Bootloader| bl.primary().unwrap_or_else(|e| panic!("{name}: {e}"));
        let ok = |r: ota_agent::bootloader::Result<()>, what: &str| {
            r.unwrap_or_else(|e| panic!("{name}: {what}: {e}"))
        };

        assert_eq!(primary(&*bl), SlotId::A, "{name}: factory state boots A");

        // Arm B for one try: the next boot is B.
        ok(bl.set_try_once(SlotId::B), "set_try_once(B)");
        ok(
            bl.set_try_once(SlotId::B),
            "set_try_once(B) again (idempotent)",
        );
        assert_eq!(primary(&*bl), SlotId::B, "{name}: armed slot boots next");

        // B failed: A boots, however often it is marked bad.
        ok(bl.mark_bad(SlotId::B), "mark_bad(B)");
        ok(bl.mark_bad(SlotId::B), "mark_bad(B) again (idempotent)");
        assert_eq!(primary(&*bl), SlotId::A, "{name}: a bad slot is not booted");

        // Armed again and good: B is the permanent primary.
        ok(bl.set_try_once(SlotId::B), "re-arm B");
        ok(bl.mark_good(SlotId::B), "mark_good(B)");
        ok(bl.mark_good(SlotId::B), "mark_good(B) again (idempotent)");
        assert_eq!(
            primary(&*bl),
            SlotId::B,
            "{name}: committed slot stays primary"
        );

        // The next update goes the other way, and a failure falls back to B.
        ok(bl.set_try_once(SlotId::A), "set_try_once(A)");
        assert_eq!(primary(&*bl), SlotId::A, "{name}: A armed");
        ok(bl.mark_bad(SlotId::A), "mark_bad(A)");
        assert_eq!(primary(&*bl), SlotId::B, "{name}: back on B");

        // A fresh instance over the same files sees the same state (durable).
        let reopened = open(name, dir.path());
        assert_eq!(
            primary(&*reopened),
            SlotId::B,
            "{name}: state survives a restart"
        );
    }
}
