//! Delta releases over the real binaries: `ota-repo add --delta` signs a
//! chunk index and stores the chunks, `ota-repo publish` uploads them to
//! `ota-server`, and `ota-agent` builds the new slot from its running slot
//! plus the chunks it lacks, then verifies the whole slot against the
//! signed image. A device running a delta release plans from that
//! release's signed index, without scanning its slot. Chunk requests
//! overlap (several in flight, seen by the proxy) and arrive in order. A
//! tampered chunk in the middle of those in flight, a tampered index, or an
//! unreachable chunk store makes it install the full image instead, with
//! the running slot untouched and the reason in the server's events for
//! the device; a crash mid-delta, or a SIGKILL, resumes as a delta from its
//! checkpoint; a delta that would not save enough is not attempted; a
//! repository in S3 serves the chunks as cacheably as a local one.

use integration_tests::device::{CrashRunEnd, RunEnd, SimDevice};
use integration_tests::fixture::{Fixture, HARDWARE_ID};
use integration_tests::proxy::Proxy;
use integration_tests::s3::S3Server;
use ota_agent::slot::SlotId;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

const SIZE: usize = 4 * 1024 * 1024;

/// A release image: the test header, then pseudo-random bytes from `seed`
/// (incompressible, so only sharing chunks makes a delta cheap), with
/// `edits` (offset, length) overwritten by bytes of their own.
fn image(path: &Path, version: &str, seed: u64, edits: &[(usize, usize)]) {
    let header = format!("release={version}\nhealth=ok\n");
    let mut bytes = header.into_bytes();
    let mut state = seed | 1;
    while bytes.len() < SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.push(state as u8);
    }
    for &(at, len) in edits {
        for (i, b) in bytes[at..at + len].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ 0x5a;
        }
    }
    std::fs::write(path, bytes).expect("image");
}

fn release(fx: &Fixture, version: &str, seed: u64, edits: &[(usize, usize)]) -> PathBuf {
    let path = fx.dir.path().join(format!("rootfs-{version}.img"));
    image(&path, version, seed, edits);
    fx.repo
        .add_with(
            &path,
            version,
            &[HARDWARE_ID],
            &["--compress", "none", "--delta"],
        )
        .expect("ota-repo add --delta");
    if let Err(e) = fx.repo.publish(&fx.server) {
        let log = std::fs::read_to_string(&fx.server.log).unwrap_or_default();
        panic!("publish: {e:#}\nserver log:\n{log}");
    }
    path
}

