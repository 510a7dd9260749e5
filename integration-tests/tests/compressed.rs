//! Compressed releases over the real binaries: `ota-repo add --compress`
//! signs the compressed file and its decoded image, `ota-server` serves the
//! compressed bytes, `ota-agent` decodes them into the inactive slot while
//! verifying both, commits, and `ota-agent verify` checks the slot against
//! the signed decoded image. A decompression bomb and a truncated stream
//! served in place of a signed release are refused with the running slot
//! untouched.

use integration_tests::device::{RunEnd, SimDevice};
use integration_tests::fixture::{Fixture, HARDWARE_ID};
use integration_tests::image::write_image;
use ota_agent::slot::SlotId;
use ota_common::wire::UpdateStatus;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A compressible image: the test header, then long runs of one byte.
fn compressible_image(path: &Path, version: &str, size: usize) {
    write_image(path, version, true, 4096).expect("header");
    let mut bytes = std::fs::read(path).expect("image");
    bytes.truncate(64);
    bytes.extend((bytes.len()..size).map(|i| (i / 5000 % 13) as u8));
    std::fs::write(path, bytes).expect("image");
}

/// Adds and publishes `version` with `ota-repo add` and the extra `args`.
fn release(fx: &Fixture, version: &str, size: usize, args: &[&str]) -> PathBuf {
    let image = fx.dir.path().join(format!("rootfs-{version}.img"));
    compressible_image(&image, version, size);
    fx.repo
        .add_with(&image, version, &[HARDWARE_ID], args)
        .expect("ota-repo add");
    fx.repo.publish(&fx.server).expect("publish");
    image
}

/// The files the server serves for `target` (its sha256 and sha512 names).
fn served_files(fx: &Fixture, target: &str) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = std::fs::read_dir(fx.server.repository_dir().join("targets"))
        .expect("targets dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(&format!(".{target}")))
        .collect();
    assert!(!files.is_empty(), "no served copy of {target}");
    files
}

fn verify(dev: &SimDevice) -> (bool, String) {
    let out = Command::new(integration_tests::bins::path("ota-agent").expect("agent"))
        .arg("--config")
        .arg(dev.config_path())
        .arg("verify")
        .output()
        .expect("ota-agent verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn tune_downloads(dev: &SimDevice) {
    dev.append_config(
        "\n[download]\nretries = 2\nretry_initial_ms = 50\nretry_max_ms = 100\ncheckpoint_bytes = 65536\ncheckpoint_interval_ms = 0\n",
    )
    .expect("config");
}

#[test]
fn zstd_gzip_and_xz_releases_install_commit_and_verify() {
    let fx = Fixture::new().expect("fixture");
    let size = 3 * 1024 * 1024 + 12_345;
    let zstd = release(&fx, "1.1.0", size, &["--frame-size", "1048576"]);
    let metadata: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fx.repo.dir.join("metadata").join("targets.json"))
            .or_else(|_| {
                // Only versioned names exist with consistent snapshots.
                let dir = fx.repo.dir.join("metadata");
                let newest = std::fs::read_dir(&dir)
                    .expect("metadata")
                    .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".targets.json"))
                    .max_by_key(|n| {
                        n.split('.')
                            .next()
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0)
                    })
                    .expect("a targets version");
                std::fs::read(dir.join(newest))
            })
            .expect("targets metadata"),
    )
    .expect("json");
    let target = &metadata["signed"]["targets"]["rootfs-1.1.0.img"];
    let payload = &target["custom"]["payload"];
    assert_eq!(payload["encoding"], "zstd", "{target}");
    assert_eq!(payload["image_length"], size as u64);
    assert_eq!(payload["frames"].as_array().map(Vec::len), Some(4));
    assert!(
        target["length"].as_u64().expect("length") < size as u64 / 10,
        "the signed target is the compressed file: {target}"
    );

    let dev = fx.device("dev-zstd").expect("device");
    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(boots.len(), 2, "{boots:?}\n{}", dev.log_tail());
    assert_eq!(boots[1].slot, SlotId::B);
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::B)).expect("slot B"),
        std::fs::read(&zstd).expect("image"),
        "slot B holds exactly the decoded image"
    );
    let (ok, report) = verify(&dev);
    assert!(ok, "ota-agent verify: {report}");
    assert!(report.contains("verified"), "{report}");

    // The next release as gzip: installed into slot A, from slot B.
    let gzip = release(&fx, "1.2.0", size, &["--compress", "gzip"]);
    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(
        boots.last().map(|b| b.slot),
        Some(SlotId::A),
        "{boots:?}\n{}",
        dev.log_tail()
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::A)).expect("slot A"),
        std::fs::read(&gzip).expect("image")
    );
    let (ok, report) = verify(&dev);
    assert!(ok, "ota-agent verify: {report}");

    // And as xz: back into slot B.
    let xz = release(&fx, "1.3.0", size, &["--compress", "xz"]);
    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(
        boots.last().map(|b| b.slot),
        Some(SlotId::B),
        "{boots:?}\n{}",
        dev.log_tail()
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::B)).expect("slot B"),
        std::fs::read(&xz).expect("image")
    );
    let (ok, report) = verify(&dev);
    assert!(ok, "ota-agent verify: {report}");
    let seen: Vec<UpdateStatus> = fx
        .server
        .events("dev-zstd")
        .expect("events")
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(
        seen.iter()
            .filter(|s| **s == UpdateStatus::Committed)
            .count(),
        3,
        "{seen:?}"
    );
}

