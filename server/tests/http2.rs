//! HTTP/2 beside HTTP/1.1 on the same port: by prior knowledge in plaintext,
//! by ALPN over TLS; the read path (ETag/304, Range, whole images), uploads,
//! and the limits that keep one HTTP/2 client from holding the server
//! (stream and header caps, first-request and idle timeouts, graceful
//! shutdown).

mod common;

use axum::http::Request as HttpRequest;
use ota_common::wire::StagedTarget;
use ota_server::config::TlsFiles;
use reqwest::{header, StatusCode, Version};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes that differ at every offset, so a misplaced range shows.
fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_prior_knowledge_serves_the_read_path() {
    let s = common::start().await;
    let content = br#"{"signed":{"_type":"timestamp","version":3}}"#;
    s.put_repo_file("metadata/timestamp.json", content);
    let img = image(3 * 1024 * 1024 + 17);
    s.put_repo_file("targets/images/a.img", &img);
    let h2 = h2_client();

    let resp = h2
        .get(s.url("/metadata/timestamp.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let etag = resp.headers()[header::ETAG]
        .to_str()
        .expect("etag")
        .to_owned();
    assert_eq!(resp.bytes().await.expect("body").as_ref(), content);
    let resp = h2
        .get(s.url("/metadata/timestamp.json"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()[header::ETAG], etag.as_str());

    let resp = h2
        .get(s.url("/targets/images/a.img"))
        .header(header::RANGE, "bytes=1000000-")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()[header::CONTENT_RANGE],
        format!("bytes 1000000-{}/{}", img.len() - 1, img.len()).as_str()
    );
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        &img[1_000_000..]
    );

    // Larger than the flow-control windows: the whole image, byte for byte.
    let resp = h2
        .get(s.url("/targets/images/a.img"))
        .send()
        .await
        .expect("image");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let got = resp.bytes().await.expect("body");
    assert!(got.as_ref() == img.as_slice(), "image differs over h2");

    // HTTP/1.1 on the same port.
    let resp = reqwest::Client::new()
        .get(s.url("/metadata/timestamp.json"))
        .send()
        .await
        .expect("h1");
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_work_over_h2_and_stay_bounded() {
    let s = common::start_with(|c| c.max_upload_bytes = 2 * 1024 * 1024).await;
    let h2 = h2_client();
    let resp = h2
        .post(s.url("/admin/v1/publications"))
        .bearer_auth(&s.token)
        .send()
        .await
        .expect("open");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp
        .json::<ota_common::wire::PublicationCreated>()
        .await
        .expect("json")
        .id;

    let img = image(1024 * 1024 + 3);
    let resp = h2
        .put(s.url(&format!("/admin/v1/publications/{id}/targets/a.img")))
        .bearer_auth(&s.token)
        .body(img.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::OK);
    let staged: StagedTarget = resp.json().await.expect("json");
    assert_eq!(staged.length, img.len() as u64);
    assert_eq!(staged.sha256, hex::encode(Sha256::digest(&img)));

    // The body limit holds for HTTP/2 bodies too.
    let resp = h2
        .put(s.url(&format!("/admin/v1/publications/{id}/targets/big.img")))
        .bearer_auth(&s.token)
        .body(image(3 * 1024 * 1024))
        .send()
        .await;
    match resp {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE),
        // The server may reset the stream before the client finished sending.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_negotiates_h2_or_http11_by_alpn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let files = TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::write(&files.cert, generated.cert.pem()).expect("cert");
    std::fs::write(&files.key, generated.key_pair.serialize_pem()).expect("key");
    let s = common::start_with(move |c| c.tls = Some(files)).await;
    s.put_repo_file("metadata/timestamp.json", b"{}");
    let img = image(300_000);
    s.put_repo_file("targets/a.img", &img);
    let url = |path: &str| format!("https://localhost:{}{path}", s.addr.port());
    let client = |http1: bool| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).expect("anchor"),
            )
            .resolve("localhost", s.addr);
        if http1 {
            b = b.http1_only();
        }
        b.build().expect("client")
    };
    for (http1, version) in [(false, Version::HTTP_2), (true, Version::HTTP_11)] {
        let c = client(http1);
        let resp = c
            .get(url("/metadata/timestamp.json"))
            .send()
            .await
            .expect("metadata");
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = c
            .get(url("/targets/a.img"))
            .header(header::RANGE, "bytes=0-99")
            .send()
            .await
            .expect("range");
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(resp.bytes().await.expect("body").as_ref(), &img[..100]);
    }
}

