//! The OpenAPI document lists exactly the routes of the router, with the
//! access each one has, and is served.

mod common;

use ota_server::api::routes::{self, Access};
use std::collections::BTreeSet;

/// `{*rest}` (axum) is `{rest}` in OpenAPI.
fn openapi_path(axum: &str) -> String {
    axum.replace("{*", "{")
}

#[test]
fn document_and_router_list_the_same_routes() {
    let doc: serde_json::Value =
        serde_json::from_str(ota_server::api::openapi::DOCUMENT).expect("valid JSON");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            documented.insert((method.to_uppercase(), path.clone()));
            let role = op.get("x-ota-role").and_then(|r| r.as_str());
            let route = routes::table().into_iter().find(|r| {
                r.method.as_str() == method.to_uppercase() && openapi_path(r.path) == *path
            });
            if let Some(route) = route {
                let expected = match route.access {
                    Access::Admin(r) => Some(r.as_str()),
                    Access::Public | Access::Device => None,
                };
                assert_eq!(role, expected, "x-ota-role of {method} {path}");
                assert_eq!(
                    op.get("security").is_some(),
                    !matches!(route.access, Access::Public),
                    "security of {method} {path}"
                );
            }
        }
    }
    let routed: BTreeSet<(String, String)> = routes::table()
        .iter()
        .map(|r| (r.method.to_string(), openapi_path(r.path)))
        .collect();
    assert_eq!(documented, routed, "routes and openapi.json differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_is_served() {
    let s = common::start().await;
    let resp = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let doc: serde_json::Value = resp.json().await.expect("json");
    assert!(doc["paths"]["/admin/v1/publications"].is_object());
}
