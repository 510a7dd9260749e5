//! Hostile input: every attack gets a 4xx naming what is wrong (never a 500,
//! never a dropped connection from a panic), and the repository is
//! byte-for-byte unchanged afterwards.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A digest of every path, type and content under `dir`.
fn tree_hash(dir: &Path) -> String {
    fn walk(dir: &Path, base: &Path, h: &mut Sha256) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p
                .strip_prefix(base)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            h.update(rel.as_bytes());
            h.update([0]);
            if p.is_dir() {
                h.update(b"d");
                walk(&p, base, h);
            } else {
                h.update(std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut h = Sha256::new();
    walk(dir, dir, &mut h);
    hex::encode(h.finalize())
}

/// A published repository to attack.
async fn published(adjust: impl FnOnce(&mut ota_server::Config)) -> (TestServer, String) {
    let s = common::start_with(adjust).await;
    s.put_repo_file(
        "metadata/1.root.json",
        br#"{"signed":{"_type":"root","version":1},"signatures":[]}"#,
    );
    s.put_repo_file(
        "metadata/timestamp.json",
        br#"{"signed":{"_type":"timestamp","version":1},"signatures":[]}"#,
    );
    s.put_repo_file("targets/img/abc.rootfs.img", b"image bytes");
    let before = tree_hash(&s.data_dir.join("repository"));
    (s, before)
}

async fn open_publication(s: &TestServer) -> String {
    let resp = s
        .admin(Method::POST, "/admin/v1/publications")
        .send()
        .await
        .expect("open");
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

fn staged_files(s: &TestServer) -> Vec<String> {
    let mut out = Vec::new();
    for pubdir in std::fs::read_dir(s.data_dir.join("staging")).expect("staging") {
        let pubdir = pubdir.expect("entry").path();
        for sub in ["blobs", "staged", "metadata"] {
            if let Ok(entries) = std::fs::read_dir(pubdir.join(sub)) {
                out.extend(entries.map(|e| e.expect("entry").path().display().to_string()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_in_every_path_is_refused() {
    let (s, before) = published(|_| {}).await;
    let id = open_publication(&s).await;
    let attacks = [
        "..%2f..%2fota.db",
        "..",
        "%2e%2e/%2e%2e/admin-token",
        "img%2fabc.rootfs.img",
        "/etc/passwd",
        "%2fetc%2fpasswd",
        "img/..%00/x",
        "a%00b",
        "img//abc.rootfs.img",
        "img/./abc.rootfs.img",
        "img\\..\\x",
    ];
    for attack in attacks {
        for (method, target) in [
            ("GET", format!("/targets/{attack}")),
            ("GET", format!("/metadata/{attack}")),
        ] {
            let code = s.raw_status(method, &target).await;
            assert!((400..500).contains(&code), "{method} {target}: {code}");
        }
        let code = s
            .raw_status_admin(
                "PUT",
                &format!("/admin/v1/publications/{id}/targets/{attack}"),
            )
            .await;
        assert!((400..500).contains(&code), "PUT target {attack}: {code}");
        let code = s
            .raw_status_admin(
                "PUT",
                &format!("/admin/v1/publications/{id}/metadata/{attack}"),
            )
            .await;
        assert!((400..500).contains(&code), "PUT metadata {attack}: {code}");
    }
    // Publication ids are no paths either.
    for bad in ["..", "..%2f..%2frepository", "%00"] {
        let code = s
            .raw_status_admin("POST", &format!("/admin/v1/publications/{bad}/commit"))
            .await;
        assert!((400..500).contains(&code), "commit {bad}: {code}");
    }
    let resp = s
        .client
        .get(s.url("/metadata/..%2f..%2fadmin-token"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(!common::error_message(resp).await.is_empty());
    assert!(staged_files(&s).is_empty(), "{:?}", staged_files(&s));
    assert_eq!(tree_hash(&s.data_dir.join("repository")), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_truncated_uploads_store_nothing() {
    let (s, before) = published(|c| c.max_upload_bytes = 1000).await;
    let id = open_publication(&s).await;
    let url = s.url(&format!("/admin/v1/publications/{id}/targets/img/big.img"));

    // Announced too large: refused before reading.
    let resp = s
        .admin(
            Method::PUT,
            &format!("/admin/v1/publications/{id}/targets/img/big.img"),
        )
        .body(vec![0u8; 5000])
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(common::error_message(resp)
        .await
        .contains("max_upload_bytes"));

    // Chunked (no length announced), too large: cut off while streaming.
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(vec![1u8; 500])),
    ));
    let resp = s
        .client
        .put(&url)
        .bearer_auth(&s.token)
        .body(body)
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    // Truncated: the client announces 900 bytes, sends 100 and hangs up.
    let mut stream = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    let head = format!(
        "PUT /admin/v1/publications/{id}/targets/img/cut.img HTTP/1.1\r\nHost: t\r\n\
         Authorization: Bearer {}\r\nContent-Length: 900\r\n\r\n",
        s.token
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&[7u8; 100]).await.expect("part");
    drop(stream);

    // Oversized metadata and oversized reports.
    let resp = s
        .admin(
            Method::PUT,
            &format!("/admin/v1/publications/{id}/metadata/timestamp.json"),
        )
        .body(vec![b' '; 17 * 1024 * 1024])
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Too large to drain: the refusal says the connection ends with it, so
    // the client does not pool a connection the server is closing (the
    // report below was once lost on it).
    assert_eq!(
        resp.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    // The server refuses from the Content-Length, before reading the body,
    // then reads and discards the rest (a lingering close), so a client
    // still sending always gets to read the 413 instead of a reset.
    for attempt in 0..10 {
        let resp = s
            .client
            .post(s.url("/api/v1/devices/dev-1/reports"))
            .header("content-type", "application/json")
            .body(vec![b' '; 1024 * 1024])
            .send()
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: the 413 was lost: {e:?}"));
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Drained, so the connection stays open for the next request.
        assert_eq!(resp.headers().get("connection"), None);
    }

    // The server noticed the hang-up and removed the partial upload.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !staged_files(&s).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            staged_files(&s)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A commit now publishes nothing new; the repository is as it was.
    let resp = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(tree_hash(&s.data_dir.join("repository")), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_clear_400() {
    let (s, before) = published(|_| {}).await;
    let id = open_publication(&s).await;
    for (name, body) in [
        ("timestamp.json", &b"{"[..]),
        ("timestamp.json", b"[]"),
        (
            "2.snapshot.json",
            br#"{"signed":{"_type":"snapshot","version":3}}"#,
        ),
        ("2.snapshot.json", b"\xff\xfe"),
        (
            "1.root.json",
            br#"{"signed":{"_type":"targets","version":1}}"#,
        ),
    ] {
        let resp = s
            .admin(
                Method::PUT,
                &format!("/admin/v1/publications/{id}/metadata/{name}"),
            )
            .body(body.to_vec())
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{name}");
        assert!(common::error_message(resp).await.contains(name));
    }
    for body in [
        &b"{"[..],
        b"null",
        br#"{"hardware_id":"hw","installed_version":"1","status":"exploded"}"#,
        br#"{"hardware_id":"../x","installed_version":"1","status":"idle"}"#,
        br#"{"hardware_id":"hw","installed_version":"1\u0000","status":"idle"}"#,
    ] {
        let resp = s
            .client
            .post(s.url("/api/v1/devices/dev-1/reports"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("post");
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(body)
        );
        let msg = common::error_message(resp).await;
        assert!(
            msg.starts_with("invalid") || msg.contains("control characters"),
            "{msg}"
        );
    }
    assert_eq!(tree_hash(&s.data_dir.join("repository")), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_wrong_role_and_foreign_reports_are_refused() {
    let (s, before) = published(|c| c.device_auth = ota_server::auth::DeviceAuth::Token).await;
    let db = ota_server::db::Db::open(&ota_server::db::DatabaseUrl::default_for(&s.data_dir))
        .await
        .expect("db");
    let viewer =
        ota_server::credentials::create_admin_token(&db, "v", ota_server::auth::Role::Viewer)
            .await
            .expect("token");
    let mine = ota_server::credentials::add_device(&db, "dev-1")
        .await
        .expect("device");
    for (method, path) in ota_server::api::routes::table()
        .iter()
        .filter(|r| matches!(r.access, ota_server::api::routes::Access::Admin(_)))
        .map(|r| {
            (
                r.method.clone(),
                r.path
                    .replace("{*target}", "a.img")
                    .replace("{id}", "x")
                    .replace("{file}", "timestamp.json"),
            )
        })
    {
        let resp = s
            .client
            .request(method.clone(), s.url(&path))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let resp = s
            .client
            .request(method.clone(), s.url(&path))
            .header("authorization", "Basic YWRtaW46YWRtaW4=")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    let resp = s
        .client
        .post(s.url("/admin/v1/publications"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(common::error_message(resp)
        .await
        .contains("needs role publisher"));

    let report =
        serde_json::json!({"hardware_id": "hw", "installed_version": "1", "status": "idle"});
    let resp = s
        .client
        .post(s.url("/api/v1/devices/dev-2/reports"))
        .bearer_auth(&mine)
        .json(&report)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let send = |seq: &str| {
        s.client
            .post(s.url("/api/v1/devices/dev-1/reports"))
            .bearer_auth(&mine)
            .header("x-ota-report-seq", seq)
            .json(&report)
            .send()
    };
    assert_eq!(
        send("10").await.expect("send").status(),
        StatusCode::NO_CONTENT
    );
    let replay = send("10").await.expect("send");
    assert_eq!(replay.status(), StatusCode::CONFLICT);
    assert!(common::error_message(replay).await.contains("replayed"));
    assert!(staged_files(&s).is_empty());
    assert_eq!(tree_hash(&s.data_dir.join("repository")), before);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket_gets_a_4xx_or_a_close() {
    let (s, before) = published(|_| {}).await;
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET /metadata/timestamp.json HTTP/9.9\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/devices/d/reports HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/v1/devices/d/reports HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(s.addr).await.expect("connect");
        stream.write_all(junk).await.expect("send");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        if let Some(code) = text.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
            assert!((400..500).contains(&code), "{text}");
        }
    }
    // Still serving.
    assert_eq!(s.raw_status("GET", "/metadata/timestamp.json").await, 200);
    assert_eq!(tree_hash(&s.data_dir.join("repository")), before);
}
