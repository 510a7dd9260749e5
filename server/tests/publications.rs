//! Publications: uploads hashed by the server, metadata checks, commit order,
//! conflicts that leave nothing visible, and a device polling during a commit.

mod common;

use common::TestServer;
use ota_common::wire::{PublicationCommitted, PublicationCreated, StagedTarget};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};

async fn open(s: &TestServer) -> String {
    let resp = s
        .admin(Method::POST, "/admin/v1/publications")
        .send()
        .await
        .expect("open");
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json::<PublicationCreated>().await.expect("json").id
}

async fn put_metadata(
    s: &TestServer,
    id: &str,
    name: &str,
    doc: &serde_json::Value,
) -> reqwest::Response {
    s.admin(
        Method::PUT,
        &format!("/admin/v1/publications/{id}/metadata/{name}"),
    )
    .body(serde_json::to_vec(doc).expect("encode"))
    .send()
    .await
    .expect("put metadata")
}

async fn put_target(s: &TestServer, id: &str, target: &str, body: Vec<u8>) -> reqwest::Response {
    s.admin(
        Method::PUT,
        &format!("/admin/v1/publications/{id}/targets/{target}"),
    )
    .body(body)
    .send()
    .await
    .expect("put target")
}

fn doc(ty: &str, version: u64) -> serde_json::Value {
    json!({"signed": {"_type": ty, "version": version, "meta": {"snapshot.json": {"version": version}}}, "signatures": []})
}

