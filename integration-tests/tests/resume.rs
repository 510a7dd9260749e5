//! Resumable downloads over the real binaries: the agent picks an image
//! download up where it broke off, with an HTTP Range request, both when the
//! network drops within a poll and after the agent itself was killed.

use integration_tests::device::{RunEnd, SimDevice};
use integration_tests::fixture::{Fixture, HARDWARE_ID};
use integration_tests::proxy::Proxy;
use ota_agent::slot::SlotId;
use ota_common::wire::UpdateStatus;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Short retry waits and frequent checkpoints, so the tests stay fast.
fn tune_downloads(dev: &SimDevice) {
    let path = dev.config_path();
    let mut text = std::fs::read_to_string(&path).expect("config");
    text.push_str(
        "\n[download]\nretries = 5\nretry_initial_ms = 50\nretry_max_ms = 400\ncheckpoint_bytes = 262144\ncheckpoint_interval_ms = 0\n",
    );
    std::fs::write(&path, text).expect("write config");
}

/// The first byte of each `bytes=N-` Range header.
fn range_starts(proxy: &Proxy) -> Vec<u64> {
    proxy
        .range_requests()
        .iter()
        .filter_map(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
        .collect()
}

#[test]
fn dropped_connection_is_resumed_within_the_same_poll() {
    let fx = Fixture::new().expect("fixture");
    let size = 3 * 1024 * 1024;
    let image = fx
        .release("1.1.0", true, size, &[HARDWARE_ID])
        .expect("release");
    let proxy = Proxy::start(&fx.server.url, 256 * 1024 * 1024).expect("proxy");
    // The connection carrying the image is cut half way in, past the
    // first 1 MiB install chunk.
    proxy.cut_after.store(size as u64 / 2, Ordering::Relaxed);
    let dev = fx.device_at("dev-1", &proxy.url).expect("device");
    tune_downloads(&dev);

    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(boots.len(), 2, "{boots:?}\n{}", dev.log_tail());
    assert_eq!(
        boots[0].end,
        RunEnd::RebootRequested,
        "the poll that lost its connection still completed"
    );
    assert_eq!(
        proxy.cut_after.load(Ordering::Relaxed),
        0,
        "the cut happened"
    );
    let starts = range_starts(&proxy);
    assert_eq!(starts.len(), 1, "one resumed request: {starts:?}");
    assert!(
        starts[0] > 0 && starts[0] < size as u64,
        "resumed mid-image: {starts:?}"
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::B)).expect("slot B"),
        std::fs::read(&image).expect("image")
    );
    assert_eq!(
        dev.running_release().expect("release").as_deref(),
        Some("1.1.0")
    );
    let events = fx.server.events("dev-1").expect("events");
    assert!(
        !events.iter().any(|e| e.status == UpdateStatus::Failed),
        "a resumed download is not a failure: {events:?}"
    );
}

#[test]
fn killed_agent_resumes_from_its_checkpoint() {
    let fx = Fixture::new().expect("fixture");
    let size = 4 * 1024 * 1024;
    let image = fx
        .release("1.1.0", true, size, &[HARDWARE_ID])
        .expect("release");
    // 2 MiB/s: the download takes about two seconds.
    let proxy = Proxy::start(&fx.server.url, 2 * 1024 * 1024).expect("proxy");
    let dev = fx.device_at("dev-1", &proxy.url).expect("device");
    tune_downloads(&dev);

    assert_eq!(dev.power_on().expect("boot"), SlotId::A);
    let checkpoint = |d: &SimDevice| -> u64 {
        std::fs::read(d.dir.join("state/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|s| s["phase"]["checkpoint"].as_u64())
            .unwrap_or(0)
    };
    let end = dev
        .run_agent_until(Duration::from_secs(60), |d| checkpoint(d) >= 1024 * 1024)
        .expect("run");
    assert_eq!(end, RunEnd::PowerCut, "SIGKILLed mid-download");
    let saved = checkpoint(&dev);
    assert!(saved > 0 && saved < size as u64, "checkpoint {saved}");
    assert!(range_starts(&proxy).is_empty(), "first run started at 0");

    let sent_before = proxy.sent.load(Ordering::Relaxed);
    proxy.rate.store(256 * 1024 * 1024, Ordering::Relaxed);
    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(boots[0].slot, SlotId::A, "the bootloader was never touched");
    assert_eq!(boots.last().expect("boot").slot, SlotId::B);
    assert_eq!(
        dev.running_release().expect("release").as_deref(),
        Some("1.1.0")
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::B)).expect("slot B"),
        std::fs::read(&image).expect("image")
    );
    // The second run asked for the rest from the checkpoint, and moved less than the image.
    let starts = range_starts(&proxy);
    assert_eq!(starts, [saved], "resumed at the durable checkpoint");
    let sent_after = proxy.sent.load(Ordering::Relaxed) - sent_before;
    assert!(
        sent_after < size as u64,
        "second run transferred {sent_after} bytes, image is {size}"
    );
}
