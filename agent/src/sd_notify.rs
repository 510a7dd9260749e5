//! The systemd notification protocol (sd_notify(3)), which is small enough
//! to speak directly: one datagram per message to the Unix socket named by
//! `NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where `READY=1`, `WATCHDOG=1`, ... go.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    addr: SocketAddr,
    name: String,
}

impl NotifySocket {
    /// The socket systemd passed in `NOTIFY_SOCKET`; `Ok(None)` when not run
    /// by systemd (or a unit without `Type=notify`/`NotifyAccess`).
    pub fn from_env() -> io::Result<Option<NotifySocket>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(name) => NotifySocket::new(&name.to_string_lossy()).map(Some),
        }
    }

    /// A socket for `name`: a filesystem path, or `@name` for the abstract namespace.
    pub fn new(name: &str) -> io::Result<NotifySocket> {
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET {name:?} is neither an absolute path nor an @abstract name"),
            ));
        };
        Ok(NotifySocket {
            socket: UnixDatagram::unbound()?,
            addr,
            name: name.to_owned(),
        })
    }

    /// Sends one notification, e.g. `READY=1` (several lines may be joined with `\n`).
    pub fn send(&self, message: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(message.as_bytes(), &self.addr)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short datagram to {}", self.name),
            ));
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The systemd watchdog timeout for this process: `WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is unset or names this process (it may name the main PID
/// of a unit whose child we are, in which case the pings are not ours to send).
pub fn watchdog_timeout_from_env() -> Option<Duration> {
    watchdog_timeout(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    match usec?.trim().parse::<u64>() {
        Ok(0) | Err(_) => None,
        Ok(us) => Some(Duration::from_micros(us)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_is_honoured_only_for_this_process() {
        let t = Some(Duration::from_secs(120));
        assert_eq!(watchdog_timeout(Some("120000000"), None, 42), t);
        assert_eq!(watchdog_timeout(Some("120000000"), Some("42"), 42), t);
        assert_eq!(watchdog_timeout(Some("120000000"), Some("41"), 42), None);
        assert_eq!(watchdog_timeout(Some("0"), None, 42), None);
        assert_eq!(watchdog_timeout(Some("soon"), None, 42), None);
        assert_eq!(watchdog_timeout(None, Some("42"), 42), None);
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        NotifySocket::new(&path.display().to_string())
            .expect("socket")
            .send("READY=1")
            .expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("ota-agent-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        NotifySocket::new(&format!("@{name}"))
            .expect("socket")
            .send("WATCHDOG=1")
            .expect("send");
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");

        assert!(NotifySocket::new("relative/path").is_err());
    }
}
