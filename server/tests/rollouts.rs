//! Staged rollouts, server side, on SQLite and PostgreSQL: a repository
//! signed by the real `ota-repo` library whose target carries a wave plan,
//! published through the admin API; device reports with groups; per-wave
//! counts; pause/resume/abort with roles; the automatic pause; the device
//! endpoint; hostile names; the `ota-server rollout` CLI.

mod common;

use common::{Backend, TestServer};
use ota_common::rollout::RolloutPlan;
use ota_repo::config::RepoConfig;
use ota_repo::editor::{sign_plan, write_metadata, SignPlan};
use ota_repo::init::{init, InitOptions};
use ota_repo::layout::Layout;
use ota_repo::role::Role as RepoRole;
use ota_repo::state::RepoState;
use ota_server::auth::Role;
use ota_server::credentials;
use ota_server::db::{DatabaseUrl, Db};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const STAGED: &str = "fw/app-2.0.0.img";
const UNSTAGED: &str = "plain-3.0.0.img";

fn plan_json() -> Value {
    json!({
        "seed": "5f0c2a9e41d7b3a8",
        "waves": [
            {"name": "canary", "groups": ["bench"], "not_before": "2026-01-01T00:00:00Z"},
            {"name": "early", "percent": 50, "not_before": "2026-01-02T00:00:00Z"},
            {"name": "all", "percent": 100, "not_before": "2099-01-01T00:00:00Z"}
        ]
    })
}

fn plan() -> RolloutPlan {
    serde_json::from_value(plan_json()).expect("plan")
}