/// A complete release: one image, root 1, targets/snapshot/timestamp `version`.
async fn publish(
    s: &TestServer,
    version: u64,
    image: &[u8],
    root: &serde_json::Value,
) -> (String, reqwest::Response) {
    let id = open(s).await;
    let resp = put_target(
        s,
        &id,
        &format!("images/rootfs-{version}.img"),
        image.to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for (name, d) in [
        ("1.root.json".to_owned(), root.clone()),
        (format!("{version}.targets.json"), doc("targets", version)),
        (format!("{version}.snapshot.json"), doc("snapshot", version)),
        ("timestamp.json".to_owned(), doc("timestamp", version)),
    ] {
        let resp = put_metadata(s, &id, &name, &d).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{name}");
    }
    let resp = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit");
    (id, resp)
}

fn hashes(data: &[u8]) -> (String, String) {
    (
        hex::encode(Sha256::digest(data)),
        hex::encode(Sha512::digest(data)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_is_hashed_and_placed_under_both_names() {
    let s = common::start().await;
    let image: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let (sha256, sha512) = hashes(&image);
    let id = open(&s).await;

    let resp = put_target(&s, &id, "images/rootfs-1.img", image.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let staged: StagedTarget = resp.json().await.expect("json");
    assert_eq!(
        staged,
        StagedTarget {
            target: "images/rootfs-1.img".into(),
            length: image.len() as u64,
            sha256: sha256.clone(),
            sha512: sha512.clone()
        }
    );
    assert_eq!(
        put_metadata(&s, &id, "timestamp.json", &doc("timestamp", 1))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    // Nothing is visible before the commit.
    let resp = s
        .client
        .get(s.url(&format!("/targets/images/{sha256}.rootfs-1.img")))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::OK);
    let committed: PublicationCommitted = resp.json().await.expect("json");
    assert_eq!(committed.id, id);
    assert_eq!(
        committed.files.last().map(String::as_str),
        Some("metadata/timestamp.json")
    );

    for hash in [&sha256, &sha512] {
        let resp = s
            .client
            .get(s.url(&format!("/targets/images/{hash}.rootfs-1.img")))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.bytes().await.expect("body").as_ref(), &image[..]);
    }
    // The staging directory is gone, and so is the publication.
    assert!(!s.data_dir.join("staging").join(&id).exists());
    let resp = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(common::error_message(resp)
        .await
        .contains("unknown publication"));
}

/// A targets document that lists `target` under the given digests.
fn targets_listing(version: u64, target: &str, hashes: serde_json::Value) -> serde_json::Value {
    json!({"signed": {"_type": "targets", "version": version,
        "targets": {target: {"length": 1, "hashes": hashes}}}, "signatures": []})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_digest_names_the_metadata_lists_are_placed() {
    let s = common::start().await;
    let (a256, a512) = hashes(b"listed by sha256");
    let (b256, b512) = hashes(b"listed by both");
    let id = open(&s).await;
    for (target, body) in [
        ("images/a.img", &b"listed by sha256"[..]),
        ("images/b.img", &b"listed by both"[..]),
    ] {
        assert_eq!(
            put_target(&s, &id, target, body.to_vec()).await.status(),
            StatusCode::OK
        );
    }
    let top = targets_listing(1, "images/a.img", json!({"sha256": a256}));
    let board = targets_listing(1, "images/b.img", json!({"sha256": b256, "sha512": b512}));
    for (name, d) in [
        ("1.targets.json", top),
        ("1.board.json", board),
        ("1.snapshot.json", doc("snapshot", 1)),
        ("timestamp.json", doc("timestamp", 1)),
    ] {
        assert_eq!(
            put_metadata(&s, &id, name, &d).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    let resp = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::OK);
    let committed: PublicationCommitted = resp.json().await.expect("json");
    let placed: Vec<&String> = committed
        .files
        .iter()
        .filter(|f| f.starts_with("targets/"))
        .collect();
    let mut expected = [
        format!("targets/images/{a256}.a.img"),
        format!("targets/images/{b256}.b.img"),
        format!("targets/images/{b512}.b.img"),
    ];
    expected.sort();
    assert_eq!(placed, expected.iter().collect::<Vec<_>>());
    let status = |path: String| {
        let client = s.client.clone();
        let url = s.url(&path);
        async move { client.get(url).send().await.expect("get").status() }
    };
    assert_eq!(
        status(format!("/targets/images/{a256}.a.img")).await,
        StatusCode::OK
    );
    // No metadata names it: not on disk either.
    assert_eq!(
        status(format!("/targets/images/{a512}.a.img")).await,
        StatusCode::NOT_FOUND
    );
    assert!(!s
        .data_dir
        .join(format!("repository/targets/images/{a512}.a.img"))
        .exists());
    assert_eq!(
        status(format!("/targets/images/{b512}.b.img")).await,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_upload_gets_the_names_it_asked_for() {
    let s = common::start().await;
    let body = b"a chunk no metadata lists".to_vec();
    let (sha256, sha512) = hashes(&body);
    let id = open(&s).await;
    let put = |query: &str| {
        s.admin(
            Method::PUT,
            &format!("/admin/v1/publications/{id}/targets/chunks/ab/c.zst{query}"),
        )
        .body(body.clone())
        .send()
    };
    let resp = put("?names=sha256,md5").await.expect("put");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let message = common::error_message(resp).await;
    assert!(message.contains("\"md5\" is not a digest"), "{message}");
    assert_eq!(
        put("?names=sha256").await.expect("put").status(),
        StatusCode::OK
    );
    for (name, d) in [
        ("1.targets.json", doc("targets", 1)),
        ("1.snapshot.json", doc("snapshot", 1)),
        ("timestamp.json", doc("timestamp", 1)),
    ] {
        assert_eq!(
            put_metadata(&s, &id, name, &d).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    let resp = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::OK);
    let committed: PublicationCommitted = resp.json().await.expect("json");
    assert_eq!(
        committed.files[0],
        format!("targets/chunks/ab/{sha256}.c.zst")
    );
    assert!(!committed.files.iter().any(|f| f.contains(&sha512)));
    let dir = s.data_dir.join("repository/targets/chunks/ab");
    assert!(dir.join(format!("{sha256}.c.zst")).exists());
    assert!(!dir.join(format!("{sha512}.c.zst")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_order_is_images_then_versions_then_timestamp() {
    let s = common::start().await;
    let root = doc("root", 1);
    let (_, resp) = publish(&s, 1, b"image one", &root).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let committed: PublicationCommitted = resp.json().await.expect("json");
    let (sha256, sha512) = hashes(b"image one");
    let mut expected_targets = vec![
        format!("targets/images/{sha256}.rootfs-1.img"),
        format!("targets/images/{sha512}.rootfs-1.img"),
    ];
    expected_targets.sort();
    let mut expected = expected_targets;
    expected.extend([
        "metadata/1.root.json".to_owned(),
        "metadata/1.targets.json".to_owned(),
        "metadata/1.snapshot.json".to_owned(),
        "metadata/timestamp.json".to_owned(),
    ]);
    assert_eq!(committed.files, expected);

    // The same root again is not a conflict (identical content is skipped).
    let (_, resp) = publish(&s, 2, b"image two", &root).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let committed: PublicationCommitted = resp.json().await.expect("json");
    assert!(!committed.files.contains(&"metadata/1.root.json".to_owned()));
    let ts: serde_json::Value = s
        .client
        .get(s.url("/metadata/timestamp.json"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(ts["signed"]["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_metadata_makes_nothing_visible() {
    let s = common::start().await;
    let (_, resp) = publish(&s, 1, b"image one", &doc("root", 1)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let before = s
        .client
        .get(s.url("/metadata/timestamp.json"))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");

    // Same name, other content: 1.root.json can never change.
    let mut other_root = doc("root", 1);
    other_root["signed"]["expires"] = json!("2030-01-01T00:00:00Z");
    let (id, resp) = publish(&s, 2, b"image two", &other_root).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let msg = common::error_message(resp).await;
    assert!(msg.contains("metadata/1.root.json"), "{msg}");

    let after = s
        .client
        .get(s.url("/metadata/timestamp.json"))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(before, after, "timestamp unchanged");
    for path in ["/metadata/2.snapshot.json", "/metadata/2.targets.json"] {
        let resp = s.client.get(s.url(path)).send().await.expect("get");
        assert_eq!(
            resp.status(),
            StatusCode::NOT_FOUND,
            "{path} must not be visible"
        );
    }
    let (sha256, _) = hashes(b"image two");
    let resp = s
        .client
        .get(s.url(&format!("/targets/images/{sha256}.rootfs-2.img")))
        .send()
        .await
        .expect("get");
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "image must not be visible"
    );
    // The refused publication stays open (it can be fixed and committed again).
    assert!(s.data_dir.join("staging").join(&id).exists());

    // A timestamp that does not move forward is refused too.
    let (_, resp) = publish(&s, 1, b"image one", &doc("root", 1)).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "identical republish is a no-op"
    );
    let id = open(&s).await;
    let mut older = doc("timestamp", 1);
    older["signed"]["expires"] = json!("2031-01-01T00:00:00Z");
    assert_eq!(
        put_metadata(&s, &id, "timestamp.json", &older)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let resp = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(common::error_message(resp).await.contains("not newer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_is_refused_with_the_reason() {
    let s = common::start().await;
    let id = open(&s).await;
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("2.snapshot.json", b"{not json".to_vec(), "not valid JSON"),
        (
            "2.snapshot.json",
            br#"{"signatures":[]}"#.to_vec(),
            "signed",
        ),
        (
            "2.snapshot.json",
            br#"{"signed":{"version":2}}"#.to_vec(),
            "_type",
        ),
        (
            "2.snapshot.json",
            serde_json::to_vec(&doc("targets", 2)).expect("enc"),
            "expected \"snapshot\"",
        ),
        (
            "2.snapshot.json",
            serde_json::to_vec(&doc("snapshot", 3)).expect("enc"),
            "signed.version 3",
        ),
        (
            "snapshot.json",
            serde_json::to_vec(&doc("snapshot", 3)).expect("enc"),
            "metadata file name",
        ),
    ];
    for (name, body, needle) in cases {
        let resp = s
            .admin(
                Method::PUT,
                &format!("/admin/v1/publications/{id}/metadata/{name}"),
            )
            .body(body)
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{name}: {needle}");
        let msg = common::error_message(resp).await;
        assert!(msg.contains(needle), "{msg:?} should say {needle:?}");
    }
    let resp = s
        .admin(
            Method::PUT,
            &format!("/admin/v1/publications/{id}/metadata/timestamp.json"),
        )
        .body(vec![b' '; 16 * 1024 * 1024 + 1])
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(common::error_message(resp).await.contains("too large"));
    // Delegated roles are targets metadata.
    assert_eq!(
        put_metadata(&s, &id, "4.team-a.json", &doc("targets", 4))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    // Unknown publication.
    let resp = put_metadata(
        &s,
        "00000000000000000000000000000000",
        "timestamp.json",
        &doc("timestamp", 1),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = put_metadata(&s, "..", "timestamp.json", &doc("timestamp", 1)).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_limit_are_refused() {
    let s = common::start_with(|c| c.max_upload_bytes = 1000).await;
    let id = open(&s).await;
    let resp = put_target(&s, &id, "big.img", vec![1u8; 1001]).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(common::error_message(resp).await.contains("1000"));

    // Streamed without a Content-Length: cut off while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![2u8; 400])).collect();
    let resp = s
        .admin(
            Method::PUT,
            &format!("/admin/v1/publications/{id}/targets/big.img"),
        )
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // No partial upload left behind.
    let blobs = std::fs::read_dir(s.data_dir.join("staging").join(&id).join("blobs"))
        .expect("blobs")
        .count();
    assert_eq!(blobs, 0);

    let resp = put_target(&s, &id, "ok.img", vec![3u8; 1000]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    for bad in ["a/../b.img", "a//b.img", "..%2Fb.img"] {
        let status = s
            .raw_status_admin("PUT", &format!("/admin/v1/publications/{id}/targets/{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_device_never_sees_a_mix() {
    let s = common::start().await;
    let root = doc("root", 1);
    let (_, resp) = publish(&s, 1, b"image one", &root).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let poller = {
        let client = s.client.clone();
        let base = s.base.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..400 {
                let ts: serde_json::Value = client
                    .get(format!("{base}/metadata/timestamp.json"))
                    .send()
                    .await
                    .expect("ts")
                    .json()
                    .await
                    .expect("json");
                let v = ts["signed"]["meta"]["snapshot.json"]["version"]
                    .as_u64()
                    .expect("version");
                let snap = client
                    .get(format!("{base}/metadata/{v}.snapshot.json"))
                    .send()
                    .await
                    .expect("snapshot");
                assert_eq!(
                    snap.status(),
                    StatusCode::OK,
                    "timestamp references snapshot {v}, which is missing"
                );
                seen.insert(v);
                if v == 4 {
                    break;
                }
            }
            seen
        })
    };
    for version in 2..=4 {
        let image = vec![version as u8; 100_000];
        let (_, resp) = publish(&s, version, &image, &root).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let seen = poller.await.expect("poller");
    assert!(seen.contains(&4) || seen.len() >= 2, "poller saw {seen:?}");
}

/// On PostgreSQL, commits of every instance sharing the database take turns
/// on an advisory lock: while another holder has it, a commit waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_waits_for_the_shared_publication_lock() {
    let s = common::start_on(common::Backend::Postgres).await;
    let url = &s.pg.as_ref().expect("postgres").url;
    // Stands in for a second instance committing.
    let other = ota_server::db::Db::open(&ota_server::db::DatabaseUrl::parse(url).expect("url"))
        .await
        .expect("second pool");
    let id = open(&s).await;
    let resp = put_metadata(&s, &id, "timestamp.json", &doc("timestamp", 1)).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let held = other.lock_publications().await.expect("lock");
    let commit = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send();
    let mut commit = tokio::spawn(commit);
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut commit).await;
    assert!(early.is_err(), "commit must wait for the lock holder");
    assert!(!s
        .data_dir
        .join("repository/metadata/timestamp.json")
        .exists());

    held.release().await;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), commit)
        .await
        .expect("commit proceeds once the lock is released")
        .expect("task")
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(s
        .data_dir
        .join("repository/metadata/timestamp.json")
        .exists());
    other.close().await;
}

/// Devices are answered from memory: a commit replaces what they see at
/// once (the periodic refresh set to a minute here, so it cannot be what
/// did it), and with the metadata directory gone the poll (200 and 304) and
/// the root probe (404) are still answered without the file system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_is_served_at_once_and_polls_need_no_disk() {
    let s = common::start_with(|c| c.metadata_refresh = std::time::Duration::from_secs(60)).await;
    let root = doc("root", 1);
    let timestamp = |s: &TestServer| {
        let resp = s.client.get(s.url("/metadata/timestamp.json")).send();
        async move {
            let resp = resp.await.expect("poll");
            assert_eq!(resp.status(), StatusCode::OK);
            let etag = resp.headers()[reqwest::header::ETAG].clone();
            let ts: serde_json::Value = resp.json().await.expect("json");
            (ts["signed"]["version"].as_u64().expect("version"), etag)
        }
    };
    assert_eq!(
        publish(&s, 1, b"one", &root).await.1.status(),
        StatusCode::OK
    );
    assert_eq!(timestamp(&s).await.0, 1);
    assert_eq!(
        publish(&s, 2, b"two", &root).await.1.status(),
        StatusCode::OK
    );
    let (version, etag) = timestamp(&s).await;
    assert_eq!(version, 2, "the commit is served at once");
    let probe = || s.client.get(s.url("/metadata/2.root.json")).send();
    assert_eq!(
        probe().await.expect("probe").status(),
        StatusCode::NOT_FOUND
    );

    let metadata = s.data_dir.join("repository/metadata");
    let aside = s.data_dir.join("repository/metadata.aside");
    std::fs::rename(&metadata, &aside).expect("move aside");
    assert_eq!(timestamp(&s).await, (2, etag.clone()));
    let resp = s
        .client
        .get(s.url("/metadata/timestamp.json"))
        .header(reqwest::header::IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("poll");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        probe().await.expect("probe").status(),
        StatusCode::NOT_FOUND
    );
    // The snapshot the timestamp names was read into memory by the commit.
    let resp = s
        .client
        .get(s.url("/metadata/2.snapshot.json"))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(resp.status(), StatusCode::OK);
    std::fs::rename(&aside, &metadata).expect("move back");
}
