//! `bench-delta`: the bytes an update N → N+1 of a real root filesystem puts
//! on the wire, and how long the install takes, for each way of shipping it.
//! Not a test: never run by `cargo test` or `./test`; its figures are
//! recorded by hand in docs/BENCHMARKS.md. `integration-tests/delta-bench/run.sh`
//! builds the image pair (Debian 12 with and without its updates) and the
//! release binaries, then runs this.
//!
//! Installs by the real agent, from the real ota-server on loopback, each
//! onto a fresh simulated device whose active slot A holds N and whose slot B
//! is an empty file:
//! * raw: `ota-repo add --compress none`;
//! * zstd: `ota-repo add --compress zstd`;
//! * delta (with `--delta`): `ota-repo add` with `--delta-add-args`, the agent
//!   taking the chunks it has from slot A.
//!
//! Bytes: the first install of each kind goes through a counting proxy
//! ([`integration_tests::proxy::Proxy`], unthrottled) that counts every byte
//! the server sends back (HTTP heads and bodies, metadata included); every
//! install also reads the server's `ota_http_response_body_bytes_total`
//! before and after. The timed installs talk to the server directly. After
//! each install the harness hashes slot B itself and compares it with N+1.
//!
//! The delta devices run N as the release they installed over the air: N
//! is published too (as 1.0.0, with the same `--delta-add-args`) and the
//! device's state names it, so the agent plans from N's signed chunk index
//! without reading slot A first. `--factory-n` runs N as a factory image
//! instead (no release names it: the agent scans slot A).
//!
//! Latency (`--latency-ms MS`, with `--delta`): after the timed runs, one
//! more delta install per `--delta-parallel` value (default 1 and 4) through
//! the proxy holding every request MS milliseconds, as a link with that
//! round trip would: requests, the most in flight at once, bytes, seconds.
//!
//! Beside them, computed on the same pair (nothing installed):
//! * casync: `casync make --compression=zstd` of N and of N+1 into two
//!   stores (default chunk sizes, 16/64/256 KiB); the bytes a device seeded
//!   with N fetches are N+1's index (`.caibx`) plus the compressed chunks of
//!   N+1's store whose names N's store lacks (the chunk name is the hash of
//!   its uncompressed bytes, and `casync extract --seed=N` chunks the seed the
//!   same way, so these are the chunks it would download);
//! * `zstd --patch-from=N N+1 --long=30` at each `--zstd-level` (default 3 and
//!   19): the patch's size, once the patch has been checked to rebuild N+1.
//!
//! ```text
//! integration-tests/delta-bench/run.sh [--runs N] [--delta] ...
//! target/release/bench-delta --n N.img --n1 N1.img [--runs 3] [--delta]
//!     [--delta-add-args "--compress zstd --delta"] [--zstd-level 3 --zstd-level 19]
//!     [--factory-n] [--latency-ms 20 [--delta-parallel 1 --delta-parallel 4]]
//! ```

use anyhow::{bail, Context, Result};
use integration_tests::device::{RunEnd, SimDevice};
use integration_tests::fixture::{Fixture, HARDWARE_ID};
use integration_tests::measured::run_agent_measured;
use integration_tests::proxy::Proxy;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const N_VERSION: &str = "1.0.0";
const N1_VERSION: &str = "2.0.0";
/// N's target name when it is published (the delta method without `--factory-n`).
const N_TARGET: &str = "bench-n.img";
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-delta: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Debug)]
struct Args {
    n: PathBuf,
    n1: PathBuf,
    runs: usize,
    delta: bool,
    delta_add_args: Vec<String>,
    zstd_levels: Vec<u32>,
    factory_n: bool,
    latency_ms: Option<u64>,
    delta_parallel: Vec<u32>,
}

const USAGE: &str = "usage: bench-delta --n N.img --n1 N1.img [--runs 3] [--delta] \
[--delta-add-args \"--compress zstd --delta\"] [--zstd-level L]... [--factory-n] \
[--latency-ms MS [--delta-parallel N]...]";

