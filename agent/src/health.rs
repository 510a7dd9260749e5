//! Health checks run on a freshly booted slot before it is committed.
//!
//! Each check is a command (argv, no shell), a systemd unit that must be
//! active (`systemctl is-active`), or a URL that must answer 2xx (e.g. the
//! OTA server's `/healthz`: the new slot can still reach its server), with a
//! timeout. Commands run in their own process group so that on timeout the
//! whole group is killed, including anything a script started.
//!
//! While a check runs, the caller's heartbeat is fed (the child is polled
//! with short sleeps): a slow but live check must not let the systemd
//! watchdog (`WatchdogSec=`) kill the agent in the middle of a commit.

use crate::config::HealthCheckConfig;
use crate::slot::SlotId;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the checks learn about the slot under test (passed as environment).
#[derive(Debug, Clone)]
pub struct CheckContext<'a> {
    pub slot: SlotId,
    pub slot_path: &'a Path,
    pub version: &'a semver::Version,
}

/// Runs the checks in order; `Err(reason)` names the first that failed and how.
pub fn run_checks(checks: &[HealthCheckConfig], ctx: &CheckContext<'_>) -> Result<(), String> {
    run_checks_with_heartbeat(checks, ctx, &mut || {})
}

/// [`run_checks`], calling `beat` at least every [`BEAT_EVERY`] while a check runs.
pub fn run_checks_with_heartbeat(
    checks: &[HealthCheckConfig],
    ctx: &CheckContext<'_>,
    beat: &mut dyn FnMut(),
) -> Result<(), String> {
    for check in checks {
        let started = Instant::now();
        beat();
        run_one(check, ctx, beat)?;
        tracing::info!(check = %check.name, elapsed_ms = started.elapsed().as_millis() as u64, "health check passed");
    }
    Ok(())
}

/// Longest pause between two polls of a running check (and two heartbeats).
pub const BEAT_EVERY: Duration = Duration::from_millis(100);

fn run_one(
    check: &HealthCheckConfig,
    ctx: &CheckContext<'_>,
    beat: &mut dyn FnMut(),
) -> Result<(), String> {
    let name = &check.name;
    if let Some(url) = &check.url {
        return check_url(name, url, Duration::from_secs(check.timeout_secs));
    }
    let argv: Vec<String> = match &check.unit {
        Some(unit) => ["systemctl", "is-active", "--quiet", unit.as_str()]
            .map(str::to_owned)
            .to_vec(),
        None => check.command.clone(),
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| format!("health check '{name}' has an empty command"))?;
    let mut child = Command::new(program)
        .args(args)
        .env("OTA_SLOT", ctx.slot.as_str())
        .env("OTA_SLOT_PATH", ctx.slot_path)
        .env("OTA_VERSION", ctx.version.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("health check '{name}' could not start {program:?}: {e}"))?;
    let timeout = Duration::from_secs(check.timeout_secs);
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return if status.success() {
                    Ok(())
                } else if let Some(code) = status.code() {
                    Err(format!("health check '{name}' exited with status {code}"))
                } else {
                    Err(format!(
                        "health check '{name}' was killed by signal {}",
                        status.signal().unwrap_or(0)
                    ))
                };
            }
            Ok(None) => {}
            Err(e) => return Err(format!("health check '{name}': waiting failed: {e}")),
        }
        // Still running: the agent is alive and waiting, not hung.
        beat();
        crate::crashpoint::hit(crate::crashpoint::HEALTH_CHECK_RUNNING);
        if Instant::now() >= deadline {
            kill_group(&mut child);
            return Err(format!(
                "health check '{name}' timed out after {}s",
                check.timeout_secs
            ));
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(BEAT_EVERY);
    }
}

/// GET `url`: any 2xx within `timeout` passes.
fn check_url(name: &str, url: &url::Url, timeout: Duration) -> Result<(), String> {
    crate::install_crypto_provider();
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(crate::USER_AGENT)
        .build()
        .map_err(|e| format!("health check '{name}': HTTP client: {e}"))?;
    let response = client
        .get(url.clone())
        .send()
        .map_err(|e| format!("health check '{name}': GET {url} failed: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "health check '{name}': GET {url} answered {status}"
        ))
    }
}

