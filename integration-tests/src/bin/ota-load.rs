//! `ota-load`: a bounded load generator for `ota-server` (or any server of
//! the same paths, e.g. nginx serving the repository directory), on loopback
//! only. Not a test: never run by `cargo test`; figures are recorded by hand
//! in docs/LOAD.md.
//!
//! N simulated devices (one thread each, one keep-alive connection each) do
//! what an idle fleet does, as fast as the server answers or every
//! `--interval-ms`: `GET /metadata/timestamp.json` with `If-None-Match`
//! (304), a root-rotation probe `GET /metadata/{N+1}.root.json` (404), and
//! every `--report-every` polls a status report
//! `POST /api/v1/devices/{id}/reports` (204). `--mode poll` sends only the
//! timestamp poll (for comparison with a static file server).
//!
//! It stops after `--duration` seconds or `--max-requests` requests,
//! whichever comes first, and prints requests/s, latency p50/p99/max per kind,
//! errors, and the server's resident memory (VmRSS from /proc/PID/status)
//! before and after when given `--server-pid`.
//!
//! ```text
//! ota-load --url http://127.0.0.1:8080 [--devices 64] [--duration 10]
//!          [--max-requests 2000000] [--mode device|poll] [--root-probe 2]
//!          [--report-every 10] [--interval-ms 0] [--server-pid PID]
//! ```

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Hard bounds, whatever the command line says.
const MAX_DEVICES: usize = 2000;
const MAX_DURATION_SECS: u64 = 600;
const MAX_REQUESTS: u64 = 50_000_000;
/// Longest response head or body accepted (timestamp.json and error bodies are small).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

fn main() {
    if let Err(e) = run() {
        eprintln!("ota-load: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Timestamp poll, root probe, reports.
    Device,
    /// Timestamp poll only.
    Poll,
}

#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    host: String,
    devices: usize,
    duration: Duration,
    max_requests: u64,
    mode: Mode,
    root_probe: u64,
    report_every: u64,
    interval: Duration,
    server_pid: Option<u32>,
}

const USAGE: &str = "usage: ota-load --url http://127.0.0.1:PORT [--devices N] [--duration SECS] \
    [--max-requests N] [--mode device|poll] [--root-probe N] [--report-every N] \
    [--interval-ms MS] [--server-pid PID]";

fn parse_args() -> Result<Args> {
    let mut url = None;
    let mut devices = 64usize;
    let mut duration = 10u64;
    let mut max_requests = 2_000_000u64;
    let mut mode = Mode::Device;
    let mut root_probe = 2u64;
    let mut report_every = 10u64;
    let mut interval_ms = 0u64;
    let mut server_pid = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let number = |v: String, what: &str| -> Result<u64> {
            v.parse::<u64>()
                .with_context(|| format!("{what} must be a whole number, not {v:?}"))
        };
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--devices" => devices = number(value()?, "--devices")? as usize,
            "--duration" => duration = number(value()?, "--duration")?,
            "--max-requests" => max_requests = number(value()?, "--max-requests")?,
            "--mode" => {
                mode = match value()?.as_str() {
                    "device" => Mode::Device,
                    "poll" => Mode::Poll,
                    other => bail!("--mode must be device or poll, not {other:?}"),
                }
            }
            "--root-probe" => root_probe = number(value()?, "--root-probe")?,
            "--report-every" => report_every = number(value()?, "--report-every")?,
            "--interval-ms" => interval_ms = number(value()?, "--interval-ms")?,
            "--server-pid" => {
                let v = value()?;
                server_pid = Some(
                    v.parse::<u32>()
                        .with_context(|| format!("--server-pid must be a process id, not {v:?}"))?,
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let url = url.with_context(|| format!("--url is required\n{USAGE}"))?;
    let (addr, host) = loopback_target(&url)?;
    if devices == 0 || devices > MAX_DEVICES {
        bail!("--devices must be 1 to {MAX_DEVICES}");
    }
    if duration == 0 || duration > MAX_DURATION_SECS {
        bail!("--duration must be 1 to {MAX_DURATION_SECS} seconds");
    }
    if max_requests == 0 || max_requests > MAX_REQUESTS {
        bail!("--max-requests must be 1 to {MAX_REQUESTS}");
    }
    if report_every == 0 {
        bail!("--report-every must be at least 1");
    }
    Ok(Args {
        addr,
        host,
        devices,
        duration: Duration::from_secs(duration),
        max_requests,
        mode,
        root_probe,
        report_every,
        interval: Duration::from_millis(interval_ms),
        server_pid,
    })
}

/// The address of `url`, refused unless every address it names is loopback:
/// this tool never sends load anywhere else.
fn loopback_target(url: &str) -> Result<(SocketAddr, String)> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("invalid --url {url:?}"))?;
    if parsed.scheme() != "http" {
        bail!("--url must be http:// (got {:?})", parsed.scheme());
    }
    let host = parsed
        .host_str()
        .with_context(|| format!("--url {url:?} has no host"))?
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .with_context(|| format!("--url {url:?} has no port"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) if host == "localhost" => (host.as_str(), port)
            .to_socket_addrs()
            .context("resolve localhost")?
            .collect(),
        Err(_) => {
            bail!("--url host {host:?} is not a loopback address (127.0.0.0/8, ::1 or localhost)")
        }
    };
    let Some(first) = addrs.first().copied() else {
        bail!("--url host {host:?} resolves to nothing");
    };
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("refusing non-loopback target {bad}: ota-load only loads servers on this machine");
    }
    Ok((first, format!("{host}:{port}")))
}

