//! The dashboard's server side over real HTTP: the page and its headers,
//! log-in with admin tokens of each role, the session cookie, CSRF and
//! Origin checks on actions, revocation, and the read endpoints the page
//! uses (fleet overview with ETags, one device, releases with role expiries)
//! against wrong tokens, wrong roles and hostile query strings.

mod common;

use common::TestServer;
use ota_repo::config::RepoConfig;
use ota_repo::editor::{sign_plan, write_metadata, SignPlan};
use ota_repo::init::{init, InitOptions};
use ota_repo::layout::Layout;
use ota_repo::role::Role as RepoRole;
use ota_repo::state::RepoState;
use ota_server::auth::Role;
use ota_server::credentials;
use ota_server::db::{DatabaseUrl, Db};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const STAGED: &str = "fw/app-2.0.0.img";

/// A repository whose targets list one staged release, signed by the real
/// `ota-repo` library, published through the admin API.
async fn publish_repository(s: &TestServer, dir: &Path) {
    let layout = Layout::new(dir.join("repo"));
    init(&layout, &InitOptions::default())
        .await
        .expect("ota-repo init");
    let config = RepoConfig::load(&layout).expect("repo config");
    let state = RepoState::load(&layout).await.expect("repo state");
    let mut targets = state.targets.signed.clone();
    targets.targets = serde_json::from_value(json!({
        STAGED: {"length": 4096, "hashes": {"sha256": "ab".repeat(32), "sha512": "cd".repeat(64)},
            "custom": {"version": "2.0.0", "hardware_ids": ["board-a"], "rollout": {
                "seed": "5f0c2a9e41d7b3a8",
                "waves": [{"name": "canary", "groups": ["bench"], "not_before": "2026-01-01T00:00:00Z"},
                          {"name": "all", "percent": 100, "not_before": "2026-01-02T00:00:00Z"}]}}},
    }))
    .expect("targets");
    let expires = BTreeMap::from([
        (RepoRole::Targets, state.targets.signed.expires),
        (RepoRole::Snapshot, state.snapshot.signed.expires),
        (RepoRole::Timestamp, state.timestamp.signed.expires),
    ]);
    let files = sign_plan(
        &layout,
        &config,
        &state,
        SignPlan {
            new_targets: Some(targets),
            snapshot: true,
            timestamp: true,
            expires,
            ..SignPlan::default()
        },
    )
    .await
    .expect("sign");
    write_metadata(&layout, &files).expect("write metadata");

    let resp = s
        .admin(Method::POST, "/admin/v1/publications")
        .send()
        .await
        .expect("open");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for entry in std::fs::read_dir(layout.metadata_dir()).expect("metadata") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        let resp = s
            .admin(
                Method::PUT,
                &format!("/admin/v1/publications/{id}/metadata/{name}"),
            )
            .body(std::fs::read(&path).expect("read"))
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{name}");
    }
    let resp = s
        .admin(Method::POST, &format!("/admin/v1/publications/{id}/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Tokens of each role: (viewer, operator, publisher).
async fn tokens(s: &TestServer) -> (String, String, String) {
    let db = Db::open(&DatabaseUrl::default_for(&s.data_dir))
        .await
        .expect("db");
    let mk = |name: &'static str, role| {
        let db = db.clone();
        async move {
            credentials::create_admin_token(&db, name, role)
                .await
                .expect("token")
        }
    };
    (
        mk("dash", Role::Viewer).await,
        mk("ops", Role::Operator).await,
        mk("ci", Role::Publisher).await,
    )
}

async fn report(s: &TestServer, device: &str, hardware: &str, status: &str, groups: &[&str]) {
    let body = json!({"hardware_id": hardware, "installed_version": "1.0.0", "booted_slot": "A",
        "status": status, "target": STAGED, "target_version": "2.0.0",
        "reason": (status == "rolled_back").then_some("health check <script>alert(1)</script> failed"),
        "groups": groups});
    let resp = s
        .client
        .post(s.url(&format!("/api/v1/devices/{device}/reports")))
        .json(&body)
        .send()
        .await
        .expect("report");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "report of {device}");
}

