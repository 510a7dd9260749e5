//! Devices that prove who they are: with `device_auth = "token"` the server
//! records a report only from the device the token was issued to, and an
//! update never depends on the report being accepted.

use integration_tests::fixture::{Fixture, HARDWARE_ID};
use ota_common::wire::UpdateStatus;

#[test]
fn only_the_token_holder_reports_for_a_device() {
    let fx = Fixture::with_server_config("device_auth = \"token\"\n").expect("fixture");
    fx.release("1.1.0", true, 64 * 1024, &[HARDWARE_ID])
        .expect("release");

    let printed = fx
        .server
        .admin_command(&["device", "add", "ward-1"])
        .expect("device add");
    let token = printed
        .split_whitespace()
        .last()
        .expect("the command prints the token")
        .to_owned();
    let token_file = fx.dir.path().join("ward-1.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");

    // ward-1 holds its own token: every stage is recorded.
    let owner = fx.device("ward-1").expect("device");
    owner
        .append_config(&format!(
            "[report]\ndevice_token_file = \"{}\"",
            token_file.display()
        ))
        .expect("config");
    owner.run_until_settled(4).expect("settles");
    let statuses: Vec<UpdateStatus> = fx
        .server
        .events("ward-1")
        .expect("events")
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert!(statuses.contains(&UpdateStatus::Committed), "{statuses:?}");

    // ward-2 presents ward-1's token, ward-3 none: neither is recorded, and
    // both still update, since reports are best effort.
    let impostor = fx.device("ward-2").expect("device");
    impostor
        .append_config(&format!(
            "[report]\ndevice_token_file = \"{}\"",
            token_file.display()
        ))
        .expect("config");
    let anonymous = fx.device("ward-3").expect("device");
    for dev in [&impostor, &anonymous] {
        dev.run_until_settled(4).expect("settles");
        assert_eq!(
            dev.running_release().expect("release").as_deref(),
            Some("1.1.0"),
            "{} updated without its reports being accepted",
            dev.id
        );
    }
    let recorded: Vec<String> = fx
        .server
        .devices()
        .expect("devices")
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(recorded, vec!["ward-1".to_owned()]);
    let log = std::fs::read_to_string(impostor.dir.join("agent.log")).expect("log");
    assert!(log.contains("403"), "the refusal is logged: {log}");
    assert!(!log.contains(&token), "the token never appears in the log");
}

#[test]
fn unreadable_token_file_is_a_clear_configuration_error() {
    let fx = Fixture::new().expect("fixture");
    let dev = fx.device("ward-1").expect("device");
    dev.append_config("[report]\ndevice_token_file = \"/nonexistent/token\"")
        .expect("config");
    dev.power_on().expect("boot");
    let end = dev
        .run_agent_until(std::time::Duration::from_secs(30), |_| false)
        .expect("run");
    assert_eq!(end, integration_tests::device::RunEnd::Exited(1));
    let log = std::fs::read_to_string(dev.dir.join("agent.log")).expect("log");
    assert!(log.contains("/nonexistent/token"), "{log}");
}
