//! What keeps one client (or a thousand) from holding the server: header
//! read and idle timeouts, the connection limit; and the probes and metrics
//! that operators watch.

mod common;

use common::Backend;
use reqwest::StatusCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection; returns what came and when.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_after_the_header_timeout() {
    let s = common::start_with(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stream = TcpStream::connect(s.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .expect("partial header");
    let (_, after) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(after < Duration::from_secs(4), "cut off after {after:?}");

    // Meanwhile everybody else is served.
    let resp = s.client.get(s.url("/healthz")).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let s = common::start_with(|c| c.idle_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(s.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    let (answer, after) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    assert!(after < Duration::from_secs(4), "closed after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_their_turn() {
    let s = common::start_with(|c| c.max_connections = 2).await;
    let mut first = TcpStream::connect(s.addr).await.expect("connect");
    let _second = TcpStream::connect(s.addr).await.expect("connect");
    // Make sure both are accepted before the third arrives.
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let mut third = TcpStream::connect(s.addr).await.expect("kernel queues it");
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(waited.is_err(), "a third connection must not be served yet");

    drop(first);
    let (answer, _) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "served once a slot is free: {}",
        String::from_utf8_lossy(&answer)
    );
}

async fn metric(s: &common::TestServer, line_start: &str) -> Option<u64> {
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_bytes_and_reports() {
    let s = common::start().await;
    let resp = s.client.get(s.url("/metrics")).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")));

    s.put_repo_file("metadata/timestamp.json", &[b'x'; 1000]);
    for _ in 0..2 {
        let resp = s
            .client
            .get(s.url("/metadata/timestamp.json"))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.bytes().await.expect("body").len(), 1000);
    }
    let resp = s
        .client
        .get(s.url("/metadata/9.snapshot.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = s.client.get(s.url("/no/such")).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = s
        .client
        .post(s.url("/api/v1/devices/dev-1/reports"))
        .json(
            &serde_json::json!({"hardware_id": "hw", "installed_version": "1", "status": "failed"}),
        )
        .send()
        .await
        .expect("report");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let requests = "ota_http_requests_total{route=\"/metadata/{file}\",status=";
    assert_eq!(metric(&s, &format!("{requests}\"200\"}}")).await, Some(2));
    assert_eq!(metric(&s, &format!("{requests}\"404\"}}")).await, Some(1));
    assert_eq!(
        metric(
            &s,
            "ota_http_requests_total{route=\"unmatched\",status=\"404\"}"
        )
        .await,
        Some(1),
        "unknown paths share one label, not one each"
    );
    assert_eq!(
        metric(&s, "ota_device_reports_total{status=\"failed\"}").await,
        Some(1)
    );
    let bytes = metric(&s, "ota_http_response_body_bytes_total")
        .await
        .expect("bytes");
    assert!(bytes >= 2000, "{bytes}");
    assert_eq!(
        metric(&s, "ota_publications_committed_total").await,
        Some(0)
    );
    assert!(metric(&s, "ota_http_connections_open").await.expect("open") >= 1);
}

async fn status_and_message(s: &common::TestServer, path: &str) -> (StatusCode, String) {
    let resp = s.client.get(s.url(path)).send().await.expect("get");
    let status = resp.status();
    (status, resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_repository_is_unreadable() {
    let s = common::start().await;
    assert_eq!(status_and_message(&s, "/healthz").await.0, StatusCode::OK);
    assert_eq!(status_and_message(&s, "/readyz").await.0, StatusCode::OK);

    let metadata = s.data_dir.join("repository/metadata");
    let aside = s.data_dir.join("repository/metadata.aside");
    std::fs::rename(&metadata, &aside).expect("move aside");
    let (status, body) = status_and_message(&s, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("repository"), "{body}");
    assert!(
        !body.contains(&*s.data_dir.to_string_lossy()),
        "no paths: {body}"
    );
    assert_eq!(status_and_message(&s, "/healthz").await.0, StatusCode::OK);

    std::fs::rename(&aside, &metadata).expect("move back");
    assert_eq!(status_and_message(&s, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_postgres_is_unreachable() {
    let s = common::start_on(Backend::Postgres).await;
    let pg = s.pg.as_ref().expect("postgres");
    assert_eq!(status_and_message(&s, "/readyz").await.0, StatusCode::OK);

    pg.cut_off().await;
    let (status, body) = status_and_message(&s, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("database"), "{body}");
    // The process itself is fine.
    assert_eq!(status_and_message(&s, "/healthz").await.0, StatusCode::OK);

    pg.restore().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = status_and_message(&s, "/readyz").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "still not ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
