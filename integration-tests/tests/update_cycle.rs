//! The whole update cycle over the real binaries: ota-repo signs and
//! publishes, ota-server serves, ota-agent on simulated devices installs,
//! reboots, health-checks, commits or rolls back.

use integration_tests::device::RunEnd;
use integration_tests::fixture::{Fixture, HARDWARE_ID};
use ota_agent::slot::SlotId;
use ota_common::wire::UpdateStatus;
use std::time::Duration;

fn statuses(fx: &Fixture, device: &str) -> Vec<UpdateStatus> {
    fx.server
        .events(device)
        .expect("events")
        .into_iter()
        .map(|e| e.status)
        .collect()
}

#[test]
fn update_installs_reboots_and_commits() {
    let fx = Fixture::new().expect("fixture");
    let image = fx
        .release("1.1.0", true, 300 * 1024, &[HARDWARE_ID])
        .expect("release 1.1.0");
    let dev = fx.device("dev-1").expect("device");

    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(boots.len(), 2, "one reboot into the new slot: {boots:?}");
    assert_eq!(boots[0].slot, SlotId::A);
    assert_eq!(boots[0].end, RunEnd::RebootRequested);
    assert_eq!(boots[1].slot, SlotId::B);
    assert_eq!(
        dev.running_release().expect("release").as_deref(),
        Some("1.1.0")
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::B)).expect("slot B"),
        std::fs::read(&image).expect("image"),
        "slot B holds exactly the signed image"
    );

    // The new slot is now the permanent default: a plain power cycle boots it again.
    assert_eq!(dev.power_on().expect("power on"), SlotId::B);

    let record = fx
        .server
        .devices()
        .expect("devices")
        .into_iter()
        .find(|d| d.device_id == "dev-1")
        .expect("device recorded");
    assert_eq!(record.installed_version, "1.1.0");
    assert_eq!(record.hardware_id, HARDWARE_ID);
    let seen = statuses(&fx, "dev-1");
    for stage in [
        UpdateStatus::Downloading,
        UpdateStatus::Installed,
        UpdateStatus::Rebooting,
        UpdateStatus::Committed,
    ] {
        assert!(seen.contains(&stage), "{stage} not reported: {seen:?}");
    }
}

#[test]
fn failing_health_check_rolls_back_by_itself() {
    let fx = Fixture::new().expect("fixture");
    fx.release("1.1.0", false, 128 * 1024, &[HARDWARE_ID])
        .expect("release");
    let dev = fx.device("dev-1").expect("device");

    let boots = dev.run_until_settled(5).expect("settles");
    let slots: Vec<SlotId> = boots.iter().map(|b| b.slot).collect();
    assert_eq!(slots, vec![SlotId::A, SlotId::B, SlotId::A], "{boots:?}");
    assert_eq!(
        dev.running_release().expect("release").as_deref(),
        Some("1.0.0")
    );
    assert_eq!(
        dev.power_on().expect("power on"),
        SlotId::A,
        "bad slot stays out"
    );

    let events = fx.server.events("dev-1").expect("events");
    let rollback = events
        .iter()
        .find(|e| e.status == UpdateStatus::RolledBack)
        .expect("rollback reported");
    assert!(
        rollback.reason.as_deref().unwrap_or("").contains("app"),
        "the reason names the failed check: {rollback:?}"
    );
    assert!(!statuses(&fx, "dev-1").contains(&UpdateStatus::Committed));

    // The failed release is not retried on the next poll.
    let boots = dev.run_until_settled(2).expect("settles again");
    assert_eq!(boots.len(), 1, "no new install attempt: {boots:?}");
}

#[test]
fn power_cut_during_download_keeps_old_slot_and_next_poll_completes() {
    let fx = Fixture::new().expect("fixture");
    let size = 4 * 1024 * 1024;
    fx.release("1.1.0", true, size, &[HARDWARE_ID])
        .expect("release");
    // 1 MiB/s through the proxy: the download takes about four seconds.
    let proxy = integration_tests::proxy::Proxy::start(&fx.server.url, 1024 * 1024).expect("proxy");
    let dev = fx.device_at("dev-1", &proxy.url).expect("device");

    assert_eq!(dev.power_on().expect("boot"), SlotId::A);
    let slot_b = dev.slot_path(SlotId::B);
    let end = dev
        .run_agent_until(Duration::from_secs(60), |_| {
            std::fs::metadata(&slot_b)
                .map(|m| m.len() > 512 * 1024)
                .unwrap_or(false)
        })
        .expect("run");
    assert_eq!(end, RunEnd::PowerCut, "killed mid-download");
    let written = std::fs::metadata(&slot_b).expect("slot B").len();
    assert!(
        written < size as u64,
        "download was cut short ({written} bytes)"
    );

    // Power comes back: the bootloader was never touched, so slot A boots.
    proxy
        .rate
        .store(64 * 1024 * 1024, std::sync::atomic::Ordering::Relaxed);
    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(
        boots[0].slot,
        SlotId::A,
        "old slot boots after the power cut"
    );
    assert_eq!(boots.last().expect("boot").slot, SlotId::B);
    assert_eq!(
        dev.running_release().expect("release").as_deref(),
        Some("1.1.0")
    );
}