fn parse_args() -> Result<Args> {
    let mut n = None;
    let mut n1 = None;
    let mut runs = 3;
    let mut delta = false;
    let mut delta_add_args = vec!["--compress".to_owned(), "zstd".into(), "--delta".into()];
    let mut zstd_levels = Vec::new();
    let mut factory_n = false;
    let mut latency_ms = None;
    let mut delta_parallel = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--n" => n = Some(PathBuf::from(value("--n")?)),
            "--n1" => n1 = Some(PathBuf::from(value("--n1")?)),
            "--runs" => {
                let v = value("--runs")?;
                runs = v
                    .parse()
                    .ok()
                    .filter(|r| (1..=20).contains(r))
                    .with_context(|| format!("--runs {v:?}: expected a number from 1 to 20"))?;
            }
            "--delta" => delta = true,
            "--factory-n" => factory_n = true,
            "--latency-ms" => {
                let v = value("--latency-ms")?;
                latency_ms = Some(
                    v.parse()
                        .ok()
                        .filter(|ms| (1..=10_000).contains(ms))
                        .with_context(|| format!("--latency-ms {v:?}: expected 1 to 10000"))?,
                );
            }
            "--delta-parallel" => {
                let v = value("--delta-parallel")?;
                delta_parallel.push(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=32).contains(n))
                        .with_context(|| format!("--delta-parallel {v:?}: expected 1 to 32"))?,
                );
            }
            "--delta-add-args" => {
                delta_add_args = value("--delta-add-args")?
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
            }
            "--zstd-level" => {
                let v = value("--zstd-level")?;
                zstd_levels.push(
                    v.parse()
                        .ok()
                        .filter(|l| (1..=19).contains(l))
                        .with_context(|| format!("--zstd-level {v:?}: expected 1 to 19"))?,
                );
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if zstd_levels.is_empty() {
        zstd_levels = vec![3, 19];
    }
    if delta_parallel.is_empty() {
        delta_parallel = vec![1, 4];
    }
    if latency_ms.is_some() && !delta {
        bail!("--latency-ms measures delta installs: add --delta\n{USAGE}");
    }
    Ok(Args {
        n: n.context("--n N.img is required")?,
        n1: n1.context("--n1 N1.img is required")?,
        runs,
        delta,
        delta_add_args,
        zstd_levels,
        factory_n,
        latency_ms,
        delta_parallel,
    })
}

/// One way the release is published for the agent.
#[derive(Debug)]
struct Method {
    name: &'static str,
    add_args: Vec<String>,
}

/// What the installs of one method measured.
#[derive(Debug)]
struct MethodResult {
    name: &'static str,
    /// Size of the published target file (what a full download fetches).
    target_bytes: u64,
    /// Everything the server sent during the proxied install, heads included.
    wire_bytes: u64,
    /// The server's body-bytes counter over each install (it also counts
    /// the harness's own `/metrics` read, a few KiB).
    body_bytes: Vec<u64>,
    /// Wall time from agent start to its reboot request, timed installs only.
    install_secs: Vec<f64>,
}

