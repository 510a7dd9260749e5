//! `bench-vs-dd`: the agent's install against `dd` writing the same image
//! into the same loop-device slot. Not a test: run by hand (as root, for
//! losetup and drop_caches); its figures go into docs/BENCHMARKS.md.
//!
//! One run of it:
//! 1. writes a 1 GiB pseudo-random image (default; `--size`), adds it with
//!    the real `ota-repo` and publishes it to the real `ota-server` on
//!    loopback, and attaches a loop device (`losetup --direct-io=on`, so
//!    reads and writes reach the disk, not the backing file's page cache)
//!    of exactly the image's size;
//! 2. `--runs` times (default 5), interleaved and rotating which goes
//!    first: `dd if=IMAGE of=LOOP bs=4M conv=fsync`, and the real
//!    `ota-agent` of a fresh simulated device whose inactive slot is that
//!    loop device, from process start to its reboot request (TUF refresh,
//!    download, signed length, writes, checkpoints, fsync, read-back from
//!    the device and its digests). Before each of them: `sync`, then
//!    `echo 3 > /proc/sys/vm/drop_caches`, so both start from a cold
//!    cache (dd reads its image from the disk as the server does);
//!    Each round also times the disk's share of the agent's work alone,
//!    with no hashing and no network: `dd oflag=direct conv=fsync` from
//!    the cold image, then `dd iflag=direct` reading the slot back into
//!    /dev/null. That is the least an install that reads back what
//!    storage kept can take on this disk;
//! 3. prints the medians, the ratio agent / dd, the ratio to dd's fastest
//!    run, and the ratio agent / disk floor;
//! 4. for each `--rss` size (default 64M 1G 4G) one more install into a
//!    loop device of that size, recording the agent's peak RSS
//!    (`ru_maxrss` from wait4(2), the counter `/usr/bin/time -v` prints as
//!    "Maximum resident set size"). The image copies outside the server
//!    are deleted before that install so a 4 GiB run needs about 8 GiB of
//!    disk; everything is deleted at the end.
//!
//! ```text
//! cargo build --release -p ota-agent --bin ota-agent -p ota-server --bin ota-server \
//!     -p ota-repo --bin ota-repo -p integration-tests --bin bench-vs-dd
//! sudo target/release/bench-vs-dd [--size 1G] [--runs 5] [--rss 64M,1G,4G] [--sha512]
//! ```

use anyhow::{bail, Context, Result};
use integration_tests::device::RunEnd;
use integration_tests::fixture::{Fixture, HARDWARE_ID};
use integration_tests::measured::run_agent_measured;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const VERSION: &str = "2.0.0";

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-vs-dd: {e:#}");
        std::process::exit(1);
    }
}

