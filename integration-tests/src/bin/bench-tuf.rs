//! `bench-tuf`: the TUF client benchmark. Not a test: it is never run by
//! `cargo test`, and its figures are recorded by hand in docs/BENCHMARKS.md.
//!
//! It builds a python-tuf repository (`python/bench_repo.py`: 50 delegated
//! roles, 10,000 targets, consistent snapshots), serves it with the real
//! `ota-server`, and puts a byte-counting TCP proxy in front of it. Then,
//! `--runs` times each with fresh client state, it measures:
//!
//! * download: our `tuf-client` (`init` + `download` of a target listed by
//!   the last delegated role) beside python-tuf's ngclient
//!   (`python/bench_ngclient.py`: refresh + get_targetinfo + download_target);
//! * refresh: a top-level refresh only, for both;
//! * idle poll: a second refresh with nothing new published, for both.
//!
//! For each: wall time of the client processes (median and min), bytes on
//! the wire in both directions (HTTP headers and bodies, as the proxy relays
//! them; not TCP/IP framing), TCP connections, and every request with its
//! status. python-tuf's time is also given without interpreter start-up and
//! imports, as the script measures it in-process.
//!
//! ```text
//! cargo build --release -p ota-agent --bin tuf-client -p ota-server --bin ota-server \
//!     -p integration-tests --bin bench-tuf
//! target/release/bench-tuf [--runs N] [--roles N] [--targets-per-role N]
//! ```

use anyhow::{bail, Context, Result};
use integration_tests::{bins, python, server::Server};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-tuf: {e:#}");
        std::process::exit(1);
    }
}

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    runs: usize,
    roles: u32,
    targets_per_role: u32,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        runs: 5,
        roles: 50,
        targets_per_role: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse::<u64>()
                .with_context(|| format!("{name} {v:?} is not a whole number"))
        };
        match flag.as_str() {
            "--runs" => args.runs = bounded(value("--runs")?, 1, 100, "--runs")? as usize,
            "--roles" => args.roles = bounded(value("--roles")?, 1, 100, "--roles")? as u32,
            "--targets-per-role" => {
                args.targets_per_role =
                    bounded(value("--targets-per-role")?, 1, 1000, "--targets-per-role")? as u32
            }
            "-h" | "--help" => {
                println!("usage: bench-tuf [--runs N] [--roles N] [--targets-per-role N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn bounded(v: u64, min: u64, max: u64, name: &str) -> Result<u64> {
    if !(min..=max).contains(&v) {
        bail!("{name} must be between {min} and {max}, not {v}");
    }
    Ok(v)
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let work = tempfile::Builder::new()
        .prefix("bench-tuf-")
        .tempdir()
        .context("creating a work directory")?;
    let data_dir = work.path().join("server");
    let repo_dir = data_dir.join("repository");

    eprintln!(
        "building the repository ({} roles x {} targets) with python-tuf...",
        args.roles, args.targets_per_role
    );
    let manifest = build_repo(&repo_dir, &args)?;
    let server = Server::start(&data_dir)?;
    let proxy = CountingProxy::start(&server.url)?;
    let bench = Bench {
        python: python::python()?,
        tuf_client: bins::path("tuf-client")?,
        root: manifest.root.clone(),
        target: manifest.last_target.clone(),
        server_url: server.url.trim_end_matches('/').to_owned(),
        proxy,
        work: work.path().to_path_buf(),
    };

    // One untimed round first: page cache, the server's ETag cache, .pyc files.
    for client in [Client::Ours, Client::PythonTuf] {
        let dir = bench.fresh_dir(&format!("warmup-{}", client.slug()))?;
        bench.download(client, Route::Direct, &dir)?;
    }

    let mut results: Vec<Scenario> = Vec::new();
    for client in [Client::Ours, Client::PythonTuf] {
        for kind in [Kind::Download, Kind::Refresh, Kind::IdlePoll] {
            results.push(Scenario::new(client, kind));
        }
    }
    for run in 0..args.runs {
        eprintln!("run {}/{}", run + 1, args.runs);
        for route in [Route::Direct, Route::Proxied] {
            for client in [Client::Ours, Client::PythonTuf] {
                let name = format!("run{run}-{route:?}-{}", client.slug());
                let dir = bench.fresh_dir(&format!("{name}-download"))?;
                let m = bench.download(client, route, &dir)?;
                find(&mut results, client, Kind::Download)?.add(route, m);
                // Nothing new published since: the poll a device makes most often.
                let m = bench.refresh(client, route, &dir)?;
                find(&mut results, client, Kind::IdlePoll)?.add(route, m);

                let dir = bench.fresh_dir(&format!("{name}-refresh"))?;
                let m = bench.refresh(client, route, &dir)?;
                find(&mut results, client, Kind::Refresh)?.add(route, m);
            }
        }
    }

    print_report(&args, &manifest, &bench, &results)?;
    drop(server);
    Ok(())
}

/// What `bench_repo.py` says it built.
#[derive(Debug, serde::Deserialize)]
struct Manifest {
    root: PathBuf,
    last_target: String,
    roles: u32,
    targets: u32,
    metadata_bytes: std::collections::BTreeMap<String, u64>,
}

fn build_repo(out: &Path, args: &Args) -> Result<Manifest> {
    let roles = args.roles.to_string();
    let per_role = args.targets_per_role.to_string();
    let output = python::run_script(
        "bench_repo.py",
        &[
            out.as_os_str(),
            OsStr::new("--roles"),
            OsStr::new(&roles),
            OsStr::new("--targets-per-role"),
            OsStr::new(&per_role),
        ],
    )?;
    if !output.status.success() {
        bail!(
            "bench_repo.py failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("reading bench_repo.py's manifest")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Ours,
    PythonTuf,
}

impl Client {
    fn slug(self) -> &'static str {
        match self {
            Client::Ours => "ours",
            Client::PythonTuf => "python-tuf",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Client::Ours => "tuf-client (ours)",
            Client::PythonTuf => "python-tuf ngclient",
        }
    }
}

/// Through the counting proxy (bytes and requests) or straight to
/// ota-server (time: the proxy's own relaying cannot add to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Proxied,
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Download,
    Refresh,
    IdlePoll,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Download => "fresh refresh + find + download (last role)",
            Kind::Refresh => "fresh top-level refresh",
            Kind::IdlePoll => "idle poll (second refresh, nothing new)",
        }
    }
}

