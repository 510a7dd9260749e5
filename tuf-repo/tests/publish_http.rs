//! `publish --server` against a small stand-in for the server's admin API
//! that records every request: checks the protocol order, the bearer token,
//! streamed uploads, the StagedTarget check and `{"error"}` messages.

use ota_repo::add::{add, AddOptions};
use ota_repo::init::{init, InitOptions};
use ota_repo::layout::Layout;
use ota_repo::publish::{self, AdminClient};
use ota_repo::state::RepoState;
use sha2::{Digest, Sha256, Sha512};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    auth: Option<String>,
    body_len: usize,
}

/// Serves until the test ends; `corrupt` makes the staged digests wrong,
/// `refuse_commit` answers the commit with a 409 error body.
fn serve(corrupt: bool, refuse_commit: bool) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_owned();
                    let path = parts.next().unwrap_or("").to_owned();
                    let (mut len, mut auth) = (0usize, None);
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).expect("header");
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').expect("header line");
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.trim().parse().expect("len"),
                            "authorization" => auth = Some(v.trim().to_owned()),
                            _ => {}
                        }
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).expect("body");
                    log.lock().expect("lock").push(Seen {
                        method: method.clone(),
                        path: path.clone(),
                        auth,
                        body_len: len,
                    });
                    let (status, answer) = if method == "POST" && path == "/admin/v1/publications" {
                        ("201 Created", r#"{"id":"pub-1"}"#.to_owned())
                    } else if method == "HEAD" {
                        ("404 Not Found", String::new())
                    } else if method == "PUT" && path.contains("/targets/") {
                        // The server hashes with both algorithms whatever
                        // the target lists; a corrupt upload shows in the
                        // one digest the target lists.
                        let mut sha256 = hex::encode(Sha256::digest(&body));
                        if corrupt {
                            sha256 = "00".repeat(32);
                        }
                        let target = path.rsplit("/targets/").next().unwrap_or("").to_owned();
                        (
                            "200 OK",
                            format!(
                                r#"{{"target":"{target}","length":{},"sha256":"{sha256}","sha512":"{}"}}"#,
                                body.len(),
                                hex::encode(Sha512::digest(&body))
                            ),
                        )
                    } else if method == "PUT" {
                        ("204 No Content", String::new())
                    } else if refuse_commit {
                        (
                            "409 Conflict",
                            r#"{"error":"metadata 2.targets.json already exists with other content"}"#.to_owned(),
                        )
                    } else {
                        (
                            "200 OK",
                            r#"{"id":"pub-1","files":["timestamp.json"]}"#.to_owned(),
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        answer.len()
                    );
                    let _ = out.write_all(head.as_bytes());
                    if method != "HEAD" {
                        let _ = out.write_all(answer.as_bytes());
                    }
                }
            });
        }
    });
    (format!("http://{addr}/"), seen)
}

async fn repo_with_image(dir: &std::path::Path) -> (Layout, RepoState) {
    let layout = Layout::new(dir.join("repo"));
    init(&layout, &InitOptions::default()).await.expect("init");
    let img = dir.join("fw.bin");
    std::fs::write(&img, vec![42u8; 200_000]).expect("img");
    add(
        &layout,
        &AddOptions {
            image: img,
            version: "1.0.0".to_owned(),
            hardware_ids: vec!["board-a".to_owned()],
            notes: None,
            name: Some("board-a/fw.bin".to_owned()),
        },
    )
    .await
    .expect("add");
    let state = RepoState::load(&layout).await.expect("state");
    (layout, state)
}

#[tokio::test]
async fn follows_the_admin_protocol_in_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (layout, state) = repo_with_image(tmp.path()).await;
    let set = publish::collect(&layout, &state).expect("collect");
    let (url, seen) = serve(false, false);
    let done = tokio::task::spawn_blocking(move || {
        let client =
            AdminClient::new(url.parse().expect("url"), "s3cret".to_owned()).expect("client");
        publish::publish_server(&layout, &set, &client)
    })
    .await
    .expect("join")
    .expect("publish");
    assert_eq!(done.id, "pub-1");
    assert_eq!(done.uploaded, vec!["board-a/fw.bin".to_owned()]);
    let seen = seen.lock().expect("lock").clone();
    let calls: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    let sha256 = hex::encode(Sha256::digest(vec![42u8; 200_000]));
    assert_eq!(
        calls,
        vec![
            "POST /admin/v1/publications".to_owned(),
            format!("HEAD /targets/board-a/{sha256}.fw.bin"),
            "PUT /admin/v1/publications/pub-1/targets/board-a/fw.bin".to_owned(),
            "PUT /admin/v1/publications/pub-1/metadata/1.root.json".to_owned(),
            "PUT /admin/v1/publications/pub-1/metadata/2.targets.json".to_owned(),
            "PUT /admin/v1/publications/pub-1/metadata/2.snapshot.json".to_owned(),
            "PUT /admin/v1/publications/pub-1/metadata/timestamp.json".to_owned(),
            "POST /admin/v1/publications/pub-1/commit".to_owned(),
        ]
    );
    assert_eq!(seen[2].body_len, 200_000);
    for s in seen.iter().filter(|s| s.method != "HEAD") {
        assert_eq!(
            s.auth.as_deref(),
            Some("Bearer s3cret"),
            "{} {}",
            s.method,
            s.path
        );
    }
}

#[tokio::test]
async fn refuses_a_corrupted_upload_and_reports_server_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (layout, state) = repo_with_image(tmp.path()).await;
    let set = publish::collect(&layout, &state).expect("collect");
    let (bad_url, bad_seen) = serve(true, false);
    let (conflict_url, _) = serve(false, true);
    let (corrupt, conflict) = tokio::task::spawn_blocking(move || {
        let client =
            AdminClient::new(bad_url.parse().expect("url"), "t".to_owned()).expect("client");
        let corrupt = publish::publish_server(&layout, &set, &client).expect_err("corrupt staged");
        let client =
            AdminClient::new(conflict_url.parse().expect("url"), "t".to_owned()).expect("client");
        let conflict = publish::publish_server(&layout, &set, &client).expect_err("409");
        (corrupt.to_string(), conflict.to_string())
    })
    .await
    .expect("join");
    assert!(
        corrupt.contains("sha256 0000") && corrupt.contains("nothing was committed"),
        "{corrupt}"
    );
    assert!(
        !bad_seen
            .lock()
            .expect("lock")
            .iter()
            .any(|s| s.path.ends_with("/commit")),
        "committed after a corrupted upload"
    );
    assert!(
        conflict.contains("409") && conflict.contains("already exists with other content"),
        "{conflict}"
    );
}

#[test]
fn token_comes_from_file_or_env_trimmed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("token");
    std::fs::write(&file, "  abc123\n").expect("write");
    assert_eq!(
        publish::read_token(Some(&file), None).expect("file"),
        "abc123"
    );
    assert_eq!(
        publish::read_token(None, Some("xyz".into())).expect("env"),
        "xyz"
    );
    assert!(publish::read_token(None, None).is_err());
    std::fs::write(&file, "\n").expect("write");
    assert!(publish::read_token(Some(&file), None).is_err());
}