struct Args {
    size: u64,
    runs: usize,
    rss_sizes: Vec<u64>,
    /// The target lists sha512 beside sha256 (`ota-repo add --hash
    /// sha512`), as targets added before sha256 alone was the default do.
    sha512: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        size: 1024 * MIB,
        runs: 5,
        rss_sizes: vec![64 * MIB, 1024 * MIB, 4096 * MIB],
        sha512: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--size" => args.size = parse_size(&value("--size")?)?,
            "--runs" => {
                args.runs = value("--runs")?
                    .parse()
                    .context("--runs: expected a number")?
            }
            "--rss" => {
                let list = value("--rss")?;
                args.rss_sizes = if list == "none" {
                    Vec::new()
                } else {
                    list.split(',').map(parse_size).collect::<Result<_>>()?
                };
            }
            "--sha512" => args.sha512 = true,
            "-h" | "--help" => {
                println!(
                    "usage: bench-vs-dd [--size 1G] [--runs 5] [--rss 64M,1G,4G|none] [--sha512]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(args)
}

/// "64M", "1G" (binary units) or a byte count; a multiple of 1 MiB.
fn parse_size(s: &str) -> Result<u64> {
    let (digits, factor) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('M') => (&s[..s.len() - 1], MIB),
        Some('G') => (&s[..s.len() - 1], 1024 * MIB),
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("size {s:?}: expected a number with an optional M or G"))?;
    let bytes = n
        .checked_mul(factor)
        .with_context(|| format!("size {s:?} is too large"))?;
    if bytes == 0 || bytes % MIB != 0 {
        bail!("size {s:?}: must be a positive multiple of 1 MiB");
    }
    Ok(bytes)
}

fn run() -> Result<()> {
    let args = parse_args()?;
    println!("{}", machine_summary());
    println!("cache policy before every run: {}", drop_caches()?);
    println!("load average before: {}", loadavg());

    let bench = Published::new(args.size, args.sha512)?;
    let slot = LoopDevice::attach(
        &bench.fixture.dir.path().join("loop-backing.img"),
        args.size,
    )?;
    let mut dd = Vec::new();
    let mut floor = Vec::new();
    let mut agent = Vec::new();
    let mut curl = Vec::new();
    for round in 0..args.runs {
        // The network path alone, for the record: the same server sending
        // the same file over loopback into /dev/null, from a cold cache.
        drop_caches()?;
        let secs = bench.curl_once()?;
        eprintln!("round {round}: curl {secs:.2} s");
        curl.push(secs);
        // Rotate the order so none always runs right after another.
        for which in [0, 1, 2].map(|i| (i + round) % 3) {
            if which == 2 {
                drop_caches()?;
                let secs =
                    direct_write_once(&bench.image, &slot.path)? + read_back_once(&slot.path)?;
                eprintln!("round {round}: disk floor {secs:.2} s");
                floor.push(secs);
            } else if which == 0 {
                drop_caches()?;
                let secs = dd_once(&bench.image, &slot.path)?;
                eprintln!("round {round}: dd {secs:.2} s");
                dd.push(secs);
            } else {
                drop_caches()?;
                let r = bench.install(&format!("run-{round}"), &slot.path)?;
                eprintln!(
                    "round {round}: agent {:.2} s (user {:.2} s, sys {:.2} s, peak RSS {:.1} MiB)",
                    r.secs, r.user, r.sys, r.rss_mib
                );
                agent.push(r);
            }
        }
    }
    drop(slot);
    drop(bench);
    let dd_median = median(&dd);
    let floor_median = median(&floor);
    let dd_fastest = dd.iter().copied().fold(f64::INFINITY, f64::min);
    let agent_secs: Vec<f64> = agent.iter().map(|r| r.secs).collect();
    let agent_median = median(&agent_secs);
    println!("load average after: {}", loadavg());
    println!("dd bs=4M conv=fsync, {} runs: {} s", dd.len(), list(&dd));
    println!(
        "ota-agent install,  {} runs: {} s (user CPU {} s, sys CPU {} s)",
        agent.len(),
        list(&agent_secs),
        list(&agent.iter().map(|r| r.user).collect::<Vec<_>>()),
        list(&agent.iter().map(|r| r.sys).collect::<Vec<_>>()),
    );
    println!(
        "disk floor (dd oflag=direct conv=fsync, then dd iflag=direct read-back), {} runs: {} s",
        floor.len(),
        list(&floor)
    );
    println!(
        "curl -o /dev/null (server to loopback only), {} runs: {} s, median {:.2} s",
        curl.len(),
        list(&curl),
        median(&curl)
    );
    println!(
        "{}: dd median {dd_median:.2} s ({:.0} MB/s), agent median {agent_median:.2} s ({:.0} MB/s), ratio agent/dd {:.2}",
        human(args.size),
        args.size as f64 / 1e6 / dd_median,
        args.size as f64 / 1e6 / agent_median,
        agent_median / dd_median
    );
    println!(
        "{}: dd fastest {dd_fastest:.2} s, ratio agent median/dd fastest {:.2}; disk floor median {floor_median:.2} s, ratio agent/floor {:.2}",
        human(args.size),
        agent_median / dd_fastest,
        agent_median / floor_median
    );

    for &size in &args.rss_sizes {
        let bench = Published::new(size, args.sha512)?;
        // Only the server's copy is needed from here on.
        bench.drop_local_copies()?;
        let slot = LoopDevice::attach(&bench.fixture.dir.path().join("loop-backing.img"), size)?;
        drop_caches()?;
        let r = bench.install("rss", &slot.path)?;
        println!(
            "peak RSS, {}: {:.1} MiB ({:.2} s, load average {})",
            human(size),
            r.rss_mib,
            r.secs,
            loadavg()
        );
    }
    Ok(())
}

/// An image published on a running server, and the image file itself.
struct Published {
    fixture: Fixture,
    image: PathBuf,
}

struct Install {
    secs: f64,
    user: f64,
    sys: f64,
    rss_mib: f64,
}

impl Published {
    fn new(size: u64, sha512: bool) -> Result<Published> {
        let fixture = Fixture::new()?;
        let image = fixture.dir.path().join(format!("rootfs-{VERSION}.img"));
        let t = Instant::now();
        integration_tests::image::write_image(
            &image,
            VERSION,
            true,
            usize::try_from(size).context("size does not fit this machine's usize")?,
        )?;
        let mut add_args = vec!["--compress", "none"];
        if sha512 {
            add_args.extend(["--hash", "sha512"]);
        }
        fixture
            .repo
            .add_with(&image, VERSION, &[HARDWARE_ID], &add_args)?;
        fixture.repo.publish(&fixture.server)?;
        eprintln!(
            "{} image written, added and published in {:.1} s",
            human(size),
            t.elapsed().as_secs_f64()
        );
        Ok(Published { fixture, image })
    }