/// The agent's log without its colour escapes.
fn agent_log(dev: &SimDevice) -> String {
    let raw = std::fs::read_to_string(dev.dir.join("agent.log")).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The bytes the agent says the last delta install fetched.
fn fetched_bytes(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find(|l| l.contains("delta image written"))?
        .split("fetched_bytes=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The number after `key` on the last log line containing `marker`.
fn logged_number(log: &str, marker: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find(|l| l.contains(marker))?
        .split(key)
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A device running 1.1.0 in slot B (installed in full from the factory
/// image: a delta from unrelated bytes would not pay).
fn device_on_1_1(fx: &Fixture, id: &str, v11: &Path) -> SimDevice {
    device_on_1_1_at(fx, id, v11, &fx.server.url)
}

/// [`device_on_1_1`] talking to the server at `url` (a proxy).
fn device_on_1_1_at(fx: &Fixture, id: &str, v11: &Path, url: &str) -> SimDevice {
    let dev = fx.device_at(id, url).expect("device");
    dev.append_config("\n[download]\nretries = 1\nretry_initial_ms = 50\nretry_max_ms = 100\ncheckpoint_bytes = 262144\ncheckpoint_interval_ms = 0\n")
        .expect("config");
    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(
        boots.last().map(|b| b.slot),
        Some(SlotId::B),
        "{}",
        dev.log_tail()
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::B)).expect("B"),
        std::fs::read(v11).expect("img")
    );
    let log = agent_log(&dev);
    assert!(
        log.contains("installing the full image instead of the delta")
            && log.contains("would fetch"),
        "the first release must fall back: nothing is shared with the factory image\n{log}"
    );
    dev
}

/// Runs the device until it settles on slot A holding `image`, with slot B
/// (the running slot during the install) still holding `running`.
fn settles_on(dev: &SimDevice, image: &Path, running: &[u8]) {
    let boots = dev.run_until_settled(4).expect("settles");
    assert_eq!(
        boots.last().map(|b| b.slot),
        Some(SlotId::A),
        "{boots:?}\n{}",
        dev.log_tail()
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::A)).expect("A"),
        std::fs::read(image).expect("img")
    );
    assert_eq!(
        std::fs::read(dev.slot_path(SlotId::B)).expect("B"),
        running,
        "the running slot was written"
    );
}

fn served_chunks(fx: &Fixture) -> Vec<PathBuf> {
    chunks_under(&fx.server.repository_dir().join("targets"))
}

/// Every file of the chunk store under a repository's `targets/`.
fn chunks_under(targets: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = targets.join("chunks");
    for dir in std::fs::read_dir(&root).expect("chunk store") {
        let dir = dir.expect("entry").path();
        for f in std::fs::read_dir(&dir).expect("dir") {
            out.push(f.expect("entry").path());
        }
    }
    out
}

#[test]
fn a_delta_release_is_built_from_the_running_slot_with_few_bytes_fetched() {
    let fx = Fixture::new().expect("fixture");
    let v11 = release(&fx, "1.1.0", 7, &[]);
    let dev = device_on_1_1(&fx, "dev-delta", &v11);
    let running = std::fs::read(dev.slot_path(SlotId::B)).expect("B");
    // 1.2.0: the same bytes but a new header and two edited regions.
    let v12 = release(&fx, "1.2.0", 7, &[(1_000_000, 3000), (3_000_000, 100)]);
    // No metadata lists a chunk and devices fetch it by SHA-256: the
    // publisher asks for that one name, and no SHA-512 copy is placed.
    for path in served_chunks(&fx) {
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(name.find('.'), Some(64), "{name}: not a sha256 name");
    }
    // Chunks are served like images: immutable, cacheable for a year.
    let chunk = served_chunks(&fx)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "zst"))
        .expect("a chunk");
    let rel = chunk
        .strip_prefix(fx.server.repository_dir().join("targets"))
        .expect("rel");
    let resp = integration_tests::server::http_client()
        .expect("client")
        .get(format!("{}/targets/{}", fx.server.url, rel.display()))
        .send()
        .expect("GET chunk");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(resp.headers().contains_key("etag"));

    settles_on(&dev, &v12, &running);
    let log = agent_log(&dev);
    let fetched = fetched_bytes(&log)
        .unwrap_or_else(|| panic!("no delta install\n{log}\nserved: {:?}", served_chunks(&fx)));
    // The state names 1.1.0, itself a delta release: its signed index says
    // where its chunks are, so the running slot is not scanned.
    assert!(
        log.lines().any(|l| l.contains("delta planned")
            && l.contains("from the running release's chunk index, no scan")),
        "{log}"
    );
    assert!(
        fetched < SIZE as u64 / 8,
        "a delta of two small edits fetched {fetched} of {SIZE} bytes"
    );
    let status = dev.agent_status().expect("status");
    assert!(status.to_string().contains("1.2.0"), "{status}");
}

/// The chunk index `ota-repo` published for `image`, read from the chunk
/// store under `targets`: the one whose chunks are `image`'s bytes.
fn published_index(targets: &Path, image: &Path) -> ota_common::delta::ChunkIndex {
    let bytes = std::fs::read(image).expect("image");
    chunks_under(targets)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cidx"))
        .filter_map(|p| ota_common::delta::ChunkIndex::parse(&std::fs::read(p).ok()?).ok())
        .find(|index| {
            index.image_length == bytes.len() as u64
                && index.chunks.iter().all(|c| {
                    let at = c.offset as usize;
                    ota_common::delta::sha256(&bytes[at..at + c.length as usize]) == c.sha256
                })
        })
        .unwrap_or_else(|| panic!("no published index for {}", image.display()))
}

