//! The U-Boot and GRUB backends cross-checked against the real tools:
//! `mkenvimage` (u-boot-tools), `fw_printenv`/`fw_setenv` (libubootenv-tool)
//! and `grub-editenv` (grub-common). A missing tool fails the test and names
//! the Debian package to install.

use ota_agent::bootloader::{grub, grub_env, uboot, uboot_env};
use ota_agent::bootloader::{BootError, Bootloader};
use ota_agent::slot;

use grub::GrubBootloader;
use grub_env::GrubEnv;
use slot::SlotId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use uboot::UBootBootloader;
use uboot_env::{EnvStore, FwEnvConfig};

/// Runs a tool, failing with the Debian package to install when it is missing.
fn run(tool: &str, package: &str, args: &[&str]) -> std::process::Output {
    match Command::new(tool).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{tool}` is not installed: install the Debian package `{package}` (apt-get install {package})"
        ),
        Err(e) => panic!("running {tool}: {e}"),
    }
}

fn run_ok(tool: &str, package: &str, args: &[&str]) -> String {
    let out = run(tool, package, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

const ENV_SIZE: usize = 0x2000;

/// A U-Boot environment in plain files under a temp dir.
struct UBootEnv {
    dir: tempfile::TempDir,
}

impl UBootEnv {
    /// Makes the environment with `mkenvimage` from `vars` (`name=value` lines).
    fn new(redundant: bool, vars: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = UBootEnv { dir };
        let input = env.path("vars.txt");
        std::fs::write(&input, vars).expect("vars");
        let size = format!("{ENV_SIZE:#x}");
        let image = env.copy_path(0);
        let mut args = vec!["-s", &size, "-o", image.to_str().expect("path")];
        if redundant {
            args.insert(0, "-r");
        }
        args.push(input.to_str().expect("path"));
        run_ok("mkenvimage", "u-boot-tools", &args);
        if redundant {
            // mkenvimage writes one copy; a fresh device has the same in both.
            std::fs::copy(env.copy_path(0), env.copy_path(1)).expect("copy");
        }
        let mut config = format!("# test\n{} 0x0 {ENV_SIZE:#x}\n", env.copy_path(0).display());
        if redundant {
            config += &format!("{} 0 {:x}\n", env.copy_path(1).display(), ENV_SIZE);
        }
        std::fs::write(env.config(), config).expect("config");
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn copy_path(&self, i: usize) -> PathBuf {
        self.path(&format!("env{i}.bin"))
    }

    fn config(&self) -> PathBuf {
        self.path("fw_env.config")
    }

    fn store(&self) -> EnvStore {
        let config = FwEnvConfig::load(&self.config()).expect("config");
        EnvStore::new(config).with_lock_path(Some(self.path("lock")))
    }

    fn backend(&self) -> UBootBootloader {
        UBootBootloader::from_store(self.store(), &self.config())
    }

    /// Our reading of the environment.
    fn ours(&self) -> std::result::Result<BTreeMap<String, String>, String> {
        let loaded = self.store().read().map_err(|e| e.to_string())?;
        Ok(loaded
            .vars
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).expect("name"),
                    String::from_utf8(v.to_vec()).expect("value"),
                )
            })
            .collect())
    }

    /// fw_printenv's reading: `None` when it does not trust the environment.
    fn theirs(&self) -> Option<BTreeMap<String, String>> {
        let config = self.config();
        let out = run(
            "fw_printenv",
            "libubootenv-tool",
            &["-c", config.to_str().expect("path")],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("using default") {
            return None;
        }
        Some(parse_lines(&String::from_utf8(out.stdout).expect("utf-8")))
    }

    fn fw_setenv(&self, name: &str, value: &str) {
        let config = self.config();
        run_ok(
            "fw_setenv",
            "libubootenv-tool",
            &["-c", config.to_str().expect("path"), name, value],
        );
    }

    /// The flag byte of copy `i` (redundant layout).
    fn flag(&self, i: usize) -> u8 {
        std::fs::read(self.copy_path(i)).expect("read")[4]
    }

    fn flip_byte(&self, i: usize, at: usize) {
        let path = self.copy_path(i);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[at] ^= 0xA5;
        std::fs::write(&path, bytes).expect("write");
    }
}

fn parse_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

const BOARD_ENV: &str = "bootcmd=run ota_boot\nbootdelay=2\nbootlimit=1\naltbootcmd=run ota_boot\nkernel_args=console=ttyS0,115200 quiet\n";

#[test]
fn mkenvimage_output_is_read_by_ours_and_theirs_alike() {
    for redundant in [false, true] {
        let env = UBootEnv::new(redundant, BOARD_ENV);
        let ours = env.ours().expect("ours");
        assert_eq!(
            ours["kernel_args"], "console=ttyS0,115200 quiet",
            "value with '='"
        );
        assert_eq!(ours.len(), 5);
        assert_eq!(Some(ours), env.theirs(), "redundant={redundant}");
    }
}

#[test]
fn what_our_backend_writes_fw_printenv_reads_identically() {
    for redundant in [false, true] {
        let env = UBootEnv::new(redundant, BOARD_ENV);
        let mut bl = env.backend();
        bl.set_try_once(SlotId::B).expect("arm");
        let ours = env.ours().expect("ours");
        assert_eq!(ours["BOOT_ORDER"], "B A");
        assert_eq!(ours["BOOT_B_LEFT"], "1");
        assert_eq!(ours["upgrade_available"], "1");
        assert_eq!(ours["bootcount"], "0");
        assert_eq!(ours["bootlimit"], "1");
        assert_eq!(ours["altbootcmd"], "run ota_boot");
        assert_eq!(Some(ours.clone()), env.theirs(), "redundant={redundant}");
        if redundant {
            // mkenvimage -r wrote flag 1 in both; we wrote copy 1 with flag 2.
            assert_eq!((env.flag(0), env.flag(1)), (1, 2));
        }
        // Their write on top of ours, then ours reads theirs.
        env.fw_setenv("BOOT_B_LEFT", "0");
        env.fw_setenv("note", "set by fw_setenv a=b");
        let theirs = env.theirs().expect("theirs");
        assert_eq!(theirs["BOOT_B_LEFT"], "0");
        assert_eq!(Ok(theirs), env.ours());
        assert_eq!(bl.primary().expect("primary"), SlotId::A);
        // And ours again on top of theirs (flags keep counting up).
        bl.mark_good(SlotId::A).expect("good");
        assert_eq!(env.ours(), env.theirs().ok_or("untrusted".to_owned()));
        if redundant {
            // fw_setenv wrote copy 0 (3) then copy 1 (4); we wrote copy 0 (5).
            assert_eq!((env.flag(0), env.flag(1)), (5, 4));
        }
    }
}

#[test]
fn a_corrupt_copy_is_distrusted_by_both() {
    // Redundant: corrupt the current copy; both fall back to the other.
    let env = UBootEnv::new(true, BOARD_ENV);
    env.backend().set_try_once(SlotId::B).expect("arm"); // copy 1 is now current
    let armed = env.ours().expect("ours");
    env.flip_byte(1, 12);
    let ours = env.ours().expect("falls back to copy 0");
    assert_eq!(ours["bootcmd"], "run ota_boot");
    assert!(
        !ours.contains_key("BOOT_ORDER"),
        "copy 0 predates the arming"
    );
    assert_ne!(Ok(armed), env.ours());
    assert_eq!(Some(ours), env.theirs());

    // Single: a bad CRC is untrusted by both (fw_printenv falls back to a default).
    let env = UBootEnv::new(false, BOARD_ENV);
    env.flip_byte(0, 40);
    let err = env.ours().expect_err("bad crc");
    assert!(err.contains("bad CRC"), "{err}");
    assert_eq!(env.theirs(), None);
    let err = env.backend().primary().expect_err("corrupt");
    assert!(matches!(err, BootError::Corrupt { .. }), "{err}");
}

#[test]
fn a_torn_write_leaves_the_other_copy_readable_by_both() {
    let env = UBootEnv::new(true, BOARD_ENV);
    let mut bl = env.backend();
    bl.mark_good(SlotId::A).expect("good"); // writes copy 1 (flag 2)
    let committed = env.ours().expect("ours");
    bl.set_try_once(SlotId::B).expect("arm"); // writes copy 0 (flag 3)
    assert_eq!(env.flag(0), 3);
    // Power cut halfway through that write: the second half of copy 0 is stale.
    let path = env.copy_path(0);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[ENV_SIZE / 2..].fill(0xFF);
    bytes[20..40].fill(0);
    std::fs::write(&path, &bytes).expect("write");
    assert_eq!(env.ours(), Ok(committed.clone()));
    assert_eq!(env.theirs(), Some(committed));
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    // Truncated outright: same.
    std::fs::write(&path, &bytes[..100]).expect("truncate");
    assert!(
        env.ours().is_err(),
        "a short device is an I/O-level error for us"
    );
}

#[test]
fn flag_wrap_around_is_decided_alike() {
    let env = UBootEnv::new(true, "v=old\n");
    let store = env.store();
    // Copy 0: "v=old" flag 0xFF; copy 1: "v=new" flag 0x00 (0xFF + 1 wrapped).
    let write = |i: usize, value: &str, flag: u8| {
        let mut vars = uboot_env::EnvVars::new();
        vars.set("v", value).expect("set");
        let image = uboot_env::encode_copy(&vars, ENV_SIZE, uboot_env::Layout::Redundant, flag)
            .expect("encode");
        std::fs::write(env.copy_path(i), image).expect("write");
    };
    write(0, "old", 0xFF);
    write(1, "new", 0x00);
    assert_eq!(env.ours().expect("ours")["v"], "new");
    assert_eq!(env.theirs().expect("theirs")["v"], "new");
    let loaded = store.read().expect("read");
    assert_eq!((loaded.current, loaded.flag), (1, 0));
    // Our next write goes to copy 0 with flag 1 and wins.
    store
        .modify(|v| v.set("v", "newer").map(drop))
        .expect("modify");
    assert_eq!(env.flag(0), 1);
    assert_eq!(env.theirs().expect("theirs")["v"], "newer");
    // And the mirror image.
    write(0, "b", 0x00);
    write(1, "a", 0xFF);
    assert_eq!(env.ours().expect("ours")["v"], "b");
    assert_eq!(env.theirs().expect("theirs")["v"], "b");
}

#[test]
fn uboot_trait_semantics_over_a_real_environment() {
    let env = UBootEnv::new(true, BOARD_ENV);
    let mut bl = env.backend();
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    bl.set_try_once(SlotId::B).expect("arm");
    bl.set_try_once(SlotId::B).expect("arm again");
    assert_eq!(bl.primary().expect("primary"), SlotId::B);
    bl.mark_bad(SlotId::B).expect("bad");
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    let theirs = env.theirs().expect("theirs");
    assert_eq!(theirs["BOOT_ORDER"], "A B");
    assert_eq!(theirs["BOOT_B_LEFT"], "0");
    assert_eq!(theirs["upgrade_available"], "0");
    bl.set_try_once(SlotId::B).expect("re-arm");
    bl.mark_good(SlotId::B).expect("good");
    assert_eq!(bl.primary().expect("primary"), SlotId::B);
    let theirs = env.theirs().expect("theirs");
    assert_eq!(theirs["BOOT_ORDER"], "B A");
    assert_eq!(theirs["BOOT_B_LEFT"], "3");
    assert_eq!(theirs["bootcount"], "0");
    assert_eq!(theirs["bootdelay"], "2", "board variables untouched");
    assert_eq!(bl.bootlimit().expect("bootlimit"), 1);
}

// ---- GRUB ----

fn editenv(file: &Path, args: &[&str]) -> String {
    let mut all = vec![file.to_str().expect("path")];
    all.extend_from_slice(args);
    run_ok("grub-editenv", "grub-common", &all)
}

#[test]
fn grub_editenv_and_ours_read_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("grubenv");
    editenv(&file, &["create"]);
    assert_eq!(
        std::fs::read(&file).expect("read"),
        GrubEnv::new().encode().expect("encode"),
        "byte-identical empty block"
    );
    assert!(grub_env::read_file(&file)
        .expect("read")
        .iter()
        .next()
        .is_none());

    editenv(&file, &["set", "ORDER=B A", "A_OK=1", "cmd=x=y\\z"]);
    let env = grub_env::read_file(&file).expect("read");
    assert_eq!(env.get_str("ORDER"), Some("B A"));
    assert_eq!(
        env.get_str("cmd"),
        Some("x=y\\z"),
        "'=' and an escaped backslash"
    );
    // Our encoding of what we read is byte-identical to theirs.
    assert_eq!(
        env.encode().expect("encode"),
        std::fs::read(&file).expect("read")
    );

    let mut env = env;
    env.set("B_TRY", "1").expect("set");
    env.set("ORDER", "A B").expect("set");
    env.set("msg", "two\\words=ok").expect("set");
    grub_env::write_file(&file, &env).expect("write");
    let listed = parse_lines(&editenv(&file, &["list"]));
    assert_eq!(
        listed,
        map(&[
            ("ORDER", "A B"),
            ("A_OK", "1"),
            ("cmd", "x=y\\z"),
            ("B_TRY", "1"),
            ("msg", "two\\words=ok")
        ])
    );
    editenv(&file, &["unset", "cmd"]);
    assert_eq!(grub_env::read_file(&file).expect("read").get("cmd"), None);
}

#[test]
fn grub_trait_semantics_over_a_real_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("grubenv");
    editenv(&file, &["create"]);
    let mut bl = GrubBootloader::new(file.clone());
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    bl.set_try_once(SlotId::B).expect("arm");
    bl.set_try_once(SlotId::B).expect("arm again");
    assert_eq!(bl.primary().expect("primary"), SlotId::B);
    let listed = parse_lines(&editenv(&file, &["list"]));
    assert_eq!(listed["ORDER"], "B A");
    assert_eq!(
        (listed["B_OK"].as_str(), listed["B_TRY"].as_str()),
        ("1", "0")
    );
    // grub.cfg boots B and records the try, as `save_env B_TRY` would.
    editenv(&file, &["set", "B_TRY=1"]);
    assert_eq!(
        bl.primary().expect("primary"),
        SlotId::A,
        "falls back after the try"
    );
    bl.mark_bad(SlotId::B).expect("bad");
    assert_eq!(bl.primary().expect("primary"), SlotId::A);
    let listed = parse_lines(&editenv(&file, &["list"]));
    assert_eq!(
        (listed["ORDER"].as_str(), listed["B_OK"].as_str()),
        ("A B", "0")
    );

    bl.set_try_once(SlotId::B).expect("re-arm");
    editenv(&file, &["set", "B_TRY=1"]);
    bl.mark_good(SlotId::B).expect("good");
    assert_eq!(bl.primary().expect("primary"), SlotId::B);
    let listed = parse_lines(&editenv(&file, &["list"]));
    assert_eq!(
        (
            listed["ORDER"].as_str(),
            listed["B_OK"].as_str(),
            listed["B_TRY"].as_str()
        ),
        ("B A", "1", "0")
    );

    // A block of another size is refused with a clear error.
    std::fs::write(&file, vec![b'#'; 2048]).expect("write");
    let err = bl.primary().expect_err("size").to_string();
    assert!(err.contains("not 1024"), "{err}");
}

// ---- the shipped boot scripts ----

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[test]
fn shipped_grub_cfg_parses_and_uses_the_backends_variables() {
    let cfg = repo_file("boot/grub/grub.cfg");
    run_ok(
        "grub-script-check",
        "grub-common",
        &[cfg.to_str().expect("path")],
    );
    let text = std::fs::read_to_string(&cfg).expect("grub.cfg");
    for needle in [
        "load_env ORDER A_OK A_TRY B_OK B_TRY",
        "save_env ORDER A_OK A_TRY B_OK B_TRY",
        "ota.slot=A",
        "ota.slot=B",
    ] {
        assert!(text.contains(needle), "grub.cfg lacks {needle:?}");
    }
}

#[test]
fn shipped_boot_cmd_packs_and_uses_the_backends_variables() {
    let cmd = repo_file("boot/uboot/boot.cmd");
    let dir = tempfile::tempdir().expect("tempdir");
    let scr = dir.path().join("boot.scr");
    run_ok(
        "mkimage",
        "u-boot-tools",
        &[
            "-A",
            "arm64",
            "-T",
            "script",
            "-C",
            "none",
            "-n",
            "OTA A/B",
            "-d",
            cmd.to_str().expect("path"),
            scr.to_str().expect("path"),
        ],
    );
    let text = std::fs::read_to_string(&cmd).expect("boot.cmd");
    for needle in [
        "BOOT_ORDER",
        "BOOT_A_LEFT",
        "BOOT_B_LEFT",
        "saveenv",
        "ota.slot=${ota_slot}",
    ] {
        assert!(text.contains(needle), "boot.cmd lacks {needle:?}");
    }
}
