//! Online re-signing: a repository made by the real `ota-repo` (library),
//! published to the server with a timestamp about to expire, re-signed by
//! the server's background job with the timestamp key, and accepted by our
//! TUF client.

mod common;

use ota_common::tuf::{ClientOptions, FileTransport, TufClient};
use ota_repo::expiry::Expiry;
use ota_repo::init::{init, InitOptions};
use ota_repo::layout::Layout;
use ota_repo::role::Role;
use ota_server::resign::OnlineSigning;
use reqwest::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fresh repository whose timestamp expires in `timestamp_secs`.
async fn repository(dir: &Path, timestamp_secs: i64) -> Layout {
    let layout = Layout::new(dir.join("repo"));
    let mut options = InitOptions::default();
    options
        .expires
        .insert(Role::Timestamp, Expiry::After(timestamp_secs));
    init(&layout, &options).await.expect("ota-repo init");
    layout
}

fn timestamp_key(layout: &Layout) -> PathBuf {
    std::fs::read_dir(layout.keys_dir())
        .expect("keys")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("timestamp"))
        })
        .expect("a timestamp key")
}

/// Uploads every metadata file of the repository in one publication.
async fn publish(s: &common::TestServer, layout: &Layout) {
    let resp = s
        .admin(Method::POST, "/admin/v1/publications")
        .send()
        .await
        .expect("open");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for entry in std::fs::read_dir(layout.metadata_dir()).expect("metadata") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        let resp = s
            .admin(
                Method::PUT,
                &format!("/admin/v1/publications/{id}/metadata/{name}"),
            )
            .body(std::fs::read(&path).expect("read"))
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{name}");
    }
    let resp = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::OK);
}

fn published_version(data_dir: &Path) -> u64 {
    let bytes = std::fs::read(data_dir.join("repository/metadata/timestamp.json")).expect("read");
    let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    doc["signed"]["version"].as_u64().expect("version")
}

fn client(s: &common::TestServer, trusted: &Path) -> TufClient<FileTransport> {
    let repo = s.data_dir.join("repository");
    let url = |sub: &str| url::Url::from_directory_path(repo.join(sub)).expect("url");
    TufClient::open(
        trusted,
        ClientOptions::new(url("metadata"), url("targets")),
        FileTransport,
    )
    .expect("open client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_timestamp_is_resigned_and_accepted_by_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path(), 3).await;
    let key = timestamp_key(&layout);
    let s = common::start_with(|c| {
        c.online_signing = Some(OnlineSigning {
            key,
            timestamp_expiry: Duration::from_secs(3600),
            resign_before: Duration::from_secs(2),
        })
    })
    .await;
    publish(&s, &layout).await;

    // A device trusting root 1 takes timestamp version 1 while it is valid.
    let trusted = dir.path().join("device");
    let root = std::fs::read(layout.metadata_dir().join("1.root.json")).expect("root");
    TufClient::<FileTransport>::init(&trusted, &root).expect("init");
    let mut device = client(&s, &trusted);
    device.refresh().expect("first refresh");
    assert_eq!(
        device.trusted().timestamp.as_ref().map(|t| t.version),
        Some(1)
    );

    // Within the 2 s margin of its expiry, the server publishes version 2.
    let deadline = Instant::now() + Duration::from_secs(15);
    while published_version(&s.data_dir) < 2 {
        assert!(Instant::now() < deadline, "timestamp was not re-signed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Wait past the original expiry: only the re-signed one is valid now.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let mut device = client(&s, &trusted);
    device
        .refresh()
        .expect("refresh accepts the re-signed timestamp");
    let ts = device.trusted().timestamp.clone().expect("timestamp");
    assert_eq!(ts.version, 2);
    assert!(ts.expires > chrono::Utc::now() + chrono::Duration::minutes(50));
    // Same snapshot as before: nothing else changed.
    assert_eq!(
        device.trusted().snapshot.as_ref().map(|t| t.version),
        Some(1)
    );
    // A fresh device accepts it too.
    let fresh = dir.path().join("fresh");
    TufClient::<FileTransport>::init(&fresh, &root).expect("init");
    client(&s, &fresh).refresh().expect("fresh device");
    // Not due any more: no new version on the next checks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(published_version(&s.data_dir), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_root_does_not_list_is_never_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path(), 3).await;
    // The snapshot key: a real key, but not a timestamp key of root.
    let other = std::fs::read_dir(layout.keys_dir())
        .expect("keys")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snapshot"))
        })
        .expect("snapshot key");
    let s = common::start_with(|c| {
        c.online_signing = Some(OnlineSigning {
            key: other,
            timestamp_expiry: Duration::from_secs(3600),
            resign_before: Duration::from_secs(2),
        })
    })
    .await;
    publish(&s, &layout).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(published_version(&s.data_dir), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_key_stops_the_start() {
    common::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "not a key").expect("write");
    let mut config = ota_server::Config::new(
        "127.0.0.1:0".parse().expect("addr"),
        dir.path().join("data"),
    );
    config.online_signing = Some(OnlineSigning {
        key: key.clone(),
        timestamp_expiry: Duration::from_secs(3600),
        resign_before: Duration::from_secs(60),
    });
    let err = ota_server::Server::bind(&config)
        .await
        .expect_err("bad key")
        .to_string();
    assert!(
        err.contains("key.pem") && err.contains("PRIVATE KEY"),
        "{err}"
    );
}
