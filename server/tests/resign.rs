//! Online re-signing: a repository made by the real `ota-repo` (library),
//! served by the server with a timestamp about to expire, re-signed by
//! the server's background job with the timestamp key, and accepted by our
//! TUF client; and publications after such re-signings, where the server
//! issues timestamp (and snapshot) itself at the commit. With keys in
//! files, and in a SoftHSM2 token (the second half of this file).

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
    key_file(layout, "timestamp")
}

/// The key file `ota-repo init` made for `role`.
fn key_file(layout: &Layout, role: &str) -> PathBuf {
    std::fs::read_dir(layout.keys_dir())
        .expect("keys")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(role))
        })
        .unwrap_or_else(|| panic!("a {role} key"))
}

/// Puts the repository's metadata straight into the server's repository,
/// timestamp last: a repository already being served, which the background
/// job then re-signs (a publication would have the server sign at commit).
fn seed(s: &common::TestServer, layout: &Layout) {
    seed_into(&s.data_dir, layout)
}

fn seed_into(data_dir: &Path, layout: &Layout) {
    let mut names: Vec<String> = std::fs::read_dir(layout.metadata_dir())
        .expect("metadata")
        .map(|e| e.expect("entry").file_name().into_string().expect("name"))
        .collect();
    names.sort_by_key(|n| n == "timestamp.json");
    for name in names {
        let bytes = std::fs::read(layout.metadata_dir().join(&name)).expect("read");
        let dest = data_dir.join("repository/metadata");
        std::fs::create_dir_all(&dest).expect("mkdir");
        std::fs::write(dest.join(&name), &bytes).expect("write");
    }
}

/// What a release engineer runs: `ota-repo add IMAGE` then `ota-repo
/// publish --server`, through ota-repo's own code.
async fn release(
    s: &common::TestServer,
    layout: &Layout,
    image_name: &str,
    version: &str,
) -> Result<ota_repo::publish::ServerPublished, ota_repo::error::RepoError> {
    release_to(&s.base, &s.token, layout, image_name, version).await
}

async fn release_to(
    base: &str,
    token: &str,
    layout: &Layout,
    image_name: &str,
    version: &str,
) -> Result<ota_repo::publish::ServerPublished, ota_repo::error::RepoError> {
    let dir = layout.root().join("images");
    std::fs::create_dir_all(&dir).expect("images");
    let image = dir.join(image_name);
    std::fs::write(&image, format!("{image_name} {version}").repeat(500)).expect("image");
    ota_repo::add::add(
        layout,
        &AddOptions {
            image,
            version: version.to_owned(),
            hardware_ids: vec!["board".to_owned()],
            notes: None,
            name: None,
        },
    )
    .await
    .expect("ota-repo add");
    publish_to(base, token, layout).await
}

/// `ota-repo publish --server` (blocking HTTP client: off the runtime).
async fn publish_with_ota_repo(
    s: &common::TestServer,
    layout: &Layout,
) -> Result<ota_repo::publish::ServerPublished, ota_repo::error::RepoError> {
    publish_to(&s.base, &s.token, layout).await
}

async fn publish_to(
    base: &str,
    token: &str,
    layout: &Layout,
) -> Result<ota_repo::publish::ServerPublished, ota_repo::error::RepoError> {
    let (base, token, repo) = (base.to_owned(), token.to_owned(), layout.root().to_owned());
    tokio::task::spawn_blocking(move || {
        let layout = Layout::new(repo);
        let state = tokio::runtime::Handle::current()
            .block_on(RepoState::load(&layout))
            .expect("state");
        let set = ota_repo::publish::collect(&layout, &state).expect("collect");
        let admin = AdminClient::new(base.parse().expect("url"), token).expect("client");
        ota_repo::publish::publish_server(&layout, &set, &admin)
    })
    .await
    .expect("join")
}

fn local_version(layout: &Layout, name: &str) -> u64 {
    let bytes = std::fs::read(layout.metadata_dir().join(name)).expect("read");
    let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    doc["signed"]["version"].as_u64().expect("version")
}

