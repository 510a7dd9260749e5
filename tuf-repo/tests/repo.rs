//! End-to-end tests of the repository tool through its library API: real
//! keys, real signing, and tough's own client (plus our device-side client)
//! reading the result from `file://`.

use ota_common::wire::ReleaseCustom;
use ota_repo::add::{add, AddOptions};
use ota_repo::expiry::Expiry;
use ota_repo::init::{init, InitOptions};
use ota_repo::keys::KeyType;
use ota_repo::layout::Layout;
use ota_repo::resign::{resign, ResignOptions};
use ota_repo::role::Role;
use ota_repo::state::{dir_url, RepoState};
use ota_repo::{publish, RepoError};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tough::{RepositoryLoader, TargetName};

struct Fixture {
    _tmp: tempfile::TempDir,
    layout: Layout,
    dir: PathBuf,
}

async fn fixture(key_type: KeyType) -> Fixture {
    fixture_with(InitOptions {
        key_type,
        ..InitOptions::default()
    })
    .await
}

async fn fixture_with(options: InitOptions) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_owned();
    let layout = Layout::new(dir.join("repo"));
    init(&layout, &options).await.expect("init");
    Fixture {
        _tmp: tmp,
        layout,
        dir,
    }
}

fn image(dir: &Path, name: &str, len: usize) -> PathBuf {
    let path = dir.join(name);
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, data).expect("write image");
    path
}

fn add_opts(image: &Path, version: &str, hw: &[&str]) -> AddOptions {
    AddOptions {
        image: image.to_owned(),
        version: version.to_owned(),
        hardware_ids: hw.iter().map(|s| s.to_string()).collect(),
        notes: Some("fixes".to_owned()),
        name: None,
    }
}

async fn load_with_tough(metadata: &Path, targets: &Path) -> tough::Repository {
    let root = std::fs::read(metadata.join("1.root.json")).expect("1.root.json");
    RepositoryLoader::new(
        &root,
        dir_url(metadata).expect("url"),
        dir_url(targets).expect("url"),
    )
    .load()
    .await
    .expect("tough loads the repository with expiry enforced")
}

async fn read_target(repo: &tough::Repository, name: &str) -> Vec<u8> {
    use tough::IntoVec;
    let stream = repo
        .read_target(&TargetName::new(name).expect("name"))
        .await
        .expect("read_target")
        .expect("target present");
    stream.into_vec().await.expect("target bytes verify")
}

#[tokio::test]
async fn every_key_type_signs_a_repository_both_clients_accept() {
    for kt in [KeyType::Ed25519, KeyType::Ecdsa, KeyType::Rsa] {
        let f = fixture(kt).await;
        for entry in std::fs::read_dir(f.layout.keys_dir()).expect("keys dir") {
            let path = entry.expect("entry").path();
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
        }
        let img = image(&f.dir, "image.img", 150_000);
        let added = add(&f.layout, &add_opts(&img, "1.2.0", &["board-a", "board-b"]))
            .await
            .expect("add");
        assert_eq!(added.targets_version, 2);

        let repo = load_with_tough(&f.layout.metadata_dir(), &f.layout.targets_dir()).await;
        assert!(repo.root().signed.consistent_snapshot);
        assert_eq!(repo.root().signed.spec_version, "1.0.0");
        let (_, target) = repo
            .all_targets()
            .find(|(n, _)| n.raw() == "image.img")
            .expect("target listed");
        let custom: ReleaseCustom = serde_json::from_value(serde_json::Value::Object(
            target.custom.clone().into_iter().collect(),
        ))
        .expect("custom is ReleaseCustom");
        assert_eq!(custom.version, semver::Version::new(1, 2, 0));
        assert_eq!(custom.hardware_ids, vec!["board-a", "board-b"]);
        assert_eq!(custom.release_notes.as_deref(), Some("fixes"));
        assert_eq!(
            target.custom.len(),
            3,
            "custom has exactly the release fields"
        );
        // sha256 only by default, as python-tuf and tough add targets:
        // one file, under its sha256 name.
        assert!(target.hashes._extra.is_empty(), "{:?}", target.hashes);
        assert_eq!(added.sha512, None);
        assert_eq!(
            read_target(&repo, "image.img").await,
            std::fs::read(&img).expect("img")
        );
        let stored: Vec<_> = std::fs::read_dir(f.layout.targets_dir())
            .expect("targets dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            stored,
            vec![std::ffi::OsString::from(format!(
                "{}.image.img",
                added.sha256
            ))]
        );

        // Our own device-side client must accept the same repository.
        let trusted = f.dir.join("client");
        let root = std::fs::read(f.layout.metadata_dir().join("1.root.json")).expect("root");
        ota_common::tuf::TufClient::<ota_common::tuf::FileTransport>::init(&trusted, &root)
            .expect("client init");
        let options = ota_common::tuf::ClientOptions::new(
            dir_url(&f.layout.metadata_dir()).expect("url"),
            dir_url(&f.layout.targets_dir()).expect("url"),
        );
        let mut client =
            ota_common::tuf::TufClient::open(&trusted, options, ota_common::tuf::FileTransport)
                .expect("client open");
        client
            .refresh()
            .unwrap_or_else(|e| panic!("{kt}: our client refused: {e}"));
        let targets = client.top_level_targets().expect("targets");
        assert_eq!(targets.len(), 1);
        assert_eq!(
            targets[0].release().expect("release").version.to_string(),
            "1.2.0"
        );
    }
}