/// A browser's session: the cookie and the CSRF token from log-in.
struct Browser {
    cookie: String,
    csrf: String,
    info: Value,
}

async fn log_in(s: &TestServer, token: &str) -> Browser {
    let resp = s
        .client
        .post(s.url("/dashboard/session"))
        .header("Origin", &s.base)
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("log in");
    assert_eq!(resp.status(), StatusCode::OK);
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .expect("Set-Cookie")
        .to_str()
        .expect("text")
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{attr} in {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    let info: Value = resp.json().await.expect("json");
    Browser {
        cookie,
        csrf: info["csrf_token"].as_str().expect("csrf").to_owned(),
        info,
    }
}

impl Browser {
    fn req(&self, s: &TestServer, method: Method, path: &str) -> reqwest::RequestBuilder {
        s.client
            .request(method, s.url(path))
            .header("Cookie", &self.cookie)
    }

    /// A state-changing request as the page makes it: CSRF token, same Origin.
    fn act(&self, s: &TestServer, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.req(s, method, path)
            .header("X-CSRF-Token", &self.csrf)
            .header("Origin", &s.base)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_strict_headers_and_no_inline_script() {
    let s = common::start().await;
    let resp = s.client.get(s.url("/dashboard")).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    let csp = h["content-security-policy"].to_str().expect("csp");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{part} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-type"]
        .to_str()
        .expect("type")
        .starts_with("text/html"));
    let html = resp.text().await.expect("html");
    // Every script is a file of this origin; nothing refers elsewhere.
    for script in html.split("<script").skip(1) {
        assert!(
            script.trim_start().starts_with("src=\"/dashboard/"),
            "{script}"
        );
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    for (file, kind) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let resp = s
            .client
            .get(s.url(&format!("/dashboard/assets/{file}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with(kind));
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        let text = resp.text().await.expect("text");
        assert!(!text.contains("innerHTML"), "{file} must not use innerHTML");
    }
    for bad in ["/dashboard/assets/nope.js", "/dashboard/assets/..%2Fapp.js"] {
        assert_eq!(
            s.client.get(s.url(bad)).send().await.expect("get").status(),
            StatusCode::NOT_FOUND,
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_in_by_role_and_actions_need_the_csrf_token_and_same_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = common::start().await;
    publish_repository(&s, dir.path()).await;
    let (viewer, operator, publisher) = tokens(&s).await;
    let login = |body: Value, origin: Option<&str>| {
        let mut r = s.client.post(s.url("/dashboard/session")).json(&body);
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        r.send()
    };

    // Wrong token, publisher's token, cross-site log-in, bad bodies.
    let resp = login(json!({"token": "not-a-token"}), None)
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());
    let resp = login(json!({ "token": publisher }), None)
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(common::error_message(resp).await.contains("publisher"));
    let resp = login(json!({ "token": viewer }), Some("http://evil.example"))
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    for (body, code) in [
        ("not json".to_owned(), StatusCode::BAD_REQUEST),
        (
            json!({"token": viewer, "role": "operator"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{{\"token\": \"{}\"}}", "a".repeat(5000)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (json!({"token": "  "}).to_string(), StatusCode::UNAUTHORIZED),
    ] {
        let resp = s
            .client
            .post(s.url("/dashboard/session"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), code);
    }

    // A viewer reads through the cookie but cannot act.
    let v = log_in(&s, &viewer).await;
    assert_eq!(v.info["role"], "viewer");
    assert_eq!(v.info["can_act"], false);
    let resp = v
        .req(&s, Method::GET, "/admin/v1/fleet")
        .send()
        .await
        .expect("fleet");
    assert_eq!(resp.status(), StatusCode::OK);
    let who = v
        .req(&s, Method::GET, "/dashboard/session")
        .send()
        .await
        .expect("who");
    assert_eq!(who.json::<Value>().await.expect("json")["name"], "dash");
    let pause = format!("/admin/v1/rollouts/{STAGED}/pause");
    let resp = v
        .act(&s, Method::POST, &pause)
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .expect("pause");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(common::error_message(resp)
        .await
        .contains("needs role operator"));

    // An operator acts only with the CSRF token and from the same origin.
    let o = log_in(&s, &operator).await;
    assert_eq!(o.info["can_act"], true);
    let refused = vec![
        // No CSRF token.
        o.req(&s, Method::POST, &pause),
        // Another session's token.
        o.req(&s, Method::POST, &pause)
            .header("X-CSRF-Token", &v.csrf),
        // The right token from another origin.
        o.req(&s, Method::POST, &pause)
            .header("X-CSRF-Token", &o.csrf)
            .header("Origin", "http://evil.example"),
        o.act(&s, Method::POST, &pause)
            .header("Sec-Fetch-Site", "cross-site"),
    ];
    for r in refused {
        let resp = r.json(&json!({"reason": "x"})).send().await.expect("send");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    let (code, hold) = {
        let resp = o
            .act(&s, Method::POST, &pause)
            .json(&json!({"reason": "QA"}))
            .send()
            .await
            .expect("pause");
        (resp.status(), resp.json::<Value>().await.expect("json"))
    };
    assert_eq!(code, StatusCode::OK, "{hold}");
    assert_eq!(hold["state"], "paused");
    // Recorded under the token's name, as with a bearer token.
    let status = o
        .req(&s, Method::GET, &format!("/admin/v1/rollouts/{STAGED}"))
        .send()
        .await
        .expect("status")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(status["changed_by"], "ops");

    // Log-out needs the CSRF token too, and ends the session.
    let resp = o
        .req(&s, Method::DELETE, "/dashboard/session")
        .send()
        .await
        .expect("logout");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = o
        .act(&s, Method::DELETE, "/dashboard/session")
        .send()
        .await
        .expect("logout");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .expect("text")
        .contains("Max-Age=0"));
    let resp = o
        .req(&s, Method::GET, "/admin/v1/fleet")
        .send()
        .await
        .expect("fleet");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Revoking the token ends its sessions at once.
    let db = Db::open(&DatabaseUrl::default_for(&s.data_dir))
        .await
        .expect("db");
    credentials::revoke_admin_token(&db, "dash")
        .await
        .expect("revoke");
    for path in ["/admin/v1/fleet", "/dashboard/session"] {
        let resp = v.req(&s, Method::GET, path).send().await.expect("get");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // A made-up cookie is no session.
    let resp = s
        .client
        .get(s.url("/admin/v1/fleet"))
        .header("Cookie", "ota_session=00ff")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_overview_counts_filters_and_answers_304_when_unchanged() {
    let s = common::start().await;
    let (viewer, _, publisher) = tokens(&s).await;
    report(&s, "bench-1", "board-a", "committed", &["bench"]).await;
    report(&s, "bench-2", "board-a", "rolled_back", &["bench"]).await;
    report(&s, "field-1", "board-b", "downloading", &[]).await;

    let resp = s
        .client
        .get(s.url("/admin/v1/fleet"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("fleet");
    assert_eq!(resp.status(), StatusCode::OK);
    let etag = resp.headers()["etag"].clone();
    let all: Value = resp.json().await.expect("json");
    assert_eq!(all["total"], 3);
    assert_eq!(all["by_status"]["committed"], 1);
    assert_eq!(all["by_status"]["rolled_back"], 1);
    assert_eq!(all["by_status"]["idle"], 0);
    assert_eq!(all["by_hardware_id"]["board-b"], 1);
    assert_eq!(all["devices"].as_array().expect("devices").len(), 3);

    // Unchanged: 304 without a body; a new report changes the answer.
    let mut inm = HeaderMap::new();
    inm.insert("if-none-match", etag.clone());
    let resp = s
        .client
        .get(s.url("/admin/v1/fleet"))
        .bearer_auth(&viewer)
        .headers(inm.clone())
        .send()
        .await
        .expect("fleet");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert!(resp.bytes().await.expect("body").is_empty());
    report(&s, "field-1", "board-b", "installed", &[]).await;
    let resp = s
        .client
        .get(s.url("/admin/v1/fleet"))
        .bearer_auth(&viewer)
        .headers(inm)
        .send()
        .await
        .expect("fleet");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_ne!(resp.headers()["etag"], etag);

    let get = |query: &str| {
        s.client
            .get(s.url(&format!("/admin/v1/fleet?{query}")))
            .bearer_auth(&viewer)
            .send()
    };
    for (query, ids) in [
        ("status=rolled_back", vec!["bench-2"]),
        ("hardware_id=board-b", vec!["field-1"]),
        ("q=BENCH&limit=1", vec!["bench-1"]),
        ("q=%3Cscript%3E", vec!["bench-2"]),
        ("q=nothing-like-this", vec![]),
        ("version=1.0.0&status=committed", vec!["bench-1"]),
    ] {
        let body: Value = get(query).await.expect("get").json().await.expect("json");
        let got: Vec<&str> = body["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| d["device_id"].as_str().expect("id"))
            .collect();
        assert_eq!(got, ids, "{query}");
        assert_eq!(body["total"], 3, "counts are whole-fleet: {query}");
    }
    let long = format!("q={}", "x".repeat(2000));
    let huge = format!("limit={}", "9".repeat(40));
    for hostile in [
        long.as_str(),
        huge.as_str(),
        "limit=0",
        "limit=-5",
        "status=exploded",
        "q=%ff%fe%fd",
        "q=%00",
        "q=a%",
        "hardware_id=x%27%20OR%201%3D1--",
        "status=idle'%20OR%20'1'='1",
        "q=1&q=2",
        "order=device_id;DROP%20TABLE%20devices",
    ] {
        let resp = get(hostile).await.expect("get");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{hostile}");
        assert!(!common::error_message(resp).await.is_empty());
    }
    // Still all there after the SQL-ish ones.
    let body: Value = get("").await.expect("get").json().await.expect("json");
    assert_eq!(body["total"], 3);

    for (token, code) in [
        ("wrong", StatusCode::UNAUTHORIZED),
        (publisher.as_str(), StatusCode::FORBIDDEN),
    ] {
        for path in [
            "/admin/v1/fleet",
            "/admin/v1/releases",
            "/admin/v1/devices/bench-1",
        ] {
            let resp = s
                .client
                .get(s.url(path))
                .bearer_auth(token)
                .send()
                .await
                .expect("get");
            assert_eq!(resp.status(), code, "{path}");
        }
    }
    let resp = s
        .client
        .get(s.url("/admin/v1/fleet"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_and_the_signed_releases_with_role_expiries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = common::start().await;
    let (viewer, _, _) = tokens(&s).await;
    let get = |path: &str| s.client.get(s.url(path)).bearer_auth(&viewer).send();

    // Before any publication: nothing listed, no error.
    let empty: Value = get("/admin/v1/releases")
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(empty, json!({"roles": [], "releases": []}));

    publish_repository(&s, dir.path()).await;
    report(&s, "bench-1", "board-a", "committed", &["bench"]).await;

    let resp = get("/admin/v1/releases").await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("etag"));
    let body: Value = resp.json().await.expect("json");
    let release = &body["releases"][0];
    assert_eq!(release["target"], STAGED);
    assert_eq!(release["version"], "2.0.0");
    assert_eq!(release["hardware_ids"], json!(["board-a"]));
    assert_eq!(release["length"], 4096);
    assert_eq!(release["hashes"]["sha256"], "ab".repeat(32));
    assert_eq!(release["staged"], true);
    let roles: Vec<&str> = body["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .map(|r| r["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["root", "timestamp", "snapshot", "targets"]);
    for r in body["roles"].as_array().expect("roles") {
        assert!(
            r["expires"].as_str().expect("expires").ends_with('Z'),
            "{r}"
        );
        // ota-repo's default lifetimes are far from their warning periods.
        assert_eq!(r["expires_soon"], false, "{r}");
        assert_eq!(r["expired"], false, "{r}");
    }

    let resp = get("/admin/v1/devices/bench-1").await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    let device: Value = resp.json().await.expect("json");
    assert_eq!(device["booted_slot"], "A");
    assert_eq!(device["status"], "committed");
    assert_eq!(
        get("/admin/v1/devices/nobody").await.expect("get").status(),
        StatusCode::NOT_FOUND
    );
    for bad in ["/admin/v1/devices/a%20b", "/admin/v1/devices/%ff"] {
        assert_eq!(
            get(bad).await.expect("get").status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_session_cookie_is_secure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let files = ota_server::config::TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::write(&files.cert, generated.cert.pem()).expect("cert");
    std::fs::write(&files.key, generated.key_pair.serialize_pem()).expect("key");
    let tls = files.clone();
    let s = common::start_with(move |c| c.tls = Some(tls)).await;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).expect("pem"),
        )
        .resolve("localhost", s.addr)
        .build()
        .expect("client");
    let base = format!("https://localhost:{}", s.addr.port());
    let resp = client
        .post(format!("{base}/dashboard/session"))
        .header("Origin", &base)
        .json(&json!({"token": s.token}))
        .send()
        .await
        .expect("log in");
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Browsers speak HTTP/2 over TLS (ALPN): so does this client.
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    // The bootstrap token holds every role: it may act.
    let info: Value = resp.json().await.expect("json");
    assert_eq!(info["role"], "admin");
    assert_eq!(info["can_act"], true);
    // Over HTTP/2 there is no Host header: the Origin is checked against
    // the request's authority, and an action passes the CSRF checks (then
    // finds no such release).
    let session = cookie.split(';').next().expect("name=value").to_owned();
    let act = |origin: &str| {
        client
            .post(format!("{base}/admin/v1/rollouts/nope.img/pause"))
            .header("Cookie", &session)
            .header("X-CSRF-Token", info["csrf_token"].as_str().expect("csrf"))
            .header("Origin", origin)
            .json(&json!({"reason": "x"}))
            .send()
    };
    let resp = act(&base).await.expect("pause");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = act("https://evil.example").await.expect("pause");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

/// Every endpoint the page calls: a wrong token is 401, a session without
/// the CSRF token cannot act, and no query string makes any of them fail
/// with a server error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_the_page_uses_refuses_strangers_and_survives_hostile_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = common::start().await;
    publish_repository(&s, dir.path()).await;
    let (viewer, operator, _) = tokens(&s).await;
    report(&s, "bench-1", "board-a", "rolled_back", &["bench"]).await;
    let reads = [
        "/admin/v1/fleet".to_owned(),
        "/admin/v1/devices/bench-1".to_owned(),
        "/admin/v1/devices/bench-1/events".to_owned(),
        "/admin/v1/releases".to_owned(),
        "/admin/v1/rollouts".to_owned(),
        format!("/admin/v1/rollouts/{STAGED}"),
    ];
    let long = format!("q={}", "%41".repeat(3000));
    let hostile = [
        long.as_str(),
        "limit=18446744073709551616",
        "q=%ff",
        "q=%",
        "status='%20OR%201=1;--",
        "a=1&a=2&a=3",
        "%00=%00",
        "q=%E2%80%AE",
    ];
    for path in &reads {
        let resp = s
            .client
            .get(s.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        let resp = s.client.get(s.url(path)).send().await.expect("get");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        for query in hostile {
            let status = s
                .client
                .get(s.url(&format!("{path}?{query}")))
                .bearer_auth(&viewer)
                .send()
                .await
                .expect("get")
                .status();
            assert!(
                status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
                "{path}?{query}: {status}"
            );
        }
    }
    let resp = s
        .client
        .get(s.url("/dashboard/session"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let o = log_in(&s, &operator).await;
    for action in ["pause", "resume", "abort"] {
        let path = format!("/admin/v1/rollouts/{STAGED}/{action}");
        let resp = o
            .req(&s, Method::POST, &path)
            .json(&json!({"reason": "x"}))
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{action}");
        assert!(common::error_message(resp).await.contains("CSRF"));
        let resp = s
            .client
            .post(s.url(&path))
            .bearer_auth("wrong")
            .json(&json!({"reason": "x"}))
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{action}");
    }
    // Nothing changed.
    let status: Value = o
        .req(&s, Method::GET, &format!("/admin/v1/rollouts/{STAGED}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(status["state"], "active");
}
