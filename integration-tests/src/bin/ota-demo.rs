//! The one-command demo: a release engineer signs and publishes, a server
//! serves, and a small fleet of simulated devices updates itself, then
//! refuses a broken release by rolling back on its own.

use anyhow::Context;
use integration_tests::device::{Boot, RunEnd, SimDevice};
use integration_tests::fixture::{Fixture, HARDWARE_ID};
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
    let fx = Fixture::new().context("setting up repository and server")?;
    println!(
        "release engineer: created a TUF repository (root, targets, snapshot, timestamp keys)"
    );
    println!(
        "server:           ota-server listening on {}",
        fx.server.url
    );

    let devices: Vec<SimDevice> = (1..=DEVICES)
        .map(|i| fx.device(&format!("ward-{i}")))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "fleet:            {DEVICES} simulated devices ({HARDWARE_ID}) running 1.0.0 from slot A\n"
    );

    fx.release("1.1.0", true, 2 * 1024 * 1024, &[HARDWARE_ID])?;
    println!("release engineer: signed and published 1.1.0 (2 MiB image, health check passes)");
    update_fleet(&fx, &devices)?;

    fx.release("1.2.0", false, 2 * 1024 * 1024, &[HARDWARE_ID])?;
    println!(
        "\nrelease engineer: signed and published 1.2.0 (its health check FAILS on the device)"
    );
    update_fleet(&fx, &devices)?;

    println!("\nserver's view of the fleet:");
    for d in fx.server.devices()? {
        println!(
            "  {:<8} running {:<6} slot {}  last status {:<12} {}",
            d.device_id,
            d.installed_version,
            d.booted_slot.as_deref().unwrap_or("?"),
            d.status.to_string(),
            d.reason.map(|r| format!("({r})")).unwrap_or_default()
        );
    }
    println!(
        "\ndone in {:.1} s; logs and state under {}",
        started.elapsed().as_secs_f64(),
        fx.dir.path().display()
    );
    // Keep the directory for inspection.
    let kept = fx.dir.path().to_path_buf();
    std::mem::forget(fx.dir);
    println!("(kept {}; delete it when done)", kept.display());
    Ok(())
}

fn update_fleet(fx: &Fixture, devices: &[SimDevice]) -> anyhow::Result<()> {
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
    for (device, result) in devices.iter().zip(results) {
        let boots = result.with_context(|| format!("device {}", device.id))?;
        println!("  {}: {}", device.id, story(&boots));
        let _ = fx;
    }
    Ok(())
}

/// One line per device: which slot booted with which release, and why it rebooted.
fn story(boots: &[Boot]) -> String {
    boots
        .iter()
        .map(|b| {
            let what = match b.end {
                RunEnd::RebootRequested => "-> reboot",
                RunEnd::PowerCut => "-> power cut",
                RunEnd::Exited(_) => "-> settled",
            };
            format!(
                "boot slot {} ({}) {what}",
                b.slot,
                b.release.as_deref().unwrap_or("empty")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