#[tokio::test]
async fn add_lists_sha512_when_asked_and_stores_the_image_under_both_names() {
    let f = fixture(KeyType::Ed25519).await;
    let img = image(&f.dir, "image.img", 70_000);
    let packing = ota_repo::add::Packing {
        list_sha512: true,
        ..ota_repo::add::Packing::raw()
    };
    let (added, _) = ota_repo::add::add_packed(
        &f.layout,
        &add_opts(&img, "1.0.0", &["board-a"]),
        None,
        &packing,
    )
    .await
    .expect("add");
    let sha512 = added.sha512.expect("sha512 listed");
    let repo = load_with_tough(&f.layout.metadata_dir(), &f.layout.targets_dir()).await;
    let (_, target) = repo
        .all_targets()
        .find(|(n, _)| n.raw() == "image.img")
        .expect("target listed");
    assert_eq!(
        target.hashes._extra.get("sha512").and_then(|v| v.as_str()),
        Some(sha512.as_str())
    );
    for hash in [&added.sha256, &sha512] {
        let stored = f.layout.targets_dir().join(format!("{hash}.image.img"));
        assert_eq!(
            std::fs::read(&stored).expect("stored under the hash"),
            std::fs::read(&img).expect("img")
        );
    }
}

#[tokio::test]
async fn add_refuses_bad_input_with_the_intended_error() {
    let f = fixture(KeyType::Ed25519).await;
    let img = image(&f.dir, "a.img", 1000);
    add(&f.layout, &add_opts(&img, "1.0.0", &["board-a"]))
        .await
        .expect("first add");

    let err = add(
        &f.layout,
        &add_opts(&f.dir.join("missing.img"), "1.0.1", &["board-a"]),
    )
    .await
    .expect_err("missing image");
    assert!(matches!(err, RepoError::Image { .. }), "{err}");
    assert!(err.to_string().contains("missing.img"), "{err}");

    let err = add(&f.layout, &add_opts(&img, "2.0.0", &["board-a"]))
        .await
        .expect_err("dup name");
    assert!(
        matches!(err, RepoError::TargetExists { ref name } if name == "a.img"),
        "{err}"
    );

    let other = image(&f.dir, "b.img", 1000);
    let err = add(
        &f.layout,
        &add_opts(&other, "1.0.0", &["board-x", "board-a"]),
    )
    .await
    .expect_err("same version for board-a");
    assert!(
        matches!(err, RepoError::VersionPublished { ref hardware_id, .. } if hardware_id == "board-a"),
        "{err}"
    );
    // Same version for another board is fine.
    add(&f.layout, &add_opts(&other, "1.0.0", &["board-x"]))
        .await
        .expect("other board");

    let c = image(&f.dir, "c.img", 10);
    let err = add(&f.layout, &add_opts(&c, "one", &["board-a"]))
        .await
        .expect_err("semver");
    assert!(matches!(err, RepoError::InvalidVersion { .. }), "{err}");
    let err = add(&f.layout, &add_opts(&c, "3.0.0", &["../etc"]))
        .await
        .expect_err("hw id");
    assert!(matches!(err, RepoError::InvalidHardwareId(_)), "{err}");
    let mut bad_name = add_opts(&c, "3.0.0", &["board-a"]);
    bad_name.name = Some("../escape.img".to_owned());
    let err = add(&f.layout, &bad_name).await.expect_err("target name");
    assert!(matches!(err, RepoError::InvalidTargetName { .. }), "{err}");

    // A missing key file is named, and nothing was copied or signed.
    std::fs::remove_file(f.layout.keys_dir().join("snapshot-1.pem")).expect("rm key");
    let before = RepoState::load(&f.layout).await.expect("state");
    let err = add(&f.layout, &add_opts(&c, "3.0.0", &["board-a"]))
        .await
        .expect_err("key");
    assert!(
        matches!(err, RepoError::ThresholdUnreachable { ref role, .. } if role == "snapshot"),
        "{err}"
    );
    assert!(err.to_string().contains("snapshot-1.pem"), "{err}");
    let after = RepoState::load(&f.layout).await.expect("state");
    assert_eq!(before.targets.signed.version, after.targets.signed.version);
}

