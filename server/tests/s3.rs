//! The repository in a real S3-compatible object store: publications through
//! the admin API land in the bucket (images by streamed multipart upload,
//! timestamp.json last), metadata is served with content-hash ETags and 304,
//! images with ranges, a conflict leaves nothing visible, and two servers
//! sharing one bucket and one database serve each other's publications;
//! with `[online_signing]`, publications and the periodic re-signing both
//! go through the bucket and a device follows them through the server.
//!
//! Each test starts its own `s3s-fs` (installed by `.ci/s3`) on a free
//! loopback port with a temporary root and fixed credentials, and stops it
//! at the end. Without the binary the tests fail, naming `.ci/s3`.

mod common;

use common::{Backend, TestServer};
use ota_common::wire::{PublicationCommitted, PublicationCreated};
use ota_server::db::DatabaseUrl;
use ota_server::storage::ObjectStoreConfig;
use reqwest::{header, Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// Short on purpose: s3s-fs keeps each object's attributes in a file named
// after base64(bucket) and base64(key), so keys longer than about 165 bytes
// fail there with ENAMETOOLONG (real S3 allows 1024). Our longest key is
// `fleet/targets/images/<sha512>.rootfs-3a.img`: 163 bytes.
const BUCKET: &str = "ota";
const PREFIX: &str = "fleet";
const ACCESS_KEY: &str = "ota-test-access";
const SECRET_KEY: &str = "ota-test-secret-key";

/// A running `s3s-fs`, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs_binary() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("OTA_TEST_S3S_FS") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("s3s-fs")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/s3s-fs"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the S3 tests need the s3s-fs binary: run `bash .ci/s3` (it runs \
                 `cargo install s3s-fs --version 0.14.1 --features binary --locked`), \
                 or set OTA_TEST_S3S_FS=/path/to/s3s-fs"
            )
        })
}

impl S3Server {
    /// Starts s3s-fs on 127.0.0.1 with a port the kernel picks, and reads the
    /// address it announces.
    fn start() -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        // s3s-fs keeps one directory per bucket.
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket directory");
        let mut child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start s3s-fs");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the announcement, then keeps draining so the server never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("server is running at ") {
                    let url = line[at + "server is running at ".len()..].trim().to_owned();
                    let _ = tx.send(url);
                }
            }
        });
        let endpoint = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("s3s-fs did not announce its address within 20 s");
            }
        };
        assert!(
            endpoint.starts_with("http://127.0.0.1:"),
            "unexpected s3s-fs address {endpoint}"
        );
        S3Server {
            child,
            endpoint,
            root,
        }
    }

    fn config(&self) -> ObjectStoreConfig {
        ObjectStoreConfig {
            url: format!("s3://{BUCKET}/{PREFIX}"),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            allow_http: true,
        }
    }

    /// Where s3s-fs keeps an object on disk (to check what the bucket holds).
    fn object_file(&self, rel: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(PREFIX).join(rel)
    }
}

async fn start_server(s3: &S3Server, backend: Backend, database: Option<&str>) -> TestServer {
    let config = s3.config();
    common::start_on_with(backend, move |c| {
        c.object_store = Some(config);
        if let Some(url) = database {
            c.database_url = Some(DatabaseUrl::parse(url).expect("database url"));
        }
    })
    .await
}

async fn open(s: &TestServer) -> String {
    let resp = s
        .admin(Method::POST, "/admin/v1/publications")
        .send()
        .await
        .expect("open");
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json::<PublicationCreated>().await.expect("json").id
}

fn doc(ty: &str, version: u64) -> serde_json::Value {
    json!({"signed": {"_type": ty, "version": version, "meta": {"snapshot.json": {"version": version}}}, "signatures": []})
}

/// Uploads an image and the given metadata, then commits.
async fn publish_files(
    s: &TestServer,
    image: (&str, &[u8]),
    metadata: &[(String, serde_json::Value)],
) -> reqwest::Response {
    let id = open(s).await;
    let resp = s
        .admin(
            Method::PUT,
            &format!("/admin/v1/publications/{id}/targets/{}", image.0),
        )
        .body(image.1.to_vec())
        .send()
        .await
        .expect("put target");
    assert_eq!(resp.status(), StatusCode::OK);
    for (name, d) in metadata {
        let resp = s
            .admin(
                Method::PUT,
                &format!("/admin/v1/publications/{id}/metadata/{name}"),
            )
            .body(serde_json::to_vec(d).expect("encode"))
            .send()
            .await
            .expect("put metadata");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{name}");
    }
    s.admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit")
}