fn kill_group(child: &mut std::process::Child) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        // process_group(0) made the child the leader of a group with its own pid.
        if let Err(e) = killpg(Pid::from_raw(pid), Signal::SIGKILL) {
            tracing::warn!(error = %e, "killing the health check's process group failed");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, script: &str, timeout_secs: u64) -> HealthCheckConfig {
        HealthCheckConfig {
            name: name.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            unit: None,
            url: None,
            timeout_secs,
        }
    }

    fn ctx_run(checks: &[HealthCheckConfig]) -> Result<(), String> {
        let version = semver::Version::new(2, 1, 0);
        run_checks(
            checks,
            &CheckContext {
                slot: SlotId::B,
                slot_path: Path::new("/dev/slot-b"),
                version: &version,
            },
        )
    }

    #[test]
    fn passing_checks_see_the_slot_environment() {
        let checks = [
            check(
                "env",
                r#"test "$OTA_SLOT" = B && test "$OTA_SLOT_PATH" = /dev/slot-b && test "$OTA_VERSION" = 2.1.0"#,
                5,
            ),
            check("true", "exit 0", 5),
        ];
        ctx_run(&checks).expect("pass");
        ctx_run(&[]).expect("no checks pass");
    }

    #[test]
    fn first_failure_is_named() {
        let checks = [
            check("ok", "exit 0", 5),
            check("app", "exit 1", 5),
            check("never", "exit 2", 5),
        ];
        assert_eq!(
            ctx_run(&checks),
            Err("health check 'app' exited with status 1".into())
        );
    }

    #[test]
    fn timeout_kills_the_check_and_its_children() {
        let start = Instant::now();
        let err = ctx_run(&[check("slow", "sleep 30; exit 0", 1)]).expect_err("timeout");
        assert_eq!(err, "health check 'slow' timed out after 1s");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_long_check_keeps_the_heartbeat_going() {
        let version = semver::Version::new(2, 1, 0);
        let ctx = CheckContext {
            slot: SlotId::B,
            slot_path: Path::new("/dev/slot-b"),
            version: &version,
        };
        let mut beats: Vec<Instant> = Vec::new();
        let started = Instant::now();
        run_checks_with_heartbeat(&[check("slow", "sleep 0.7", 5)], &ctx, &mut || {
            beats.push(Instant::now())
        })
        .expect("pass");
        let end = Instant::now();
        assert!(beats.len() >= 5, "{} beats", beats.len());
        // No gap between beats (or before the first, or after the last) longer
        // than the poll interval plus scheduling slack.
        let mut last = started;
        for t in beats.iter().copied().chain([end]) {
            let gap = t.duration_since(last);
            assert!(gap < BEAT_EVERY * 3, "gap of {gap:?} without a heartbeat");
            last = t;
        }
    }

    /// A one-shot HTTP server on loopback answering every request with `status`.
    fn http_answering(status: &'static str) -> url::Url {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten().take(1) {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        url::Url::parse(&format!("http://{addr}/healthz")).expect("url")
    }

    fn url_check(url: url::Url) -> HealthCheckConfig {
        HealthCheckConfig {
            name: "server".into(),
            command: Vec::new(),
            unit: None,
            url: Some(url),
            timeout_secs: 5,
        }
    }

    #[test]
    fn url_check_needs_a_2xx_answer() {
        ctx_run(&[url_check(http_answering("200 OK"))]).expect("reachable");
        let err = ctx_run(&[url_check(http_answering("503 Service Unavailable"))])
            .expect_err("not ready");
        assert!(err.contains("answered 503"), "{err}");
        let closed = url::Url::parse("http://127.0.0.1:9/healthz").expect("url");
        let err = ctx_run(&[url_check(closed)]).expect_err("unreachable");
        assert!(
            err.contains("GET http://127.0.0.1:9/healthz failed"),
            "{err}"
        );
    }

    #[test]
    fn inactive_unit_is_a_failure() {
        let c = HealthCheckConfig {
            name: "app".into(),
            command: Vec::new(),
            unit: Some("ota-no-such-unit-for-tests.service".into()),
            url: None,
            timeout_secs: 10,
        };
        let err = ctx_run(&[c]).expect_err("not active");
        assert!(err.starts_with("health check 'app'"), "{err}");
    }

    #[test]
    fn missing_program_is_a_failure() {
        let c = HealthCheckConfig {
            name: "gone".into(),
            command: vec!["/nonexistent/check".into()],
            unit: None,
            url: None,
            timeout_secs: 5,
        };
        let err = ctx_run(&[c]).expect_err("missing");
        assert!(
            err.starts_with("health check 'gone' could not start"),
            "{err}"
        );
    }
}