fn file_settings(layout: &Layout, snapshot: bool, expiry: Duration) -> OnlineSigning {
    OnlineSigning {
        key: KeyRef::File(timestamp_key(layout)),
        timestamp_expiry: expiry,
        resign_before: Duration::from_secs(2),
        snapshot: snapshot.then(|| SnapshotSigning {
            key: KeyRef::File(key_file(layout, "snapshot")),
            expiry,
        }),
        audit_dir: None,
    }
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
    seed(&s, &layout);

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
    seed(&s, &layout);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(published_version(&s.data_dir), 1);
    // Nor at a publication's commit: refused, naming the key, nothing changed.
    let err = publish_with_ota_repo(&s, &layout)
        .await
        .expect_err("a key root does not list")
        .to_string();
    assert!(
        err.contains("409") && err.contains("not a timestamp key of 1.root.json"),
        "{err}"
    );
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

// ------------------------------------- publications after the server re-signed

/// A device that trusts root 1 and has seen nothing yet.
fn new_device(dir: &Path, s: &common::TestServer, layout: &Layout) -> TufClient<FileTransport> {
    let root = std::fs::read(layout.metadata_dir().join("1.root.json")).expect("root");
    TufClient::<FileTransport>::init(dir, &root).expect("init");
    client(s, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_works_after_the_server_resigned_the_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path(), 3).await;
    let s = common::start_with(|c| {
        c.online_signing = Some(file_settings(&layout, false, Duration::from_secs(3600)))
    })
    .await;
    seed(&s, &layout);
    wait_until("timestamp re-signing", || {
        published_version(&s.data_dir) >= 2
    })
    .await;
    // The local repository still has timestamp 1: `add` signs version 2,
    // which the server has published already.
    let done = release(&s, &layout, "fw.img", "2.0.0")
        .await
        .expect("publish after the server re-signed the timestamp");
    assert_eq!(local_version(&layout, "2.snapshot.json"), 2);
    assert_eq!(done.committed.online_timestamp_version, Some(3));
    assert_eq!(done.committed.online_snapshot_version, None);
    assert_eq!(
        done.committed.files.last().map(String::as_str),
        Some("metadata/timestamp.json")
    );
    let ts = published(&s.data_dir, "timestamp.json");
    assert_eq!(ts["signed"]["version"], 3);
    assert_eq!(ts["signed"]["meta"]["snapshot.json"]["version"], 2);
    // ota-repo followed the server: its next versions come after the server's.
    let adopted = done.adopted.expect("server's timestamp adopted");
    assert_eq!((adopted.timestamp, adopted.snapshot), (3, 2));
    assert_eq!(local_version(&layout, "timestamp.json"), 3);

    let mut device = new_device(&dir.path().join("device"), &s, &layout);
    device.refresh().expect("a fresh device follows");
    assert_eq!(
        device.trusted().timestamp.as_ref().map(|t| t.version),
        Some(3)
    );
    let target = device
        .find_target("fw.img")
        .expect("lookup")
        .expect("fw.img");
    assert_eq!(
        target.release().expect("release").version.to_string(),
        "2.0.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_works_after_the_server_resigned_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(dir.path().join("repo"));
    let mut options = InitOptions::default();
    options.expires.insert(Role::Snapshot, Expiry::After(3));
    init(&layout, &options).await.expect("ota-repo init");
    let s = common::start_with(|c| {
        c.online_signing = Some(file_settings(&layout, true, Duration::from_secs(3600)))
    })
    .await;
    seed(&s, &layout);
    wait_until("snapshot re-signing", || {
        s.data_dir
            .join("repository/metadata/2.snapshot.json")
            .exists()
            && published_version(&s.data_dir) >= 2
    })
    .await;
    // `add` signs snapshot 2 and timestamp 2: both names are taken.
    let done = release(&s, &layout, "fw.img", "2.0.0")
        .await
        .expect("publish after the server re-signed the snapshot");
    assert_eq!(done.committed.online_snapshot_version, Some(3));
    assert_eq!(done.committed.online_timestamp_version, Some(3));
    let files = &done.committed.files;
    let position = |f: &str| files.iter().position(|x| x == f).unwrap_or(usize::MAX);
    assert!(
        position("metadata/2.targets.json") < position("metadata/3.snapshot.json")
            && position("metadata/3.snapshot.json") < position("metadata/timestamp.json")
            && position("metadata/timestamp.json") == files.len() - 1,
        "{files:?}"
    );
    assert!(
        !files.iter().any(|f| f == "metadata/2.snapshot.json"),
        "{files:?}"
    );
    // The re-issued snapshot carries what the uploaded one listed.
    let reissued = published(&s.data_dir, "3.snapshot.json");
    assert_eq!(reissued["signed"]["meta"]["targets.json"]["version"], 2);
    assert_eq!(
        published(&s.data_dir, "timestamp.json")["signed"]["meta"]["snapshot.json"]["version"],
        3
    );
    let adopted = done.adopted.expect("adopted");
    assert_eq!((adopted.timestamp, adopted.snapshot), (3, 3));
    assert!(layout.metadata_dir().join("3.snapshot.json").exists());

    let mut device = new_device(&dir.path().join("device"), &s, &layout);
    device.refresh().expect("a fresh device follows");
    assert_eq!(
        device.trusted().snapshot.as_ref().map(|t| t.version),
        Some(3)
    );
    assert!(device.find_target("fw.img").expect("lookup").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_online_signing_a_clash_is_a_clear_409() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path(), 3600).await;
    // A second release engineer's copy of the same repository.
    let other = Layout::new(dir.path().join("other"));
    copy_dir(layout.root(), other.root());
    let s = common::start().await;
    publish(&s, &layout).await;
    let done = release(&s, &layout, "fw.img", "2.0.0")
        .await
        .expect("first");
    assert_eq!(done.committed.online_timestamp_version, None);
    assert!(done.adopted.is_none());
    // The other copy signs the same versions with other content.
    let err = release(&s, &other, "fw-b.img", "2.0.1")
        .await
        .expect_err("versions taken")
        .to_string();
    assert!(err.contains("409"), "{err}");
    assert!(
        err.contains("metadata/2.snapshot.json")
            && err.contains("not newer than the published 2")
            && err.contains("ota-repo resign")
            && err.contains("[online_signing]"),
        "{err}"
    );
    assert_eq!(published_version(&s.data_dir), 2);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_in_a_row_with_resignings_in_between() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path(), 3600).await;
    // Everything the server signs lives 3 s and is renewed within 2 s: it
    // re-signs about every second, racing the publications.
    let s = common::start_with(|c| {
        c.online_signing = Some(file_settings(&layout, true, Duration::from_secs(3)))
    })
    .await;
    publish(&s, &layout).await;
    let mut seen = published_version(&s.data_dir);
    for (n, (image, version)) in [("fw-a.img", "2.0.0"), ("fw-b.img", "3.0.0")]
        .into_iter()
        .enumerate()
    {
        wait_until("a re-signing", || published_version(&s.data_dir) > seen).await;
        let done = release(&s, &layout, image, version)
            .await
            .unwrap_or_else(|e| panic!("publication {n} after re-signing: {e}"));
        let issued = done.committed.online_timestamp_version.expect("issued");
        assert!(issued > seen, "timestamp {issued} after {seen}");
        seen = issued;
        let mut device = new_device(&dir.path().join(format!("device-{n}")), &s, &layout);
        device.refresh().expect("a fresh device follows");
        assert!(
            device.find_target(image).expect("lookup").is_some(),
            "{image}"
        );
    }
    // Both releases are there, and the versions only ever went up.
    let mut device = new_device(&dir.path().join("device-last"), &s, &layout);
    device.refresh().expect("refresh");
    assert!(device.find_target("fw-a.img").expect("lookup").is_some());
    assert!(device.find_target("fw-b.img").expect("lookup").is_some());
    assert!(published_version(&s.data_dir) >= seen);
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

/// Held for the whole of each test that uses the shared token: SoftHSM2's
/// file store failed now and then ("unrecoverable error" in key generation)
/// when one test generated keys while another test's server signed with the
/// same token, in this process or in an `ota-server` child. The token tests
/// take a few seconds each; running them one at a time costs little.
static TOKEN_IN_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

async fn wait_until(what: &str, done: impl FnMut() -> bool) {
    assert!(poll_until(done).await, "timed out waiting: {what}");
}

/// Polls `done` for up to 60 s (generous: the whole suite shares two cores).
async fn poll_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    true
}

fn fresh_device(dir: &Path, s: &common::TestServer, layout: &Layout) -> TufClient<FileTransport> {
    let root = std::fs::read(layout.metadata_dir().join("1.root.json")).expect("root");
    TufClient::<FileTransport>::init(dir, &root).expect("init");
    client(s, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_keys_of_every_type_resign_the_timestamp() {
    let _token = TOKEN_IN_USE.lock().await;
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
        seed(&s, &layout);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_snapshot_is_resigned_and_a_later_publication_follows_it() {
    let _token = TOKEN_IN_USE.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = token_repository(dir.path(), "snap", KeyType::Ecdsa, 3600, 3).await;
    let s = common::start_with(|c| {
        c.online_signing = Some(settings("ts-snap", Some("snap-snap")));
    })
    .await;
    seed(&s, &layout);
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

    // The release engineer's next publication: a plain add and publish,
    // although the server has taken snapshot and timestamp version 2.
    let done = release(&s, &layout, "fw.img", "2.0.0")
        .await
        .expect("publish after re-signing");
    assert_eq!(done.committed.online_snapshot_version, Some(3));
    let mut device = client(&s, &device_dir);
    device
        .refresh()
        .expect("the device follows the new release");
    assert!(device.trusted().snapshot.as_ref().map(|t| t.version) >= Some(3));
    assert!(device.find_target("fw.img").expect("lookup").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_is_refused_when_root_does_not_list_the_token_key() {
    let _token = TOKEN_IN_USE.lock().await;
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
    let _token = TOKEN_IN_USE.lock().await;
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
    let resigned = poll_until(|| {
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
    assert!(
        resigned,
        "timed out waiting for the binary to re-sign; its log:\n{logs}"
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

// ------------------------------------------------------------ metrics

/// The real server (`Server::bind`, as the binary runs it) over `data_dir`
/// with online signing: its re-signing job counts into the metrics that
/// `/metrics` renders. Returns the base URL and the bootstrap token;
/// everything stops when the runtime ends.
async fn serve_with_metrics(data_dir: &Path, settings: &OnlineSigning) -> (String, String) {
    common::install_crypto();
    std::fs::create_dir_all(data_dir).expect("data dir");
    let mut config = ota_server::Config::new("127.0.0.1:0".parse().expect("addr"), data_dir.into());
    config.online_signing = Some(settings.clone());
    let server = ota_server::Server::bind(&config)
        .await
        .expect("server starts");
    let base = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending::<()>()));
    let token = std::fs::read_to_string(data_dir.join("admin-token"))
        .map(|t| t.trim().to_owned())
        .expect("admin token");
    (base, token)
}

async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// A scrape that shows `name`. The job counts a signature just after its
/// publication commits, so the file can be visible a moment before the count.
async fn scrape_once_present(base: &str, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(base).await;
        if series(&text, name).is_some() || Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one series, if present.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_online_signatures_and_show_expiries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path(), 3).await;
    let data_dir = dir.path().join("data");
    let settings = file_settings(&layout, true, Duration::from_secs(3600));
    // Seeded before the job starts: it must never read a half-written file
    // (which would count as a failure).
    seed_into(&data_dir, &layout);
    let (base, token) = serve_with_metrics(&data_dir, &settings).await;

    // The timestamp (3 s) is re-signed on schedule; the snapshot is not due.
    wait_until("timestamp re-signing", || published_version(&data_dir) >= 2).await;
    let ts = "ota_online_signatures_total{role=\"timestamp\",trigger=\"schedule\"}";
    let text = scrape_once_present(&base, ts).await;
    assert_eq!(series(&text, ts), Some(1.0), "{text}");
    assert_eq!(
        series(
            &text,
            "ota_online_signatures_total{role=\"snapshot\",trigger=\"schedule\"}"
        ),
        None,
        "{text}"
    );
    let expiry = |text: &str, role: &str| {
        series(
            text,
            &format!("ota_metadata_expires_timestamp_seconds{{role=\"{role}\"}}"),
        )
        .unwrap_or_else(|| panic!("{role} expiry in {text}")) as i64
    };
    let published_expiry = |name: &str| {
        let doc = published(&data_dir, name);
        chrono::DateTime::parse_from_rfc3339(doc["signed"]["expires"].as_str().expect("expires"))
            .expect("rfc3339")
            .timestamp()
    };
    assert_eq!(
        expiry(&text, "timestamp"),
        published_expiry("timestamp.json")
    );
    assert_eq!(
        expiry(&text, "snapshot"),
        published_expiry("1.snapshot.json")
    );
    assert!(
        !text.contains("ota_online_signing_failures_total{"),
        "{text}"
    );

    // A publication: the server signs the timestamp at the commit.
    let done = release_to(&base, &token, &layout, "fw.img", "2.0.0")
        .await
        .expect("publication");
    let issued = done.committed.online_timestamp_version.expect("issued");
    let text = scrape(&base).await;
    assert_eq!(
        series(
            &text,
            "ota_online_signatures_total{role=\"timestamp\",trigger=\"publication\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(published_version(&data_dir), issued);
    assert_eq!(
        expiry(&text, "timestamp"),
        published_expiry("timestamp.json")
    );
    let snapshot = published(&data_dir, "timestamp.json")["signed"]["meta"]["snapshot.json"]
        ["version"]
        .as_u64()
        .expect("snapshot version");
    assert_eq!(
        expiry(&text, "snapshot"),
        published_expiry(&format!("{snapshot}.snapshot.json"))
    );
}

/// An uploaded timestamp that hashes the snapshot with an algorithm the
/// server cannot compute is the publisher's mistake: 400 naming it, not a
/// 500, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_timestamp_with_an_unknown_hash_is_a_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path(), 3600).await;
    let s = common::start_with(|c| {
        c.online_signing = Some(file_settings(&layout, false, Duration::from_secs(3600)))
    })
    .await;
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
        let mut body = std::fs::read(&path).expect("read");
        if name == "timestamp.json" {
            let mut doc: serde_json::Value = serde_json::from_slice(&body).expect("json");
            doc["signed"]["meta"]["snapshot.json"]["hashes"] = serde_json::json!({"md5": "00"});
            body = serde_json::to_vec(&doc).expect("encode");
        }
        let resp = s
            .admin(
                Method::PUT,
                &format!("/admin/v1/publications/{id}/metadata/{name}"),
            )
            .body(body)
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
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let text = resp.text().await.expect("body");
    assert!(text.contains("md5"), "{text}");
    assert!(!s
        .data_dir
        .join("repository/metadata/timestamp.json")
        .exists());
}
