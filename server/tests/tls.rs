//! TLS: the configured certificate is served, a renewed one is picked up
//! without a restart, and unusable files are refused by name.

mod common;

use ota_server::config::TlsFiles;
use reqwest::StatusCode;
use std::path::Path;
use std::time::{Duration, Instant};

struct SelfSigned {
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> SelfSigned {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    SelfSigned {
        cert_pem: generated.cert.pem(),
        key_pem: generated.key_pair.serialize_pem(),
    }
}

/// Replaces a file the way deployment tools do: write aside, rename over.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A fresh client (no pooled connection) trusting only `cert_pem`.
async fn get_trusting(cert_pem: &str, addr: std::net::SocketAddr) -> reqwest::Result<StatusCode> {
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes())?)
        .resolve("localhost", addr)
        .pool_max_idle_per_host(0)
        .build()?;
    let url = format!("https://localhost:{}/healthz", addr.port());
    Ok(client.get(url).send().await?.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_certificate_and_reloads_it_without_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    let old = self_signed();
    std::fs::write(&files.cert, &old.cert_pem).expect("cert");
    std::fs::write(&files.key, &old.key_pem).expect("key");
    let tls = files.clone();
    let s = common::start_with(move |c| c.tls = Some(tls)).await;

    assert_eq!(
        get_trusting(&old.cert_pem, s.addr).await.expect("https"),
        StatusCode::OK
    );
    // Plain HTTP on the TLS port gets no answer.
    assert!(s.client.get(s.url("/healthz")).send().await.is_err());

    let new = self_signed();
    assert!(get_trusting(&new.cert_pem, s.addr).await.is_err());
    // Certificate first, key second: for a moment they do not match, and the
    // server must keep serving the old pair through that.
    replace(&files.cert, &new.cert_pem);
    assert_eq!(
        get_trusting(&old.cert_pem, s.addr)
            .await
            .expect("old still served"),
        StatusCode::OK
    );
    replace(&files.key, &new.key_pem);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(status) = get_trusting(&new.cert_pem, s.addr).await {
            assert_eq!(status, StatusCode::OK);
            break;
        }
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        get_trusting(&old.cert_pem, s.addr).await.is_err(),
        "the old certificate is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_files_are_refused_by_name() {
    common::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = self_signed();
    let b = self_signed();
    let write = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).expect("write");
        p
    };
    let cert_a = write("a.pem", &a.cert_pem);
    let key_b = write("b.key", &b.key_pem);
    let garbage = write("garbage.pem", "not pem at all\n");
    let missing = dir.path().join("missing.pem");
    let data = dir.path().join("data");
    for (cert, key, needle) in [
        (&cert_a, &key_b, "does not belong"),
        (&garbage, &key_b, "garbage.pem"),
        (&cert_a, &garbage, "garbage.pem"),
        (&missing, &key_b, "missing.pem"),
    ] {
        let mut config =
            ota_server::Config::new("127.0.0.1:0".parse().expect("addr"), data.clone());
        config.tls = Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
        let err = ota_server::Server::bind(&config)
            .await
            .expect_err("must refuse")
            .to_string();
        assert!(err.contains(needle), "{err:?} should contain {needle:?}");
    }
}
