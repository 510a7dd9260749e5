//! The systemd-boot and custom backends against the shipped boot files:
//! `boot/systemd-boot/` (loader.conf and BLS entries, with systemd-boot's own
//! renaming simulated per the Boot Loader Specification, and cross-checked
//! with `bootctl` when the `systemd-boot` package is installed) and
//! `boot/custom/bootloader-custom.sh` (run for real).

use ota_agent::bootloader::custom::{CustomBootloader, SlotState};
use ota_agent::bootloader::systemd_boot::SystemdBootBootloader;
use ota_agent::bootloader::{from_config, BootError, Bootloader};
use ota_agent::config::Config;
use ota_agent::slot::SlotId;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// An ESP laid out from `boot/systemd-boot/`.
struct Esp {
    dir: tempfile::TempDir,
}

impl Esp {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let esp = Esp { dir };
        std::fs::create_dir_all(esp.entries()).expect("entries dir");
        let shipped = repo_file("boot/systemd-boot");
        std::fs::copy(shipped.join("loader.conf"), esp.loader_conf()).expect("loader.conf");
        for item in std::fs::read_dir(shipped.join("entries")).expect("shipped entries") {
            let item = item.expect("entry");
            std::fs::copy(item.path(), esp.entries().join(item.file_name())).expect("copy");
        }
        esp
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn entries(&self) -> PathBuf {
        self.root().join("loader/entries")
    }

    fn loader_conf(&self) -> PathBuf {
        self.root().join("loader/loader.conf")
    }

    fn backend(&self) -> SystemdBootBootloader {
        SystemdBootBootloader::new(self.entries(), None, "ota-a", "ota-b").expect("backend")
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.entries())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        names
    }

    fn default_line(&self) -> String {
        let text = std::fs::read_to_string(self.loader_conf()).expect("loader.conf");
        text.lines()
            .rfind(|l| l.starts_with("default "))
            .expect("default line")
            .to_owned()
    }

    /// What systemd-boot does at power-on, written independently of the
    /// backend from systemd-boot's source (252, Debian 12's, which the
    /// full-system board 2 runs): an entry's id is its whole file name,
    /// counter included, lower-cased; entries with no tries left sort last,
    /// the rest by id, highest first; the entry the `default` pattern
    /// matches boots (even a bad one), else the first in order. A counted
    /// entry is renamed +(LEFT-1)-(DONE+1) before it boots.
    /// Returns the slot named on the entry's `options` line.
    fn firmware_boot(&self) -> SlotId {
        struct E {
            file: String,
            id: String,
            base: String,
            counter: Option<(u32, u32)>,
        }
        let mut entries: Vec<E> = self
            .files()
            .into_iter()
            .filter(|f| f.ends_with(".conf") && !f.starts_with('.'))
            .map(|file| {
                let stem = file.trim_end_matches(".conf");
                let (base, counter) = match stem.rsplit_once('+') {
                    Some((base, c)) => {
                        let (l, d) = c.split_once('-').unwrap_or((c, "0"));
                        (
                            base.to_owned(),
                            Some((l.parse().expect("left"), d.parse().expect("done"))),
                        )
                    }
                    None => (stem.to_owned(), None),
                };
                E {
                    id: file.to_ascii_lowercase(),
                    file,
                    base,
                    counter,
                }
            })
            .collect();
        let bad = |e: &E| e.counter.is_some_and(|(l, _)| l == 0);
        entries.sort_by(|a, b| bad(a).cmp(&bad(b)).then(b.id.cmp(&a.id)));
        let text = std::fs::read_to_string(self.loader_conf()).unwrap_or_default();
        let pattern = text
            .lines()
            .filter_map(|l| l.strip_prefix("default "))
            .next_back()
            .map(|p| p.trim().to_ascii_lowercase());
        let chosen = pattern
            .and_then(|p| {
                entries
                    .iter()
                    .find(|e| ota_agent::bootloader::systemd_boot::glob_match(&p, &e.id))
            })
            .or(entries.first())
            .expect("an entry to boot");
        let mut booted = chosen.file.clone();
        if let Some((left, done)) = chosen.counter {
            booted = format!(
                "{}+{}-{}.conf",
                chosen.base,
                left.saturating_sub(1),
                done + 1
            );
            std::fs::rename(
                self.entries().join(&chosen.file),
                self.entries().join(&booted),
            )
            .expect("bump counter");
        }
        let content = std::fs::read_to_string(self.entries().join(&booted)).expect("entry");
        if content.contains("ota.slot=A") {
            SlotId::A
        } else if content.contains("ota.slot=B") {
            SlotId::B
        } else {
            panic!("entry {} names no slot", chosen.file)
        }
    }

    /// systemd-bless-boot after boot-complete.target: drops the counter of
    /// the entry that booted.
    fn bless(&self, name: &str) {
        let file = self
            .files()
            .into_iter()
            .find(|f| f.starts_with(&format!("{name}+")))
            .expect("counted entry");
        std::fs::rename(
            self.entries().join(file),
            self.entries().join(format!("{name}.conf")),
        )
        .expect("bless");
    }
}

