//! `bench-install`: how fast the agent installs an image, and how much
//! memory it needs for it. Not a test: it is never run by `cargo test`, and
//! its figures are recorded by hand in docs/BENCHMARKS.md.
//!
//! For each image size on the command line (default 64M 512M 2G) it streams
//! pseudo-random bytes into an image file (never into memory), adds it with
//! the real `ota-repo`, publishes it to the real `ota-server` on loopback,
//! and lets the real `ota-agent` of a fresh simulated device run one poll
//! until it asks for a reboot: the image is then downloaded, hashed
//! (sha256 + sha512), written, fsynced, read back from storage and hashed
//! again. The inactive slot is (a) a file and (b) a loop device (root only,
//! `losetup --direct-io=on`, so the read-back reaches the disk rather than
//! the backing file's page cache; skipped with a note when losetup fails).
//!
//! Measured: wall time from process start to the reboot request, the
//! install's phases from the agent's log timestamps, throughput, the
//! agent's peak RSS (`ru_maxrss` from wait4) and CPU time, and the image
//! bytes the server sent (its `/metrics` counter, before and after).
//! Baselines in the same sitting: `curl -o` of the same URL, `sha256sum`
//! and `sha512sum` of the image, both digests in one pass in-process (the
//! agent's own `ota_common::hash` code), `dd conv=fsync` onto a file slot and
//! onto the loop device, and a direct-I/O read of the written slot.
//!
//! ```text
//! cargo build --release -p ota-agent --bin ota-agent -p ota-server --bin ota-server \
//!     -p ota-repo --bin ota-repo -p integration-tests --bin bench-install
//! target/release/bench-install [SIZE...] [--no-loop]     # SIZE: 64M, 512M, 2G, bytes
//! ```

use anyhow::{bail, Context, Result};
use integration_tests::device::{RunEnd, SimDevice};
use integration_tests::fixture::{Fixture, HARDWARE_ID};
use integration_tests::measured::{run_agent_measured, MeasuredRun};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: u64 = 1024 * 1024;
const VERSION: &str = "2.0.0";

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-install: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Debug)]
struct Args {
    sizes: Vec<u64>,
    use_loop: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        sizes: Vec::new(),
        use_loop: true,
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--no-loop" => args.use_loop = false,
            "-h" | "--help" => {
                println!("usage: bench-install [SIZE...] [--no-loop]   (SIZE: 64M, 512M, 2G or bytes; default 64M 512M 2G)");
                std::process::exit(0);
            }
            other => args.sizes.push(parse_size(other)?),
        }
    }
    if args.sizes.is_empty() {
        args.sizes = vec![64 * MIB, 512 * MIB, 2048 * MIB];
    }
    Ok(args)
}

/// "64M", "2G", "4096K" (binary units) or a byte count; a multiple of 512
/// (a loop device's sector) between 1 MiB and 16 GiB.
fn parse_size(s: &str) -> Result<u64> {
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'B'),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("size {s:?}: expected a number with an optional K, M or G"))?;
    let factor = match unit {
        'B' => 1,
        'K' => 1024,
        'M' => MIB,
        'G' => 1024 * MIB,
        _ => bail!("size {s:?}: unknown unit {unit:?} (use K, M or G)"),
    };
    let bytes = n
        .checked_mul(factor)
        .with_context(|| format!("size {s:?} is too large"))?;
    if !(MIB..=16 * 1024 * MIB).contains(&bytes) || bytes & 511 != 0 {
        bail!("size {s:?}: must be a multiple of 512 bytes between 1M and 16G");
    }
    Ok(bytes)
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let mut report = String::new();
    writeln!(report, "{}", machine_summary())?;
    let mut agent_rows = Vec::new();
    let mut baseline_rows = Vec::new();
    for &size in &args.sizes {
        eprintln!("== {} ==", human(size));
        let load_before = loadavg();
        let (agents, baselines) = bench_size(size, args.use_loop)?;
        let load_after = loadavg();
        eprintln!("load average: before {load_before}, after {load_after}");
        writeln!(
            report,
            "* {}: load average (1, 5, 15 min) before `{load_before}`, after `{load_after}`",
            human(size)
        )?;
        agent_rows.extend(agents);
        baseline_rows.extend(baselines);
    }
    println!("{report}");
    println!("{}", agent_table(&agent_rows));
    println!("{}", baseline_table(&baseline_rows));
    Ok(())
}

