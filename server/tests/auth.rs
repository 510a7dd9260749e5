//! Identity and access: admin tokens with roles (SQLite and PostgreSQL),
//! device tokens, replayed reports, and the credential CLI.

mod common;

use common::{Backend, TestServer};
use ota_server::auth::Role;
use ota_server::credentials;
use ota_server::db::{DatabaseUrl, Db};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn db_of(s: &TestServer) -> Db {
    let url = match &s.pg {
        Some(pg) => DatabaseUrl::parse(&pg.url).expect("pg url"),
        None => DatabaseUrl::default_for(&s.data_dir),
    };
    Db::open(&url).await.expect("open db")
}

fn report() -> serde_json::Value {
    json!({"hardware_id": "board-a", "installed_version": "1.0.0", "status": "idle"})
}

async fn status(req: reqwest::RequestBuilder) -> (StatusCode, String) {
    let resp = req.send().await.expect("send");
    let code = resp.status();
    let text = resp.text().await.unwrap_or_default();
    // The error message itself, unescaped, when there is one.
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or(text);
    (code, message)
}

async fn roles_are_enforced(backend: Backend) {
    let s = common::start_on(backend).await;
    let db = db_of(&s).await;
    let publisher = credentials::create_admin_token(&db, "ci", Role::Publisher)
        .await
        .expect("create");
    let viewer = credentials::create_admin_token(&db, "dashboard", Role::Viewer)
        .await
        .expect("create");
    let operator = credentials::create_admin_token(&db, "ops", Role::Operator)
        .await
        .expect("create");
    assert!(credentials::create_admin_token(&db, "ci", Role::Viewer)
        .await
        .expect_err("duplicate")
        .to_string()
        .contains("already exists"));
    let post = |token: &str| {
        s.client
            .post(s.url("/admin/v1/publications"))
            .bearer_auth(token)
    };
    let list = |token: &str| s.client.get(s.url("/admin/v1/devices")).bearer_auth(token);

    assert_eq!(status(post(&publisher)).await.0, StatusCode::CREATED);
    assert_eq!(status(list(&viewer)).await.0, StatusCode::OK);
    assert_eq!(status(list(&operator)).await.0, StatusCode::OK);
    // The bootstrap token holds every role.
    assert_eq!(status(post(&s.token)).await.0, StatusCode::CREATED);
    assert_eq!(status(list(&s.token)).await.0, StatusCode::OK);

    let (code, body) = status(post(&viewer)).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        body.contains("\"dashboard\" has role viewer") && body.contains("needs role publisher"),
        "{body}"
    );
    assert_eq!(status(list(&publisher)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(status(post(&operator)).await.0, StatusCode::FORBIDDEN);

    let (code, body) = status(s.client.get(s.url("/admin/v1/devices"))).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (code, body) = status(list("not-a-token")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(body.contains("invalid admin token"), "{body}");

    credentials::revoke_admin_token(&db, "dashboard")
        .await
        .expect("revoke");
    assert_eq!(status(list(&viewer)).await.0, StatusCode::UNAUTHORIZED);
    let listed = credentials::list_admin_tokens(&db).await.expect("list");
    let names: Vec<(&str, &str, bool)> = listed
        .iter()
        .map(|t| (t.name.as_str(), t.role.as_str(), t.revoked))
        .collect();
    assert_eq!(
        names,
        [
            ("ci", "publisher", false),
            ("dashboard", "viewer", true),
            ("ops", "operator", false)
        ]
    );
    // Only hashes are stored.
    let stored = format!("{listed:?}");
    assert!(!stored.contains(&publisher));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_sqlite() {
    roles_are_enforced(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_postgres() {
    roles_are_enforced(Backend::Postgres).await;
}

async fn device_tokens_and_replays(backend: Backend) {
    let s = common::start_on_with(backend, |c| {
        c.device_auth = ota_server::auth::DeviceAuth::Token
    })
    .await;
    let db = db_of(&s).await;
    let a = credentials::add_device(&db, "dev-a").await.expect("add");
    let b = credentials::add_device(&db, "dev-b").await.expect("add");
    let post = |device: &str| {
        s.client
            .post(s.url(&format!("/api/v1/devices/{device}/reports")))
            .json(&report())
    };
    assert_eq!(
        status(post("dev-a").bearer_auth(&a)).await.0,
        StatusCode::NO_CONTENT
    );
    let (code, body) = status(post("dev-a")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(body.contains("device token"), "{body}");
    let (code, body) = status(post("dev-a").bearer_auth(&b)).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        body.contains("\"dev-b\" cannot report for device \"dev-a\""),
        "{body}"
    );
    // The admin token is no device token.
    assert_eq!(
        status(post("dev-a").bearer_auth(&s.token)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Replays: seq must grow.
    let seq = |n: &str| post("dev-a").bearer_auth(&a).header("X-Ota-Report-Seq", n);
    assert_eq!(status(seq("5")).await.0, StatusCode::NO_CONTENT);
    let (code, body) = status(seq("5")).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(body.contains("above 5"), "{body}");
    assert_eq!(status(seq("4")).await.0, StatusCode::CONFLICT);
    assert_eq!(status(seq("6")).await.0, StatusCode::NO_CONTENT);
    assert_eq!(status(seq("-1")).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(status(seq("x")).await.0, StatusCode::BAD_REQUEST);
    // Refused reports were not recorded: 1 (no seq) + seq 5 + seq 6.
    let events: Vec<serde_json::Value> = s
        .admin(Method::GET, "/admin/v1/devices/dev-a/events")
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    assert_eq!(events.len(), 3);

    // Rotation replaces the token; revocation ends it.
    let a2 = credentials::add_device(&db, "dev-a").await.expect("rotate");
    assert_eq!(
        status(post("dev-a").bearer_auth(&a)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(post("dev-a").bearer_auth(&a2)).await.0,
        StatusCode::NO_CONTENT
    );
    credentials::revoke_device(&db, "dev-a")
        .await
        .expect("revoke");
    assert_eq!(
        status(post("dev-a").bearer_auth(&a2)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(credentials::add_device(&db, "../x").await.is_err());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_tokens_and_replays_sqlite() {
    device_tokens_and_replays(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_tokens_and_replays_postgres() {
    device_tokens_and_replays(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_device_auth_anyone_reports_as_before() {
    let s = common::start().await;
    let resp = s
        .client
        .post(s.url("/api/v1/devices/dev-x/reports"))
        .json(&report())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[test]
fn cli_creates_lists_and_revokes_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ota-server"))
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .expect("run ota-server")
    };
    let out = run(&["token", "create", "--name", "ci", "--role", "publisher"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(secret.len(), 64);
    let out = run(&["token", "create", "--name", "x", "--role", "admin"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
    let out = run(&["token", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.starts_with("ci\tpublisher\t") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&secret));
    assert!(run(&["token", "revoke", "ci"]).status.success());
    let out = run(&["token", "revoke", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin token named"));
    assert!(String::from_utf8_lossy(&run(&["token", "list"]).stdout).contains("revoked"));
    let out = run(&["device", "add", "dev-1"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().len(), 64);
}