#[test]
fn tampered_image_is_rejected_and_reported() {
    let fx = Fixture::new().expect("fixture");
    fx.release("1.1.0", true, 128 * 1024, &[HARDWARE_ID])
        .expect("release");
    // Flip one byte of every stored copy of the image on the server. The
    // copies are hard links of one file: replace each name with its own
    // tampered file so no flip undoes another.
    let targets = fx.server.repository_dir().join("targets");
    for entry in std::fs::read_dir(&targets).expect("targets dir") {
        let path = entry.expect("entry").path();
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::remove_file(&path).expect("unlink");
        std::fs::write(&path, bytes).expect("tamper");
    }
    let dev = fx.device("dev-1").expect("device");
    let slot_a_before = std::fs::read(dev.slot_path(SlotId::A)).expect("slot A");

    assert_eq!(dev.power_on().expect("boot"), SlotId::A);
    let end = dev
        .run_agent_until(Duration::from_secs(60), |_| false)
        .expect("run");
    assert_ne!(
        end,
        RunEnd::RebootRequested,
        "no reboot into a tampered image"
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::A)).expect("slot A"),
        slot_a_before,
        "active slot untouched"
    );
    assert_eq!(
        dev.power_on().expect("boot"),
        SlotId::A,
        "bootloader untouched"
    );
    let events = fx.server.events("dev-1").expect("events");
    let failed = events
        .iter()
        .find(|e| e.status == UpdateStatus::Failed)
        .expect("failure reported");
    let reason = failed.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("sha256") || reason.contains("sha512") || reason.contains("hash"),
        "reason names the hash mismatch: {reason}"
    );
}

#[test]
fn tampered_metadata_is_rejected() {
    let fx = Fixture::new().expect("fixture");
    fx.release("1.1.0", true, 64 * 1024, &[HARDWARE_ID])
        .expect("release");
    // Raise the snapshot version the timestamp points at without re-signing.
    let ts_path = fx.server.repository_dir().join("metadata/timestamp.json");
    let text = std::fs::read_to_string(&ts_path).expect("timestamp");
    let mut ts: serde_json::Value = serde_json::from_str(&text).expect("json");
    let v = ts["signed"]["version"].as_u64().expect("version");
    ts["signed"]["version"] = serde_json::json!(v + 1);
    let tampered = serde_json::to_vec(&ts).expect("encode");
    std::fs::write(&ts_path, &tampered).expect("tamper");
    // Written behind the server's back, the file reaches what it serves at
    // its next refresh of the published metadata (at most a second).
    let client = integration_tests::server::http_client().expect("client");
    let url = format!("{}/metadata/timestamp.json", fx.server.url);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let served = client.get(&url).send().and_then(|r| r.bytes());
        if served.as_deref().ok() == Some(&tampered[..]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never served the tampered timestamp"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let dev = fx.device("dev-1").expect("device");
    dev.power_on().expect("boot");
    let end = dev
        .run_agent_until(Duration::from_secs(60), |_| false)
        .expect("run");
    assert_ne!(end, RunEnd::RebootRequested);
    assert_eq!(
        dev.running_release().expect("release").as_deref(),
        Some("1.0.0")
    );
    assert!(
        std::fs::metadata(dev.slot_path(SlotId::B))
            .expect("slot B")
            .len()
            == 0,
        "nothing written to the inactive slot"
    );
    let events = fx.server.events("dev-1").expect("events");
    assert!(
        events.iter().any(|e| e.status == UpdateStatus::Failed
            && e.reason.as_deref().unwrap_or("").contains("timestamp")),
        "failure naming the timestamp role reported: {events:?}"
    );
}

#[test]
fn expired_metadata_is_rejected() {
    let fx = Fixture::new().expect("fixture");
    fx.release("1.1.0", true, 64 * 1024, &[HARDWARE_ID])
        .expect("release");
    fx.repo
        .run(&[
            "resign",
            "--role",
            "timestamp",
            "--expires",
            "timestamp=2020-01-01T00:00:00Z",
            "--allow-expired",
        ])
        .expect("resign expired");
    fx.repo.publish(&fx.server).expect("publish");

    let dev = fx.device("dev-1").expect("device");
    dev.power_on().expect("boot");
    let end = dev
        .run_agent_until(Duration::from_secs(60), |_| false)
        .expect("run");
    assert_ne!(end, RunEnd::RebootRequested);
    assert_eq!(
        dev.running_release().expect("release").as_deref(),
        Some("1.0.0")
    );
    let events = fx.server.events("dev-1").expect("events");
    assert!(
        events.iter().any(|e| e.status == UpdateStatus::Failed
            && e.reason.as_deref().unwrap_or("").contains("expired")),
        "expiry reported: {events:?}"
    );
}

#[test]
fn incompatible_hardware_and_lower_versions_are_not_installed() {
    let fx = Fixture::new().expect("fixture");
    fx.release("2.0.0", true, 64 * 1024, &["board-rev-b"])
        .expect("other board's release");
    fx.release("0.9.0", true, 64 * 1024, &[HARDWARE_ID])
        .expect("older release");
    let dev = fx.device("dev-1").expect("device");
    let boots = dev.run_until_settled(2).expect("settles");
    assert_eq!(boots.len(), 1, "no reboot: {boots:?}");
    assert_eq!(
        dev.running_release().expect("release").as_deref(),
        Some("1.0.0")
    );
    assert!(
        std::fs::metadata(dev.slot_path(SlotId::B))
            .expect("slot B")
            .len()
            == 0
    );
    let seen = statuses(&fx, "dev-1");
    assert!(!seen.contains(&UpdateStatus::Downloading), "{seen:?}");
}
