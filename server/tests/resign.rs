//! Online re-signing: a repository made by the real `ota-repo` (library),
//! published to the server with a timestamp about to expire, re-signed by
//! the server's background job with the timestamp key, and accepted by our
//! TUF client. With keys in files, and in a SoftHSM2 token (the second
//! half of this file).

mod common;

use ota_common::tuf::{ClientOptions, FileTransport, TufClient};
use ota_repo::add::AddOptions;
use ota_repo::expiry::Expiry;
use ota_repo::init::{init, InitOptions};
use ota_repo::key_ref::KeyRef;
use ota_repo::keys::KeyType;
use ota_repo::layout::Layout;
use ota_repo::pkcs11::Pkcs11Uri;
use ota_repo::publish::AdminClient;
use ota_repo::role::Role;
use ota_repo::state::RepoState;
use ota_server::resign::{OnlineSigning, SnapshotSigning};
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
            key: KeyRef::File(key),
            timestamp_expiry: Duration::from_secs(3600),
            resign_before: Duration::from_secs(2),
            snapshot: None,
            audit_dir: None,
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
            key: KeyRef::File(other),
            timestamp_expiry: Duration::from_secs(3600),
            resign_before: Duration::from_secs(2),
            snapshot: None,
            audit_dir: None,
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
        key: KeyRef::File(key.clone()),
        timestamp_expiry: Duration::from_secs(3600),
        resign_before: Duration::from_secs(60),
        snapshot: None,
        audit_dir: None,
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

// ------------------------------------------------------------ PKCS#11 keys

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// A PIN that must never show up in a log.
const PIN: &str = "pin-7f3a9c51";

/// One SoftHSM2 token for this whole test process: the module reads
/// `SOFTHSM2_CONF` once, at its first `C_Initialize`, so the variable is set
/// once, before any PKCS#11 call, and each test uses its own key labels.
struct Hsm {
    conf: PathBuf,
    pin_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn hsm() -> &'static Hsm {
    static HSM: std::sync::OnceLock<Hsm> = std::sync::OnceLock::new();
    HSM.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("tokendir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("conf");
        let out = std::process::Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", "online"])
            .args(["--so-pin", "5678", "--pin", PIN])
            .output()
            .expect("softhsm2-util (Debian package softhsm2) must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).expect("pin file");
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Hsm {
            conf,
            pin_file,
            _dir: dir,
        }
    })
}

/// The URI of key `object` in the test token, PIN from a file.
fn token_key(object: &str) -> Pkcs11Uri {
    let hsm = hsm();
    format!(
        "pkcs11:token=online;object={object}?module-path={MODULE}&pin-source=file:{}",
        hsm.pin_file.display()
    )
    .parse()
    .expect("uri")
}

/// A repository whose timestamp and snapshot keys live in the token, under
/// `ts-{tag}` and `snap-{tag}`.
async fn token_repository(
    dir: &Path,
    tag: &str,
    key_type: KeyType,
    timestamp_secs: i64,
    snapshot_secs: i64,
) -> Layout {
    let layout = Layout::new(dir.join("repo"));
    let mut options = InitOptions {
        key_type,
        ..InitOptions::default()
    };
    options
        .expires
        .insert(Role::Timestamp, Expiry::After(timestamp_secs));
    options
        .expires
        .insert(Role::Snapshot, Expiry::After(snapshot_secs));
    options
        .key_uris
        .insert(Role::Timestamp, vec![token_key(&format!("ts-{tag}"))]);
    options
        .key_uris
        .insert(Role::Snapshot, vec![token_key(&format!("snap-{tag}"))]);
    init(&layout, &options).await.expect("ota-repo init");
    layout
}

fn settings(timestamp: &str, snapshot: Option<&str>) -> OnlineSigning {
    OnlineSigning {
        key: KeyRef::Pkcs11(token_key(timestamp)),
        timestamp_expiry: Duration::from_secs(3600),
        resign_before: Duration::from_secs(2),
        snapshot: snapshot.map(|s| SnapshotSigning {
            key: KeyRef::Pkcs11(token_key(s)),
            expiry: Duration::from_secs(3600),
        }),
        audit_dir: None,
    }
}