#[test]
fn shipped_layout_boots_a_and_never_b() {
    let esp = Esp::new();
    let bl = esp.backend();
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    for _ in 0..3 {
        assert_eq!(esp.firmware_boot(), SlotId::A);
    }
    assert_eq!(esp.files(), ["ota-a.conf", "ota-b+0-0.conf"]);
}

#[test]
fn try_once_then_fallback_when_never_blessed() {
    let esp = Esp::new();
    let mut bl = esp.backend();
    bl.set_try_once(SlotId::B).expect("arm");
    assert_eq!(esp.files(), ["ota-a.conf", "ota-b+1-0.conf"]);
    assert_eq!(esp.default_line(), "default ota-b+1-0.conf");
    assert_eq!(bl.primary().expect("primary"), SlotId::B);
    // Re-arming (a restart before the reboot) changes nothing.
    bl.set_try_once(SlotId::B).expect("re-arm");
    assert_eq!(esp.files(), ["ota-a.conf", "ota-b+1-0.conf"]);

    assert_eq!(esp.firmware_boot(), SlotId::B);
    assert_eq!(esp.files(), ["ota-a.conf", "ota-b+0-1.conf"]);
    // B hung before anything blessed it: the next boot falls back to A.
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    assert_eq!(esp.firmware_boot(), SlotId::A);
    bl.mark_bad(SlotId::B).expect("bad");
    assert_eq!(esp.files(), ["ota-a.conf", "ota-b+0-1.conf"]);
    assert_eq!(esp.default_line(), "default ota-a.conf");
    assert_eq!(esp.firmware_boot(), SlotId::A);
    // The other loader.conf lines are kept.
    let text = std::fs::read_to_string(esp.loader_conf()).expect("loader.conf");
    assert!(
        text.contains("timeout 0\n") && text.contains("editor no\n"),
        "{text}"
    );
}

#[test]
fn health_checks_fail_in_the_new_slot() {
    let esp = Esp::new();
    let mut bl = esp.backend();
    bl.set_try_once(SlotId::B).expect("arm");
    assert_eq!(esp.firmware_boot(), SlotId::B);
    bl.mark_bad(SlotId::B).expect("bad");
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    assert_eq!(esp.firmware_boot(), SlotId::A);
    assert_eq!(esp.firmware_boot(), SlotId::A);
}