/// Runs one poll that must fail; returns the failure reason reported.
fn failed_poll(fx: &Fixture, dev: &SimDevice) -> String {
    assert_eq!(dev.power_on().expect("boot"), SlotId::A);
    let end = dev
        .run_agent_until(Duration::from_secs(60), |_| false)
        .expect("run");
    assert!(matches!(end, RunEnd::Exited(_)), "{end:?}");
    assert_eq!(
        dev.running_release().expect("release").as_deref(),
        Some("1.0.0"),
        "still on the factory image"
    );
    assert_eq!(
        dev.power_on().expect("boot"),
        SlotId::A,
        "bootloader untouched"
    );
    fx.server
        .events(&dev.id)
        .expect("events")
        .into_iter()
        .rev()
        .find(|e| e.status == UpdateStatus::Failed)
        .and_then(|e| e.reason)
        .unwrap_or_else(|| panic!("no failure reported\n{}", dev.log_tail()))
}

#[test]
fn a_served_bomb_or_truncated_stream_is_refused_and_the_running_slot_kept() {
    let fx = Fixture::new().expect("fixture");
    // Incompressible, so each signed frame is about as long as its image
    // bytes and the bomb below fits in the first one.
    let image = fx.dir.path().join("rootfs-1.1.0.img");
    write_image(&image, "1.1.0", true, 2 * 1024 * 1024).expect("image");
    fx.repo
        .add_with(&image, "1.1.0", &[HARDWARE_ID], &["--frame-size", "262144"])
        .expect("add");
    fx.repo.publish(&fx.server).expect("publish");
    let served = served_files(&fx, "rootfs-1.1.0.img");
    let genuine = std::fs::read(&served[0]).expect("served");

    // A bomb: one zstd frame of 8 MiB of zeros (an 8 MiB window, within the
    // device's limit) from a scratch repository, served in place of the
    // signed release; its first frame is signed to decode to 256 KiB.
    let scratch = integration_tests::repo::Repo::init(&fx.dir.path().join("scratch"), &[])
        .expect("scratch repo");
    let zeros = fx.dir.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 8 * 1024 * 1024]).expect("zeros");
    scratch
        .add_with(&zeros, "9.9.9", &["x"], &["--frame-size", "8388608"])
        .expect("bomb");
    let bomb = std::fs::read_dir(scratch.dir.join("targets"))
        .expect("scratch targets")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().ends_with(".zeros.img"))
        .map(|p| std::fs::read(p).expect("bomb"))
        .expect("bomb file");
    assert!(bomb.len() < 4096, "{} bytes", bomb.len());
    for f in &served {
        std::fs::write(f, &bomb).expect("serve the bomb");
    }
    let dev = fx.device("dev-bomb").expect("device");
    tune_downloads(&dev);
    let reason = failed_poll(&fx, &dev);
    assert!(
        reason.contains("decompression bomb") && reason.contains("262144"),
        "{reason}\n{}",
        dev.log_tail()
    );
    let slot_b = std::fs::metadata(dev.slot_path(SlotId::B)).map_or(0, |m| m.len());
    assert!(slot_b <= 262_144, "cut off at the signed size: {slot_b}");

    // Truncated: the server has only the first half of the release.
    for f in &served {
        std::fs::write(f, &genuine[..genuine.len() / 2]).expect("truncate");
    }
    let dev = fx.device("dev-short").expect("device");
    tune_downloads(&dev);
    let reason = failed_poll(&fx, &dev);
    assert!(
        reason.contains("stream ended") || reason.contains("416"),
        "{reason}\n{}",
        dev.log_tail()
    );

    // The whole release served again: the next poll installs and commits
    // the signed image.
    for f in &served {
        std::fs::write(f, &genuine).expect("restore");
    }
    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(
        boots.last().map(|b| b.slot),
        Some(SlotId::B),
        "{boots:?}\n{}",
        dev.log_tail()
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::B)).expect("slot B"),
        std::fs::read(&image).expect("image")
    );
}