/// One client doing one thing once.
#[derive(Debug, Clone)]
struct Measurement {
    /// Wall time of the client process(es).
    wall: Duration,
    /// python-tuf only: the script's own time, without interpreter start-up and imports.
    in_process: Option<Duration>,
    traffic: Traffic,
}

#[derive(Debug)]
struct Scenario {
    client: Client,
    kind: Kind,
    /// Through the proxy: bytes, requests (and the time with the proxy).
    proxied: Vec<Measurement>,
    /// Straight to the server: the time.
    direct: Vec<Measurement>,
}

impl Scenario {
    fn new(client: Client, kind: Kind) -> Self {
        Scenario {
            client,
            kind,
            proxied: Vec::new(),
            direct: Vec::new(),
        }
    }

    fn add(&mut self, route: Route, m: Measurement) {
        match route {
            Route::Proxied => self.proxied.push(m),
            Route::Direct => self.direct.push(m),
        }
    }
}

fn find(results: &mut [Scenario], client: Client, kind: Kind) -> Result<&mut Scenario> {
    results
        .iter_mut()
        .find(|s| s.client == client && s.kind == kind)
        .with_context(|| format!("no scenario {kind:?} for {client:?}"))
}

/// Everything a run needs: the clients, the repository's URLs and the proxy.
#[derive(Debug)]
struct Bench {
    python: PathBuf,
    tuf_client: PathBuf,
    root: PathBuf,
    target: String,
    /// ota-server itself, for the timed runs.
    server_url: String,
    proxy: CountingProxy,
    work: PathBuf,
}