fn run() -> Result<()> {
    let args = parse_args()?;
    for (flag, path) in [("--n", &args.n), ("--n1", &args.n1)] {
        if !path.is_file() {
            bail!("{flag} {}: no such file", path.display());
        }
    }
    let n_len = std::fs::metadata(&args.n)?.len();
    let n1_len = std::fs::metadata(&args.n1)?.len();
    let n1_sha = sha256_prefix(&args.n1, n1_len)?;
    eprintln!(
        "N {} ({n_len} bytes), N+1 {} ({n1_len} bytes)",
        args.n.display(),
        args.n1.display()
    );
    let load_before = loadavg();

    let mut methods = vec![
        Method {
            name: "raw (--compress none)",
            add_args: vec!["--compress".into(), "none".into()],
        },
        Method {
            name: "zstd (--compress zstd)",
            add_args: vec!["--compress".into(), "zstd".into()],
        },
    ];
    if args.delta {
        methods.push(Method {
            name: "delta",
            add_args: args.delta_add_args.clone(),
        });
    }

    // One repository and server per method, all alive for the whole sitting,
    // so the timed runs can interleave the methods (the machine is shared:
    // interleaving spreads its noise over all of them alike). The delta case
    // is the newest code: when it fails, the table says so and the other
    // figures of the sitting still stand.
    let mut live: Vec<(MethodResult, Fixture)> = Vec::new();
    let mut failures: Vec<(&'static str, String)> = Vec::new();
    for m in &methods {
        match first_install(m, &args, n1_len, &n1_sha) {
            Ok(pair) => live.push(pair),
            Err(e) if m.name == "delta" => {
                eprintln!("{}: FAILED: {e:#}", m.name);
                failures.push((m.name, format!("{e:#}")));
            }
            Err(e) => return Err(e),
        }
    }
    for run in 0..args.runs {
        for (r, f) in &mut live {
            let outcome = install(f, &args, &f.server.url, &format!("t{run}"), n1_len, &n1_sha)?;
            eprintln!("{} run {}: {:.2} s", r.name, run + 1, outcome.secs);
            r.install_secs.push(outcome.secs);
            r.body_bytes.extend(outcome.body_bytes);
        }
    }
    let mut latency = Vec::new();
    if let (Some(ms), Some((_, f))) = (
        args.latency_ms,
        live.iter().find(|(r, _)| r.name == "delta"),
    ) {
        for &parallel in &args.delta_parallel {
            latency.push(latency_install(f, &args, ms, parallel, n1_len, &n1_sha)?);
        }
    }
    let results: Vec<MethodResult> = live.into_iter().map(|(r, _)| r).collect();

    let casync = casync_bytes(&args.n, &args.n1)?;
    let mut patches = Vec::new();
    for &level in &args.zstd_levels {
        patches.push(zstd_patch(&args.n, &args.n1, level)?);
    }
    let load_after = loadavg();

    println!("{}", machine_summary());
    println!(
        "* N: `{}` ({n_len} bytes); N+1: `{}` ({n1_len} bytes)",
        args.n.display(),
        args.n1.display()
    );
    println!("* load average (1, 5, 15 min): before `{load_before}`, after `{load_after}`\n");
    println!(
        "{}",
        table(&results, &failures, &casync, &patches, n1_len, args.delta, args.runs)
    );
    if let Some(ms) = args.latency_ms {
        println!("{}", latency_table(ms, &latency));
    }
    Ok(())
}

/// One delta install through a proxy that holds every request.
#[derive(Debug)]
struct LatencyRun {
    parallel: u32,
    requests: usize,
    chunk_requests: usize,
    max_in_flight: u64,
    wire_bytes: u64,
    secs: f64,
}

/// A delta install of N+1 with `parallel` chunk requests in flight, every
/// request held `ms` milliseconds by the counting proxy.
fn latency_install(
    f: &Fixture,
    args: &Args,
    ms: u64,
    parallel: u32,
    n1_len: u64,
    n1_sha: &[u8],
) -> Result<LatencyRun> {
    let proxy = Proxy::start(&f.server.url, u64::MAX)?;
    proxy.delay_ms.store(ms, Ordering::Relaxed);
    let download = format!("\n[download]\ndelta_parallel_fetches = {parallel}\n");
    let outcome = install_with(
        f,
        args,
        &proxy.url,
        &format!("latency-{parallel}"),
        n1_len,
        n1_sha,
        &download,
    )?;
    let lines = proxy.request_lines();
    let run = LatencyRun {
        parallel,
        requests: lines.len(),
        chunk_requests: lines
            .iter()
            .filter(|l| l.contains("/chunks/") && l.contains(".zst "))
            .count(),
        max_in_flight: proxy.max_in_flight.load(Ordering::Relaxed),
        wire_bytes: proxy.sent.load(Ordering::Relaxed),
        secs: outcome.secs,
    };
    eprintln!("delta, {ms} ms per request, {parallel} in flight: {run:?}");
    Ok(run)
}

fn latency_table(ms: u64, runs: &[LatencyRun]) -> String {
    let mut t = format!(
        "\nDelta installs through the counting proxy holding every request {ms} ms:\n\n\
         | chunk requests in flight (`delta_parallel_fetches`) | requests (chunks) | most in flight at once | bytes on the wire | install s |\n\
         |---:|---:|---:|---:|---:|\n"
    );
    for r in runs {
        let _ = writeln!(
            t,
            "| {} | {} ({}) | {} | {} | {:.2} |",
            r.parallel, r.requests, r.chunk_requests, r.max_in_flight, r.wire_bytes, r.secs
        );
    }
    t
}

/// Publishes N+1 the way `m` says on a fresh repository and server, and
/// installs it once through the counting proxy.
fn first_install(
    m: &Method,
    args: &Args,
    n1_len: u64,
    n1_sha: &[u8],
) -> Result<(MethodResult, Fixture)> {
    let f = Fixture::new()?;
    let t = Instant::now();
    let extra: Vec<&str> = m.add_args.iter().map(String::as_str).collect();
    if m.name == "delta" && !args.factory_n {
        let mut n_args = extra.clone();
        n_args.extend(["--name", N_TARGET]);
        f.repo
            .add_with(&args.n, N_VERSION, &[HARDWARE_ID], &n_args)
            .with_context(|| format!("ota-repo add N {}", n_args.join(" ")))?;
    }
    f.repo
        .add_with(&args.n1, N1_VERSION, &[HARDWARE_ID], &extra)
        .with_context(|| format!("ota-repo add {}", m.add_args.join(" ")))?;
    f.repo.publish(&f.server)?;
    eprintln!(
        "{}: ota-repo add + publish {:.1} s",
        m.name,
        t.elapsed().as_secs_f64()
    );
    let target_bytes = published_target_len(&f)?;
    let proxy = Proxy::start(&f.server.url, u64::MAX)?;
    let outcome = install(&f, args, &proxy.url, "bytes", n1_len, n1_sha)?;
    let wire_bytes = proxy.sent.load(Ordering::Relaxed);
    eprintln!(
        "{}: {wire_bytes} bytes through the proxy, {:.2} s",
        m.name, outcome.secs
    );
    let result = MethodResult {
        name: m.name,
        target_bytes,
        wire_bytes,
        body_bytes: outcome.body_bytes.into_iter().collect(),
        install_secs: Vec::new(),
    };
    Ok((result, f))
}

struct Outcome {
    secs: f64,
    body_bytes: Option<u64>,
}

/// One install of N+1 on a fresh device running N, through `server_url`.
fn install(
    f: &Fixture,
    args: &Args,
    server_url: &str,
    tag: &str,
    n1_len: u64,
    n1_sha: &[u8],
) -> Result<Outcome> {
    install_with(f, args, server_url, tag, n1_len, n1_sha, "")
}

/// [`install`] with `config` appended to the agent's configuration.
fn install_with(
    f: &Fixture,
    args: &Args,
    server_url: &str,
    tag: &str,
    n1_len: u64,
    n1_sha: &[u8],
    config: &str,
) -> Result<Outcome> {
    let id = format!("bench-{tag}");
    let device = SimDevice::provision(
        &f.dir.path().join("devices").join(&id),
        &id,
        HARDWARE_ID,
        server_url,
        &f.repo.initial_root(),
        &args.n,
        N_VERSION,
    )?;
    if !config.is_empty() {
        device.append_config(config)?;
    }
    if published_n(f) {
        // The device installed N over the air: its state names N's target,
        // which the agent finds in the signed metadata with the same hash.
        let state = serde_json::json!({
            "format": 1,
            "slot_a": {
                "version": N_VERSION,
                "target": N_TARGET,
                "sha256": hex::encode(sha256_prefix(&args.n, std::fs::metadata(&args.n)?.len())?),
            },
            "phase": { "phase": "idle" },
        });
        std::fs::write(
            device.dir.join("state/state.json"),
            serde_json::to_vec_pretty(&state)?,
        )?;
    }
    device.power_on()?;
    let before = body_bytes_sent(&f.server.url);
    let run = run_agent_measured(&device, Duration::from_secs(1800))?;
    let after = body_bytes_sent(&f.server.url);
    if run.end != RunEnd::RebootRequested {
        bail!(
            "the agent did not install N+1 ({:?}); log:\n{}",
            run.end,
            device.log_tail()
        );
    }
    // What the agent decided (delta or the full image, and why), for the record.
    let log = std::fs::read_to_string(device.dir.join("agent.log")).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("delta")) {
        eprintln!("  agent: {line}");
    }
    let slot_b = device.slot_path(ota_agent::slot::SlotId::B);
    if sha256_prefix(&slot_b, n1_len)? != n1_sha {
        bail!("slot B of {id} does not hold N+1 after the install");
    }
    if let Err(e) = std::fs::remove_dir_all(&device.dir) {
        eprintln!("could not remove {}: {e}", device.dir.display());
    }
    Ok(Outcome {
        secs: run.wall.as_secs_f64(),
        body_bytes: after.zip(before).map(|(a, b)| a.saturating_sub(b)),
    })
}

