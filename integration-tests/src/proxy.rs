//! A loopback TCP proxy that slows down (and can cut) what the server sends,
//! so tests can catch an agent in the middle of a download deterministically.

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
}

/// What every relay thread shares with the [`Proxy`].
#[derive(Debug, Clone)]
struct Knobs {
    rate: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    ranges: Arc<Mutex<Vec<String>>>,
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
        })
    }

    /// The `Range` headers seen so far.
    pub fn range_requests(&self) -> Vec<String> {
        self.ranges.lock().map(|r| r.clone()).unwrap_or_default()
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
    let ranges = knobs.ranges.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            record_ranges(&buf[..n], &ranges);
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let mut n = s_read.read(&mut buf)?;
        if n == 0 {
            break;
        }
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
    let _ = c_write.shutdown(Shutdown::Write);
    Ok(())
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