#[test]
fn a_tampered_chunk_or_index_falls_back_to_the_full_image() {
    let fx = Fixture::new().expect("fixture");
    let v11 = release(&fx, "1.1.0", 11, &[]);
    let chunk_dev = device_on_1_1(&fx, "dev-chunk", &v11);
    let index_dev = device_on_1_1(&fx, "dev-index", &v11);
    let running = std::fs::read(chunk_dev.slot_path(SlotId::B)).expect("B");
    // Edits all along the image: chunks to fetch all along it too, several
    // of them in flight (4 by default) when the tampered one arrives.
    let edits: Vec<(usize, usize)> = (0..8).map(|i| (150_000 + i * 500_000, 3000)).collect();
    let v12 = release(&fx, "1.2.0", 11, &edits);

    // One chunk in the middle of what 1.2.0 fetches is served with one
    // byte changed.
    let targets = fx.server.repository_dir().join("targets");
    let old = published_index(&targets, &v11);
    let new = published_index(&targets, &v12);
    let fetched: Vec<&ota_common::delta::Chunk> = new
        .chunks
        .iter()
        .filter(|c| !old.chunks.iter().any(|o| o.sha256 == c.sha256))
        .collect();
    assert!(fetched.len() >= 8, "{} chunks to fetch", fetched.len());
    let bad = fetched[fetched.len() / 2];
    let bad_path = targets.join(bad.store_path());
    let saved = std::fs::read(&bad_path).expect("chunk");
    let mut evil = saved.clone();
    let mid = evil.len() / 2;
    evil[mid] ^= 0xff;
    std::fs::write(&bad_path, evil).expect("tamper");
    settles_on(&chunk_dev, &v12, &running);
    let log = agent_log(&chunk_dev);
    assert!(
        log.contains("does not match its signed length and sha256")
            && log.contains("installing the full image instead"),
        "{log}"
    );
    assert_eq!(
        fetched_bytes(&log),
        None,
        "the delta must not have completed"
    );
    // The fleet operator sees why this device fetched the whole image.
    let events = fx.server.events("dev-chunk").expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.status == ota_common::wire::UpdateStatus::Downloading
                && e.target_version.as_deref() == Some("1.2.0")
                && e.reason.as_deref().is_some_and(|r| r
                    .starts_with("installing the full image instead of the delta:")
                    && r.contains("does not match its signed length and sha256"))),
        "{events:#?}"
    );
    std::fs::write(&bad_path, saved).expect("restore");

    // Now the index: served with one byte changed.
    let indexes: Vec<PathBuf> = served_chunks(&fx)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cidx"))
        .collect();
    // Both releases, each under its sha256 name only.
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    let originals: Vec<Vec<u8>> = indexes
        .iter()
        .map(|p| std::fs::read(p).expect("index"))
        .collect();
    for (p, mut bytes) in indexes.iter().zip(originals) {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(p, bytes).expect("tamper");
    }
    settles_on(&index_dev, &v12, &running);
    let log = agent_log(&index_dev);
    assert!(
        log.contains("chunk index") && log.contains("tampered or corrupt"),
        "{log}"
    );
}

/// One delta install of `v12` through `proxy` (holding every request
/// `delay_ms`): (chunk requests, most requests in flight at once, bytes
/// relayed, seconds, request lines).
fn install_through(
    proxy: &Proxy,
    dev: &SimDevice,
    v12: &Path,
    running: &[u8],
) -> (usize, u64, u64, f64, Vec<String>) {
    proxy.reset_requests();
    let sent = proxy.sent.load(Ordering::Relaxed);
    let start = std::time::Instant::now();
    settles_on(dev, v12, running);
    let seconds = start.elapsed().as_secs_f64();
    let lines = proxy.request_lines();
    let chunks = lines
        .iter()
        .filter(|l| l.contains("/targets/chunks/") && l.contains(".zst "))
        .count();
    let log = agent_log(dev);
    assert!(
        fetched_bytes(&log).is_some(),
        "{} installed a delta\n{log}",
        dev.id
    );
    (
        chunks,
        proxy.max_in_flight.load(Ordering::Relaxed),
        proxy.sent.load(Ordering::Relaxed) - sent,
        seconds,
        lines,
    )
}