/// A complete release `version` with root 1.
async fn publish(s: &TestServer, version: u64, image: &[u8]) -> reqwest::Response {
    publish_files(
        s,
        (&format!("images/rootfs-{version}.img"), image),
        &[
            ("1.root.json".to_owned(), doc("root", 1)),
            (format!("{version}.targets.json"), doc("targets", version)),
            (format!("{version}.snapshot.json"), doc("snapshot", version)),
            ("timestamp.json".to_owned(), doc("timestamp", version)),
        ],
    )
    .await
}

fn image_of(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

async fn get(s: &TestServer, path: &str) -> reqwest::Response {
    s.client.get(s.url(path)).send().await.expect("get")
}

async fn timestamp_version(s: &TestServer) -> u64 {
    let ts: serde_json::Value = get(s, "/metadata/timestamp.json")
        .await
        .json()
        .await
        .expect("json");
    ts["signed"]["version"].as_u64().expect("version")
}

/// Waits until `s` serves timestamp version `version`: another instance's
/// publication reaches this one's memory at its next refresh (100 ms in
/// the tests), not at once.
async fn eventually_timestamp_version(s: &TestServer, version: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = timestamp_version(s).await;
        if seen == version {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still serving timestamp version {seen}, not {version}, 5 s after the commit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A target its metadata lists by SHA-256 only gets that one name in the
/// bucket: no server-side SHA-512 copy (a second object nobody fetches, and
/// with a long target name a key some S3 implementations refuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_digest_names_reach_the_bucket() {
    let s3 = S3Server::start();
    let s = start_server(&s3, Backend::Sqlite, None).await;
    let image = image_of(70_000, 7);
    let sha256 = hex::encode(Sha256::digest(&image));
    let sha512 = hex::encode(Sha512::digest(&image));
    let target = format!("chunks/ab/{sha256}.zst");
    let targets = json!({"signed": {"_type": "targets", "version": 1,
        "targets": {&target: {"length": image.len(), "hashes": {"sha256": &sha256}}}},
        "signatures": []});
    let resp = publish_files(
        &s,
        (&target, &image),
        &[
            ("1.root.json".to_owned(), doc("root", 1)),
            ("1.targets.json".to_owned(), targets),
            ("1.snapshot.json".to_owned(), doc("snapshot", 1)),
            ("timestamp.json".to_owned(), doc("timestamp", 1)),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let committed: PublicationCommitted = resp.json().await.expect("json");
    let placed = format!("targets/chunks/ab/{sha256}.{sha256}.zst");
    assert_eq!(
        committed
            .files
            .iter()
            .filter(|f| f.starts_with("targets/"))
            .collect::<Vec<_>>(),
        vec![&placed]
    );
    assert_eq!(
        std::fs::read(s3.object_file(&placed)).expect("object"),
        image
    );
    let resp = get(&s, &format!("/{placed}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &image[..]);
    let resp = get(&s, &format!("/targets/chunks/ab/{sha512}.{sha256}.zst")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_lands_in_the_bucket_timestamp_last() {
    let s3 = S3Server::start();
    let s = start_server(&s3, Backend::Sqlite, None).await;
    // Larger than one 8 MiB part: a real multipart upload.
    let image = image_of(9 * 1024 * 1024 + 12_345, 1);
    let resp = publish(&s, 1, &image).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let committed: PublicationCommitted = resp.json().await.expect("json");

    let sha256 = hex::encode(Sha256::digest(&image));
    let sha512 = hex::encode(Sha512::digest(&image));
    // The SHA-256 name is uploaded, the SHA-512 name copied from it.
    let mut expected = vec![
        format!("targets/images/{sha256}.rootfs-1.img"),
        format!("targets/images/{sha512}.rootfs-1.img"),
    ];
    expected.extend([
        "metadata/1.root.json".to_owned(),
        "metadata/1.targets.json".to_owned(),
        "metadata/1.snapshot.json".to_owned(),
        "metadata/timestamp.json".to_owned(),
    ]);
    assert_eq!(committed.files, expected);

    // Everything is in the bucket, nothing in the local repository, and
    // timestamp.json was written after every other object.
    let mtime = |rel: &str| {
        std::fs::metadata(s3.object_file(rel))
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{rel} not in the bucket: {e}"))
    };
    let ts_time = mtime("metadata/timestamp.json");
    for rel in &expected {
        assert!(mtime(rel) <= ts_time, "{rel} written after timestamp.json");
    }
    for rel in &expected[..2] {
        assert_eq!(std::fs::read(s3.object_file(rel)).expect("object"), image);
    }
    assert!(!s.data_dir.join("repository").exists());
    assert!(std::fs::read_dir(s.data_dir.join("staging"))
        .expect("staging")
        .next()
        .is_none());

    // Images: whole, ranged, suffix, HEAD, unsatisfiable.
    let path = format!("/targets/images/{sha256}.rootfs-1.img");
    let resp = get(&s, &path).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &image[..]);
    let ranged = |range: &'static str| {
        s.client
            .get(s.url(&path))
            .header(header::RANGE, range)
            .send()
    };
    let resp = ranged("bytes=8388600-8388700").await.expect("range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()[header::CONTENT_RANGE],
        format!("bytes 8388600-8388700/{}", image.len()).as_str()
    );
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        &image[8_388_600..=8_388_700]
    );
    let resp = ranged("bytes=-10").await.expect("range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        &image[image.len() - 10..]
    );
    let resp = ranged("bytes=99999999-").await.expect("range");
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let resp = s.client.head(s.url(&path)).send().await.expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_LENGTH],
        image.len().to_string().as_str()
    );
    // A resumed download with the ETag it started with gets its range.
    let etag = resp.headers()[header::ETAG].clone();
    let resp = s
        .client
        .get(s.url(&path))
        .header(header::RANGE, "bytes=5-9")
        .header(header::IF_RANGE, etag)
        .send()
        .await
        .expect("if-range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &image[5..10]);
    assert_eq!(
        get(&s, "/targets/images/nothing.img").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_has_content_etags_and_answers_304() {
    let s3 = S3Server::start();
    let s = start_server(&s3, Backend::Sqlite, None).await;
    // Ready: the bucket answers (nothing published yet is fine).
    assert_eq!(get(&s, "/readyz").await.status(), StatusCode::OK);
    assert_eq!(
        get(&s, "/metadata/timestamp.json").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(publish(&s, 1, b"image one").await.status(), StatusCode::OK);
    let resp = get(&s, "/metadata/timestamp.json").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
    let etag = resp.headers()[header::ETAG]
        .to_str()
        .expect("etag")
        .to_owned();
    let body = resp.bytes().await.expect("body");
    assert_eq!(etag, format!("\"{}\"", hex::encode(Sha256::digest(&body))));

    // The idle poll, twice (the second from the cache).
    for _ in 0..2 {
        let resp = s
            .client
            .get(s.url("/metadata/timestamp.json"))
            .header(header::IF_NONE_MATCH, &etag)
            .send()
            .await
            .expect("poll");
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(resp.headers()[header::ETAG], etag.as_str());
    }
    let resp = s
        .client
        .head(s.url("/metadata/1.root.json"))
        .send()
        .await
        .expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );

    // A new release changes the answer to the same poll.
    assert_eq!(publish(&s, 2, b"image two").await.status(), StatusCode::OK);
    let resp = s
        .client
        .get(s.url("/metadata/timestamp.json"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("poll");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_ne!(resp.headers()[header::ETAG], etag.as_str());
    assert_eq!(timestamp_version(&s).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_is_refused_and_leaves_nothing_visible() {
    let s3 = S3Server::start();
    let s = start_server(&s3, Backend::Sqlite, None).await;
    assert_eq!(publish(&s, 1, b"image one").await.status(), StatusCode::OK);

    // 1.targets.json with other content, beside new names.
    let image = b"image two".as_slice();
    let resp = publish_files(
        &s,
        ("images/rootfs-2.img", image),
        &[
            ("1.targets.json".to_owned(), json!({"signed": {"_type": "targets", "version": 1, "other": true}, "signatures": []})),
            ("2.snapshot.json".to_owned(), doc("snapshot", 2)),
            ("timestamp.json".to_owned(), doc("timestamp", 2)),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(common::error_message(resp)
        .await
        .contains("metadata/1.targets.json"));
    let sha256 = hex::encode(Sha256::digest(image));
    for path in [
        format!("/targets/images/{sha256}.rootfs-2.img"),
        "/metadata/2.snapshot.json".to_owned(),
    ] {
        assert_eq!(
            get(&s, &path).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert!(!s3
        .object_file(&format!("targets/images/{sha256}.rootfs-2.img"))
        .exists());
    assert_eq!(timestamp_version(&s).await, 1);

    // A timestamp that does not move forward is a conflict too.
    let resp = publish_files(
        &s,
        ("images/rootfs-3.img", b"image three"),
        &[("timestamp.json".to_owned(), doc("timestamp", 1))],
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "identical timestamp is no change"
    );
    let resp = publish_files(
        &s,
        ("images/rootfs-3.img", b"image three"),
        &[(
            "timestamp.json".to_owned(),
            json!({"signed": {"_type": "timestamp", "version": 1, "x": 1}, "signatures": []}),
        )],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(common::error_message(resp).await.contains("not newer"));
    assert_eq!(timestamp_version(&s).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_bucket_and_one_database() {
    let s3 = S3Server::start();
    let a = start_server(&s3, Backend::Postgres, None).await;
    let pg_url = a.pg.as_ref().expect("postgres").url.clone();
    let b = start_server(&s3, Backend::Sqlite, Some(&pg_url)).await;

    let image = image_of(200_000, 7);
    assert_eq!(publish(&a, 1, &image).await.status(), StatusCode::OK);
    // The committing instance serves its publication at once.
    assert_eq!(timestamp_version(&a).await, 1);
    eventually_timestamp_version(&b, 1).await;
    let sha256 = hex::encode(Sha256::digest(&image));
    let resp = b
        .client
        .get(b.url(&format!("/targets/images/{sha256}.rootfs-1.img")))
        .header(header::RANGE, "bytes=1000-")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &image[1000..]);

    // The other way round, and each sees the other's ETag change.
    let etag = get(&a, "/metadata/timestamp.json").await.headers()[header::ETAG].clone();
    assert_eq!(
        publish(&b, 2, b"second image").await.status(),
        StatusCode::OK
    );
    assert_eq!(timestamp_version(&b).await, 2);
    eventually_timestamp_version(&a, 2).await;
    let resp = a
        .client
        .get(a.url("/metadata/timestamp.json"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("poll");
    assert_eq!(resp.status(), StatusCode::OK);

    // Concurrent commits through both instances: one timestamp wins, the
    // other is refused as not newer; never a mix.
    let release = |by: &str| {
        vec![
            ("3.snapshot.json".to_owned(), doc("snapshot", 3)),
            (
                "timestamp.json".to_owned(),
                json!({"signed": {"_type": "timestamp", "version": 3, "by": by}, "signatures": []}),
            ),
        ]
    };
    let (ma, mb) = (release("a"), release("b"));
    let (ra, rb) = tokio::join!(
        publish_files(&a, ("images/rootfs-3a.img", b"three a"), &ma),
        publish_files(&b, ("images/rootfs-3b.img", b"three b"), &mb)
    );
    let statuses = [ra.status(), rb.status()];
    assert!(
        statuses.contains(&StatusCode::OK) && statuses.contains(&StatusCode::CONFLICT),
        "{statuses:?}"
    );
    eventually_timestamp_version(&a, 3).await;
    eventually_timestamp_version(&b, 3).await;
    let by = |s: &TestServer| {
        let s = s.client.get(s.url("/metadata/timestamp.json")).send();
        async move {
            let ts: serde_json::Value = s.await.expect("get").json().await.expect("json");
            ts["signed"]["by"].clone()
        }
    };
    assert_eq!(by(&a).await, by(&b).await, "both serve the winner");
}

/// With the repository in a bucket, the idle poll touches the bucket not
/// at all: with the object store gone, the poll (200 and 304) and the root
/// probe (404) are still answered, from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_are_answered_from_memory_without_the_bucket() {
    let s3 = S3Server::start();
    let s = start_server(&s3, Backend::Sqlite, None).await;
    assert_eq!(publish(&s, 1, b"image").await.status(), StatusCode::OK);
    let first = get(&s, "/metadata/timestamp.json").await;
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()[header::ETAG].clone();
    let body = first.bytes().await.expect("body");
    assert_eq!(
        get(&s, "/metadata/2.root.json").await.status(),
        StatusCode::NOT_FOUND
    );

    drop(s3);
    for _ in 0..3 {
        let resp = get(&s, "/metadata/timestamp.json").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::ETAG], etag);
        assert_eq!(resp.bytes().await.expect("body"), body);
        let resp = s
            .client
            .get(s.url("/metadata/timestamp.json"))
            .header(header::IF_NONE_MATCH, etag.clone())
            .send()
            .await
            .expect("poll");
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            get(&s, "/metadata/2.root.json").await.status(),
            StatusCode::NOT_FOUND
        );
        // Across a refresh period, which fails and keeps the view.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // What the commit made visible was read into memory then, asked for
    // or not; a name never seen needs the bucket, which is gone.
    assert_eq!(
        get(&s, "/metadata/1.snapshot.json").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get(&s, "/metadata/7.targets.json").await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

// ------------------------------------------------ online signing over S3

/// `ota-repo add IMAGE` then `ota-repo publish --server`, through
/// ota-repo's own code (blocking HTTP client: off the runtime).
async fn release_with_ota_repo(
    s: &TestServer,
    layout: &ota_repo::layout::Layout,
    image_name: &str,
    version: &str,
) -> ota_repo::publish::ServerPublished {
    let dir = layout.root().join("images");
    std::fs::create_dir_all(&dir).expect("images");
    let image = dir.join(image_name);
    std::fs::write(&image, format!("{image_name} {version}").repeat(500)).expect("image");
    ota_repo::add::add(
        layout,
        &ota_repo::add::AddOptions {
            image,
            version: version.to_owned(),
            hardware_ids: vec!["board".to_owned()],
            notes: None,
            name: None,
        },
    )
    .await
    .expect("ota-repo add");
    let (base, token, repo) = (s.base.clone(), s.token.clone(), layout.root().to_owned());
    tokio::task::spawn_blocking(move || {
        let layout = ota_repo::layout::Layout::new(repo);
        let state = tokio::runtime::Handle::current()
            .block_on(ota_repo::state::RepoState::load(&layout))
            .expect("state");
        let set = ota_repo::publish::collect(&layout, &state).expect("collect");
        let admin =
            ota_repo::publish::AdminClient::new(base.parse().expect("url"), token).expect("client");
        ota_repo::publish::publish_server(&layout, &set, &admin)
    })
    .await
    .expect("join")
    .expect("ota-repo publish --server")
}

/// The key file `ota-repo init` made for `role`.
fn repo_key(layout: &ota_repo::layout::Layout, role: &str) -> PathBuf {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_signing_over_the_bucket_follows_publications_and_resignings() {
    use ota_common::tuf::http::HttpTransport;
    use ota_common::tuf::{ClientOptions, TufClient};
    use ota_server::resign::OnlineSigning;

    let s3 = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = ota_repo::layout::Layout::new(dir.path().join("repo"));
    ota_repo::init::init(&layout, &ota_repo::init::InitOptions::default())
        .await
        .expect("ota-repo init");
    let store = s3.config();
    // What the server signs lives 4 s and is renewed within 2 s of expiry:
    // a periodic re-signing comes about 2 s after each publication.
    let settings = OnlineSigning {
        key: ota_repo::key_ref::KeyRef::File(repo_key(&layout, "timestamp")),
        timestamp_expiry: Duration::from_secs(4),
        resign_before: Duration::from_secs(2),
        snapshot: None,
        audit_dir: None,
    };
    let s = common::start_with(move |c| {
        c.object_store = Some(store);
        c.online_signing = Some(settings);
    })
    .await;

    let first = release_with_ota_repo(&s, &layout, "fw-a.img", "1.0.0").await;
    let issued = first.committed.online_timestamp_version.expect("issued");
    assert_eq!(timestamp_version(&s).await, issued);
    // The object store holds what the server signed.
    let in_bucket: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s3.object_file("metadata/timestamp.json")).expect("timestamp in bucket"),
    )
    .expect("json");
    assert_eq!(in_bucket["signed"]["version"], issued);

    // The background job re-signs from and into the bucket.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while timestamp_version(&s).await <= issued {
        assert!(
            std::time::Instant::now() < deadline,
            "timestamp {issued} was not re-signed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resigned = timestamp_version(&s).await;

    // The second publication comes after the server's own versions.
    let second = release_with_ota_repo(&s, &layout, "fw-b.img", "2.0.0").await;
    let issued = second.committed.online_timestamp_version.expect("issued");
    assert!(issued > resigned, "timestamp {issued} after {resigned}");

    // A device flashed with root 1 follows, reading from the server.
    let root = std::fs::read(layout.metadata_dir().join("1.root.json")).expect("root");
    let trusted = dir.path().join("device");
    let base = s.base.clone();
    let found = tokio::task::spawn_blocking(move || {
        TufClient::<HttpTransport>::init(&trusted, &root).expect("init");
        let url = |sub: &str| url::Url::parse(&format!("{base}/{sub}/")).expect("url");
        let transport = HttpTransport::new(Duration::from_secs(10), "s3-test").expect("transport");
        let mut device = TufClient::open(
            &trusted,
            ClientOptions::new(url("metadata"), url("targets")),
            transport,
        )
        .expect("open client");
        device.refresh().expect("a fresh device follows");
        let target = device
            .find_target("fw-b.img")
            .expect("lookup")
            .expect("fw-b.img");
        target.release().expect("release").version.to_string()
    })
    .await
    .expect("join");
    assert_eq!(found, "2.0.0");
}