#[test]
fn mark_good_makes_the_slot_permanent_and_the_next_update_tries_a() {
    let esp = Esp::new();
    let mut bl = esp.backend();
    bl.set_try_once(SlotId::B).expect("arm");
    assert_eq!(esp.firmware_boot(), SlotId::B);
    // systemd-bless-boot may run before or after the agent's mark_good.
    esp.bless("ota-b");
    bl.mark_good(SlotId::B).expect("good");
    assert_eq!(esp.files(), ["ota-a.conf", "ota-b.conf"]);
    assert_eq!(esp.default_line(), "default ota-b.conf");
    for _ in 0..3 {
        assert_eq!(esp.firmware_boot(), SlotId::B);
        assert_eq!(bl.primary().expect("primary"), SlotId::B);
    }

    // The next release goes to A, which sorts after B: the default decides.
    bl.set_try_once(SlotId::A).expect("arm A");
    assert_eq!(esp.files(), ["ota-a+1-0.conf", "ota-b.conf"]);
    assert_eq!(esp.default_line(), "default ota-a+1-0.conf");
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    assert_eq!(esp.firmware_boot(), SlotId::A);
    bl.mark_good(SlotId::A).expect("good A");
    assert_eq!(esp.files(), ["ota-a.conf", "ota-b.conf"]);
    assert_eq!(esp.firmware_boot(), SlotId::A);

    // And a failing try of B after that falls back to A.
    bl.set_try_once(SlotId::B).expect("arm B");
    assert_eq!(esp.firmware_boot(), SlotId::B);
    assert_eq!(esp.firmware_boot(), SlotId::A);
}

#[test]
fn arming_blesses_the_running_slot_so_the_fallback_is_good() {
    let esp = Esp::new();
    // A still carries a counter from an earlier trial that nothing blessed.
    std::fs::rename(
        esp.entries().join("ota-a.conf"),
        esp.entries().join("ota-a+0-2.conf"),
    )
    .expect("rename");
    let mut bl = esp.backend();
    bl.set_try_once(SlotId::B).expect("arm");
    assert_eq!(esp.files(), ["ota-a.conf", "ota-b+1-0.conf"]);
    assert_eq!(esp.firmware_boot(), SlotId::B);
    assert_eq!(esp.firmware_boot(), SlotId::A);
}

