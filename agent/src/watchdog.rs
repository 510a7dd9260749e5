//! Watchdogs fed by the agent's main loop: the systemd service watchdog
//! (`WATCHDOG=1` at half of `WATCHDOG_USEC`) and, optionally, a hardware
//! watchdog device (`[watchdog] device`) petted at half of its timeout.
//!
//! Both are fed from the loop itself (between cycles, and through the state
//! machine's heartbeat during a download or a wait), never from a helper
//! thread: a loop that hangs stops feeding them, and that is the point.

use crate::config::WatchdogConfig;
use crate::sd_notify::{self, NotifySocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Why the watchdogs could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("NOTIFY_SOCKET: {0}")]
    Notify(#[source] std::io::Error),
    #[error("hardware watchdog {path}: {action}: {source}")]
    Device {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One watchdog and how often it wants feeding.
#[derive(Debug)]
struct Feeder<T> {
    target: T,
    every: Duration,
    last: Option<Instant>,
}

impl<T> Feeder<T> {
    fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|t| now.duration_since(t) >= self.every)
    }
}

/// The agent's watchdogs.
#[derive(Debug, Default)]
pub struct Watchdogs {
    notify: Option<NotifySocket>,
    systemd: Option<Feeder<()>>,
    hardware: Option<Feeder<hardware::Device>>,
}

impl Watchdogs {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID` and opens the
    /// hardware watchdog if one is configured.
    pub fn from_env(config: &WatchdogConfig) -> Result<Watchdogs, WatchdogError> {
        let notify = NotifySocket::from_env().map_err(WatchdogError::Notify)?;
        let systemd = match (&notify, sd_notify::watchdog_timeout_from_env()) {
            (Some(socket), Some(timeout)) => {
                info!(
                    socket = socket.name(),
                    timeout_ms = timeout.as_millis() as u64,
                    "systemd watchdog on"
                );
                Some(Feeder {
                    target: (),
                    every: timeout / 2,
                    last: None,
                })
            }
            _ => None,
        };
        let hardware = match &config.device {
            None => None,
            Some(path) => {
                let device = hardware::Device::open(path, config.timeout_secs)?;
                info!(device = %path.display(), timeout_secs = config.timeout_secs, "hardware watchdog armed");
                Some(Feeder {
                    target: device,
                    every: Duration::from_secs(u64::from(config.timeout_secs)) / 2,
                    last: None,
                })
            }
        };
        Ok(Watchdogs {
            notify,
            systemd,
            hardware,
        })
    }

    /// Tells systemd the service is up (`Type=notify`).
    pub fn ready(&self) {
        self.notify_best_effort("READY=1");
    }

    /// Feeds every watchdog whose half-period has passed. Cheap: call it often.
    pub fn feed(&mut self) {
        let now = Instant::now();
        if let Some(f) = self.systemd.as_mut().filter(|f| f.due(now)) {
            f.last = Some(now);
            if let Some(socket) = &self.notify {
                if let Err(e) = socket.send("WATCHDOG=1") {
                    warn!(error = %e, "could not notify the systemd watchdog");
                }
            }
        }
        if let Some(f) = self.hardware.as_mut().filter(|f| f.due(now)) {
            f.last = Some(now);
            if let Err(e) = f.target.keepalive() {
                warn!(error = %e, "could not pet the hardware watchdog");
            }
        }
    }

    /// Sleeps `duration` while feeding the watchdogs often enough.
    pub fn sleep(&mut self, duration: Duration) {
        let slice = [
            &self.systemd.as_ref().map(|f| f.every),
            &self.hardware.as_ref().map(|f| f.every),
        ]
        .into_iter()
        .flatten()
        .map(|every| *every / 2)
        .fold(Duration::from_secs(1), Duration::min)
        .max(Duration::from_millis(10));
        let end = Instant::now() + duration;
        loop {
            self.feed();
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(slice));
        }
    }

    fn notify_best_effort(&self, message: &str) {
        if let Some(socket) = &self.notify {
            if let Err(e) = socket.send(message) {
                warn!(socket = socket.name(), error = %e, message, "could not notify systemd");
            }
        }
    }
}

/// The Linux watchdog device API (linux/watchdog.h).
mod hardware {
    #![allow(unsafe_code)] // the watchdog ioctls

    use super::WatchdogError;
    use std::fs::File;
    use std::io::{self, Write};
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};

    nix::ioctl_read!(wdioc_keepalive, b'W', 5, nix::libc::c_int);
    nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, nix::libc::c_int);

    /// An open (armed) watchdog device: if the agent stops petting it, the
    /// board resets. Dropped cleanly, it is disarmed with the magic close.
    #[derive(Debug)]
    pub struct Device {
        file: File,
        path: PathBuf,
    }

    impl Device {
        pub fn open(path: &Path, timeout_secs: u32) -> Result<Device, WatchdogError> {
            let err = |action| {
                move |source| WatchdogError::Device {
                    path: path.to_owned(),
                    action,
                    source,
                }
            };
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(err("opening"))?;
            let mut timeout = nix::libc::c_int::try_from(timeout_secs)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
                .map_err(err("setting the timeout"))?;
            // SAFETY: `file` is open and `timeout` outlives the call.
            unsafe { wdioc_settimeout(file.as_raw_fd(), &mut timeout) }
                .map_err(|e| err("setting the timeout")(io::Error::from(e)))?;
            Ok(Device {
                file,
                path: path.to_owned(),
            })
        }

        pub fn keepalive(&self) -> io::Result<()> {
            let mut unused: nix::libc::c_int = 0;
            // SAFETY: `file` is open and `unused` outlives the call.
            unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut unused) }?;
            Ok(())
        }
    }

    impl Drop for Device {
        fn drop(&mut self) {
            // Magic close: a clean exit must not reset the board.
            if let Err(e) = self.file.write_all(b"V") {
                tracing::warn!(device = %self.path.display(), error = %e, "could not disarm the hardware watchdog");
            }
        }
    }
}