/// Whether N is a release of this fixture's repository.
fn published_n(f: &Fixture) -> bool {
    std::fs::read_dir(f.server.repository_dir().join("targets"))
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(N_TARGET))
        })
        .unwrap_or(false)
}

/// sha256 of the first `len` bytes of `path` (a slot file may be longer than its image).
fn sha256_prefix(path: &Path, len: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = file.take(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        seen += n as u64;
    }
    if seen != len {
        bail!("{} holds {seen} bytes, expected {len}", path.display());
    }
    Ok(hasher.finalize().to_vec())
}

/// The size of the release file `ota-repo publish` put on the server: the
/// largest of its targets but N (the rest, if any, are small: a chunk index).
fn published_target_len(f: &Fixture) -> Result<u64> {
    let dir = f.server.repository_dir().join("targets");
    let mut best: Option<u64> = None;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Content-addressed names: <sha256>.<file name>; the release is the largest.
        if name.contains('.') && !name.ends_with(N_TARGET) && entry.file_type()?.is_file() {
            let len = entry.metadata()?.len();
            if best.is_none_or(|b| len > b) {
                best = Some(len);
            }
        }
    }
    best.with_context(|| format!("no release file in {}", dir.display()))
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

/// casync's bytes for a device seeded with N: N+1's index plus N+1's
/// compressed chunks that N's store lacks.
#[derive(Debug)]
struct Casync {
    index_bytes: u64,
    new_chunks: usize,
    new_chunk_bytes: u64,
    total_chunks: usize,
    full_store_bytes: u64,
}