    /// Seconds for `curl` to fetch the image from the server into /dev/null.
    fn curl_once(&self) -> Result<f64> {
        let targets = self.fixture.server.repository_dir().join("targets");
        let mut name = None;
        for entry in
            std::fs::read_dir(&targets).with_context(|| format!("reading {}", targets.display()))?
        {
            let entry = entry?;
            if entry.metadata()?.len() > MIB {
                name = Some(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let name = name.context("the server holds no image")?;
        let url = format!("{}/targets/{name}", self.fixture.server.url);
        let t = Instant::now();
        let status = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &url])
            .status()
            .context("running curl")?;
        let secs = t.elapsed().as_secs_f64();
        if !status.success() {
            bail!("curl {url} failed: {status}");
        }
        Ok(secs)
    }

    /// Deletes the image and the repository's copy of it.
    fn drop_local_copies(&self) -> Result<()> {
        std::fs::remove_file(&self.image)?;
        let targets = self.fixture.repo.dir.join("targets");
        for entry in
            std::fs::read_dir(&targets).with_context(|| format!("reading {}", targets.display()))?
        {
            let path = entry?.path();
            if path.is_file() && path.metadata()?.len() > MIB {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// One poll of a fresh device whose slot B is `slot`, up to its reboot request.
    fn install(&self, id: &str, slot: &Path) -> Result<Install> {
        let device = self.fixture.device(id)?;
        let slot_b = device.slot_path(ota_agent::slot::SlotId::B);
        std::fs::remove_file(&slot_b)?;
        std::os::unix::fs::symlink(slot, &slot_b)?;
        device.power_on()?;
        let run = run_agent_measured(&device, Duration::from_secs(1800))?;
        if run.end != RunEnd::RebootRequested {
            bail!(
                "the agent did not install the image ({:?}); log:\n{}",
                run.end,
                device.log_tail()
            );
        }
        if std::env::var_os("BENCH_SHOW_LOG").is_some() {
            eprintln!("{}", device.log_tail());
        }
        let _ = std::fs::remove_dir_all(&device.dir);
        Ok(Install {
            secs: run.wall.as_secs_f64(),
            user: run.user_cpu.as_secs_f64(),
            sys: run.system_cpu.as_secs_f64(),
            rss_mib: run.peak_rss_bytes as f64 / MIB as f64,
        })
    }
}

fn dd_once(image: &Path, slot: &Path) -> Result<f64> {
    timed_dd(&[
        format!("if={}", image.display()),
        format!("of={}", slot.display()),
        "bs=4M".into(),
        "conv=fsync".into(),
    ])
}

/// Seconds for `dd` to write `image` into `slot` with direct I/O, as the
/// agent writes, and fsync it.
fn direct_write_once(image: &Path, slot: &Path) -> Result<f64> {
    timed_dd(&[
        format!("if={}", image.display()),
        format!("of={}", slot.display()),
        "bs=4M".into(),
        "oflag=direct".into(),
        "conv=fsync".into(),
    ])
}

/// Seconds for `dd` to read `slot` back from the device (O_DIRECT, as
/// the agent's read-back does) into /dev/null.
fn read_back_once(slot: &Path) -> Result<f64> {
    timed_dd(&[
        format!("if={}", slot.display()),
        "of=/dev/null".into(),
        "bs=4M".into(),
        "iflag=direct".into(),
    ])
}

fn timed_dd(args: &[String]) -> Result<f64> {
    let t = Instant::now();
    let status = Command::new("dd")
        .args(args)
        .arg("status=none")
        .status()
        .context("running dd")?;
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("dd {} failed: {status}", args.join(" "));
    }
    Ok(secs)
}

/// `sync`, then drop the page cache, dentries and inodes (root only).
fn drop_caches() -> Result<&'static str> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("writing 3 to /proc/sys/vm/drop_caches (run as root)")?;
    Ok("sync; echo 3 > /proc/sys/vm/drop_caches")
}

/// A loop device over a sparse file of `size` bytes, with direct I/O so
/// the backing file's page cache is not in the way; detached on drop.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn attach(backing: &Path, size: u64) -> Result<LoopDevice> {
        std::fs::File::create(backing)?.set_len(size)?;
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(backing)
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            bail!(
                "losetup --direct-io=on failed (root needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        // The first write into a sparse file allocates its blocks, which
        // costs several times a later write: fill it once, untimed, so
        // every timed run overwrites allocated blocks as a device would.
        let status = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", path.display()))
            .arg(format!("count={}", size.div_ceil(4 * MIB)))
            .args(["bs=4M", "conv=fsync", "status=none"])
            .status()
            .context("running dd")?;
        if !status.success() {
            eprintln!("NOTE: pre-filling {} failed: {status}", path.display());
        }
        Ok(LoopDevice { path })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        integration_tests::measured::detach_loop_device(&self.path);
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(1024 * MIB) {
        format!("{} GiB", bytes / (1024 * MIB))
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// Machine and versions, for the record.
fn machine_summary() -> String {
    let cpu = integration_tests::measured::cpu_model();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let output = integration_tests::measured::command_output;
    format!(
        "machine: {cores} cores, {cpu}; kernel {}; {}; commit {}",
        output(&["uname", "-r"]),
        output(&["rustc", "--version"]),
        integration_tests::measured::workspace_commit(),
    )
}