#[tokio::test]
async fn threshold_counts_usable_keys() {
    let f = fixture_with(InitOptions {
        keys: BTreeMap::from([(Role::Targets, 3)]),
        thresholds: BTreeMap::from([(Role::Targets, 2)]),
        ..InitOptions::default()
    })
    .await;
    let img = image(&f.dir, "a.img", 100);
    // One of three keys gone: 2 of 2 still reachable.
    std::fs::remove_file(f.layout.keys_dir().join("targets-3.pem")).expect("rm");
    add(&f.layout, &add_opts(&img, "1.0.0", &["hw"]))
        .await
        .expect("2 of 3 keys suffice");
    std::fs::write(f.layout.keys_dir().join("targets-2.pem"), "garbage").expect("corrupt");
    let img2 = image(&f.dir, "b.img", 100);
    let err = add(&f.layout, &add_opts(&img2, "1.0.1", &["hw"]))
        .await
        .expect_err("1 of 2");
    match err {
        RepoError::ThresholdUnreachable {
            ref role,
            threshold,
            available,
            ref details,
        } => {
            assert_eq!((role.as_str(), threshold, available), ("targets", 2, 1));
            assert!(
                details.contains("targets-2.pem") && details.contains("targets-3.pem"),
                "{details}"
            );
        }
        other => panic!("unexpected {other}"),
    }
    let repo = load_with_tough(&f.layout.metadata_dir(), &f.layout.targets_dir()).await;
    assert_eq!(repo.targets().signatures.len(), 2);
}

#[tokio::test]
async fn expired_root_blocks_add_and_names_the_fix() {
    let f = fixture(KeyType::Ed25519).await;
    let past: Expiry = "2020-01-01T00:00:00Z".parse().expect("past");
    let err = resign(
        &f.layout,
        &ResignOptions {
            roles: vec![Role::Root],
            expires: BTreeMap::from([(Role::Root, past)]),
            allow_expired: false,
        },
    )
    .await
    .expect_err("past expiry needs --allow-expired");
    assert!(matches!(err, RepoError::ExpiryInPast { .. }), "{err}");
    resign(
        &f.layout,
        &ResignOptions {
            roles: vec![Role::Root],
            expires: BTreeMap::from([(Role::Root, past)]),
            allow_expired: true,
        },
    )
    .await
    .expect("expired root on purpose");
    let img = image(&f.dir, "a.img", 100);
    let err = add(&f.layout, &add_opts(&img, "1.0.0", &["hw"]))
        .await
        .expect_err("expired root");
    assert!(
        matches!(err, RepoError::ExpiredRole { ref role, .. } if role == "root"),
        "{err}"
    );
    assert!(
        err.to_string().contains("ota-repo resign --role root"),
        "{err}"
    );

    // Re-signing the timestamp alone is refused while root is expired...
    let err = resign(&f.layout, &ResignOptions::default())
        .await
        .expect_err("root expired");
    assert!(matches!(err, RepoError::ExpiredRole { .. }), "{err}");
    // ...and the named fix works.
    resign(
        &f.layout,
        &ResignOptions {
            roles: vec![Role::Root],
            ..ResignOptions::default()
        },
    )
    .await
    .expect("fix");
    add(&f.layout, &add_opts(&img, "1.0.0", &["hw"]))
        .await
        .expect("add after fix");
    let repo = load_with_tough(&f.layout.metadata_dir(), &f.layout.targets_dir()).await;
    assert_eq!(repo.root().signed.version.get(), 3);
}