/// An HTTP/2 connection driven by the `h2` crate, to see the server's
/// SETTINGS and when it closes the connection.
async fn raw_h2(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<TcpStream, bytes::Bytes>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    h2::client::handshake(tcp).await.expect("h2 handshake")
}

fn get(path: &str) -> HttpRequest<()> {
    HttpRequest::get(format!("http://localhost{path}"))
        .body(())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_limits_streams_and_headers_and_closes_idle_connections() {
    let s = common::start_with(|c| {
        c.idle_timeout = Duration::from_secs(1);
        c.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let (mut send, mut conn) = raw_h2(s.addr).await;
    let (response, _) = send.send_request(get("/healthz"), true).expect("send");
    let response = tokio::select! {
        r = response => r.expect("response"),
        r = &mut conn => panic!("connection ended first: {r:?}"),
    };
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        conn.max_concurrent_send_streams(),
        ota_server::http::H2_MAX_CONCURRENT_STREAMS as usize
    );
    // Nothing moves: the server closes the connection after the idle timeout
    // (it sends no PINGs that would keep it open).
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut conn).await;
    assert!(ended.is_ok(), "idle h2 connection still open after 5 s");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );

    // A header list past the limit is not served.
    let big = "x".repeat(ota_server::http::H2_MAX_HEADER_LIST_BYTES as usize + 1024);
    let resp = h2_client()
        .get(s.url("/healthz"))
        .header("x-big", big)
        .send()
        .await;
    match resp {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }

    // More requests at once than the stream cap: the client queues the rest,
    // and all are served on one connection.
    let h2 = h2_client();
    let many = (0..150).map(|_| {
        let h2 = h2.clone();
        let url = s.url("/healthz");
        async move { h2.get(url).send().await.map(|r| r.status()) }
    });
    for status in futures_util::future::join_all(many).await {
        assert_eq!(status.expect("served"), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_request_is_cut_off() {
    let s = common::start_with(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(60);
    })
    .await;
    // The HTTP/2 preface and then silence; and half a preface.
    let whole: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    for opening in [whole, &whole[..10]] {
        let mut stream = TcpStream::connect(s.addr).await.expect("connect");
        stream.write_all(opening).await.expect("write");
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue, // the server's SETTINGS
                Err(_) => panic!("connection still open after 5 s"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }
    let resp = h2_client()
        .get(s.url("/healthz"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_h2_downloads_and_refuses_new_ones() {
    common::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ota_server::Config::new("127.0.0.1:0".parse().expect("addr"), dir.path().into());
    let server = ota_server::Server::bind(&config).await.expect("bind");
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let img = image(8 * 1024 * 1024);
    let path = dir.path().join("repository/targets/big.img");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, &img).expect("image");

    let h2 = h2_client();
    let url = |p: &str| format!("http://{addr}{p}");
    let mut resp = h2.get(url("/targets/big.img")).send().await.expect("get");
    assert_eq!(resp.version(), Version::HTTP_2);
    let mut got = resp
        .chunk()
        .await
        .expect("first chunk")
        .expect("some")
        .to_vec();
    assert!(got.len() < img.len(), "flow control holds the rest back");

    stop.send(()).expect("stop");
    // GOAWAY: no new stream on this connection, no new connection either.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h2.get(url("/healthz")).send().await.is_err());
    assert!(h2_client().get(url("/healthz")).send().await.is_err());

    while let Some(chunk) = resp.chunk().await.expect("the download goes on") {
        got.extend_from_slice(&chunk);
    }
    assert!(got == img, "the in-flight download completed byte for byte");
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("server stops once the download is done")
        .expect("join")
        .expect("run");
}
