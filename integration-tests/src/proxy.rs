//! A loopback TCP proxy that slows down (and can cut) what the server sends,
//! so tests can catch an agent in the middle of a download deterministically.
//! It also counts what passes: bytes, HTTP requests (the request line of
//! each, as the client sent it), and how many requests were waiting for
//! their answer at once; and it can hold every request back for a while
//! before passing it on, as a link with latency would.
//!
//! Requests are recognised by their request line at the start of what the
//! client sends (HTTP/1.1 without pipelining, which is what reqwest and
//! the agent speak); a request is in flight from its request line until
//! the first byte of the answer.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Proxy {
    pub url: String,
    stop: Arc<AtomicBool>,
    /// Server-to-client bytes per second per connection.
    pub rate: Arc<AtomicU64>,
    /// When non-zero: the next connection whose server-to-client bytes pass
    /// this count is cut there (both directions shut down), once; then it
    /// goes back to 0.
    pub cut_after: Arc<AtomicU64>,
    /// Server-to-client bytes relayed so far, over all connections.
    pub sent: Arc<AtomicU64>,
    /// The value of every `Range` request header seen (e.g. `bytes=1048576-`).
    pub ranges: Arc<Mutex<Vec<String>>>,
    /// Milliseconds every request is held before it goes to the server.
    pub delay_ms: Arc<AtomicU64>,
    /// The request line of every request seen (`GET /targets/... HTTP/1.1`).
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Requests sent and not answered yet, now and at most so far.
    pub in_flight: Arc<AtomicU64>,
    pub max_in_flight: Arc<AtomicU64>,
}

/// What every relay thread shares with the [`Proxy`].
#[derive(Debug, Clone)]
struct Knobs {
    rate: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    ranges: Arc<Mutex<Vec<String>>>,
    delay_ms: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<random> to `upstream` (an `http://host:port` URL).
    pub fn start(upstream: &str, bytes_per_sec: u64) -> anyhow::Result<Proxy> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = Arc::new(AtomicBool::new(false));
        let knobs = Knobs {
            rate: Arc::new(AtomicU64::new(bytes_per_sec)),
            cut_after: Arc::new(AtomicU64::new(0)),
            sent: Arc::new(AtomicU64::new(0)),
            ranges: Arc::new(Mutex::new(Vec::new())),
            delay_ms: Arc::new(AtomicU64::new(0)),
            requests: Arc::new(Mutex::new(Vec::new())),
            in_flight: Arc::new(AtomicU64::new(0)),
            max_in_flight: Arc::new(AtomicU64::new(0)),
        };
        let (stop2, knobs2) = (stop.clone(), knobs.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let knobs = knobs2.clone();
                        std::thread::spawn(move || {
                            let _ = relay(client, upstream, knobs);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Proxy {
            url,
            stop,
            rate: knobs.rate,
            cut_after: knobs.cut_after,
            sent: knobs.sent,
            ranges: knobs.ranges,
            delay_ms: knobs.delay_ms,
            requests: knobs.requests,
            in_flight: knobs.in_flight,
            max_in_flight: knobs.max_in_flight,
        })
    }

    /// The `Range` headers seen so far.
    pub fn range_requests(&self) -> Vec<String> {
        self.ranges.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The request lines seen so far.
    pub fn request_lines(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Forgets the requests and the in-flight high-water mark (the bytes
    /// counter is the caller's to read before and after).
    pub fn reset_requests(&self) {
        if let Ok(mut r) = self.requests.lock() {
            r.clear();
        }
        self.max_in_flight.store(0, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, knobs: Knobs) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(upstream)?;
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    // This connection's request is waiting for its answer.
    let waiting = Arc::new(AtomicBool::new(false));
    let (upstream_knobs, upstream_waiting) = (knobs.clone(), waiting.clone());
    std::thread::spawn(move || {
        let knobs = upstream_knobs;
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            record_ranges(&buf[..n], &knobs.ranges);
            if let Some(line) = request_line(&buf[..n]) {
                if let Ok(mut r) = knobs.requests.lock() {
                    r.push(line);
                }
                if !upstream_waiting.swap(true, Ordering::SeqCst) {
                    let now = knobs.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    knobs.max_in_flight.fetch_max(now, Ordering::SeqCst);
                }
                let delay = knobs.delay_ms.load(Ordering::Relaxed);
                if delay > 0 {
                    std::thread::sleep(Duration::from_millis(delay));
                }
            }
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let answered = |knobs: &Knobs| {
        if waiting.swap(false, Ordering::SeqCst) {
            knobs.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    };
    let (mut s_read, mut c_write) = (server, client);
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let mut n = match s_read.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                answered(&knobs);
                return Err(e);
            }
        };
        if n == 0 {
            break;
        }
        answered(&knobs);
        let cut_at = knobs.cut_after.load(Ordering::Relaxed);
        let cut = cut_at > 0
            && sent + n as u64 >= cut_at
            && knobs
                .cut_after
                .compare_exchange(cut_at, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if cut {
            n = usize::try_from(cut_at - sent).unwrap_or(n).min(n);
        }
        c_write.write_all(&buf[..n])?;
        sent += n as u64;
        knobs.sent.fetch_add(n as u64, Ordering::Relaxed);
        if cut {
            // The network drops mid-transfer: neither side hears the rest.
            let _ = c_write.shutdown(Shutdown::Both);
            let _ = s_read.shutdown(Shutdown::Both);
            return Ok(());
        }
        let per_sec = knobs.rate.load(Ordering::Relaxed).max(1);
        let due = Duration::from_secs_f64(sent as f64 / per_sec as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    answered(&knobs);
    let _ = c_write.shutdown(Shutdown::Write);
    Ok(())
}

/// `GET /path HTTP/1.1` when `bytes` starts with a request line.
fn request_line(bytes: &[u8]) -> Option<String> {
    let end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut parts = line.split(' ');
    let (method, _target, version) = (parts.next()?, parts.next()?, parts.next()?);
    (!method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && version.starts_with("HTTP/1."))
    .then(|| line.to_owned())
}

/// Remembers the value of any `Range:` header in a request head.
fn record_ranges(bytes: &[u8], ranges: &Mutex<Vec<String>>) {
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                if let Ok(mut r) = ranges.lock() {
                    r.push(value.trim().to_owned());
                }
            }
        }
    }
}
