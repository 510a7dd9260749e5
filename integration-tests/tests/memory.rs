//! Constant memory: the agent streams an image into the inactive slot in
//! fixed-size chunks, so its peak resident memory must not depend on the
//! image's size. The real agent installs a small and a five-times larger
//! image; the kernel's peak RSS of each run (`ru_maxrss`, from wait4) is
//! compared.
//!
//! Why the bounds catch a buffering agent: bytes held in memory are
//! resident, so holding the image (or the read-back) makes the peak grow by
//! at least the bytes held: LARGE - SMALL = 192 MiB here, 48 times the
//! allowed growth. The ceiling catches a fixed but oversized buffer. What
//! remains is noise: the peak moved by 0.1 MiB between a 16 and a 96 MiB
//! install (debug build), and a release agent peaks at about 10 MiB at any
//! size (docs/BENCHMARKS.md, "Install: throughput and memory").
//!
//! Sizes: images are hashed by aws-lc's assembly even in the debug build the
//! suite runs, so a 200 MiB install takes seconds; the benchmark covers
//! 64 MiB to 2 GiB.

use integration_tests::device::RunEnd;
use integration_tests::fixture::{Fixture, HARDWARE_ID};
use integration_tests::measured::{run_agent_measured, MeasuredRun};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const SMALL: u64 = 8 * MIB;
const LARGE: u64 = 200 * MIB;
/// Allowed growth of the peak from the small to the large image.
const MAX_GROWTH: u64 = 4 * MIB;
/// No install may need more than this: the debug build of the agent peaks
/// at 18 to 20 MiB (its code pages count too), the release build at 10.
const CEILING: u64 = 32 * MIB;

/// Publishes `version` as an image of `size` bytes and lets a fresh device
/// install it: one poll, up to the reboot request.
fn install(f: &Fixture, id: &str, version: &str, size: u64) -> MeasuredRun {
    let size_usize = usize::try_from(size).expect("size fits usize");
    let image = f
        .release(version, true, size_usize, &[HARDWARE_ID])
        .expect("release");
    let device = f.device(id).expect("device");
    device.power_on().expect("power on");
    let run = run_agent_measured(&device, Duration::from_secs(300)).expect("agent run");
    assert_eq!(
        run.end,
        RunEnd::RebootRequested,
        "the agent should install {version} and ask for a reboot; log:\n{}",
        device.log_tail()
    );
    // The reboot request comes only after the read-back, but check the slot anyway.
    let slot = device.slot_path(ota_agent::slot::SlotId::B);
    assert_eq!(std::fs::metadata(&slot).expect("slot B").len(), size);
    assert_eq!(
        integration_tests::image::release_in(&slot).as_deref(),
        Some(version)
    );
    // Free the disk space now rather than at the end.
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_file(&slot);
    run
}

#[test]
fn peak_memory_does_not_grow_with_the_image() {
    let f = Fixture::new().expect("fixture");
    let small = install(&f, "dev-small", "1.1.0", SMALL);
    // 1.2.0 is newer, so the second fresh device chooses the large image.
    let large = install(&f, "dev-large", "1.2.0", LARGE);
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "peak RSS: {:.1} MiB installing {} MiB ({:.1} s), {:.1} MiB installing {} MiB ({:.1} s)",
        mib(small.peak_rss_bytes),
        SMALL / MIB,
        small.wall.as_secs_f64(),
        mib(large.peak_rss_bytes),
        LARGE / MIB,
        large.wall.as_secs_f64(),
    );
    assert!(small.peak_rss_bytes > 0, "wait4 reported no usage");
    let growth = large.peak_rss_bytes.saturating_sub(small.peak_rss_bytes);
    assert!(
        growth < MAX_GROWTH,
        "the agent's peak RSS grew by {:.1} MiB ({:.1} -> {:.1} MiB) for {} MiB more image: \
         something holds image bytes in memory",
        mib(growth),
        mib(small.peak_rss_bytes),
        mib(large.peak_rss_bytes),
        (LARGE - SMALL) / MIB
    );
    for (size, run) in [(SMALL, &small), (LARGE, &large)] {
        assert!(
            run.peak_rss_bytes < CEILING,
            "installing {} MiB peaked at {:.1} MiB, above the {} MiB ceiling",
            size / MIB,
            mib(run.peak_rss_bytes),
            CEILING / MIB
        );
    }
}