/// One agent install, measured.
#[derive(Debug)]
struct AgentRow {
    size: u64,
    slot: String,
    run: MeasuredRun,
    phases: Option<Phases>,
    image_bytes_sent: Option<u64>,
}

/// One baseline command, timed.
#[derive(Debug)]
struct BaselineRow {
    size: u64,
    what: String,
    secs: f64,
}

fn bench_size(size: u64, use_loop: bool) -> Result<(Vec<AgentRow>, Vec<BaselineRow>)> {
    let f = Fixture::new()?;
    let work = f.dir.path();
    let image = work.join(format!("rootfs-{VERSION}.img"));
    let t = Instant::now();
    integration_tests::image::write_image(
        &image,
        VERSION,
        true,
        usize::try_from(size).context("size does not fit this machine's usize")?,
    )?;
    eprintln!("image written in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    f.repo.add(&image, VERSION, &[HARDWARE_ID])?;
    eprintln!("ota-repo add: {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    f.repo.publish(&f.server)?;
    eprintln!("ota-repo publish: {:.1} s", t.elapsed().as_secs_f64());
    let url = target_url(&f)?;

    let mut agents = Vec::new();
    let mut baselines = Vec::new();

    // (a) a file slot.
    let device = f.device("bench-file")?;
    agents.push(install(&f, &device, size, "file")?);
    remove_device(&device);

    // (b) a loop device slot.
    let loop_dev = if use_loop {
        match LoopDevice::attach(&work.join("loop-backing.img"), size) {
            Ok(dev) => Some(dev),
            Err(e) => {
                eprintln!("NOTE: no loop device slot: {e:#}");
                None
            }
        }
    } else {
        None
    };
    if let Some(dev) = &loop_dev {
        let device = f.device("bench-loop")?;
        let slot_b = device.slot_path(ota_agent::slot::SlotId::B);
        std::fs::remove_file(&slot_b)?;
        std::os::unix::fs::symlink(&dev.path, &slot_b)?;
        agents.push(install(&f, &device, size, &format!("loop ({})", dev.mode))?);
        remove_device(&device);
    }

    // Baselines, same sitting, same files.
    let fetched = work.join("curl.img");
    let mut time_cmd = |what: &str, argv: &[&str]| -> Result<()> {
        baselines.push(baseline(size, what, argv)?);
        Ok(())
    };
    let fetched_s = path_str(&fetched)?;
    let image_s = path_str(&image)?;
    time_cmd(
        "`curl -s -o FILE URL` (same server, no fsync)",
        &["curl", "-s", "-f", "-o", fetched_s, &url],
    )?;
    let _ = std::fs::remove_file(&fetched);
    time_cmd("`sha256sum IMAGE` (page cache)", &["sha256sum", image_s])?;
    time_cmd("`sha512sum IMAGE` (page cache)", &["sha512sum", image_s])?;
    let t = Instant::now();
    let digests = ota_common::hash::copy_and_digest(
        std::fs::File::open(&image)?,
        None::<&mut std::fs::File>,
        |_| {},
    )?;
    let secs = t.elapsed().as_secs_f64();
    if digests.length != size {
        bail!("read {} bytes of a {size}-byte image", digests.length);
    }
    eprintln!("in-process sha256+sha512: {secs:.2} s");
    let in_process = BaselineRow {
        size,
        what: "sha256 + sha512 in one pass, in-process (`ota_common::hash`, page cache)".into(),
        secs,
    };
    let slot_copy = work.join("dd-slot.img");
    let slot_copy_s = path_str(&slot_copy)?;
    let of = format!("of={slot_copy_s}");
    let iff = format!("if={image_s}");
    time_cmd(
        "`dd bs=1M conv=fsync` onto a file slot",
        &["dd", &iff, &of, "bs=1M", "conv=fsync", "status=none"],
    )?;
    let if_slot = format!("if={slot_copy_s}");
    time_cmd(
        "`dd bs=1M iflag=direct` read of that slot (what the read-back reads)",
        &[
            "dd",
            &if_slot,
            "of=/dev/null",
            "bs=1M",
            "iflag=direct",
            "status=none",
        ],
    )?;
    let _ = std::fs::remove_file(&slot_copy);
    if let Some(dev) = &loop_dev {
        let of = format!("of={}", dev.path.display());
        time_cmd(
            &format!("`dd bs=1M conv=fsync` onto the loop device ({})", dev.mode),
            &["dd", &iff, &of, "bs=1M", "conv=fsync", "status=none"],
        )?;
    }
    drop(loop_dev);
    baselines.insert(3, in_process);
    Ok((agents, baselines))
}

/// One poll of a fresh device's agent, up to its reboot request.
fn install(f: &Fixture, device: &SimDevice, size: u64, slot: &str) -> Result<AgentRow> {
    device.power_on()?;
    let sent_before = body_bytes_sent(&f.server.url);
    let started = SystemTime::now();
    let run = run_agent_measured(device, Duration::from_secs(1800))?;
    let sent_after = body_bytes_sent(&f.server.url);
    if run.end != RunEnd::RebootRequested {
        bail!(
            "the agent did not install the image ({:?}); log:\n{}",
            run.end,
            device.log_tail()
        );
    }
    let log = std::fs::read_to_string(device.dir.join("agent.log")).unwrap_or_default();
    let phases = Phases::from_log(&log, started);
    eprintln!(
        "agent, {slot} slot: {:.2} s, peak RSS {:.1} MiB, phases {phases:?}",
        run.wall.as_secs_f64(),
        run.peak_rss_bytes as f64 / MIB as f64
    );
    Ok(AgentRow {
        size,
        slot: slot.to_owned(),
        run,
        phases,
        image_bytes_sent: sent_after
            .zip(sent_before)
            .map(|(a, b)| a.saturating_sub(b)),
    })
}

/// Deletes a device's files (its slot holds a whole image).
fn remove_device(device: &SimDevice) {
    if let Err(e) = std::fs::remove_dir_all(&device.dir) {
        eprintln!("could not remove {}: {e}", device.dir.display());
    }
}

/// The install's phases, from the agent's log timestamps (seconds).
#[derive(Debug, Clone, Copy)]
struct Phases {
    /// Process start to "streaming image into the inactive slot": start-up,
    /// TUF refresh, choosing the release, persisting Downloading.
    before_stream: f64,
    /// Streaming to the last "download progress" (100%): network, both
    /// digests, writes, and the fsync + state.json at every checkpoint.
    stream: f64,
    /// 100% to "image written, read back and verified": the final fsync,
    /// dropping the cache, the read-back pass hashing both digests again.
    read_back: f64,
    /// Verified to the reboot request: persist, arm the bootloader, report.
    after: f64,
}

impl Phases {
    fn from_log(log: &str, started: SystemTime) -> Option<Phases> {
        let when = |needle: &str| -> Option<f64> {
            log.lines()
                .map(strip_ansi)
                .rev()
                .find(|l| l.contains(needle))
                .and_then(|l| log_time(&l))
        };
        let start = started.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        let stream_start = when("streaming image into the inactive slot")?;
        let streamed = when("percent=100")?;
        let verified = when("image written, read back and verified")?;
        let reboot = when("requesting reboot")?;
        Some(Phases {
            before_stream: stream_start - start,
            stream: streamed - stream_start,
            read_back: verified - streamed,
            after: reboot - verified,
        })
    }
}

/// The log line without terminal colour codes (tracing's fmt writes them to files too).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since the epoch of a line starting `2026-11-29T14:47:06.123456Z`.
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let s = t.next()?.parse::<f64>().ok()?;
    Some(days_from_civil(y, m, day) as f64 * 86400.0 + h * 3600.0 + min * 60.0 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The server's `ota_http_response_body_bytes_total` counter.
fn body_bytes_sent(server_url: &str) -> Option<u64> {
    let client = integration_tests::server::http_client().ok()?;
    let text = client
        .get(format!("{}/metrics", server_url.trim_end_matches('/')))
        .send()
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("ota_http_response_body_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// The image's URL on the server: `/targets/<sha256>.<name>`.
fn target_url(f: &Fixture) -> Result<String> {
    let dir = f.server.repository_dir().join("targets");
    let suffix = format!(".rootfs-{VERSION}.img");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(hash) = name.strip_suffix(&suffix) {
            if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(format!(
                    "{}/targets/{name}",
                    f.server.url.trim_end_matches('/')
                ));
            }
        }
    }
    bail!("no sha256-named image in {}", dir.display())
}

/// A loop device over a file of `size` bytes, detached on drop.
#[derive(Debug)]
struct LoopDevice {
    path: PathBuf,
    mode: &'static str,
}

impl LoopDevice {
    fn attach(backing: &Path, size: u64) -> Result<LoopDevice> {
        std::fs::File::create(backing)?.set_len(size)?;
        let backing_s = path_str(backing)?;
        let mut last = String::new();
        // Direct I/O first: reads then reach the disk, not the backing file's page cache.
        for (mode, extra) in [("direct I/O", Some("--direct-io=on")), ("buffered", None)] {
            let mut cmd = Command::new("losetup");
            cmd.args(["--find", "--show"]);
            cmd.args(extra);
            let out = cmd.arg(backing_s).output().context("running losetup")?;
            if out.status.success() {
                let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                return Ok(LoopDevice { path, mode });
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        }
        bail!("losetup failed (root needed): {last}")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        integration_tests::measured::detach_loop_device(&self.path);
    }
}

/// Times one baseline command.
fn baseline(size: u64, what: &str, argv: &[&str]) -> Result<BaselineRow> {
    let secs = timed(argv)?;
    eprintln!("{what}: {secs:.2} s");
    Ok(BaselineRow {
        size,
        what: what.to_owned(),
        secs,
    })
}

/// Runs `argv` (output discarded) and returns its wall time in seconds.
fn timed(argv: &[&str]) -> Result<f64> {
    let (program, args) = argv.split_first().context("empty command")?;
    let t = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {program}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{} failed: {status}", argv.join(" "));
    }
    Ok(secs)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn human(bytes: u64) -> String {
    if bytes >= 1024 * MIB && bytes & (1024 * MIB - 1) == 0 {
        format!("{} GiB", bytes / (1024 * MIB))
    } else {
        format!("{} MiB", bytes as f64 / MIB as f64)
    }
}

/// Decimal megabytes per second, as disks and links are rated.
fn mb_per_s(bytes: u64, secs: f64) -> String {
    if secs > 0.0 {
        format!("{:.0}", bytes as f64 / 1e6 / secs)
    } else {
        "-".into()
    }
}

fn agent_table(rows: &[AgentRow]) -> String {
    let mut t = String::from(
        "| image | slot | wall s (start to reboot request) | MB/s (wall) | before stream s | stream s (net + 2 digests + write + checkpoints) | MB/s (stream) | fsync + read-back s | MB/s (read-back) | arm + reboot s | user CPU s | sys CPU s | peak RSS MiB (ru_maxrss) | VmHWM MiB | image bytes sent |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let wall = r.run.wall.as_secs_f64();
        let (before, stream, read_back, after) = match r.phases {
            Some(p) => (
                format!("{:.2}", p.before_stream),
                format!("{:.2}", p.stream),
                format!("{:.2}", p.read_back),
                format!("{:.2}", p.after),
            ),
            None => ("?".into(), "?".into(), "?".into(), "?".into()),
        };
        let (stream_rate, read_rate) = match r.phases {
            Some(p) => (mb_per_s(r.size, p.stream), mb_per_s(r.size, p.read_back)),
            None => ("?".into(), "?".into()),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {wall:.2} | {} | {before} | {stream} | {stream_rate} | {read_back} | {read_rate} | {after} | {:.2} | {:.2} | {:.1} | {} | {} |",
            human(r.size),
            r.slot,
            mb_per_s(r.size, wall),
            r.run.user_cpu.as_secs_f64(),
            r.run.system_cpu.as_secs_f64(),
            r.run.peak_rss_bytes as f64 / MIB as f64,
            r.run
                .vm_hwm_bytes
                .map_or("-".into(), |b| format!("{:.1}", b as f64 / MIB as f64)),
            r.image_bytes_sent
                .map_or("?".into(), |b| b.to_string()),
        );
    }
    t
}

fn baseline_table(rows: &[BaselineRow]) -> String {
    let mut t = String::from("| image | baseline | s | MB/s |\n|---|---|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} | {} |",
            human(r.size),
            r.what,
            r.secs,
            mb_per_s(r.size, r.secs)
        );
    }
    t
}

/// Machine and versions, for the record.
fn machine_summary() -> String {
    let cpu = integration_tests::measured::cpu_model();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let output = integration_tests::measured::command_output;
    format!(
        "* machine: {cores} cores, {cpu}; kernel {}; {}\n* {}; commit {}",
        output(&["uname", "-r"]),
        output(&["sh", "-c", "df -h --output=source,fstype /tmp | tail -n 1"]),
        output(&["rustc", "--version"]),
        integration_tests::measured::workspace_commit(),
    )
}
