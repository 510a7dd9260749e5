//! One run of the real agent, measured: wall time until it asked for a
//! reboot (or exited), its peak resident memory as the kernel counted it
//! (`ru_maxrss`), and its CPU time. The memory test and `bench-install` use
//! it to check and record that the agent's memory does not grow with the
//! image it installs.
//!
//! std's `Child::wait` throws the child's resource usage away, so the agent
//! is reaped here with `wait4(2)`, the only call that returns the usage of
//! one given child (`getrusage(RUSAGE_CHILDREN)` would mix in every other
//! process the test has reaped: `ota-repo`, `ota-server`...). That call is
//! the only unsafe code of this crate.
#![allow(unsafe_code)]

use crate::device::{RunEnd, SimDevice};
use anyhow::{bail, Context};
use nix::libc;
use std::io;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of the agent cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredRun {
    pub end: RunEnd,
    /// From spawning the process to seeing the reboot request (or its exit).
    pub wall: Duration,
    /// Peak resident set size of the agent process (`ru_maxrss`), in bytes.
    pub peak_rss_bytes: u64,
    /// `VmHWM` from `/proc/PID/status`, read just before the harness cut the
    /// power: the same high-water mark seen from another angle (None when
    /// the agent exited on its own).
    pub vm_hwm_bytes: Option<u64>,
    pub user_cpu: Duration,
    pub system_cpu: Duration,
}

/// Runs the agent of `device` once (`run --once`, logging into its
/// `agent.log` like [`SimDevice::run_until_settled`] does) and waits until it
/// exits or asks for a reboot, which cuts its power (SIGKILL) as on any
/// simulated device. Fails after `timeout`.
pub fn run_agent_measured(device: &SimDevice, timeout: Duration) -> anyhow::Result<MeasuredRun> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(device.dir.join("agent.log"))?;
    let flag = device.dir.join("reboot-requested");
    let _ = std::fs::remove_file(&flag);
    let start = Instant::now();
    let mut child = Command::new(crate::bins::path("ota-agent")?)
        .arg("--config")
        .arg(device.config_path())
        .arg("run")
        .arg("--once")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting ota-agent")?;
    let pid = i32::try_from(child.id()).context("agent pid out of range")?;
    let deadline = start + timeout;
    loop {
        if let Some((status, usage)) = reap(pid, false)? {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            return Ok(measured(
                RunEnd::Exited(code),
                start.elapsed(),
                &usage,
                None,
            ));
        }
        if flag.exists() {
            let wall = start.elapsed();
            let hwm = vm_hwm(pid);
            let usage = power_cut(&mut child, pid)?;
            return Ok(measured(RunEnd::RebootRequested, wall, &usage, hwm));
        }
        if Instant::now() > deadline {
            power_cut(&mut child, pid)?;
            bail!(
                "device {}: agent still running after {timeout:?}; log:\n{}",
                device.id,
                device.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn measured(
    end: RunEnd,
    wall: Duration,
    usage: &libc::rusage,
    vm_hwm_bytes: Option<u64>,
) -> MeasuredRun {
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    MeasuredRun {
        end,
        wall,
        // Linux counts ru_maxrss in KiB.
        peak_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        vm_hwm_bytes,
        user_cpu: time(usage.ru_utime),
        system_cpu: time(usage.ru_stime),
    }
}

/// SIGKILL, then reap with wait4 for the usage. `child` is never waited on
/// by std, so the pid cannot have been reused when it is killed.
fn power_cut(child: &mut Child, pid: i32) -> anyhow::Result<libc::rusage> {
    let _ = child.kill();
    match reap(pid, true)? {
        Some((_, usage)) => Ok(usage),
        None => bail!("wait4 returned without the agent's status"),
    }
}

/// `wait4(pid)`: the exit status and resource usage of our child `pid`, or
/// None if it is still running and `block` is false.
fn reap(pid: i32, block: bool) -> io::Result<Option<(i32, libc::rusage)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct of integers, for which all-zero
    // bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let options = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: `status` and `usage` are valid for writes for the whole
        // call; `pid` is a child of this process that nothing else reaps.
        let r = unsafe { libc::wait4(pid, &mut status, options, &mut usage) };
        match r {
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            0 => return Ok(None),
            _ => return Ok(Some((status, usage))),
        }
    }
}

/// `VmHWM` of a live process, in bytes.
fn vm_hwm(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The CPU's model name, from /proc/cpuinfo ("?" when it cannot be read).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// What a command prints, trimmed ("?" when it cannot run), for the
/// machine line of a benchmark's report.
pub fn command_output(argv: &[&str]) -> String {
    argv.split_first()
        .and_then(|(p, a)| Command::new(p).args(a).output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

/// The workspace's commit, whatever the working directory.
pub fn workspace_commit() -> String {
    command_output(&[
        "git",
        "-C",
        env!("CARGO_MANIFEST_DIR"),
        "rev-parse",
        "--short",
        "HEAD",
    ])
}

/// Detaches the loop device at `path` (`losetup -d`), saying so on stderr
/// when that fails; for the benchmarks' loop devices, dropped at the end.
pub fn detach_loop_device(path: &std::path::Path) {
    let ok = Command::new("losetup")
        .arg("-d")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("could not detach {}", path.display());
    }
}