#[test]
fn chunks_overlap_on_a_link_with_latency_and_the_running_index_replaces_the_scan() {
    let fx = Fixture::new().expect("fixture");
    let proxy = Proxy::start(&fx.server.url, u64::MAX).expect("proxy");
    let v11 = release(&fx, "1.1.0", 31, &[]);
    let one = device_on_1_1_at(&fx, "dev-one-at-a-time", &v11, &proxy.url);
    one.append_config("delta_parallel_fetches = 1\n")
        .expect("config");
    let four = device_on_1_1_at(&fx, "dev-four-at-once", &v11, &proxy.url);
    let running = std::fs::read(one.slot_path(SlotId::B)).expect("B");
    // An edit every 256 KiB: a chunk to fetch every few chunks.
    let edits: Vec<(usize, usize)> = (0..15).map(|i| (100_000 + i * 262_144, 500)).collect();
    let v12 = release(&fx, "1.2.0", 31, &edits);
    // Every request waits 20 ms at the proxy: a link's round trip.
    proxy.delay_ms.store(20, Ordering::Relaxed);

    let (seq_chunks, seq_max, seq_bytes, seq_s, _) = install_through(&proxy, &one, &v12, &running);
    let (par_chunks, par_max, par_bytes, par_s, lines) =
        install_through(&proxy, &four, &v12, &running);
    eprintln!(
        "20 ms per request: 1 in flight: {seq_chunks} chunk requests, {seq_bytes} bytes, \
         {seq_s:.2} s (whole poll and reboot); 4 in flight: {par_chunks} chunk requests, \
         {par_bytes} bytes, {par_s:.2} s, at most {par_max} requests in flight"
    );
    assert!(seq_chunks >= 15, "{seq_chunks} chunk requests");
    assert_eq!(seq_chunks, par_chunks, "the same plan, the same chunks");
    assert_eq!(
        seq_max, 1,
        "delta_parallel_fetches = 1: one request at a time"
    );
    assert!(
        par_max > 1,
        "with 4 in flight the chunk requests overlap (at most {par_max} at once)"
    );
    // No scan: the running release's signed index was fetched, beside the
    // new release's; the agent says which way it planned.
    let indexes = lines
        .iter()
        .filter(|l| l.contains("/targets/chunks/index/"))
        .count();
    assert_eq!(indexes, 2, "{lines:#?}");
    let log = agent_log(&four);
    assert!(
        log.lines().any(|l| l.contains("delta planned")
            && l.contains("from the running release's chunk index, no scan")
            && l.contains("parallel_fetches=4")),
        "{log}"
    );
}

#[test]
fn a_crash_mid_delta_resumes_and_an_unreachable_chunk_store_falls_back() {
    let fx = Fixture::new().expect("fixture");
    let v11 = release(&fx, "1.1.0", 13, &[]);
    let dev = device_on_1_1(&fx, "dev-resume", &v11);
    let gone = device_on_1_1(&fx, "dev-gone", &v11);
    let running = std::fs::read(dev.slot_path(SlotId::B)).expect("B");
    let v12 = release(&fx, "1.2.0", 13, &[(500_000, 2000), (3_500_000, 2000)]);

    assert_eq!(dev.power_on().expect("boot"), SlotId::B);
    let end = dev
        .run_agent_with_crash_point(
            ota_agent::crashpoint::DELTA_CHECKPOINT_SAVED,
            Duration::ZERO,
            Duration::from_secs(60),
        )
        .expect("run");
    assert!(
        matches!(end, CrashRunEnd::Crashed),
        "{end:?}\n{}",
        dev.log_tail()
    );
    settles_on(&dev, &v12, &running);
    let log = agent_log(&dev);
    assert!(
        fetched_bytes(&log).is_some(),
        "the resumed install is a delta\n{log}"
    );

    // The chunk store gone (every chunk 404): the full image is installed.
    for p in served_chunks(&fx) {
        if p.extension().is_some_and(|e| e == "zst") {
            std::fs::remove_file(p).expect("rm");
        }
    }
    settles_on(&gone, &v12, &running);
    let log = agent_log(&gone);
    assert!(log.contains("chunk store"), "{log}");
    assert!(log.contains("installing the full image instead"), "{log}");
}

