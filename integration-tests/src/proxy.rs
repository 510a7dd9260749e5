//! A loopback TCP proxy that slows down (and can cut) what the server sends,
//! so tests can catch an agent in the middle of a download deterministically.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Proxy {
    pub url: String,
    stop: Arc<AtomicBool>,
    /// Server-to-client bytes per second per connection.
    pub rate: Arc<AtomicU64>,
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
        let rate = Arc::new(AtomicU64::new(bytes_per_sec));
        let (stop2, rate2) = (stop.clone(), rate.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let rate = rate2.clone();
                        std::thread::spawn(move || {
                            let _ = relay(client, upstream, rate);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Proxy { url, stop, rate })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, rate: Arc<AtomicU64>) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(upstream)?;
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 || s_write.write_all(&buf[..n]).is_err() {
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
        let n = s_read.read(&mut buf)?;
        if n == 0 {
            break;
        }
        c_write.write_all(&buf[..n])?;
        sent += n as u64;
        let per_sec = rate.load(Ordering::Relaxed).max(1);
        let due = Duration::from_secs_f64(sent as f64 / per_sec as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let _ = c_write.shutdown(Shutdown::Write);
    Ok(())
}