/// A compressed release decodes through one zstd frame window (8 MiB by
/// default, the agent's `max_decompression_window`) and fixed buffers:
/// the peak must not grow with the image either.
#[test]
fn peak_memory_of_a_compressed_install_does_not_grow_with_the_image() {
    const SMALL_Z: u64 = 24 * MIB;
    const LARGE_Z: u64 = 120 * MIB;
    /// The raw ceiling plus the decoder's 8 MiB window and its buffers.
    const CEILING_Z: u64 = CEILING + 16 * MIB;
    let f = Fixture::new().expect("fixture");
    let install_zstd = |id: &str, version: &str, size: u64| -> MeasuredRun {
        let image = f.dir.path().join(format!("rootfs-{version}.img"));
        let size_usize = usize::try_from(size).expect("size fits usize");
        integration_tests::image::write_image(&image, version, true, size_usize).expect("image");
        f.repo
            .add_with(&image, version, &[HARDWARE_ID], &["--compress-level", "1"])
            .expect("add");
        f.repo.publish(&f.server).expect("publish");
        let device = f.device(id).expect("device");
        device.power_on().expect("power on");
        let run = run_agent_measured(&device, Duration::from_secs(300)).expect("agent run");
        assert_eq!(run.end, RunEnd::RebootRequested, "{}", device.log_tail());
        let slot = device.slot_path(ota_agent::slot::SlotId::B);
        assert_eq!(std::fs::metadata(&slot).expect("slot B").len(), size);
        let _ = std::fs::remove_file(&image);
        let _ = std::fs::remove_file(&slot);
        run
    };
    let small = install_zstd("dev-small-zstd", "1.1.0", SMALL_Z);
    let large = install_zstd("dev-large-zstd", "1.2.0", LARGE_Z);
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "zstd peak RSS: {:.1} MiB installing {} MiB ({:.1} s), {:.1} MiB installing {} MiB ({:.1} s)",
        mib(small.peak_rss_bytes),
        SMALL_Z / MIB,
        small.wall.as_secs_f64(),
        mib(large.peak_rss_bytes),
        LARGE_Z / MIB,
        large.wall.as_secs_f64(),
    );
    let growth = large.peak_rss_bytes.saturating_sub(small.peak_rss_bytes);
    assert!(
        growth < MAX_GROWTH,
        "the compressed install's peak RSS grew by {:.1} MiB for {} MiB more image",
        mib(growth),
        (LARGE_Z - SMALL_Z) / MIB
    );
    for run in [&small, &large] {
        assert!(
            run.peak_rss_bytes < CEILING_Z,
            "a compressed install peaked at {:.1} MiB",
            mib(run.peak_rss_bytes)
        );
    }
}

/// A delta install holds the signed chunk index (72 bytes a chunk: under
/// 100 KiB for the large image here, 4.5 MiB for 4 GiB), one entry per
/// reusable chunk and a fixed number of chunks in progress (the fetches in
/// flight, two read back ahead, the one being written): the running slot
/// is scanned and the new image produced as streams, so the peak must stay
/// flat as well.
#[test]
fn peak_memory_of_a_delta_install_does_not_grow_with_the_image() {
    const SMALL_D: u64 = 8 * MIB;
    const LARGE_D: u64 = 64 * MIB;
    let f = Fixture::new().expect("fixture");
    // The running slot holds an image the new release shares all but its
    // header with: the agent scans the whole slot (the factory image has
    // no signed length) and fetches one chunk.
    let install_delta = |id: &str, version: &str, size: u64| -> MeasuredRun {
        let size_usize = usize::try_from(size).expect("size fits usize");
        let device = f.device(id).expect("device");
        let running = device.slot_path(ota_agent::slot::SlotId::A);
        integration_tests::image::write_image(&running, "1.0.0", true, size_usize)
            .expect("running image");
        let image = f.dir.path().join(format!("rootfs-{version}.img"));
        // Patched on disk, never read whole: the agent is forked from this
        // process, and ru_maxrss counts the parent's pages it started with.
        std::fs::copy(&running, &image).expect("image");
        let header = format!("release={version}");
        assert_eq!(header.len(), "release=1.0.0".len());
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .expect("image"),
            header.as_bytes(),
            0,
        )
        .expect("header");
        f.repo
            .add_with(
                &image,
                version,
                &[HARDWARE_ID],
                &["--compress", "none", "--delta"],
            )
            .expect("add --delta");
        f.repo.publish(&f.server).expect("publish");
        device.power_on().expect("power on");
        let run = run_agent_measured(&device, Duration::from_secs(300)).expect("agent run");
        assert_eq!(run.end, RunEnd::RebootRequested, "{}", device.log_tail());
        let log = std::fs::read_to_string(device.dir.join("agent.log")).unwrap_or_default();
        assert!(
            log.contains("delta image written"),
            "the install was a delta\n{log}"
        );
        let slot = device.slot_path(ota_agent::slot::SlotId::B);
        assert_eq!(std::fs::metadata(&slot).expect("slot B").len(), size);
        assert_eq!(
            integration_tests::image::release_in(&slot).as_deref(),
            Some(version)
        );
        for p in [&image, &slot, &running] {
            let _ = std::fs::remove_file(p);
        }
        run
    };
    let small = install_delta("dev-small-delta", "1.1.0", SMALL_D);
    let large = install_delta("dev-large-delta", "1.2.0", LARGE_D);
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "delta peak RSS: {:.1} MiB installing {} MiB ({:.1} s), {:.1} MiB installing {} MiB ({:.1} s)",
        mib(small.peak_rss_bytes),
        SMALL_D / MIB,
        small.wall.as_secs_f64(),
        mib(large.peak_rss_bytes),
        LARGE_D / MIB,
        large.wall.as_secs_f64(),
    );
    let growth = large.peak_rss_bytes.saturating_sub(small.peak_rss_bytes);
    assert!(
        growth < MAX_GROWTH,
        "the delta install's peak RSS grew by {:.1} MiB for {} MiB more image",
        mib(growth),
        (LARGE_D - SMALL_D) / MIB
    );
    for run in [&small, &large] {
        assert!(
            run.peak_rss_bytes < CEILING,
            "a delta install peaked at {:.1} MiB",
            mib(run.peak_rss_bytes)
        );
    }
}