fn casync_bytes(n: &Path, n1: &Path) -> Result<Casync> {
    let work = tempfile::Builder::new()
        .prefix("bench-delta-casync")
        .tempdir_in(n1.parent().unwrap_or(Path::new(".")))?;
    let w = work.path();
    for (image, name) in [(n, "n"), (n1, "n1")] {
        let t = Instant::now();
        let store = w.join(format!("{name}.castr"));
        let index = w.join(format!("{name}.caibx"));
        let status = Command::new("casync")
            .arg("make")
            .arg("--compression=zstd")
            .arg(format!("--store={}", store.display()))
            .arg(&index)
            .arg(image)
            // It prints the index's digest: not part of the report.
            .stdout(std::process::Stdio::null())
            .status()
            .context("running casync (apt-get install casync)")?;
        if !status.success() {
            bail!("casync make {} failed: {status}", image.display());
        }
        eprintln!("casync make {name}: {:.1} s", t.elapsed().as_secs_f64());
    }
    let have: HashSet<String> = chunk_files(&w.join("n.castr"))?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let wanted = chunk_files(&w.join("n1.castr"))?;
    let mut c = Casync {
        index_bytes: std::fs::metadata(w.join("n1.caibx"))?.len(),
        new_chunks: 0,
        new_chunk_bytes: 0,
        total_chunks: wanted.len(),
        full_store_bytes: wanted.iter().map(|(_, len)| len).sum(),
    };
    for (name, len) in &wanted {
        if !have.contains(name) {
            c.new_chunks += 1;
            c.new_chunk_bytes += len;
        }
    }
    Ok(c)
}

/// (file name, size) of every `.cacnk` in a casync store (`XXXX/<id>.cacnk`).
fn chunk_files(store: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(store).with_context(|| format!("reading {}", store.display()))? {
        let dir = dir?;
        if !dir.file_type()?.is_dir() {
            continue;
        }
        for chunk in std::fs::read_dir(dir.path())? {
            let chunk = chunk?;
            let name = chunk.file_name().to_string_lossy().into_owned();
            if name.ends_with(".cacnk") {
                out.push((name, chunk.metadata()?.len()));
            }
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct Patch {
    level: u32,
    bytes: u64,
    secs: f64,
}

/// `zstd --patch-from=N N+1` at `level`, with a window covering N.
fn zstd_patch(n: &Path, n1: &Path, level: u32) -> Result<Patch> {
    let out = n1.with_extension(format!("patch-{level}.zst"));
    let t = Instant::now();
    let status = Command::new("zstd")
        .args(["-q", "-f", "-T0", "--long=30"])
        .arg(format!("-{level}"))
        .arg(format!("--patch-from={}", n.display()))
        .arg(n1)
        .arg("-o")
        .arg(&out)
        .status()
        .context("running zstd (apt-get install zstd)")?;
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("zstd --patch-from at level {level} failed: {status}");
    }
    let bytes = std::fs::metadata(&out)?.len();
    // The figure only counts if the patch rebuilds N+1 from N.
    let rebuilt = n1.with_extension(format!("patch-{level}.check"));
    let status = Command::new("zstd")
        .args(["-q", "-f", "-d", "--long=30"])
        .arg(format!("--patch-from={}", n.display()))
        .arg(&out)
        .arg("-o")
        .arg(&rebuilt)
        .status()
        .context("running zstd -d")?;
    let same = status.success() && files_equal(&rebuilt, n1)?;
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&rebuilt);
    if !same {
        bail!("zstd -{level} --patch-from: the patch does not rebuild N+1 from N");
    }
    eprintln!("zstd -{level} --patch-from: {bytes} bytes in {secs:.1} s");
    Ok(Patch { level, bytes, secs })
}

fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    let len = std::fs::metadata(b)?.len();
    Ok(std::fs::metadata(a)?.len() == len && sha256_prefix(a, len)? == sha256_prefix(b, len)?)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

fn pct(bytes: u64, of: u64) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.1} %", bytes as f64 * 100.0 / of as f64)
    }
}