/// What a request was for; figures are kept per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Poll,
    RootProbe,
    Report,
}

const KINDS: [Kind; 3] = [Kind::Poll, Kind::RootProbe, Kind::Report];

impl Kind {
    fn index(self) -> usize {
        self as usize
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Poll => "timestamp poll (304)",
            Kind::RootProbe => "root probe (404)",
            Kind::Report => "report (204)",
        }
    }
    fn expected(self, status: u16) -> bool {
        match self {
            // 200 once per device (no ETag yet) and after a publication.
            Kind::Poll => status == 304 || status == 200,
            Kind::RootProbe => status == 404,
            Kind::Report => status == 204,
        }
    }
}

/// One device's figures: latencies in microseconds per kind, and errors.
#[derive(Debug, Default)]
struct DeviceStats {
    latencies: [Vec<u32>; 3],
    errors: u64,
    first_error: Option<String>,
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let rss_before = args.server_pid.map(read_rss).transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicU64::new(args.max_requests));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut handles = Vec::with_capacity(args.devices);
    for n in 0..args.devices {
        let args = args.clone();
        let stop = Arc::clone(&stop);
        let budget = Arc::clone(&budget);
        let handle = std::thread::Builder::new()
            .name(format!("device-{n}"))
            .stack_size(256 * 1024)
            .spawn(move || device(n, &args, deadline, &stop, &budget))
            .context("start a device thread")?;
        handles.push(handle);
    }
    let mut all = DeviceStats::default();
    for handle in handles {
        let stats = match handle.join() {
            Ok(s) => s,
            Err(_) => bail!("a device thread panicked"),
        };
        for k in KINDS {
            all.latencies[k.index()].extend_from_slice(&stats.latencies[k.index()]);
        }
        all.errors += stats.errors;
        if all.first_error.is_none() {
            all.first_error = stats.first_error;
        }
    }
    let elapsed = started.elapsed();
    let rss_after = args.server_pid.map(read_rss).transpose()?;

    let total: usize = all.latencies.iter().map(Vec::len).sum();
    println!(
        "target {} mode {:?} devices {} duration {:.1} s",
        args.addr,
        args.mode,
        args.devices,
        elapsed.as_secs_f64()
    );
    println!(
        "requests {total}  errors {}  requests/s {:.0}",
        all.errors,
        total as f64 / elapsed.as_secs_f64()
    );
    let mut every: Vec<u32> = all.latencies.iter().flatten().copied().collect();
    print_latency("all", &mut every, elapsed);
    for k in KINDS {
        print_latency(k.name(), &mut all.latencies[k.index()], elapsed);
    }
    if let Some(e) = &all.first_error {
        println!("first error: {e}");
    }
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!("server RSS before {} KiB, after {} KiB", before.0, after.0);
        println!("server peak RSS (VmHWM) after {} KiB", after.1);
    }
    Ok(())
}

