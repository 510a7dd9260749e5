//! The one-command demo: a release engineer signs and publishes, a server
//! serves, and a small fleet of simulated devices updates itself. Then a
//! broken release goes out as a staged rollout: the canary device rolls back
//! on its own, the server pauses the rollout by itself, and the rest of the
//! fleet never installs it. The server's dashboard shows all of it; when
//! run from a terminal, the demo keeps the server up until Enter is pressed
//! so the dashboard can be looked at.

use anyhow::Context;
use integration_tests::device::{Boot, RunEnd, SimDevice};
use integration_tests::fixture::{Fixture, HARDWARE_ID};
use ota_common::wire::UpdateStatus;
use std::io::IsTerminal;
use std::time::Instant;

const DEVICES: usize = 4;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    println!("== OTA demo: embedded defaults, one machine ==\n");
    // Strict enough for a four-device fleet: one failure in a wave pauses it.
    let fx = Fixture::with_server_config("[rollouts]\nmax_failure_rate = 0.2\nmin_devices = 1\n")
        .context("setting up repository and server")?;
    println!(
        "release engineer: created a TUF repository (root, targets, snapshot, timestamp keys)"
    );
    println!(
        "server:           ota-server listening on {}",
        fx.server.url
    );
    println!(
        "dashboard:        {}/dashboard (log in with the token in {})",
        fx.server.url,
        fx.server.admin_token_file().display()
    );

    let devices: Vec<SimDevice> = (1..=DEVICES)
        .map(|i| fx.device(&format!("ward-{i}")))
        .collect::<anyhow::Result<_>>()?;
    devices[0].set_rollout_groups(&["canary"])?;
    println!(
        "fleet:            {DEVICES} simulated devices ({HARDWARE_ID}) running 1.0.0 from slot A; \
         {} is in the canary group\n",
        devices[0].id
    );

    fx.release("1.1.0", true, 2 * 1024 * 1024, &[HARDWARE_ID])?;
    println!("release engineer: signed and published 1.1.0 (2 MiB image, health check passes)");
    update_fleet(&fx, &devices)?;

    let target = fx.staged_release(
        "1.2.0",
        false,
        2 * 1024 * 1024,
        &["canary=canary@+0h", "fleet=100%@+0h"],
    )?;
    println!(
        "\nrelease engineer: signed and published 1.2.0 (its health check FAILS on the device)\n                  \
         as a staged rollout: wave canary (group canary), then wave fleet (100 %)"
    );
    println!("canary wave:");
    update_fleet(&fx, &devices[..1])?;
    println!("\nserver: {}", rollout_state(&fx, &target)?);
    println!("rest of the fleet polls:");
    update_fleet(&fx, &devices[1..])?;

    println!("\noperator: ota-server rollout status {target}");
    for line in fx
        .server
        .admin_command(&["rollout", "status", &target])?
        .lines()
    {
        println!("  {line}");
    }

    println!("\nserver's view of the fleet:");
    for d in fx.server.devices()? {
        let last_update = fx
            .server
            .events(&d.device_id)?
            .into_iter()
            .rev()
            .find(|e| e.status != UpdateStatus::Idle)
            .map(|e| {
                format!(
                    "{} {}{}",
                    e.status,
                    e.target_version.unwrap_or_default(),
                    e.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "none".into());
        println!(
            "  {:<8} running {:<6} from slot {}  last update: {last_update}",
            d.device_id,
            d.installed_version,
            d.booted_slot.as_deref().unwrap_or("?"),
        );
    }
    println!(
        "\ndone in {:.1} s; logs and state under {}",
        started.elapsed().as_secs_f64(),
        fx.dir.path().display()
    );
    if std::io::stdin().is_terminal() {
        println!(
            "\ndashboard: {}/dashboard (log in with the token in {})\n\
             press Enter to stop the server",
            fx.server.url,
            fx.server.admin_token_file().display()
        );
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading stdin")?;
    }
    // Keep the directory for inspection.
    let kept = fx.dir.path().to_path_buf();
    std::mem::forget(fx.dir);
    println!("(kept {}; delete it when done)", kept.display());
    Ok(())
}

fn update_fleet(fx: &Fixture, devices: &[SimDevice]) -> anyhow::Result<()> {
    let seen_before: Vec<usize> = devices
        .iter()
        .map(|d| fx.server.events(&d.id).map(|e| e.len()).unwrap_or(0))
        .collect();
    let results: Vec<anyhow::Result<Vec<Boot>>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .map(|d| s.spawn(move || d.run_until_settled(6)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("device thread panicked")))
            })
            .collect()
    });
    for ((device, result), before) in devices.iter().zip(results).zip(seen_before) {
        let boots = result.with_context(|| format!("device {}", device.id))?;
        println!("  {}: {}", device.id, boot_story(&boots));
        let events = fx.server.events(&device.id)?;
        let reported: Vec<String> = events
            .iter()
            .skip(before)
            .filter(|e| e.status != UpdateStatus::Idle)
            .map(|e| match &e.reason {
                Some(reason) => format!("{} ({reason})", e.status),
                None => e.status.to_string(),
            })
            .collect();
        let reported = if reported.is_empty() {
            "nothing new (did not start the update)".to_owned()
        } else {
            reported.join(" -> ")
        };
        println!("  {:>w$}  reported: {reported}", "", w = device.id.len());
    }
    Ok(())
}

/// The server's hold on `target`, in one line.
fn rollout_state(fx: &Fixture, target: &str) -> anyhow::Result<String> {
    let status: serde_json::Value = serde_json::from_str(
        &fx.server
            .admin_command(&["rollout", "status", target, "--json"])?,
    )?;
    let state = status
        .pointer("/hold/state")
        .or_else(|| status.get("state"));
    let reason = status
        .pointer("/hold/reason")
        .or_else(|| status.get("reason"));
    Ok(format!(
        "rollout of {target} is {}{}",
        state.and_then(|s| s.as_str()).unwrap_or("?"),
        reason
            .and_then(|r| r.as_str())
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    ))
}

/// Which slot booted with which release, and how each boot ended.
fn boot_story(boots: &[Boot]) -> String {
    boots
        .iter()
        .map(|b| {
            let what = match b.end {
                RunEnd::RebootRequested => "reboot",
                RunEnd::PowerCut => "power cut",
                RunEnd::Exited(_) => "settled",
            };
            format!(
                "slot {} ({}) -> {what}",
                b.slot,
                b.release.as_deref().unwrap_or("empty")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
