//! Device reports and the admin views of them, on SQLite and on PostgreSQL.

mod common;

use common::Backend;
use ota_common::wire::{
    DeviceEvent, DeviceRecord, UpdateStatus, MAX_REASON_CHARS, MAX_REPORT_BYTES,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn reports_are_recorded_and_listed(backend: Backend) {
    let s = common::start_on(backend).await;
    let report = |body: serde_json::Value| {
        s.client
            .post(s.url("/api/v1/devices/dev-01/reports"))
            .json(&body)
            .send()
    };
    let resp = report(json!({"hardware_id": "board-a", "installed_version": "1.0.0", "booted_slot": "A", "status": "idle"}))
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = report(
        json!({"hardware_id": "board-a", "installed_version": "1.0.0", "booted_slot": "A",
        "status": "downloading", "target": "images/rootfs-1.1.0.img", "target_version": "1.1.0"}),
    )
    .await
    .expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let long_reason = "x".repeat(MAX_REASON_CHARS + 500);
    let resp = report(
        json!({"hardware_id": "board-a", "installed_version": "1.0.0", "booted_slot": "A",
        "status": "rolled_back", "target": "images/rootfs-1.1.0.img", "target_version": "1.1.0",
        "reason": long_reason}),
    )
    .await
    .expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = s
        .client
        .post(s.url("/api/v1/devices/dev-02/reports"))
        .json(
            &json!({"hardware_id": "board-b", "installed_version": "2.0.0", "status": "committed"}),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let devices: Vec<DeviceRecord> = s
        .admin(Method::GET, "/admin/v1/devices")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(devices.len(), 2);
    let d1 = &devices[0];
    assert_eq!(d1.device_id, "dev-01");
    assert_eq!(d1.hardware_id, "board-a");
    assert_eq!(d1.status, UpdateStatus::RolledBack);
    assert_eq!(d1.booted_slot.as_deref(), Some("A"));
    assert_eq!(d1.target_version.as_deref(), Some("1.1.0"));
    assert_eq!(
        d1.reason.as_ref().map(|r| r.chars().count()),
        Some(MAX_REASON_CHARS)
    );
    assert!(chrono::DateTime::parse_from_rfc3339(&d1.last_seen).is_ok());
    assert_eq!(devices[1].device_id, "dev-02");
    assert_eq!(devices[1].booted_slot, None);

    let events: Vec<DeviceEvent> = s
        .admin(Method::GET, "/admin/v1/devices/dev-01/events")
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let statuses: Vec<_> = events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            UpdateStatus::Idle,
            UpdateStatus::Downloading,
            UpdateStatus::RolledBack
        ]
    );
    assert!(events.iter().all(|e| e.device_id == "dev-01"));

    let resp = s
        .admin(Method::GET, "/admin/v1/devices/nobody/events")
        .send()
        .await
        .expect("events");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

async fn invalid_reports_are_refused(backend: Backend) {
    let s = common::start_on(backend).await;
    let post = |device: &str, body: String| {
        s.client
            .post(s.url(&format!("/api/v1/devices/{device}/reports")))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let good = r#"{"hardware_id":"hw","installed_version":"1.0.0","status":"idle"}"#;
    let cases = [
        ("bad%20id", good.to_owned(), "device id"),
        ("dev", "not json".to_owned(), "invalid device report"),
        (
            "dev",
            r#"{"hardware_id":"hw","installed_version":"1","status":"exploded"}"#.to_owned(),
            "exploded",
        ),
        (
            "dev",
            r#"{"hardware_id":"hw","installed_version":"1","status":"idle","admin":true}"#
                .to_owned(),
            "admin",
        ),
        (
            "dev",
            r#"{"hardware_id":"../hw","installed_version":"1","status":"idle"}"#.to_owned(),
            "hardware_id",
        ),
        (
            "dev",
            r#"{"hardware_id":"hw","installed_version":"","status":"idle"}"#.to_owned(),
            "installed_version",
        ),
        (
            "dev",
            r#"{"hardware_id":"hw","installed_version":"1\u0007","status":"idle"}"#.to_owned(),
            "installed_version",
        ),
    ];
    for (device, body, needle) in cases {
        let resp = post(device, body.clone()).await.expect("post");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let msg = common::error_message(resp).await;
        assert!(msg.contains(needle), "{msg:?} should name {needle:?}");
    }

    let huge = format!(
        r#"{{"hardware_id":"hw","installed_version":"1","status":"failed","reason":"{}"}}"#,
        "x".repeat(MAX_REPORT_BYTES)
    );
    let resp = post("dev", huge).await.expect("post");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(common::error_message(resp).await.contains("too large"));

    let devices: Vec<DeviceRecord> = s
        .admin(Method::GET, "/admin/v1/devices")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(devices.is_empty(), "nothing recorded from refused reports");
}

async fn admin_endpoints_require_the_token(backend: Backend) {
    let s = common::start_on(backend).await;
    for (method, path) in [
        (Method::GET, "/admin/v1/devices"),
        (Method::GET, "/admin/v1/devices/dev/events"),
        (Method::POST, "/admin/v1/publications"),
        (Method::POST, "/admin/v1/publications/0123/commit"),
        (Method::PUT, "/admin/v1/publications/0123/targets/a.img"),
        (
            Method::PUT,
            "/admin/v1/publications/0123/metadata/timestamp.json",
        ),
    ] {
        let resp = s
            .client
            .request(method.clone(), s.url(path))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(common::error_message(resp).await.contains("Bearer"));
        let resp = s
            .client
            .request(method.clone(), s.url(path))
            .bearer_auth("not-the-token")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(common::error_message(resp)
            .await
            .contains("invalid admin token"));
    }
    let resp = s
        .admin(Method::GET, "/admin/v1/devices")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = s.client.get(s.url("/nowhere")).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(common::error_message(resp).await.contains("/nowhere"));
    let resp = s
        .client
        .delete(s.url("/metadata/timestamp.json"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// Concurrent reports of one device (on PostgreSQL they may come through
/// different instances) all land, each with its own place in the history.
async fn concurrent_reports_of_one_device_all_land(backend: Backend) {
    let s = common::start_on(backend).await;
    let versions: Vec<String> = (0..16).map(|i| format!("1.0.{i}")).collect();
    let posts = versions.iter().map(|v| {
        s.client
            .post(s.url("/api/v1/devices/dev-race/reports"))
            .json(&json!({"hardware_id": "hw", "installed_version": v, "status": "idle"}))
            .send()
    });
    for resp in futures_util::future::join_all(posts).await {
        assert_eq!(resp.expect("post").status(), StatusCode::NO_CONTENT);
    }
    let events: Vec<DeviceEvent> = s
        .admin(Method::GET, "/admin/v1/devices/dev-race/events")
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let mut seen: Vec<String> = events.into_iter().map(|e| e.installed_version).collect();
    seen.sort();
    let mut expected = versions.clone();
    expected.sort();
    assert_eq!(seen, expected);
}

/// Every test above, once per database.
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(Backend::Postgres).await
                }
            )*
        }
    };
}

on_each_backend!(
    reports_are_recorded_and_listed,
    invalid_reports_are_refused,
    admin_endpoints_require_the_token,
    concurrent_reports_of_one_device_all_land,
);