/// `ota-repo init`, then a targets version listing a staged and an unstaged
/// release (custom fields as `ota-repo add` writes them, plus `rollout`),
/// signed with the repository's keys. Images are not needed: the server
/// reads only the metadata for rollouts.
async fn repository(dir: &Path) -> Layout {
    let layout = Layout::new(dir.join("repo"));
    init(&layout, &InitOptions::default())
        .await
        .expect("ota-repo init");
    let config = RepoConfig::load(&layout).expect("repo config");
    let state = RepoState::load(&layout).await.expect("repo state");
    let mut targets = state.targets.signed.clone();
    let hashes = json!({"sha256": "00".repeat(32), "sha512": "11".repeat(64)});
    targets.targets = serde_json::from_value(json!({
        STAGED: {"length": 4, "hashes": hashes, "custom": {
            "version": "2.0.0", "hardware_ids": ["board-a"], "rollout": plan_json()}},
        UNSTAGED: {"length": 4, "hashes": hashes, "custom": {
            "version": "3.0.0", "hardware_ids": ["board-a"]}},
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
    layout
}

/// Uploads every metadata file of the repository in one publication.
async fn publish(s: &TestServer, layout: &Layout) {
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

async fn db_of(s: &TestServer) -> Db {
    let url = match &s.pg {
        Some(pg) => DatabaseUrl::parse(&pg.url).expect("pg url"),
        None => DatabaseUrl::default_for(&s.data_dir),
    };
    Db::open(&url).await.expect("open db")
}

async fn report(s: &TestServer, device: &str, body: Value) {
    let resp = s
        .client
        .post(s.url(&format!("/api/v1/devices/{device}/reports")))
        .json(&body)
        .send()
        .await
        .expect("report");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "report of {device}");
}

fn about(status: &str, groups: &[&str]) -> Value {
    json!({"hardware_id": "board-a", "installed_version": "1.0.0", "status": status,
           "target": STAGED, "target_version": "2.0.0", "reason": "health check app failed",
           "groups": groups})
}

fn idle(groups: &[&str]) -> Value {
    json!({"hardware_id": "board-a", "installed_version": "1.0.0", "status": "idle",
           "groups": groups})
}

async fn get_json(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("send");
    let code = resp.status();
    (code, resp.json().await.unwrap_or(Value::Null))
}

async fn hold(s: &TestServer, target: &str) -> Value {
    let (code, body) = get_json(s.client.get(s.url(&format!("/api/v1/rollouts/{target}")))).await;
    assert_eq!(code, StatusCode::OK, "{target}: {body}");
    body
}

fn wave<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no wave {name} in {status}"))
}

fn change(s: &TestServer, token: &str, target: &str, action: &str) -> reqwest::RequestBuilder {
    s.client
        .post(s.url(&format!("/admin/v1/rollouts/{target}/{action}")))
        .bearer_auth(token)
}

async fn status_holds_and_roles(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path()).await;
    let s = common::start_on(backend).await;
    // Before any publication: every name is simply active.
    assert_eq!(hold(&s, STAGED).await["state"], "active");
    publish(&s, &layout).await;
    let db = db_of(&s).await;
    let viewer = credentials::create_admin_token(&db, "dash", Role::Viewer)
        .await
        .expect("viewer");
    let operator = credentials::create_admin_token(&db, "ops", Role::Operator)
        .await
        .expect("operator");
    let publisher = credentials::create_admin_token(&db, "ci", Role::Publisher)
        .await
        .expect("publisher");

    // Canary: three bench devices; one downloading, one committed, one idle.
    report(&s, "bench-1", about("downloading", &["bench"])).await;
    report(&s, "bench-2", about("committed", &["bench"])).await;
    report(&s, "bench-3", idle(&["bench"])).await;
    // Another board never counts; ten ordinary devices spread over the waves.
    report(
        &s,
        "other-hw",
        json!({"hardware_id": "board-z", "installed_version": "1.0.0", "status": "idle"}),
    )
    .await;
    let p = plan();
    let mut expected = [0u64; 3];
    for i in 0..10 {
        let id = format!("dev-{i}");
        report(&s, &id, idle(&[])).await;
        expected[p.wave_of(&id, &[]).expect("in a wave")] += 1;
    }

    let (code, list) = get_json(
        s.client
            .get(s.url("/admin/v1/rollouts"))
            .bearer_auth(&viewer),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let staged = list
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["target"] == STAGED)
        .expect("staged release listed");
    assert_eq!(staged["version"], "2.0.0");
    assert_eq!(staged["hardware_ids"], json!(["board-a"]));
    assert_eq!(staged["state"], "active");
    assert_eq!(staged["waves"][0]["open"], true);
    assert_eq!(staged["waves"][2]["open"], false);
    assert!(list
        .as_array()
        .expect("list")
        .iter()
        .any(|r| r["target"] == UNSTAGED && r["waves"] == json!([])));

    let (code, status) = get_json(
        s.client
            .get(s.url(&format!("/admin/v1/rollouts/{STAGED}")))
            .bearer_auth(&viewer),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{status}");
    let canary = wave(&status, "canary");
    assert_eq!(canary["total"], 3, "{canary}");
    assert_eq!(canary["downloading"], 1);
    assert_eq!(canary["committed"], 1);
    assert_eq!(canary["pending"], 1);
    assert_eq!(wave(&status, "early")["total"], expected[1] + expected[0]);
    assert_eq!(wave(&status, "early")["pending"], expected[1] + expected[0]);
    assert_eq!(wave(&status, "all")["total"], expected[2]);
    assert_eq!(wave(&status, "(outside any wave)")["total"], 0);

    // Roles: viewer and publisher may not change anything; no token is 401.
    let body = json!({"reason": "looking into crash reports"});
    let resp = change(&s, &viewer, STAGED, "pause")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = change(&s, &publisher, STAGED, "pause")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = s
        .client
        .post(s.url(&format!("/admin/v1/rollouts/{STAGED}/pause")))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = s
        .client
        .get(s.url("/admin/v1/rollouts"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Pause needs a reason; the operator pauses; devices see it.
    let resp = change(&s, &operator, STAGED, "pause")
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(common::error_message(resp).await.contains("reason"));
    let resp = change(&s, &operator, STAGED, "pause")
        .json(&json!({"reason": "x".repeat(1025)}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (code, paused) = get_json(change(&s, &operator, STAGED, "pause").json(&body)).await;
    assert_eq!(code, StatusCode::OK, "{paused}");
    assert_eq!(paused["state"], "paused");
    let seen = hold(&s, STAGED).await;
    assert_eq!(seen["state"], "paused");
    assert_eq!(seen["reason"], "looking into crash reports");
    assert_eq!(seen["target"], STAGED);

    // Resume (no body needed; by the bootstrap token here, to see its name
    // in the history), then abort, which is final.
    let (code, resumed) = get_json(change(&s, &s.token, STAGED, "resume")).await;
    assert_eq!(code, StatusCode::OK, "{resumed}");
    assert_eq!(hold(&s, STAGED).await["state"], "active");
    let (code, _) = get_json(
        change(&s, &operator, STAGED, "abort").json(&json!({"reason": "bricks the modem"})),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(hold(&s, STAGED).await["state"], "aborted");
    let resp = change(&s, &operator, STAGED, "resume")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(common::error_message(resp).await.contains("abort is final"));
    let resp = change(&s, &operator, STAGED, "pause")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CONFLICT);

    // The history names who did what.
    let (_, status) = get_json(
        s.client
            .get(s.url(&format!("/admin/v1/rollouts/{STAGED}")))
            .bearer_auth(&viewer),
    )
    .await;
    let history: Vec<(String, String)> = status["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["state"].as_str().unwrap_or("").to_owned(),
                h["by"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    // Each change under the name of the token that made it: the operator's
    // stored token, and the bootstrap admin-token.
    let ops = |st: &str| (st.to_owned(), "ops".to_owned());
    let bootstrap = ("active".to_owned(), "(admin-token)".to_owned());
    assert_eq!(
        history,
        vec![ops("paused"), bootstrap, ops("aborted")],
        "{status}"
    );

    // An unstaged release cannot be held (devices never ask about it);
    // an unknown target is 404 for operators and active for devices.
    let resp = change(&s, &operator, UNSTAGED, "pause")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let resp = change(&s, &operator, "nope.img", "pause")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = change(&s, &operator, STAGED, "explode")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(hold(&s, "never/published.img").await["state"], "active");

    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("ota_rollouts{state=\"aborted\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("ota_rollout_changes_total{action=\"pause\"} 1"));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_holds_and_roles_sqlite() {
    status_holds_and_roles(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_holds_and_roles_postgres() {
    status_holds_and_roles(Backend::Postgres).await;
}

async fn automatic_pause(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path()).await;
    let s = common::start_on(backend).await;
    publish(&s, &layout).await;

    // Four canaries, all failed: above the rate but below min_devices (5).
    for i in 0..4 {
        let status = if i % 2 == 0 { "failed" } else { "rolled_back" };
        report(&s, &format!("c{i}"), about(status, &["bench"])).await;
    }
    assert_eq!(hold(&s, STAGED).await["state"], "active");
    // Successes bring the wave to min_devices; the verdict comes with the
    // next failure report.
    for i in 4..7 {
        report(&s, &format!("c{i}"), about("committed", &["bench"])).await;
    }
    assert_eq!(hold(&s, STAGED).await["state"], "active");
    report(&s, "c7", about("committed", &["bench"])).await;
    // The verdict comes with the next failure report (or the periodic job).
    report(&s, "c8", about("failed", &["bench"])).await;
    let seen = hold(&s, STAGED).await;
    assert_eq!(seen["state"], "paused", "{seen}");
    assert_eq!(
        seen["reason"],
        "automatic: wave \"canary\": 5 of 9 devices failed or rolled back (56% > 20%)"
    );

    let (code, status) =
        get_json(s.admin(Method::GET, &format!("/admin/v1/rollouts/{STAGED}"))).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["changed_by"], "automatic");
    assert_eq!(wave(&status, "canary")["failed"], 3);
    assert_eq!(wave(&status, "canary")["rolled_back"], 2);
    let problems = status["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 5);
    assert_eq!(problems[0]["reason"], "health check app failed");
    assert_eq!(problems[0]["wave"], "canary");

    // Resumed by an operator, who saw these figures: it stays active (also
    // through the periodic check) until a new failure arrives.
    let (code, _) =
        get_json(s.admin(Method::POST, &format!("/admin/v1/rollouts/{STAGED}/resume"))).await;
    assert_eq!(code, StatusCode::OK);
    let checker = ota_server::rollout::Rollouts {
        db: db_of(&s).await,
        storage: std::sync::Arc::new(
            ota_server::storage::Storage::open(&s.data_dir).expect("storage"),
        ),
        metrics: Default::default(),
        settings: Default::default(),
    };
    assert_eq!(checker.check_all().await.expect("check"), 0);
    assert_eq!(hold(&s, STAGED).await["state"], "active");
    report(&s, "c9", about("rolled_back", &["bench"])).await;
    let seen = hold(&s, STAGED).await;
    assert_eq!(seen["state"], "paused", "{seen}");
    assert_eq!(
        seen["reason"],
        "automatic: wave \"canary\": 6 of 10 devices failed or rolled back (60% > 20%)"
    );
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("ota_rollout_automatic_pauses_total 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_pause_sqlite() {
    automatic_pause(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_pause_postgres() {
    automatic_pause(Backend::Postgres).await;
}

/// The periodic job pauses too (failures recorded while nothing evaluated
/// them: here, written by an older report path), on one instance of two
/// sharing PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_check_pauses_once_across_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path()).await;
    let a = common::start_on(Backend::Postgres).await;
    publish(&a, &layout).await;
    let db = db_of(&a).await;
    // Failures recorded straight into the database: no report-path check.
    for i in 0..6 {
        let r: ota_common::wire::DeviceReport =
            serde_json::from_value(about("failed", &["bench"])).expect("report");
        db.record_report(&format!("c{i}"), &r, "2026-11-29T00:00:00.000Z")
            .await
            .expect("record");
    }
    let storage =
        std::sync::Arc::new(ota_server::storage::Storage::open(&a.data_dir).expect("storage"));
    let rollouts = |db: Db| ota_server::rollout::Rollouts {
        db,
        storage: std::sync::Arc::clone(&storage),
        metrics: Default::default(),
        settings: Default::default(),
    };
    let one = rollouts(db.clone());
    let two = rollouts(db_of(&a).await);
    // While one instance holds the job lock, the other skips its round.
    let lock = db
        .try_lock_rollout_job()
        .await
        .expect("lock")
        .expect("free");
    assert_eq!(two.check_all().await.expect("check"), 0);
    assert_eq!(hold(&a, STAGED).await["state"], "active");
    lock.release().await;
    let (x, y) = tokio::join!(one.check_all(), two.check_all());
    assert_eq!(x.expect("one") + y.expect("two"), 1);
    let seen = hold(&a, STAGED).await;
    assert_eq!(seen["state"], "paused");
    assert_eq!(
        seen["reason"],
        "automatic: wave \"canary\": 6 of 6 devices failed or rolled back (100% > 20%)"
    );
    let history = db.rollout_history(STAGED).await.expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].by, "automatic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_target_names_and_groups() {
    let s = common::start().await;
    for target in [
        "/api/v1/rollouts/..%2Fetc%2Fpasswd",
        "/api/v1/rollouts/a/../../b",
        "/api/v1/rollouts/a%00b",
        "/api/v1/rollouts/a//b",
        "/api/v1/rollouts/%FF",
    ] {
        let code = s.raw_status("GET", target).await;
        assert!((400..500).contains(&code), "{target}: {code}");
    }
    for target in [
        "/admin/v1/rollouts/..%2Fx/pause",
        "/admin/v1/rollouts/a/../../b/pause",
        "/admin/v1/rollouts/pause",
    ] {
        let code = s.raw_status_admin("POST", target).await;
        assert!((400..500).contains(&code), "{target}: {code}");
    }
    let long = format!("/api/v1/rollouts/{}", "a".repeat(2000));
    let code = s.raw_status("GET", &long).await;
    assert_eq!(code, 400);
    // Groups must be ids.
    let resp = s
        .client
        .post(s.url("/api/v1/devices/d1/reports"))
        .json(&idle(&["not an id"]))
        .send()
        .await
        .expect("report");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(common::error_message(resp).await.contains("group"));
    // A bad body on a change is named.
    let resp = s
        .admin(Method::POST, &format!("/admin/v1/rollouts/{STAGED}/pause"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

/// `ota-server rollout ...`, the real binary, on the server's data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_pauses_and_shows_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = repository(dir.path()).await;
    let s = common::start().await;
    publish(&s, &layout).await;
    report(&s, "bench-1", about("rolled_back", &["bench"])).await;
    let data_dir = s.data_dir.clone();
    let cli = move |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ota-server"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .env_remove("OTA_SERVER_DATABASE_URL")
            .env("USER", "alice")
            .output()
            .expect("run ota-server");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["rollout", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(STAGED) && out.contains("2/3, next all 2099-01-01T00:00:00Z"),
        "{out}"
    );
    assert!(out.contains(UNSTAGED) && out.contains("unstaged"), "{out}");

    let (ok, _, err) = cli(&["rollout", "pause", STAGED]);
    assert!(!ok, "pause without --reason must fail");
    assert!(err.contains("--reason"), "{err}");
    let (ok, out, err) = cli(&["rollout", "pause", STAGED, "--reason", "modem crash"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("{STAGED}: paused (modem crash)\n"));
    assert_eq!(hold(&s, STAGED).await["state"], "paused");

    let (ok, out, err) = cli(&["rollout", "status", STAGED]);
    assert!(ok, "{err}");
    assert!(out.contains("state: paused (by cli:alice"), "{out}");
    assert!(out.contains("WAVE"), "{out}");
    let canary_row = out
        .lines()
        .find(|l| l.starts_with("canary"))
        .expect("canary row");
    let cells: Vec<&str> = canary_row.split_whitespace().collect();
    // name, opens, open, total, pending, downloading, installed, committed, rolled_back
    assert_eq!(cells[3], "1", "{canary_row}");
    assert_eq!(cells[8], "1", "{canary_row}");
    assert!(out.contains("bench-1  canary  rolled_back"), "{out}");

    let (ok, out, err) = cli(&["rollout", "status", STAGED, "--json"]);
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["state"], "paused");

    let (ok, _, err) = cli(&["rollout", "resume", STAGED]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["rollout", "abort", STAGED, "--reason", "recalled"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["rollout", "resume", STAGED]);
    assert!(!ok);
    assert!(err.contains("abort is final"), "{err}");
    let (ok, _, err) = cli(&["rollout", "status", "../etc/passwd"]);
    assert!(!ok);
    assert!(err.contains("invalid target path"), "{err}");
}

/// A staged release signed by a delegated role (`ota-repo delegate`, then
/// `add --role`): the server lists it, counts devices per wave, pauses it,
/// and the device endpoint reports the hold.
#[tokio::test]
async fn a_staged_release_in_a_delegated_role() {
    use ota_repo::add::AddOptions;
    use ota_repo::delegation::{self, DelegateOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(dir.path().join("repo"));
    init(&layout, &InitOptions::default())
        .await
        .expect("ota-repo init");
    delegation::delegate(
        &layout,
        &DelegateOptions {
            name: "board-a".to_owned(),
            paths: vec!["board-a/*".to_owned()],
            generate_key: Some(ota_repo::keys::KeyType::Ed25519),
            threshold: 1,
            ..DelegateOptions::default()
        },
    )
    .await
    .expect("delegate");
    let image = dir.path().join("fw.img");
    std::fs::write(&image, b"board a firmware").expect("image");
    let target = "board-a/fw-2.0.0.img";
    delegation::add(
        &layout,
        "board-a",
        &AddOptions {
            image,
            version: "2.0.0".to_owned(),
            hardware_ids: vec!["board-a".to_owned()],
            notes: None,
            name: Some(target.to_owned()),
        },
        Some(plan()),
        &ota_repo::add::Packing::raw(),
    )
    .await
    .expect("add --role");

    let s = common::start_on(Backend::Sqlite).await;
    publish(&s, &layout).await;
    let db = db_of(&s).await;
    let operator = credentials::create_admin_token(&db, "ops", Role::Operator)
        .await
        .expect("operator");
    let mut downloading = about("downloading", &["bench"]);
    downloading["target"] = json!(target);
    report(&s, "bench-1", downloading).await;
    report(&s, "bench-2", idle(&["bench"])).await;
    let (code, list) = get_json(
        s.client
            .get(s.url("/admin/v1/rollouts"))
            .bearer_auth(&operator),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let listed = list
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["target"] == target)
        .unwrap_or_else(|| panic!("delegated release listed: {list}"));
    assert_eq!(listed["version"], "2.0.0");
    assert_eq!(listed["waves"][0]["open"], true);

    let (code, status) = get_json(
        s.client
            .get(s.url(&format!("/admin/v1/rollouts/{target}")))
            .bearer_auth(&operator),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{status}");
    let canary = wave(&status, "canary");
    assert_eq!(canary["total"], 2, "{canary}");
    assert_eq!(canary["downloading"], 1);
    assert_eq!(canary["pending"], 1);

    let (code, paused) = get_json(
        change(&s, &operator, target, "pause").json(&json!({"reason": "board a reboots"})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{paused}");
    let seen = hold(&s, target).await;
    assert_eq!(seen["state"], "paused");
    assert_eq!(seen["reason"], "board a reboots");
}
