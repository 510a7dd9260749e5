//! Staged rollouts end to end over the real binaries: `ota-repo add --wave`
//! signs the schedule, `ota-server` holds or lets go, `ota-agent` on
//! simulated devices places itself in a wave and waits for it.

use integration_tests::device::SimDevice;
use integration_tests::fixture::Fixture;
use ota_common::wire::UpdateStatus;

/// The server pauses a rollout as soon as one device of a wave fails.
const STRICT_SERVER: &str = "[rollouts]\nmax_failure_rate = 0.4\nmin_devices = 1\n";

/// A device on the factory image, in the given rollout groups.
fn device(fx: &Fixture, id: &str, groups: &[&str]) -> SimDevice {
    let dev = fx.device(id).expect("device");
    if !groups.is_empty() {
        dev.set_rollout_groups(groups).expect("groups");
    }
    dev
}

fn staged_release(fx: &Fixture, version: &str, healthy: bool, waves: &[&str]) -> String {
    fx.staged_release(version, healthy, 96 * 1024, waves)
        .expect("ota-repo add --wave, publish")
}

fn statuses(fx: &Fixture, device: &str) -> Vec<UpdateStatus> {
    fx.server
        .events(device)
        .expect("events")
        .into_iter()
        .map(|e| e.status)
        .collect()
}

fn running(dev: &SimDevice) -> String {
    dev.running_release()
        .expect("release")
        .unwrap_or_else(|| "factory".into())
}

#[test]
fn devices_follow_their_signed_wave_and_the_operators_pause() {
    let fx = Fixture::new().expect("fixture");
    let bench = device(&fx, "bench-1", &["bench"]);
    let field = device(&fx, "field-1", &[]);
    let target = staged_release(
        &fx,
        "1.1.0",
        true,
        &["canary=bench@+0h", "everyone=100%@+30d"],
    );

    // The canary wave is open: the bench unit updates.
    bench.run_until_settled(4).expect("bench settles");
    assert_eq!(running(&bench), "1.1.0");
    // The field unit's wave opens in 30 days: it stays, and never downloads.
    let boots = field.run_until_settled(2).expect("field settles");
    assert_eq!(boots.len(), 1, "{boots:?}");
    assert_eq!(running(&field), "1.0.0");
    assert!(!statuses(&fx, "field-1").contains(&UpdateStatus::Downloading));

    // Fleet status per wave, as the server sees it.
    let status = fx
        .server
        .admin_get(&format!("/admin/v1/rollouts/{target}"))
        .expect("rollout status");
    let text = status.to_string();
    assert!(
        text.contains("canary") && text.contains("everyone"),
        "{text}"
    );

    // Operator pauses before opening the rest; the release engineer then
    // opens the last wave now (re-signing targets with the offline key).
    fx.server
        .admin_command(&[
            "rollout",
            "pause",
            &target,
            "--reason",
            "waiting for QA sign-off",
        ])
        .expect("pause");
    fx.repo
        .run(&[
            "rollout",
            "set",
            &target,
            "--wave",
            "canary=bench@+0h",
            "--wave",
            "everyone=100%@+0h",
        ])
        .expect("rollout set");
    fx.repo.publish(&fx.server).expect("publish");
    let boots = field.run_until_settled(2).expect("held");
    assert_eq!(boots.len(), 1, "held by the server: {boots:?}");
    assert_eq!(running(&field), "1.0.0");
    assert!(
        field.log_tail().contains("QA sign-off"),
        "{}",
        field.log_tail()
    );

    fx.server
        .admin_command(&["rollout", "resume", &target])
        .expect("resume");
    field.run_until_settled(4).expect("field settles");
    assert_eq!(running(&field), "1.1.0");
}

#[test]
fn failures_in_a_wave_pause_the_rollout_by_themselves() {
    let fx = Fixture::with_server_config(STRICT_SERVER).expect("fixture");
    let canary = device(&fx, "canary-1", &["canary"]);
    let field = device(&fx, "field-1", &[]);
    // Both waves open at once: only the server's automatic pause stands
    // between the canary's failure and the rest of the fleet.
    let target = staged_release(
        &fx,
        "1.1.0",
        false,
        &["canary=canary@+0h", "everyone=100%@+0h"],
    );

    canary.run_until_settled(5).expect("canary settles");
    assert_eq!(running(&canary), "1.0.0");
    assert!(statuses(&fx, "canary-1").contains(&UpdateStatus::RolledBack));

    let boots = field.run_until_settled(2).expect("field settles");
    assert_eq!(boots.len(), 1, "{boots:?}");
    assert_eq!(running(&field), "1.0.0");
    assert!(
        !statuses(&fx, "field-1").contains(&UpdateStatus::Downloading),
        "the paused release was never started"
    );

    let out = fx
        .server
        .admin_command(&["rollout", "status", &target, "--json"])
        .expect("status");
    assert!(out.contains("paused"), "{out}");
    assert!(
        out.contains("automatic"),
        "the reason says who paused it: {out}"
    );
}
