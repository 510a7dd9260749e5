//! The public read path: metadata with ETag/304/Cache-Control, targets with
//! Range/HEAD, and path validation.

mod common;

use reqwest::header;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_etag_and_conditional_requests() {
    let s = common::start().await;
    let content = br#"{"signed":{"_type":"timestamp","version":3}}"#;
    s.put_repo_file("metadata/timestamp.json", content);
    s.put_repo_file("metadata/3.snapshot.json", b"{}");

    let resp = s
        .client
        .get(s.url("/metadata/timestamp.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(
        h[header::CONTENT_LENGTH],
        content.len().to_string().as_str()
    );
    assert_eq!(h[header::CACHE_CONTROL], "no-cache");
    let etag = h[header::ETAG].to_str().expect("etag").to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong etag: {etag}"
    );
    let last_modified = h[header::LAST_MODIFIED].to_str().expect("lm").to_owned();
    assert_eq!(resp.bytes().await.expect("body").as_ref(), content);

    let resp = s
        .client
        .get(s.url("/metadata/timestamp.json"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()[header::ETAG], etag.as_str());

    let resp = s
        .client
        .get(s.url("/metadata/timestamp.json"))
        .header(header::IF_MODIFIED_SINCE, &last_modified)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

    let resp = s
        .client
        .get(s.url("/metadata/timestamp.json"))
        .header(header::IF_NONE_MATCH, "\"something-else\"")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);

    // A new timestamp gets a new ETag even within the same second. Written
    // behind the server's back (as another instance sharing the directory
    // would), it is served once the next refresh has seen it.
    let newer = br#"{"signed":{"_type":"timestamp","version":4}}"#;
    s.put_repo_file("metadata/timestamp.json", newer);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let resp = loop {
        let resp = s
            .client
            .get(s.url("/metadata/timestamp.json"))
            .header(header::IF_NONE_MATCH, &etag)
            .send()
            .await
            .expect("get");
        if resp.status() != StatusCode::NOT_MODIFIED || std::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(resp.status(), StatusCode::OK);
    assert_ne!(resp.headers()[header::ETAG], etag.as_str());
    assert_eq!(resp.bytes().await.expect("body").as_ref(), newer);

    let resp = s
        .client
        .get(s.url("/metadata/3.snapshot.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        resp.headers()[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );

    let resp = s
        .client
        .get(s.url("/metadata/4.snapshot.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(common::error_message(resp)
        .await
        .contains("4.snapshot.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_names_are_restricted() {
    let s = common::start().await;
    s.put_repo_file("metadata/snapshot.json", b"{}");
    for name in [
        "snapshot.json",
        "x.root.json",
        "1.a%2Fb.json",
        "..%2Ftimestamp.json",
        "1.a%5Cb.json",
    ] {
        let resp = s
            .client
            .get(s.url(&format!("/metadata/{name}")))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{name}");
        assert!(common::error_message(resp)
            .await
            .contains("metadata file name"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_ranges_head_and_missing() {
    let s = common::start().await;
    let image: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    s.put_repo_file("targets/images/abc.img", &image);
    let url = s.url("/targets/images/abc.img");

    let resp = s.client.get(&url).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::ACCEPT_RANGES], "bytes");
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "200000");
    assert!(resp.headers().contains_key(header::ETAG));
    assert!(resp.headers().contains_key(header::LAST_MODIFIED));
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &image[..]);

    let resp = s.client.head(&url).send().await.expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "200000");
    assert!(resp.bytes().await.expect("body").is_empty());

    for (range, start, end) in [
        ("bytes=10-19", 10usize, 19usize),
        ("bytes=199990-", 199_990, 199_999),
        ("bytes=-5", 199_995, 199_999),
        ("bytes=100-999999", 100, 199_999),
    ] {
        let resp = s
            .client
            .get(&url)
            .header(header::RANGE, range)
            .send()
            .await
            .expect("range");
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            resp.headers()[header::CONTENT_RANGE],
            format!("bytes {start}-{end}/200000").as_str()
        );
        assert_eq!(
            resp.headers()[header::CONTENT_LENGTH],
            (end - start + 1).to_string().as_str()
        );
        assert_eq!(
            resp.bytes().await.expect("body").as_ref(),
            &image[start..=end]
        );
    }

    for range in ["bytes=200000-", "bytes=-0", "bytes=9-3"] {
        let resp = s
            .client
            .get(&url)
            .header(header::RANGE, range)
            .send()
            .await
            .expect("range");
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(resp.headers()[header::CONTENT_RANGE], "bytes */200000");
    }

    // If-Range with another version: the whole (current) file, not a splice.
    let resp = s
        .client
        .get(&url)
        .header(header::RANGE, "bytes=0-9")
        .header(header::IF_RANGE, "\"old\"")
        .send()
        .await
        .expect("if-range");
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = s
        .client
        .get(s.url("/targets/images/missing.img"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(common::error_message(resp)
        .await
        .contains("images/missing.img"));
    // A directory is not a target.
    let resp = s
        .client
        .get(s.url("/targets/images"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_refused() {
    let s = common::start().await;
    s.put_repo_file("targets/ok.img", b"ok");
    std::fs::write(s.data_dir.join("secret"), b"secret").expect("write");
    assert_eq!(s.raw_status("GET", "/targets/ok.img").await, 200);
    for target in [
        "/targets/../secret",
        "/targets/../../data/secret",
        "/targets/a/../../secret",
        "/targets/%2e%2e/secret",
        "/targets/..%2Fsecret",
        "/targets/..%2fsecret",
        "/targets/a%5C..%5Csecret",
        "/targets/a//ok.img",
        "/targets/./ok.img",
        "/targets/%2Fetc%2Fpasswd",
        "/targets/ok.img%00",
        "/metadata/..%2F..%2Fsecret",
        "/metadata/..",
    ] {
        let status = s.raw_status("GET", target).await;
        assert_eq!(status, 400, "{target}");
        let status = s.raw_status("HEAD", target).await;
        assert_eq!(status, 400, "HEAD {target}");
    }
}

/// With `connection_threads` set, connections are served on their own
/// single-threaded runtimes: the memory fast path, the router's file path
/// and a database-backed admin endpoint all answer, on many connections at
/// once (each client below opens its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_connection_threads_serve_every_path() {
    let s = common::start_with(|c| c.connection_threads = 2).await;
    s.put_repo_file("metadata/timestamp.json", br#"{"signed":{"version":1}}"#);
    s.put_repo_file("targets/abc.image.img", &[7u8; 70_000]);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let (meta, target) = (
            s.url("/metadata/timestamp.json"),
            s.url("/targets/abc.image.img"),
        );
        let fleet = s.admin(reqwest::Method::GET, "/admin/v1/fleet");
        tasks.push(tokio::spawn(async move {
            let r = client.get(&meta).send().await.expect("metadata");
            assert_eq!(r.status(), StatusCode::OK);
            let etag = r.headers()[header::ETAG].clone();
            let r = client
                .get(&meta)
                .header(header::IF_NONE_MATCH, etag)
                .send()
                .await
                .expect("metadata again");
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
            let r = client
                .get(&target)
                .header(header::RANGE, "bytes=100-199")
                .send()
                .await
                .expect("target");
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
            assert_eq!(r.bytes().await.expect("body").as_ref(), &[7u8; 100][..]);
            let r = fleet.send().await.expect("fleet");
            assert_eq!(r.status(), StatusCode::OK);
        }));
    }
    for t in tasks {
        t.await.expect("a client task");
    }
}