fn published(data_dir: &Path, name: &str) -> serde_json::Value {
    let bytes = std::fs::read(data_dir.join("repository/metadata").join(name)).expect("read");
    serde_json::from_slice(&bytes).expect("json")
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fresh_device(dir: &Path, s: &common::TestServer, layout: &Layout) -> TufClient<FileTransport> {
    let root = std::fs::read(layout.metadata_dir().join("1.root.json")).expect("root");
    TufClient::<FileTransport>::init(dir, &root).expect("init");
    client(s, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_keys_of_every_type_resign_the_timestamp() {
    for (tag, key_type) in [
        ("every-ed25519", KeyType::Ed25519),
        ("every-ecdsa", KeyType::Ecdsa),
        ("every-rsa", KeyType::Rsa),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = token_repository(dir.path(), tag, key_type, 3, 3600).await;
        let s = common::start_with(|c| {
            c.online_signing = Some(settings(&format!("ts-{tag}"), None));
        })
        .await;
        publish(&s, &layout).await;
        wait_until(&format!("{key_type} re-signing"), || {
            published_version(&s.data_dir) >= 2
        })
        .await;
        let mut device = fresh_device(&dir.path().join("device"), &s, &layout);
        device.refresh().unwrap_or_else(|e| {
            panic!("{key_type}: the device refused the re-signed timestamp: {e}")
        });
        let ts = device.trusted().timestamp.clone().expect("timestamp");
        assert!(ts.version >= 2, "{key_type}");
        assert!(ts.expires > chrono::Utc::now() + chrono::Duration::minutes(50));
        assert_eq!(
            device.trusted().snapshot.as_ref().map(|t| t.version),
            Some(1),
            "{key_type}: snapshot is offline here and stays as published"
        );
    }
}

/// What `ota-repo` must do before signing once the server has re-signed:
/// adopt the server's newer timestamp.json and the snapshot it names (both
/// verify against its root), so its next versions are past the server's.
fn adopt_server_versions(s: &common::TestServer, layout: &Layout) {
    let ts = published(&s.data_dir, "timestamp.json");
    let snapshot = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .expect("snapshot version");
    for name in [
        format!("{snapshot}.snapshot.json"),
        "timestamp.json".to_owned(),
    ] {
        std::fs::copy(
            s.data_dir.join("repository/metadata").join(&name),
            layout.metadata_dir().join(&name),
        )
        .expect("adopt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_snapshot_is_resigned_and_a_later_publication_follows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = token_repository(dir.path(), "snap", KeyType::Ecdsa, 3600, 3).await;
    let s = common::start_with(|c| {
        c.online_signing = Some(settings("ts-snap", Some("snap-snap")));
    })
    .await;
    publish(&s, &layout).await;
    let device_dir = dir.path().join("device");
    let mut device = fresh_device(&device_dir, &s, &layout);
    device.refresh().expect("first refresh");
    assert_eq!(
        device.trusted().snapshot.as_ref().map(|t| t.version),
        Some(1)
    );

    // Snapshot expires within the margin: version 2 with the same meta, and
    // a timestamp that names it, although the timestamp itself was not due.
    wait_until("snapshot re-signing", || {
        s.data_dir
            .join("repository/metadata/2.snapshot.json")
            .exists()
            && published_version(&s.data_dir) >= 2
    })
    .await;
    let old = published(&s.data_dir, "1.snapshot.json");
    let new = published(&s.data_dir, "2.snapshot.json");
    assert_eq!(old["signed"]["meta"], new["signed"]["meta"]);
    let ts = published(&s.data_dir, "timestamp.json");
    assert_eq!(ts["signed"]["version"], 2);
    assert_eq!(ts["signed"]["meta"]["snapshot.json"]["version"], 2);
    // Past the old snapshot's expiry, only the re-signed one is valid.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let mut device = client(&s, &device_dir);
    device
        .refresh()
        .expect("the device accepts the re-signed snapshot");
    assert_eq!(
        device.trusted().snapshot.as_ref().map(|t| t.version),
        Some(2)
    );
    assert_eq!(
        device.trusted().timestamp.as_ref().map(|t| t.version),
        Some(2)
    );

    // The release engineer's next publication: adopt, add, publish.
    adopt_server_versions(&s, &layout);
    let image = dir.path().join("fw.img");
    std::fs::write(&image, vec![5u8; 10_000]).expect("image");
    ota_repo::add::add(
        &layout,
        &AddOptions {
            image,
            version: "2.0.0".to_owned(),
            hardware_ids: vec!["board".to_owned()],
            notes: None,
            name: None,
        },
    )
    .await
    .expect("ota-repo add");
    let (base, token, repo) = (s.base.clone(), s.token.clone(), layout.root().to_owned());
    tokio::task::spawn_blocking(move || {
        let layout = Layout::new(repo);
        let state = tokio::runtime::Handle::current()
            .block_on(RepoState::load(&layout))
            .expect("state");
        let set = ota_repo::publish::collect(&layout, &state).expect("collect");
        let admin = AdminClient::new(base.parse().expect("url"), token).expect("client");
        ota_repo::publish::publish_server(&layout, &set, &admin).expect("publish after re-signing")
    })
    .await
    .expect("join");
    let mut device = client(&s, &device_dir);
    device
        .refresh()
        .expect("the device follows the new release");
    assert!(device.trusted().snapshot.as_ref().map(|t| t.version) >= Some(3));
    assert!(device.find_target("fw.img").expect("lookup").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_is_refused_when_root_does_not_list_the_token_key() {
    common::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = token_repository(dir.path(), "refuse", KeyType::Ed25519, 3600, 3600).await;
    let stranger = token_key("stranger-refuse");
    stranger.generate(KeyType::Ed25519).expect("generate");
    let stranger_id = KeyRef::Pkcs11(stranger.clone())
        .open(None)
        .expect("open")
        .key_id;
    // A data directory already serving the repository.
    let data = dir.path().join("data");
    let meta = data.join("repository/metadata");
    std::fs::create_dir_all(&meta).expect("mkdir");
    for entry in std::fs::read_dir(layout.metadata_dir()).expect("metadata") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, meta.join(path.file_name().expect("name"))).expect("copy");
    }
    let bind = |online: OnlineSigning| {
        let mut config =
            ota_server::Config::new("127.0.0.1:0".parse().expect("addr"), data.clone());
        config.online_signing = Some(online);
        async move { ota_server::Server::bind(&config).await.map(drop) }
    };

    let err = bind(settings("stranger-refuse", None))
        .await
        .expect_err("a key root does not list")
        .to_string();
    assert!(
        err.contains(&stranger_id) && err.contains("not a timestamp key of 1.root.json"),
        "{err}"
    );
    // The timestamp key is no snapshot key.
    let err = bind(settings("ts-refuse", Some("ts-refuse")))
        .await
        .expect_err("wrong role")
        .to_string();
    assert!(err.contains("not a snapshot key"), "{err}");
    // A key that is not in the token at all.
    let err = bind(settings("missing-refuse", None))
        .await
        .expect_err("missing key")
        .to_string();
    assert!(
        err.contains("online timestamp key") && err.contains("no public key"),
        "{err}"
    );
    // The right keys start.
    bind(settings("ts-refuse", Some("snap-refuse")))
        .await
        .expect("the listed keys start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_resigns_with_a_token_key_and_never_logs_the_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = token_repository(dir.path(), "binary", KeyType::Ed25519, 3, 3).await;
    let data = dir.path().join("data");
    let meta = data.join("repository/metadata");
    std::fs::create_dir_all(&meta).expect("mkdir");
    for entry in std::fs::read_dir(layout.metadata_dir()).expect("metadata") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, meta.join(path.file_name().expect("name"))).expect("copy");
    }
    let audit = dir.path().join("online-audit");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[online_signing]\nkey = {:?}\nsnapshot_key = {:?}\ntimestamp_expiry = \"1h\"\nsnapshot_expiry = \"1h\"\nresign_before = \"2s\"\naudit_dir = {:?}\n",
            data.display().to_string(),
            token_key("ts-binary").to_string(),
            token_key("snap-binary").to_string(),
            audit.display().to_string(),
        ),
    )
    .expect("config");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ota-server"))
        .arg("--config")
        .arg(&config)
        .env("SOFTHSM2_CONF", &hsm().conf)
        .env_remove("OTA_PKCS11_PIN")
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ota-server");
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    wait_until("the binary re-signs", || {
        meta.join("2.snapshot.json").exists()
            && std::fs::read(meta.join("timestamp.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["signed"]["version"].as_u64())
                >= Some(2)
    })
    .await;
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let output = output.await.expect("join").expect("output");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(logs.contains("online timestamp signing enabled"), "{logs}");
    assert!(
        logs.contains("snapshot re-signed with the online key"),
        "{logs}"
    );
    assert!(
        logs.contains("timestamp re-signed with the online key"),
        "{logs}"
    );
    assert!(
        logs.contains("PKCS#11 token online, object ts-binary"),
        "{logs}"
    );
    assert!(!logs.contains(PIN), "the PIN is in the logs: {logs}");
    // Each signature is in a hash chain that ota-repo's own code verifies.
    let log = ota_repo::audit::AuditLog::new(&audit, "auditor".to_owned());
    assert!(log.verify().expect("intact audit log") >= 2);
    let entries = std::fs::read_to_string(log.path()).expect("audit.jsonl");
    assert!(
        entries.contains("\"online-sign\"") && entries.contains("\"snapshot\""),
        "{entries}"
    );
    assert!(!entries.contains(PIN), "{entries}");
}