impl Bench {
    /// A client state directory holding only the trusted root as `root.json`
    /// (ngclient reads it from there; `tuf-client init` is given it).
    fn fresh_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.join("clients").join(name);
        std::fs::create_dir_all(dir.join("metadata"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::create_dir_all(dir.join("download"))?;
        if !self.root.is_file() {
            bail!("trusted root {} is missing", self.root.display());
        }
        Ok(dir)
    }

    fn download(&self, client: Client, route: Route, dir: &Path) -> Result<Measurement> {
        let (metadata_url, targets_url) = self.urls(route);
        self.measure(route, || match client {
            Client::Ours => {
                self.ours(dir, &["init".as_ref(), self.root.as_os_str()])?;
                self.ours(
                    dir,
                    &[
                        "--metadata-url".as_ref(),
                        metadata_url.as_ref(),
                        "--target-name".as_ref(),
                        self.target.as_ref(),
                        "--target-base-url".as_ref(),
                        targets_url.as_ref(),
                        "--target-dir".as_ref(),
                        dir.join("download").as_os_str(),
                        "download".as_ref(),
                    ],
                )?;
                Ok(None)
            }
            Client::PythonTuf => {
                self.seed_python_root(dir)?;
                self.python_tuf(
                    dir,
                    &metadata_url,
                    &[
                        "--targets-url".as_ref(),
                        targets_url.as_ref(),
                        "--target-name".as_ref(),
                        self.target.as_ref(),
                        "--download-dir".as_ref(),
                        dir.join("download").as_os_str(),
                    ],
                )
                .map(Some)
            }
        })
    }

    /// A refresh from whatever state `dir` holds: fresh (only the trusted
    /// root) or after an earlier run (the idle poll).
    fn refresh(&self, client: Client, route: Route, dir: &Path) -> Result<Measurement> {
        let (metadata_url, _) = self.urls(route);
        let fresh = !dir.join("metadata").join("timestamp.json").exists();
        self.measure(route, || match client {
            Client::Ours => {
                if fresh {
                    self.ours(dir, &["init".as_ref(), self.root.as_os_str()])?;
                }
                self.ours(
                    dir,
                    &[
                        "--metadata-url".as_ref(),
                        metadata_url.as_ref(),
                        "refresh".as_ref(),
                    ],
                )?;
                Ok(None)
            }
            Client::PythonTuf => {
                if fresh {
                    self.seed_python_root(dir)?;
                }
                self.python_tuf(dir, &metadata_url, &[]).map(Some)
            }
        })
    }

    /// (metadata URL, targets URL) by the route asked for.
    fn urls(&self, route: Route) -> (String, String) {
        let base = match route {
            Route::Proxied => &self.proxy.url,
            Route::Direct => &self.server_url,
        };
        (format!("{base}/metadata/"), format!("{base}/targets/"))
    }

    /// Runs `f` between two snapshots of the proxy's counters.
    fn measure(
        &self,
        route: Route,
        f: impl FnOnce() -> Result<Option<Duration>>,
    ) -> Result<Measurement> {
        self.proxy.reset();
        let started = Instant::now();
        let in_process = f()?;
        let wall = started.elapsed();
        // The client exits only after the last response reached it, and the
        // proxy counts a chunk before it forwards it: nothing is in flight.
        let traffic = self.proxy.take();
        if route == Route::Direct && (traffic.up > 0 || traffic.down > 0) {
            bail!(
                "a direct run sent {} bytes through the proxy",
                traffic.up + traffic.down
            );
        }
        Ok(Measurement {
            wall,
            in_process,
            traffic,
        })
    }

    fn ours(&self, dir: &Path, args: &[&OsStr]) -> Result<()> {
        let out = Command::new(&self.tuf_client)
            .arg("--metadata-dir")
            .arg(dir.join("metadata"))
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.tuf_client.display()))?;
        if !out.status.success() {
            bail!(
                "tuf-client {:?} failed ({}): {}",
                args,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn seed_python_root(&self, dir: &Path) -> Result<()> {
        let dest = dir.join("metadata").join("root.json");
        std::fs::copy(&self.root, &dest)
            .with_context(|| format!("copying the trusted root to {}", dest.display()))?;
        Ok(())
    }

    /// Runs bench_ngclient.py; returns its in-process time.
    fn python_tuf(&self, dir: &Path, metadata_url: &str, extra: &[&OsStr]) -> Result<Duration> {
        let out = Command::new(&self.python)
            .arg(python::script("bench_ngclient.py"))
            .arg("--metadata-dir")
            .arg(dir.join("metadata"))
            .arg("--metadata-url")
            .arg(metadata_url)
            .args(extra)
            .env("PYTHONNOUSERSITE", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .with_context(|| format!("running {}", self.python.display()))?;
        if !out.status.success() {
            bail!(
                "bench_ngclient.py failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        #[derive(serde::Deserialize)]
        struct Report {
            seconds: f64,
        }
        let report: Report = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "bench_ngclient.py printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        Duration::try_from_secs_f64(report.seconds)
            .with_context(|| format!("bench_ngclient.py reported {} seconds", report.seconds))
    }
}

// ---- the counting proxy ----

/// What crossed the proxy since the last `take`.
#[derive(Debug, Clone, Default)]
struct Traffic {
    /// Client to server.
    up: u64,
    /// Server to client.
    down: u64,
    connections: u64,
    /// `GET /path -> status (response bytes)`, in the order answered.
    exchanges: Vec<Exchange>,
}

#[derive(Debug, Clone)]
struct Exchange {
    request_line: String,
    status: u16,
    response_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
    exchanges: Mutex<Vec<Exchange>>,
}

/// A loopback TCP proxy that counts bytes both ways and pairs each request
/// line with the status of its response. Unlike `integration_tests::proxy`
/// it never slows anything down.
#[derive(Debug)]
struct CountingProxy {
    url: String,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    fn start(upstream: &str) -> Result<CountingProxy> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("server URL {upstream:?} is not http://IP:PORT"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let url = format!("http://{}", listener.local_addr()?);
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (counters2, stop2) = (counters.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                counters2.connections.fetch_add(1, Ordering::Relaxed);
                let counters = counters2.clone();
                std::thread::spawn(move || {
                    if let Err(e) = relay(client, upstream, counters) {
                        eprintln!("bench-tuf proxy: {e}");
                    }
                });
            }
        });
        Ok(CountingProxy {
            url,
            counters,
            stop,
        })
    }

    fn reset(&self) {
        let _ = self.take();
    }

    fn take(&self) -> Traffic {
        let c = &self.counters;
        Traffic {
            up: c.up.swap(0, Ordering::SeqCst),
            down: c.down.swap(0, Ordering::SeqCst),
            connections: c.connections.swap(0, Ordering::SeqCst),
            exchanges: c
                .exchanges
                .lock()
                .map(|mut e| std::mem::take(&mut *e))
                .unwrap_or_default(),
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees `stop`.
        if let Some(addr) = self.url.strip_prefix("http://") {
            let _ = TcpStream::connect(addr);
        }
    }
}

/// Request lines sent on one connection and not answered yet.
type Pending = Arc<Mutex<VecDeque<String>>>;

fn relay(client: TcpStream, upstream: SocketAddr, counters: Arc<Counters>) -> Result<()> {
    let server = TcpStream::connect(upstream).context("connecting to ota-server")?;
    // Forward each write at once: with Nagle's algorithm a relayed small
    // write waits for the peer's delayed ACK (40 ms), timing the proxy.
    server.set_nodelay(true)?;
    client.set_nodelay(true)?;
    let pending: Pending = Arc::default();
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let (up_counters, up_pending) = (counters.clone(), pending.clone());
    let upstream_thread = std::thread::spawn(move || {
        let mut requests = RequestScanner::default();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            up_counters.up.fetch_add(n as u64, Ordering::SeqCst);
            for line in requests.feed(&buf[..n]) {
                if let Ok(mut p) = up_pending.lock() {
                    p.push_back(line);
                }
            }
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut responses = ResponseScanner::default();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = s_read.read(&mut buf)?;
        if n == 0 {
            break;
        }
        counters.down.fetch_add(n as u64, Ordering::SeqCst);
        for (status, response_bytes) in responses.feed(&buf[..n]) {
            let request_line = pending
                .lock()
                .ok()
                .and_then(|mut p| p.pop_front())
                .unwrap_or_else(|| "(request not seen)".to_owned());
            if let Ok(mut e) = counters.exchanges.lock() {
                e.push(Exchange {
                    request_line,
                    status,
                    response_bytes,
                });
            }
        }
        c_write.write_all(&buf[..n])?;
    }
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = upstream_thread.join();
    Ok(())
}

/// Splits the client's byte stream into requests. The clients only send
/// GETs (no bodies), so a request ends at its blank line.
#[derive(Debug, Default)]
struct RequestScanner {
    head: Vec<u8>,
}

impl RequestScanner {
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.head.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = find_blank_line(&self.head) {
            let request: Vec<u8> = self.head.drain(..end + 4).collect();
            let first = request.split(|&b| b == b'\r').next().unwrap_or_default();
            lines.push(String::from_utf8_lossy(first).into_owned());
        }
        lines
    }
}

/// Splits the server's byte stream into responses: by `Content-Length`, or
/// by chunks for `Transfer-Encoding: chunked` (ota-server's JSON error
/// answers, e.g. the 404 of a root probe); 304 and 204 have no body.
#[derive(Debug, Default)]
struct ResponseScanner {
    /// Received bytes not consumed yet.
    buf: Vec<u8>,
    state: ResponseState,
    /// Status and bytes so far of the response being read.
    status: u16,
    bytes: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ResponseState {
    #[default]
    Head,
    /// Body bytes still to come.
    Body(u64),
    ChunkSize,
    /// Chunk bytes still to come, its closing CRLF included.
    ChunkData(u64),
    /// After the last chunk: trailer lines, up to an empty one.
    Trailer,
    /// Something this scanner does not understand: the rest is not split.
    Lost,
}

impl ResponseScanner {
    /// Returns (status, total bytes) of each response completed by `bytes`.
    fn feed(&mut self, bytes: &[u8]) -> Vec<(u16, u64)> {
        self.buf.extend_from_slice(bytes);
        let mut done = Vec::new();
        loop {
            match self.state {
                ResponseState::Lost => {
                    self.buf.clear();
                    break;
                }
                ResponseState::Head => {
                    let Some(end) = find_blank_line(&self.buf) else {
                        break;
                    };
                    let head = self.consume(end + 4);
                    self.state = match parse_response_head(&head) {
                        Some((status, body)) => {
                            self.status = status;
                            match body {
                                BodyLength::Known(0) => {
                                    self.finish(&mut done);
                                    ResponseState::Head
                                }
                                BodyLength::Known(n) => ResponseState::Body(n),
                                BodyLength::Chunked => ResponseState::ChunkSize,
                            }
                        }
                        None => ResponseState::Lost,
                    };
                }
                ResponseState::Body(left) | ResponseState::ChunkData(left) => {
                    if self.buf.is_empty() {
                        break;
                    }
                    let take = left.min(self.buf.len() as u64);
                    self.consume(take as usize);
                    let left = left - take;
                    self.state = match (self.state, left) {
                        (ResponseState::Body(_), 0) => {
                            self.finish(&mut done);
                            ResponseState::Head
                        }
                        (ResponseState::Body(_), n) => ResponseState::Body(n),
                        (_, 0) => ResponseState::ChunkSize,
                        (_, n) => ResponseState::ChunkData(n),
                    };
                }
                ResponseState::ChunkSize => {
                    let Some(end) = find_crlf(&self.buf) else {
                        break;
                    };
                    let line = self.consume(end + 2);
                    let size = std::str::from_utf8(&line[..end])
                        .ok()
                        .and_then(|l| l.split(';').next())
                        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
                    self.state = match size {
                        Some(0) => ResponseState::Trailer,
                        Some(n) => ResponseState::ChunkData(n + 2),
                        None => ResponseState::Lost,
                    };
                }
                ResponseState::Trailer => {
                    let Some(end) = find_crlf(&self.buf) else {
                        break;
                    };
                    self.consume(end + 2);
                    if end == 0 {
                        self.finish(&mut done);
                        self.state = ResponseState::Head;
                    }
                }
            }
        }
        done
    }

    /// Takes the first `n` buffered bytes as part of the current response.
    fn consume(&mut self, n: usize) -> Vec<u8> {
        self.bytes += n as u64;
        self.buf.drain(..n).collect()
    }

    fn finish(&mut self, done: &mut Vec<(u16, u64)>) {
        done.push((self.status, self.bytes));
        self.bytes = 0;
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    Known(u64),
    Chunked,
}

/// Status and body framing of a response head, None when it cannot be told.
fn parse_response_head(head: &[u8]) -> Option<(u16, BodyLength)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    if status == 304 || status == 204 || (100..200).contains(&status) {
        return Some((status, BodyLength::Known(0)));
    }
    let mut length = None;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().ends_with("chunked")
        {
            return Some((status, BodyLength::Chunked));
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok().map(BodyLength::Known);
        }
    }
    length.map(|l| (status, l))
}

// ---- the report ----

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_report(
    args: &Args,
    manifest: &Manifest,
    bench: &Bench,
    results: &[Scenario],
) -> Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let tuf_version = Command::new(&bench.python)
        .args(["-c", "import tuf; print(tuf.__version__)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let metadata_total: u64 = manifest.metadata_bytes.values().sum();
    println!("# bench-tuf");
    println!();
    println!(
        "machine: {cores} cores, {cpu}; python-tuf {tuf_version}; {} runs each, fresh client state",
        args.runs
    );
    println!(
        "repository: {} delegated roles, {} targets, {} metadata bytes in all; target searched: {}",
        manifest.roles, manifest.targets, metadata_total, bench.target
    );
    for file in [
        "timestamp.json",
        "1.snapshot.json",
        "1.targets.json",
        "1.root.json",
    ] {
        if let Some(size) = manifest.metadata_bytes.get(file) {
            println!("  {file}: {size} bytes");
        }
    }
    let role_file = format!("1.bin-{:02}.json", manifest.roles.saturating_sub(1));
    if let Some(size) = manifest.metadata_bytes.get(&role_file) {
        println!("  {role_file}: {size} bytes");
    }
    println!();
    println!(
        "| scenario | client | wall ms median | wall ms min | in-process ms median (min) | via proxy: wall ms median (min) | bytes up | bytes down | requests | connections |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in results {
        let walls: Vec<f64> = s.direct.iter().map(|m| ms(m.wall)).collect();
        let inner: Vec<f64> = s
            .direct
            .iter()
            .filter_map(|m| m.in_process)
            .map(ms)
            .collect();
        let inner = if inner.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1} ({:.1})", median(inner.clone()), min(&inner))
        };
        let proxied: Vec<f64> = s.proxied.iter().map(|m| ms(m.wall)).collect();
        let stat = |f: fn(&Traffic) -> u64| -> String {
            let v: Vec<u64> = s.proxied.iter().map(|m| f(&m.traffic)).collect();
            let (lo, hi) = (
                v.iter().min().copied().unwrap_or(0),
                v.iter().max().copied().unwrap_or(0),
            );
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}..{hi}")
            }
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {} | {:.1} ({:.1}) | {} | {} | {} | {} |",
            s.kind.label(),
            s.client.label(),
            median(walls.clone()),
            min(&walls),
            inner,
            median(proxied.clone()),
            min(&proxied),
            stat(|t| t.up),
            stat(|t| t.down),
            stat(|t| t.exchanges.len() as u64),
            stat(|t| t.connections),
        );
    }
    println!();
    println!("requests of the first run:");
    for s in results {
        let Some(first) = s.proxied.first() else {
            continue;
        };
        println!("- {} / {}:", s.kind.label(), s.client.label());
        for e in &first.traffic.exchanges {
            println!(
                "    {} -> {} ({} bytes)",
                e.request_line, e.status, e.response_bytes
            );
        }
    }
    Ok(())
}