#[tokio::test]
async fn resign_bumps_versions_and_keeps_other_files() {
    let f = fixture(KeyType::Ecdsa).await;
    let meta = f.layout.metadata_dir();
    let snapshot1 = std::fs::read(meta.join("1.snapshot.json")).expect("snapshot");

    resign(&f.layout, &ResignOptions::default())
        .await
        .expect("timestamp");
    let s = RepoState::load(&f.layout).await.expect("state");
    assert_eq!(
        (
            s.targets.signed.version.get(),
            s.snapshot.signed.version.get(),
            s.timestamp.signed.version.get()
        ),
        (1, 1, 2)
    );
    assert_eq!(
        std::fs::read(meta.join("1.snapshot.json")).expect("snapshot"),
        snapshot1
    );

    let short = ResignOptions {
        roles: vec![Role::Targets],
        expires: BTreeMap::from([(Role::Timestamp, Expiry::After(90))]),
        allow_expired: false,
    };
    let done = resign(&f.layout, &short).await.expect("targets");
    assert_eq!(done.roles.len(), 3);
    let s = RepoState::load(&f.layout).await.expect("state");
    assert_eq!(
        (
            s.targets.signed.version.get(),
            s.snapshot.signed.version.get(),
            s.timestamp.signed.version.get()
        ),
        (2, 2, 3)
    );
    let lifetime = s.timestamp.signed.expires.as_second() - jiff::Timestamp::now().as_second();
    assert!((80..=90).contains(&lifetime), "timestamp lives {lifetime}s");

    resign(
        &f.layout,
        &ResignOptions {
            roles: vec![Role::Root],
            ..Default::default()
        },
    )
    .await
    .expect("root");
    assert!(meta.join("2.root.json").exists());
    assert_eq!(
        std::fs::read(meta.join("2.root.json")).expect("2"),
        std::fs::read(meta.join("root.json")).expect("copy")
    );
    // The root chain 1 -> 2 verifies in tough's client.
    let repo = load_with_tough(&meta, &f.layout.targets_dir()).await;
    assert_eq!(repo.root().signed.version.get(), 2);
}

#[tokio::test]
async fn init_refuses_existing_repository_and_bad_options() {
    let f = fixture(KeyType::Ed25519).await;
    let err = init(&f.layout, &InitOptions::default())
        .await
        .expect_err("exists");
    assert!(matches!(err, RepoError::NotEmpty { .. }), "{err}");
    let fresh = Layout::new(f.dir.join("other"));
    let err = init(
        &fresh,
        &InitOptions {
            keys: BTreeMap::from([(Role::Root, 1)]),
            thresholds: BTreeMap::from([(Role::Root, 2)]),
            ..InitOptions::default()
        },
    )
    .await
    .expect_err("threshold above key count");
    assert!(err.to_string().contains("threshold"), "{err}");
    assert!(!fresh.config().exists());
}

#[tokio::test]
async fn publish_dir_writes_timestamp_last_and_the_copy_verifies() {
    let f = fixture(KeyType::Ed25519).await;
    let img = image(&f.dir, "fw.bin", 70_000);
    let mut opts = add_opts(&img, "2.0.0", &["board-a"]);
    opts.name = Some("board-a/fw-2.0.0.bin".to_owned());
    add(&f.layout, &opts).await.expect("add");
    let state = RepoState::load(&f.layout).await.expect("state");
    let set = publish::collect(&f.layout, &state).expect("collect");
    let out = f.dir.join("www");
    let written = publish::publish_dir(&f.layout, &set, &out).expect("publish");
    assert_eq!(
        written.last().map(String::as_str),
        Some("metadata/timestamp.json")
    );
    assert!(written[0].starts_with("targets/board-a/"), "{written:?}");
    let ts_mtime = std::fs::metadata(out.join("metadata/timestamp.json"))
        .and_then(|m| m.modified())
        .expect("mtime");
    for file in &written {
        let m = std::fs::metadata(out.join(file))
            .and_then(|m| m.modified())
            .expect("mtime");
        assert!(m <= ts_mtime, "{file} written after timestamp.json");
    }
    assert!(!out.join("metadata/root.json").exists());
    // tough's client verifies the copied metadata. (It fetches targets as
    // `<hash>.<whole name>`, not the spec's `dir/<hash>.<basename>` that we
    // and the server use, so the image is checked at the spec's path.)
    let repo = load_with_tough(&out.join("metadata"), &out.join("targets")).await;
    let (_, target) = repo
        .all_targets()
        .find(|(n, _)| n.raw() == "board-a/fw-2.0.0.bin")
        .expect("listed");
    let sha256 = hex::encode(&*target.hashes.sha256);
    let copied = out.join(format!("targets/board-a/{sha256}.fw-2.0.0.bin"));
    assert_eq!(
        std::fs::read(copied).expect("copied image"),
        std::fs::read(&img).expect("img")
    );

    // Publishing again writes only the new timestamp.
    let again = publish::publish_dir(&f.layout, &set, &out).expect("again");
    assert_eq!(again, vec!["metadata/timestamp.json".to_owned()]);
}
