//! Devices that prove who they are: with `device_auth = "token"` the server
//! records a report only from the device the token was issued to, with
//! `device_auth = "mtls"` only under the device id its client certificate
//! names; an update never depends on the report being accepted.

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

/// A fleet CA and the certificates it signs, written as PEM files.
mod pki {
    use rcgen::{
        BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    use std::path::{Path, PathBuf};

    pub struct Ca {
        cert: Certificate,
        key: KeyPair,
        pub pem: PathBuf,
    }

    impl Ca {
        pub fn new(dir: &Path) -> Ca {
            let key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "fleet CA");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).expect("CA certificate");
            let pem = dir.join("fleet-ca.pem");
            std::fs::write(&pem, cert.pem()).expect("write CA");
            Ca { cert, key, pem }
        }

        /// Writes `NAME.pem` and `NAME.key`, the CA's signature on a
        /// certificate for `sans` (server) or with subject CN `cn` (client).
        pub fn issue(
            &self,
            dir: &Path,
            name: &str,
            sans: &[&str],
            cn: Option<&str>,
        ) -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().expect("key");
            let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
            let mut params = CertificateParams::new(sans).expect("params");
            params.extended_key_usages = vec![match cn {
                Some(cn) => {
                    params.distinguished_name.push(DnType::CommonName, cn);
                    ExtendedKeyUsagePurpose::ClientAuth
                }
                None => ExtendedKeyUsagePurpose::ServerAuth,
            }];
            let cert = params
                .signed_by(&key, &self.cert, &self.key)
                .expect("certificate");
            let (cert_path, key_path) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&cert_path, cert.pem()).expect("write cert");
            std::fs::write(&key_path, key.serialize_pem()).expect("write key");
            (cert_path, key_path)
        }
    }
}

/// GET an admin endpoint of an https server whose certificate `ca` signed.
fn admin_get_tls(
    server: &integration_tests::server::Server,
    ca: &std::path::Path,
    path: &str,
) -> serde_json::Value {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let anchor = reqwest::Certificate::from_pem(&std::fs::read(ca).expect("CA")).expect("anchor");
    let token = std::fs::read_to_string(server.admin_token_file()).expect("admin token");
    let resp = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(anchor)
        .build()
        .expect("client")
        .get(format!("{}{path}", server.url))
        .bearer_auth(token.trim())
        .send()
        .expect("admin request");
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.json().expect("JSON")
}

/// The agent's configuration with a top-level key added (before any table).
fn prepend_config(dev: &integration_tests::device::SimDevice, line: &str) {
    let path = dev.config_path();
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{line}\n{text}")).expect("config");
}

#[test]
fn mutual_tls_reports_carry_the_certificate_s_device_id() {
    use integration_tests::device::SimDevice;
    use integration_tests::fixture::FACTORY_VERSION;
    use integration_tests::image::write_image;
    use integration_tests::repo::Repo;
    use integration_tests::server::Server;

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Ca::new(dir.path());
    let (server_cert, server_key) =
        ca.issue(dir.path(), "server", &["127.0.0.1", "localhost"], None);
    let (cert1, key1) = ca.issue(dir.path(), "device-1", &[], Some("device-1"));
    let (cert2, key2) = ca.issue(dir.path(), "device-2", &[], Some("device-2"));

    let repo = Repo::init(&dir.path().join("repo"), &[]).expect("repo");
    let data_dir = dir.path().join("server");
    let release = dir.path().join("rootfs-1.1.0.img");
    write_image(&release, "1.1.0", true, 64 * 1024).expect("image");
    repo.add(&release, "1.1.0", &[HARDWARE_ID]).expect("add");
    let server = Server::start_with_config(
        &data_dir,
        Some(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\ndevice_auth = \"mtls\"\ndevice_ca = \"{}\"\n",
            server_cert.display(),
            server_key.display(),
            ca.pem.display()
        )),
    )
    .expect("mTLS server");
    // The release engineer publishes over https: the public web roots do
    // not know the fleet CA, --ca-cert does.
    let token = server.admin_token_file().to_string_lossy().into_owned();
    let ca_pem = ca.pem.to_string_lossy().into_owned();
    let refused = repo
        .output(&["publish", "--server", &server.url, "--token-file", &token])
        .expect("ota-repo");
    assert!(!refused.status.success(), "a private CA is not a web root");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    repo.run(&[
        "publish",
        "--server",
        &server.url,
        "--token-file",
        &token,
        "--ca-cert",
        &ca_pem,
    ])
    .expect("publish over https with --ca-cert");
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let factory = dir.path().join("factory.img");
    write_image(&factory, FACTORY_VERSION, true, 64 * 1024).expect("factory image");
    let provision = |name: &str, id: &str, cert: &std::path::Path, key: &std::path::Path| {
        let dev = SimDevice::provision(
            &dir.path().join("devices").join(name),
            id,
            HARDWARE_ID,
            &server.url,
            &repo.initial_root(),
            &factory,
            FACTORY_VERSION,
        )
        .expect("device");
        prepend_config(&dev, &format!("ca_cert = \"{}\"", ca.pem.display()));
        dev.append_config(&format!(
            "[report]\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            cert.display(),
            key.display()
        ))
        .expect("config");
        dev
    };

    // device-1 with its own certificate: updated, every stage recorded.
    let honest = provision("honest", "device-1", &cert1, &key1);
    honest.run_until_settled(4).expect("settles");
    assert_eq!(
        honest.running_release().expect("release").as_deref(),
        Some("1.1.0")
    );
    let events = |id: &str| -> Vec<UpdateStatus> {
        let value = admin_get_tls(&server, &ca.pem, &format!("/admin/v1/devices/{id}/events"));
        serde_json::from_value::<Vec<ota_common::wire::DeviceEvent>>(value)
            .expect("events")
            .into_iter()
            .map(|e| e.status)
            .collect()
    };
    let recorded = events("device-1");
    assert!(recorded.contains(&UpdateStatus::Committed), "{recorded:?}");

    // device-2's certificate on a device that calls itself device-1: the
    // update still works, none of its reports is recorded.
    let impostor = provision("impostor", "device-1", &cert2, &key2);
    impostor.run_until_settled(4).expect("settles");
    assert_eq!(
        impostor.running_release().expect("release").as_deref(),
        Some("1.1.0"),
        "updated although its reports were refused"
    );
    assert_eq!(events("device-1"), recorded, "nothing new for device-1");
    let devices: Vec<String> = serde_json::from_value::<Vec<ota_common::wire::DeviceRecord>>(
        admin_get_tls(&server, &ca.pem, "/admin/v1/devices"),
    )
    .expect("devices")
    .into_iter()
    .map(|d| d.device_id)
    .collect();
    assert_eq!(devices, vec!["device-1".to_owned()]);
    let log = std::fs::read_to_string(impostor.dir.join("agent.log")).expect("log");
    assert!(log.contains("403"), "the refusal is logged: {log}");
}