fn print_latency(name: &str, samples: &mut [u32], elapsed: Duration) {
    if samples.is_empty() {
        return;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        f64::from(samples[i.min(samples.len() - 1)]) / 1000.0
    };
    println!(
        "  {name:<22} n {:>9}  {:>8.0}/s  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        samples.len(),
        samples.len() as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn read_rss(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// One simulated device until the deadline or the shared request budget runs out.
fn device(
    n: usize,
    args: &Args,
    deadline: Instant,
    stop: &AtomicBool,
    budget: &AtomicU64,
) -> DeviceStats {
    let mut stats = DeviceStats::default();
    let id = format!("load-{n:05}");
    let report = serde_json::json!({
        "hardware_id": "load-board",
        "installed_version": "1.0.0",
        "booted_slot": "A",
        "status": "idle",
    })
    .to_string();
    let mut conn: Option<Connection> = None;
    let mut etag: Option<String> = None;
    let mut polls = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut round = vec![Kind::Poll];
        if args.mode == Mode::Device {
            round.push(Kind::RootProbe);
            if polls % args.report_every == args.report_every - 1 {
                round.push(Kind::Report);
            }
        }
        for kind in round {
            // Take one request from the shared budget; none left: all stop.
            if budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_err()
            {
                stop.store(true, Ordering::Relaxed);
                return stats;
            }
            let request = match kind {
                Kind::Poll => Request::get("/metadata/timestamp.json", etag.as_deref()),
                Kind::RootProbe => {
                    Request::get(&format!("/metadata/{}.root.json", args.root_probe), None)
                }
                Kind::Report => {
                    Request::post_json(&format!("/api/v1/devices/{id}/reports"), &report)
                }
            };
            let t0 = Instant::now();
            let result = match conn.as_mut() {
                Some(c) => c.send(&args.host, &request),
                None => Connection::open(args.addr).and_then(|mut c| {
                    let r = c.send(&args.host, &request);
                    conn = Some(c);
                    r
                }),
            };
            let micros = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
            match result {
                Ok(resp) if kind.expected(resp.status) => {
                    stats.latencies[kind.index()].push(micros);
                    if kind == Kind::Poll && resp.etag.is_some() {
                        etag = resp.etag;
                    }
                    if resp.close {
                        conn = None;
                    }
                }
                Ok(resp) => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert_with(|| {
                        format!(
                            "{} answered {} to {}",
                            kind.name(),
                            resp.status,
                            request.path
                        )
                    });
                    if resp.close {
                        conn = None;
                    }
                }
                Err(e) => {
                    stats.errors += 1;
                    stats
                        .first_error
                        .get_or_insert_with(|| format!("{}: {e:#}", kind.name()));
                    conn = None;
                }
            }
        }
        polls += 1;
        if !args.interval.is_zero() {
            std::thread::sleep(args.interval);
        }
    }
    stats
}

#[derive(Debug)]
struct Request {
    method: &'static str,
    path: String,
    if_none_match: Option<String>,
    body: Option<String>,
}

impl Request {
    fn get(path: &str, if_none_match: Option<&str>) -> Request {
        Request {
            method: "GET",
            path: path.to_owned(),
            if_none_match: if_none_match.map(str::to_owned),
            body: None,
        }
    }

    fn post_json(path: &str, body: &str) -> Request {
        Request {
            method: "POST",
            path: path.to_owned(),
            if_none_match: None,
            body: Some(body.to_owned()),
        }
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    etag: Option<String>,
    /// The server closes the connection after this response.
    close: bool,
}

/// A minimal HTTP/1.1 keep-alive client: the load generator must cost far
/// less than the server it measures, and the answers here are small.
#[derive(Debug)]
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(addr: SocketAddr) -> Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("read timeout")?;
        Ok(Connection {
            reader: BufReader::with_capacity(16 * 1024, stream),
        })
    }

    fn send(&mut self, host: &str, req: &Request) -> Result<Response> {
        let mut head = format!("{} {} HTTP/1.1\r\nHost: {host}\r\n", req.method, req.path);
        if let Some(tag) = &req.if_none_match {
            head.push_str(&format!("If-None-Match: {tag}\r\n"));
        }
        if let Some(body) = &req.body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        if let Some(body) = &req.body {
            head.push_str(body);
        }
        self.reader
            .get_mut()
            .write_all(head.as_bytes())
            .context("send request")?;
        self.read_response()
    }

    fn read_response(&mut self) -> Result<Response> {
        let mut line = String::new();
        self.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        let mut chunked = false;
        let mut etag = None;
        let mut close = false;
        loop {
            line.clear();
            self.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                bail!("bad header line {header:?}");
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = value
                        .parse()
                        .with_context(|| format!("bad Content-Length {value:?}"))?
                }
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "etag" => etag = Some(value.to_owned()),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        // 304 and 204 carry no body whatever the headers say.
        if status == 304 || status == 204 {
            return Ok(Response {
                status,
                etag,
                close,
            });
        }
        if chunked {
            loop {
                line.clear();
                self.read_line(&mut line)?;
                let size_text = line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_text, 16)
                    .with_context(|| format!("bad chunk size {size_text:?}"))?;
                self.skip(size + 2)?;
                if size == 0 {
                    break;
                }
            }
        } else {
            self.skip(length)?;
        }
        Ok(Response {
            status,
            etag,
            close,
        })
    }

    fn read_line(&mut self, line: &mut String) -> Result<()> {
        let n = (&mut self.reader)
            .take(MAX_RESPONSE_BYTES as u64)
            .read_line(line)
            .context("read response")?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        if n > MAX_RESPONSE_BYTES {
            bail!("response body of {n} bytes is larger than this tool reads");
        }
        let copied = std::io::copy(&mut (&mut self.reader).take(n as u64), &mut std::io::sink())
            .context("read body")?;
        if copied != n as u64 {
            bail!("connection closed in the middle of a body");
        }
        Ok(())
    }
}