#[test]
fn a_killed_agent_resumes_its_delta_from_the_checkpoint() {
    const MIB: u64 = 1024 * 1024;
    let fx = Fixture::new().expect("fixture");
    let proxy = Proxy::start(&fx.server.url, 256 * MIB).expect("proxy");
    let v11 = release(&fx, "1.1.0", 23, &[]);
    let dev = device_on_1_1_at(&fx, "dev-kill", &v11, &proxy.url);
    let running = std::fs::read(dev.slot_path(SlotId::B)).expect("B");
    // An edit every 512 KiB: chunks to fetch all along the image.
    let edits: Vec<(usize, usize)> = (0..8).map(|i| (200_000 + i * 524_288, 1000)).collect();
    let v12 = release(&fx, "1.2.0", 23, &edits);
    // 128 KiB/s: each fetched chunk takes about half a second.
    proxy.rate.store(128 * 1024, Ordering::Relaxed);

    let checkpoint = |d: &SimDevice| -> u64 {
        std::fs::read(d.dir.join("state/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|s| s["phase"]["checkpoint"].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(dev.power_on().expect("boot"), SlotId::B);
    let before = agent_log(&dev).len();
    let end = dev
        .run_agent_until(Duration::from_secs(60), |d| checkpoint(d) >= MIB)
        .expect("run");
    assert_eq!(
        end,
        RunEnd::PowerCut,
        "SIGKILLed mid-delta\n{}",
        dev.log_tail()
    );
    let saved = checkpoint(&dev);
    assert!(saved >= MIB && saved < SIZE as u64, "checkpoint {saved}");
    let log = agent_log(&dev);
    let first = &log[before..];
    let planned = logged_number(first, "delta planned", "fetch_bytes=")
        .unwrap_or_else(|| panic!("the killed run was a delta\n{first}"));
    assert_eq!(fetched_bytes(first), None, "killed before the delta ended");

    proxy.rate.store(256 * MIB, Ordering::Relaxed);
    let ranges = proxy.range_requests().len();
    let sent = proxy.sent.load(Ordering::Relaxed);
    let before = log.len();
    settles_on(&dev, &v12, &running);
    let log = agent_log(&dev);
    let second = &log[before..];
    assert!(
        second.contains("resuming the download after the bytes already in the slot")
            && second.contains(&format!("offset={saved}")),
        "resumed at the checkpoint\n{second}"
    );
    assert!(
        !second.contains("installing the full image instead"),
        "{second}"
    );
    let fetched =
        fetched_bytes(second).unwrap_or_else(|| panic!("the resumed install is a delta\n{second}"));
    assert!(
        fetched < planned,
        "the resumed delta fetched {fetched} bytes, the whole delta is {planned}: \
         the chunks before the checkpoint were fetched again"
    );
    assert_eq!(
        proxy.range_requests().len(),
        ranges,
        "no Range request: the full image was not resumed"
    );
    let moved = proxy.sent.load(Ordering::Relaxed) - sent;
    assert!(
        moved < SIZE as u64 / 4,
        "the resumed run moved {moved} bytes for a {SIZE} byte image"
    );
}

#[test]
fn a_delta_release_in_an_s3_repository_is_served_cacheable_and_installed() {
    let s3 = S3Server::start().expect("moto_server (./test installs it)");
    let fx = Fixture::with_server_config(&s3.server_config()).expect("fixture");
    let v11 = release(&fx, "1.1.0", 29, &[]);
    let dev = device_on_1_1(&fx, "dev-s3", &v11);
    let running = std::fs::read(dev.slot_path(SlotId::B)).expect("B");
    let v12 = release(&fx, "1.2.0", 29, &[(2_000_000, 4000)]);

    assert!(
        !fx.server.repository_dir().join("targets/chunks").exists(),
        "the chunks live in the bucket, not on the server's disk"
    );
    let chunks = s3.list("targets/chunks/").expect("list the bucket");
    // The name the agent asks for: chunks/xx/<compressed sha256>.<sha256>.zst.
    let chunk = chunks
        .iter()
        .find(|k| {
            k.ends_with(".zst")
                && k.rsplit('/')
                    .next()
                    .is_some_and(|f| f.len() == 64 + 1 + 64 + 4)
        })
        .unwrap_or_else(|| panic!("a chunk in the bucket: {chunks:?}"));
    let resp = integration_tests::server::http_client()
        .expect("client")
        .get(format!("{}/{chunk}", fx.server.url))
        .send()
        .expect("GET chunk");
    assert_eq!(resp.status(), 200, "{chunk}");
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(resp.headers().contains_key("etag"));
    // Content-addressed: the body hashes to the compressed sha256 it is named by.
    let body = resp.bytes().expect("body");
    let name = chunk.rsplit('/').next().unwrap_or_default();
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
        name[..64],
        "{chunk}"
    );

    settles_on(&dev, &v12, &running);
    let log = agent_log(&dev);
    let fetched = fetched_bytes(&log).unwrap_or_else(|| panic!("no delta install\n{log}"));
    assert!(
        fetched < SIZE as u64 / 8,
        "a delta of one small edit fetched {fetched} of {SIZE} bytes"
    );
}