fn table(
    results: &[MethodResult],
    failures: &[(&str, String)],
    casync: &Casync,
    patches: &[Patch],
    n1_len: u64,
    delta: bool,
    runs: usize,
) -> String {
    let mut t = format!(
        "| method | release file bytes | bytes on the wire (proxy: heads + bodies, metadata included) | MiB | of N+1 | server body bytes per install (min–max) | install s, median of {runs} (min–max) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in results {
        let (lo, hi) = (
            r.body_bytes.iter().min().copied().unwrap_or(0),
            r.body_bytes.iter().max().copied().unwrap_or(0),
        );
        let lo_s = r.install_secs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi_s = r.install_secs.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {lo}–{hi} | {} ({lo_s:.2}–{hi_s:.2}) |",
            r.name,
            r.target_bytes,
            r.wire_bytes,
            mib(r.wire_bytes),
            pct(r.wire_bytes, n1_len),
            median(&r.install_secs).map_or("-".into(), |m| format!("{m:.2}")),
        );
    }
    for (name, why) in failures {
        let why = why.lines().next().unwrap_or("").replace('|', "/");
        let _ = writeln!(t, "| {name} | - | failed: {why} | - | - | - | - |");
    }
    if !delta {
        let _ = writeln!(
            t,
            "| delta | - | pending (run with `--delta` once the agent has delta updates) | - | - | - | - |"
        );
    }
    let casync_total = casync.index_bytes + casync.new_chunk_bytes;
    let _ = writeln!(
        t,
        "| casync, seeded with N (index {} + {} of {} chunks, zstd) | {} (whole store) | {casync_total} | {} | {} | - | - |",
        casync.index_bytes,
        casync.new_chunks,
        casync.total_chunks,
        casync.full_store_bytes,
        mib(casync_total),
        pct(casync_total, n1_len),
    );
    for p in patches {
        let _ = writeln!(
            t,
            "| `zstd -{} --long=30 --patch-from=N` ({:.1} s to make) | - | {} | {} | {} | - | - |",
            p.level,
            p.secs,
            p.bytes,
            mib(p.bytes),
            pct(p.bytes, n1_len),
        );
    }
    match results.iter().find(|r| r.name == "delta") {
        Some(d) if casync_total > 0 => {
            let _ = writeln!(
                t,
                "\ndelta / casync = {:.2} (goal ≤ 1.2)",
                d.wire_bytes as f64 / casync_total as f64
            );
        }
        _ => {
            let _ = writeln!(t, "\ndelta / casync: pending");
        }
    }
    // The full install a delta replaces is the release as `ota-repo add`
    // makes it by default (zstd); the raw one is shown beside it.
    let delta = results.iter().find(|r| r.name == "delta");
    for (prefix, label, goal) in [
        ("zstd", "the default full install (zstd)", " (goal ≤ 1.0)"),
        ("raw", "a raw full install", ""),
    ] {
        let full = results.iter().find(|r| r.name.starts_with(prefix));
        if let (Some(d), Some(full)) = (delta, full) {
            if let (Some(ds), Some(fs)) = (median(&d.install_secs), median(&full.install_secs)) {
                let _ = writeln!(
                    t,
                    "delta install / {label} (medians) = {:.2}{goal}",
                    ds / fs
                );
            }
        }
    }
    t
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Machine and versions, for the record.
fn machine_summary() -> String {
    let cpu = integration_tests::measured::cpu_model();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let output = integration_tests::measured::command_output;
    format!(
        "* machine: {cores} cores, {cpu}; kernel {}; {}\n* {}; {}; {}; commit {}",
        output(&["uname", "-r"]),
        output(&["sh", "-c", "df -h --output=source,fstype /tmp | tail -n 1"]),
        output(&["rustc", "--version"]),
        output(&["sh", "-c", "casync --version | head -n 1"]),
        output(&["sh", "-c", "zstd --version"]),
        integration_tests::measured::workspace_commit(),
    )
}