#[test]
fn malformed_entries_are_clear_errors() {
    let esp = Esp::new();
    let bl = esp.backend();
    let path = |n: &str| esp.entries().join(n);

    std::fs::rename(path("ota-b+0-0.conf"), path("ota-b+x.conf")).expect("rename");
    let err = bl.primary().expect_err("malformed counter");
    assert!(matches!(err, BootError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("ota-b+x.conf"), "{err}");

    std::fs::rename(path("ota-b+x.conf"), path("ota-b+1-0.conf")).expect("rename");
    std::fs::write(path("ota-b.conf"), "title duplicate\n").expect("write");
    let err = bl.primary().expect_err("two entries").to_string();
    assert!(
        err.contains("ota-b+1-0.conf, ota-b.conf") && err.contains("exactly one"),
        "{err}"
    );

    std::fs::remove_file(path("ota-b.conf")).expect("rm");
    std::fs::remove_file(path("ota-b+1-0.conf")).expect("rm");
    let err = bl.primary().expect_err("missing").to_string();
    assert!(err.contains("ota-b.conf or ota-b+LEFT-DONE.conf"), "{err}");

    std::fs::write(path("ota-b.conf"), "title B\n").expect("write");
    std::fs::write(esp.loader_conf(), b"default \xff\n").expect("write");
    let err = bl.primary().expect_err("not utf-8").to_string();
    assert!(err.contains("not UTF-8"), "{err}");

    assert!(SystemdBootBootloader::new(esp.entries(), None, "ota+a", "ota-b").is_err());
    assert!(SystemdBootBootloader::new(esp.entries(), None, "ota-a", "OTA-A").is_err());
}

#[test]
fn chosen_from_config() {
    let esp = Esp::new();
    let text = format!(
        r#"
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
backend = "systemd-boot"
esp_entries_dir = "{}"
"#,
        esp.entries().display()
    );
    let config = Config::parse(&text, Path::new("test.toml")).expect("config");
    let mut bl = from_config(&config.boot).expect("backend");
    bl.set_try_once(SlotId::B).expect("arm");
    assert_eq!(esp.files(), ["ota-a.conf", "ota-b+1-0.conf"]);
    assert_eq!(bl.primary().expect("primary"), SlotId::B);
}

/// bootctl reads our entry names with the tries we meant and the same
/// default. bootctl insists on an ESP that is a mount point: the ESP is
/// copied onto a tmpfs in a private mount namespace (needs root).
#[test]
fn bootctl_parses_our_entries() {
    assert!(
        Command::new("bootctl").arg("--version").output().is_ok(),
        "bootctl is not installed: apt-get install systemd-boot (CI's .ci/run does)"
    );
    let esp = Esp::new();
    let mut bl = esp.backend();
    let bootctl_list = |esp: &Esp| -> String {
        let mnt = esp.root().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mnt");
        let script = format!(
            "mount -t tmpfs ota-esp '{m}' && mkdir '{m}/loader' && cp -r '{r}/loader/.' '{m}/loader/' \
             && mkdir -p '{m}/ota/a' '{m}/ota/b' && touch '{m}/ota/a/vmlinuz' '{m}/ota/b/vmlinuz' '{m}/ota/a/initrd.img' '{m}/ota/b/initrd.img' \
             && SYSTEMD_RELAX_ESP_CHECKS=1 bootctl --esp-path='{m}' --no-variables --no-pager list",
            m = mnt.display(),
            r = esp.root().display()
        );
        let out = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .output()
            .expect("unshare (util-linux) runs");
        assert!(
            out.status.success(),
            "bootctl could not list the entries (this test needs root for a private mount): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    // Each block of `bootctl list`: (id, source file name, tries, default?).
    let parse = |text: &str| -> Vec<(String, String, Option<String>, bool)> {
        text.split("\n\n")
            .filter(|b| b.contains("id:"))
            .map(|b| {
                let field = |k: &str| {
                    b.lines()
                        .find_map(|l| l.trim().strip_prefix(k).map(|v| v.trim().to_owned()))
                };
                let source = field("source:").expect("source");
                (
                    field("id:").expect("id"),
                    source.rsplit('/').next().expect("file").to_owned(),
                    field("tries:"),
                    field("title:").is_some_and(|t| t.contains("(default)")),
                )
            })
            .collect()
    };

    bl.set_try_once(SlotId::B).expect("arm");
    let text = bootctl_list(&esp);
    let mut seen = parse(&text);
    seen.sort();
    assert_eq!(
        seen,
        [
            ("ota-a.conf".into(), "ota-a.conf".into(), None, false),
            (
                "ota-b.conf".into(),
                "ota-b+1-0.conf".into(),
                Some("1 left; 0 done".into()),
                true
            ),
        ],
        "{text}"
    );

    assert_eq!(esp.firmware_boot(), SlotId::B);
    bl.mark_bad(SlotId::B).expect("bad");
    let text = bootctl_list(&esp);
    let mut seen = parse(&text);
    seen.sort();
    assert_eq!(
        seen,
        [
            ("ota-a.conf".into(), "ota-a.conf".into(), None, true),
            (
                "ota-b.conf".into(),
                "ota-b+0-1.conf".into(),
                Some("0 left; 1 done".into()),
                false
            ),
        ],
        "{text}"
    );
}

// ---- custom backend ------------------------------------------------------

/// The shipped example script with its state in a temp dir.
fn custom(dir: &Path) -> CustomBootloader {
    let script = repo_file("boot/custom/bootloader-custom.sh");
    CustomBootloader::new(
        vec![
            "env".into(),
            format!("OTA_CUSTOM_STATE={}", dir.join("state").display()),
            format!("OTA_CUSTOM_CMDLINE={}", dir.join("cmdline").display()),
            "sh".into(),
            script.display().to_string(),
        ],
        Duration::from_secs(10),
    )
    .expect("custom")
}

#[test]
fn custom_script_follows_rauc_semantics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bl = custom(dir.path());
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    assert_eq!(bl.get_state(SlotId::B).expect("state"), SlotState::Bad);

    bl.set_try_once(SlotId::B).expect("arm");
    assert_eq!(bl.get_state(SlotId::B).expect("state"), SlotState::Good);
    assert_eq!(bl.primary().expect("primary"), SlotId::B);

    bl.mark_bad(SlotId::B).expect("bad");
    assert_eq!(bl.get_state(SlotId::B).expect("state"), SlotState::Bad);
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    let state = std::fs::read_to_string(dir.path().join("state")).expect("state");
    // The script reports A as primary because B is bad: no set-primary needed.
    assert_eq!(state, "PRIMARY=B\nA_STATE=good\nB_STATE=bad\n");

    bl.set_try_once(SlotId::B).expect("arm again");
    bl.mark_good(SlotId::B).expect("good");
    assert_eq!(bl.primary().expect("primary"), SlotId::B);
    assert_eq!(bl.get_state(SlotId::A).expect("state"), SlotState::Good);

    std::fs::write(dir.path().join("cmdline"), "quiet ota.slot=B rw\n").expect("cmdline");
    assert_eq!(bl.get_current().expect("current"), SlotId::B);
}

#[test]
fn custom_chosen_from_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = repo_file("boot/custom/bootloader-custom.sh");
    let text = format!(
        r#"
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
backend = "custom"
custom_command = ["env", "OTA_CUSTOM_STATE={}", "sh", "{}"]
custom_timeout_secs = 5
"#,
        dir.path().join("state").display(),
        script.display()
    );
    let config = Config::parse(&text, Path::new("test.toml")).expect("config");
    let mut bl = from_config(&config.boot).expect("backend");
    bl.mark_good(SlotId::B).expect("good");
    assert_eq!(bl.primary().expect("primary"), SlotId::B);
}

fn sh(script: &str, timeout: Duration) -> CustomBootloader {
    CustomBootloader::new(
        vec!["sh".into(), "-c".into(), script.into(), "custom".into()],
        timeout,
    )
    .expect("custom")
}

#[test]
fn custom_failures_are_clear_errors() {
    let secs = Duration::from_secs(5);
    let err = sh("echo 'no such slot' >&2; exit 3", secs)
        .primary()
        .expect_err("exit 3")
        .to_string();
    assert!(
        err.contains("exited with status 3: no such slot") && err.contains("get-primary"),
        "{err}"
    );

    let err = sh("echo C", secs).primary().expect_err("C").to_string();
    assert!(err.contains("printed \"C\", expected A or B"), "{err}");

    let err = sh("echo maybe", secs)
        .get_state(SlotId::A)
        .expect_err("maybe")
        .to_string();
    assert!(err.contains("expected good or bad"), "{err}");

    let err = sh("head -c 10000 /dev/zero | tr '\\0' A", secs)
        .primary()
        .expect_err("too much")
        .to_string();
    assert!(err.contains("more than 4096 bytes"), "{err}");

    let missing = CustomBootloader::new(vec!["/nonexistent/bootloader".into()], secs)
        .expect("custom")
        .primary()
        .expect_err("missing");
    assert!(matches!(missing, BootError::Io { .. }), "{missing}");

    assert!(CustomBootloader::new(vec![], secs).is_err());
}

#[test]
fn custom_command_is_killed_after_its_timeout() {
    let start = Instant::now();
    let err = sh("sleep 30; echo A", Duration::from_secs(1))
        .primary()
        .expect_err("timeout")
        .to_string();
    assert!(err.contains("timed out after 1s"), "{err}");
    // A background child holding stdout open does not hold the agent either.
    let err = sh("sleep 30 & echo A", Duration::from_secs(1))
        .primary()
        .expect_err("held output")
        .to_string();
    assert!(err.contains("left its output open"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}
