//! Mutual TLS device identity (`device_auth = "mtls"`): a device reports
//! only as the device its certificate names, certificates from another CA,
//! expired ones and ones naming no valid device are refused, and what
//! devices verify by signature (metadata, images) stays readable without
//! any client certificate.

mod common;

use ota_server::auth::DeviceAuth;
use ota_server::config::TlsFiles;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use reqwest::{Method, StatusCode};
use std::path::Path;

/// A certificate authority: its certificate and the key that signs with it.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    /// The server's certificate, for `localhost`.
    fn server(&self) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate whose subject CN is `cn`, valid now unless `expired`.
    fn client(&self, cn: &str, expired: bool) -> reqwest::Identity {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("client certificate");
        let pem = format!("{}\n{}", cert.pem(), key.serialize_pem());
        reqwest::Identity::from_pem(pem.as_bytes()).expect("identity")
    }
}

/// A server with TLS and `device_auth = "mtls"` trusting `fleet` for devices.
/// Its own certificate is signed by the same CA (one anchor for the tests).
async fn start(fleet: &Ca, dir: &Path) -> common::TestServer {
    let (cert, key) = fleet.server();
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&files.cert, cert).expect("server cert");
    std::fs::write(&files.key, key).expect("server key");
    let ca = dir.join("fleet-ca.pem");
    std::fs::write(&ca, fleet.cert.pem()).expect("ca");
    let mut s = common::start_with(move |c| {
        c.tls = Some(files);
        c.device_auth = DeviceAuth::Mtls;
        c.device_ca = Some(ca);
    })
    .await;
    s.base = format!("https://localhost:{}", s.addr.port());
    s.client = client(fleet, &s, None);
    s
}

/// A fresh client (no pooled connection) trusting `fleet`, presenting `identity`.
fn client(
    fleet: &Ca,
    s: &common::TestServer,
    identity: Option<reqwest::Identity>,
) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(fleet.cert.pem().as_bytes()).expect("anchor"),
        )
        .resolve("localhost", s.addr)
        .pool_max_idle_per_host(0);
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().expect("client")
}

fn report() -> serde_json::Value {
    serde_json::json!({"hardware_id": "hw", "installed_version": "1.0.0", "status": "idle"})
}

async fn post_report(
    client: &reqwest::Client,
    s: &common::TestServer,
    device: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(s.url(&format!("/api/v1/devices/{device}/reports")))
        .json(&report())
        .send()
        .await
}

async fn recorded_devices(s: &common::TestServer) -> Vec<String> {
    let devices: Vec<ota_common::wire::DeviceRecord> = s
        .admin(Method::GET, "/admin/v1/devices")
        .send()
        .await
        .expect("devices")
        .json()
        .await
        .expect("json");
    devices.into_iter().map(|d| d.device_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reports_only_as_the_device_its_certificate_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = Ca::new("fleet CA");
    let s = start(&fleet, dir.path()).await;
    let device1 = client(&fleet, &s, Some(fleet.client("device-1", false)));

    let resp = post_report(&device1, &s, "device-1").await.expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN chose h2");
    // The identity reaches the handler the same way over HTTP/1.1.
    let device1_h1 = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(fleet.cert.pem().as_bytes()).expect("anchor"),
        )
        .identity(fleet.client("device-1", false))
        .resolve("localhost", s.addr)
        .http1_only()
        .build()
        .expect("client");
    let resp = post_report(&device1_h1, &s, "device-1")
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    let resp = post_report(&device1_h1, &s, "device-2")
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let resp = post_report(&device1, &s, "device-2").await.expect("post");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let message = common::error_message(resp).await;
    assert!(
        message.contains("\"device-1\"") && message.contains("\"device-2\""),
        "names the certificate's device and the one claimed: {message}"
    );

    // device-2 with its own certificate is fine.
    let device2 = client(&fleet, &s, Some(fleet.client("device-2", false)));
    let resp = post_report(&device2, &s, "device-2").await.expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    assert_eq!(
        recorded_devices(&s).await,
        vec!["device-1".to_owned(), "device-2".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_reads_work_and_reports_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = Ca::new("fleet CA");
    let s = start(&fleet, dir.path()).await;
    s.put_repo_file("metadata/timestamp.json", br#"{"signed":{}}"#);
    let image: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.put_repo_file("targets/images/a.img", &image);
    let anonymous = client(&fleet, &s, None);

    // Devices verify metadata and images by signature, not by who fetched
    // them: no client certificate is needed to read them.
    let resp = anonymous
        .get(s.url("/metadata/timestamp.json"))
        .send()
        .await
        .expect("metadata");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = anonymous
        .get(s.url("/targets/images/a.img"))
        .send()
        .await
        .expect("image");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), image.as_slice());

    let resp = post_report(&anonymous, &s, "device-1")
        .await
        .expect("the handshake succeeds; the report is refused");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let message = common::error_message(resp).await;
    assert!(message.contains("client certificate"), "{message}");
    assert!(recorded_devices(&s).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_or_expired_are_refused_at_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = Ca::new("fleet CA");
    let s = start(&fleet, dir.path()).await;
    s.put_repo_file("metadata/timestamp.json", br#"{"signed":{}}"#);
    let rogue = Ca::new("fleet CA"); // same name, different key
    for (what, identity) in [
        ("another CA", rogue.client("device-1", false)),
        ("expired", fleet.client("device-1", true)),
    ] {
        let c = client(&fleet, &s, Some(identity));
        let err = post_report(&c, &s, "device-1")
            .await
            .expect_err(&format!("{what}: the server must end the handshake"));
        assert!(err.is_connect() || err.is_request(), "{what}: {err:?}");
        // A bad certificate is not the same as none: even reads are refused,
        // rather than quietly served to a client that may believe it is
        // authenticated.
        assert!(
            c.get(s.url("/metadata/timestamp.json"))
                .send()
                .await
                .is_err(),
            "{what}"
        );
    }
    assert!(recorded_devices(&s).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_no_valid_device_id_cannot_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = Ca::new("fleet CA");
    let s = start(&fleet, dir.path()).await;
    for cn in ["device 1", "../device-1", "device-1/x", &"d".repeat(129)] {
        let c = client(&fleet, &s, Some(fleet.client(cn, false)));
        for claimed in ["device-1", "device%201"] {
            let resp = post_report(&c, &s, claimed).await.expect("post");
            assert!(
                matches!(
                    resp.status(),
                    StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST
                ),
                "CN {cn:?} reporting as {claimed:?}: {}",
                resp.status()
            );
        }
        let resp = post_report(&c, &s, "device-1").await.expect("post");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "CN {cn:?}");
    }
    assert!(recorded_devices(&s).await.is_empty());
}
