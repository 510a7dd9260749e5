//! Delegated targets roles end to end, through the real `ota-repo` binary:
//! `delegate`, `add --role`, `status`, `resign --role`, `publish`, and a
//! device (our own TUF client, from a fresh copy of the first root) that
//! lists and downloads what the delegated role signed.

use ota_common::tuf::{ClientOptions, FileTransport, TufClient};
use ota_repo::state::dir_url;
use std::path::Path;
use std::process::{Command, Output};

fn ota_repo(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ota-repo"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("OTA_PKCS11_PIN")
        .env("OTA_OPERATOR", "dana")
        .output()
        .expect("run ota-repo")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a refusal: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A device that trusts only version 1 of root, reading a published directory.
fn device(state_dir: &Path, www: &Path) -> TufClient<FileTransport> {
    let root = std::fs::read(www.join("metadata/1.root.json")).expect("root");
    TufClient::<FileTransport>::init(state_dir, &root).expect("client init");
    let options = ClientOptions::new(
        dir_url(&www.join("metadata")).expect("url"),
        dir_url(&www.join("targets")).expect("url"),
    );
    TufClient::open(state_dir, options, FileTransport).expect("client open")
}

fn add(repo: &Path, img: &Path, name: &str, version: &str, role: Option<&str>) -> Output {
    let mut args = vec![
        "add",
        s(img),
        "--name",
        name,
        "--version",
        version,
        "--hardware-id",
        "board-a",
    ];
    if let Some(r) = role {
        args.extend(["--role", r]);
    }
    ota_repo(repo, &args)
}

#[test]
fn a_delegated_role_signs_releases_that_devices_list_and_install() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"]));
    let out = ok(ota_repo(
        &repo,
        &[
            "delegate",
            "--name",
            "board-a",
            "--paths",
            "board-a/*",
            "--generate-key",
            "--key-type",
            "ecdsa",
        ],
    ));
    assert!(
        out.contains(
            "delegated board-a/* to role board-a (1 key(s), threshold 1); signed targets version 2"
        ),
        "{out}"
    );
    assert!(repo.join("keys/board-a-1.pem").exists());
    assert!(repo.join("metadata/1.board-a.json").exists());
    // A second delegation of the same name, a top-level name, bad paths.
    for (args, want) in [
        (
            vec!["--name", "board-a", "--paths", "x/*"],
            "already exists",
        ),
        (
            vec!["--name", "targets", "--paths", "x/*"],
            "top-level role",
        ),
        (vec!["--name", "b", "--paths", "/abs/*"], "invalid --paths"),
    ] {
        let mut full = vec!["delegate", "--generate-key"];
        full.extend(args);
        let err = fails(ota_repo(&repo, &full));
        assert!(err.contains(want), "{err}");
    }

    let img = t.join("fw.img");
    let content = vec![0x42u8; 5000];
    std::fs::write(&img, &content).expect("img");
    let out = ok(add(
        &repo,
        &img,
        "board-a/fw-1.img",
        "1.0.0",
        Some("board-a"),
    ));
    assert!(
        out.contains("to delegated role board-a; signed board-a version 2"),
        "{out}"
    );
    // Outside the role's paths ('*' does not cross '/'): refused before copying.
    for name in ["other.img", "board-a/sub/fw.img"] {
        let err = fails(add(&repo, &img, name, "1.0.1", Some("board-a")));
        assert!(
            err.contains("outside the paths of delegated role board-a"),
            "{err}"
        );
    }
    let err = fails(add(&repo, &img, "board-a/fw-x.img", "1.0.1", Some("nope")));
    assert!(err.contains("no delegated role \"nope\""), "{err}");
    // One name, one image: top-level cannot list it again, nor the same version.
    let err = fails(add(&repo, &img, "board-a/fw-1.img", "9.0.0", None));
    assert!(err.contains("already in the repository"), "{err}");
    let err = fails(add(&repo, &img, "top.img", "1.0.0", None));
    assert!(err.contains("version 1.0.0 is already published"), "{err}");
    let top = t.join("top.img");
    std::fs::write(&top, b"top level image").expect("img");
    ok(add(&repo, &top, "top.img", "0.9.0", None));

    let status = ota_repo(&repo, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status.status.code(), Some(0), "{text}");
    assert!(
        text.contains("delegated role board-a: version 2, expires")
            && text.contains("paths board-a/*")
            && text.contains("threshold 1 of 1 key(s)")
            && text.contains("ecdsa/ecdsa-sha2-nistp256")
            && text.contains("keys/board-a-1.pem")
            && text.contains(
                "board-a/fw-1.img  version 1.0.0  hardware ids board-a  5000 bytes  (role board-a)"
            ),
        "{text}"
    );

    let www = t.join("www");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    assert!(www.join("metadata/2.board-a.json").exists());
    let state = t.join("device");
    let mut client = device(&state, &www);
    client.refresh().expect("device accepts the repository");
    let names: Vec<String> = client
        .all_targets()
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["board-a/fw-1.img", "top.img"]);
    let target = client
        .find_target("board-a/fw-1.img")
        .expect("lookup")
        .expect("listed");
    assert_eq!(
        target.release().expect("release").version.to_string(),
        "1.0.0"
    );
    let dest = t.join("downloaded");
    client
        .download_target(&target, &dest)
        .expect("image verifies");
    assert_eq!(std::fs::read(&dest).expect("image"), content);

    // Re-signing the delegated role: next version, snapshot and timestamp follow.
    let out = ok(ota_repo(&repo, &["resign", "--role", "board-a"]));
    assert!(
        out.contains("signed board-a version 3")
            && out.contains("signed snapshot version 5")
            && out.contains("signed timestamp version 5"),
        "{out}"
    );
    // Top-level re-signing keeps the role listed in the snapshot.
    ok(ota_repo(&repo, &["resign", "--role", "targets"]));
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    client.refresh().expect("refresh");
    assert_eq!(client.all_targets().expect("list").len(), 2);

    // Every signature of the role is in the audit log under its name.
    let log = std::fs::read_to_string(repo.join("audit.jsonl")).expect("log");
    let by_role = log
        .lines()
        .filter(|l| l.contains("\"role\":\"board-a\"") && l.contains("\"action\":\"sign\""))
        .count();
    assert_eq!(by_role, 3, "versions 1, 2 and 3: {log}");
    ok(ota_repo(&repo, &["audit", "verify"]));
}

#[test]
fn snapshot_offline_leaves_the_delegated_release_pending_and_heals_after_a_cut() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"]));
    ok(ota_repo(
        &repo,
        &[
            "delegate",
            "--name",
            "board-a",
            "--paths",
            "board-a/*",
            "--generate-key",
        ],
    ));
    let snap_key = t.join("snapshot.pem");
    std::fs::rename(repo.join("keys/snapshot-1.pem"), &snap_key).expect("mv");
    let path = repo.join("repo.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("repo.json")).expect("json");
    config["roles"]["snapshot"]["keys"] = serde_json::json!([]);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");

    let img = t.join("fw.img");
    std::fs::write(&img, b"board a firmware").expect("img");
    let out = ok(add(
        &repo,
        &img,
        "board-a/fw-1.img",
        "1.0.0",
        Some("board-a"),
    ));
    assert!(
        out.contains("snapshot version 3 is pending signatures: 0 of 1"),
        "{out}"
    );
    // The role's new file is kept: the pending snapshot lists it.
    let o = ota_repo(&repo, &["status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(repo.join("metadata/2.board-a.json").exists());

    // A cut before the snapshot ceremony was opened: the next add heals.
    std::fs::remove_file(repo.join("ceremony/snapshot.json")).expect("cut");
    let o = add(&repo, &img, "board-a/fw-1.img", "1.0.0", Some("board-a"));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    assert!(
        err.contains("2.board-a.json: written by a signing run"),
        "{err}"
    );

    let payload = t.join("snapshot.payload.json");
    let out = ok(ota_repo(
        &repo,
        &[
            "ceremony",
            "export",
            "--role",
            "snapshot",
            "--out",
            s(&payload),
        ],
    ));
    assert!(out.contains("board-a.json: version 2"), "{out}");
    let sig = t.join("snapshot.sig.json");
    ok(ota_repo(
        &t.join("no-repo"),
        &[
            "sign",
            "--payload",
            s(&payload),
            "--key",
            s(&snap_key),
            "--out",
            s(&sig),
        ],
    ));
    ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "snapshot", s(&sig)],
    ));
    let www = t.join("www");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    let mut client = device(&t.join("device"), &www);
    client.refresh().expect("refresh");
    let names: Vec<String> = client
        .all_targets()
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["board-a/fw-1.img"]);
}

#[test]
fn a_team_key_given_by_a_relative_path_is_found_later() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"]));
    let team = t.join("team");
    std::fs::create_dir_all(&team).expect("mkdir");
    ok(ota_repo(
        &repo,
        &["keygen", "--out", s(&team.join("board-b.pem"))],
    ));
    let o = Command::new(env!("CARGO_BIN_EXE_ota-repo"))
        .current_dir(&team)
        .args(["--repo", s(&repo), "delegate", "--name", "board-b"])
        .args(["--paths", "board-b/*", "--paths", "shared/board-b-*"])
        .args(["--key", "board-b.pem", "--terminating", "--expires", "30d"])
        .output()
        .expect("run");
    ok(o);
    let img = t.join("fw.img");
    std::fs::write(&img, b"board b").expect("img");
    ok(add(
        &repo,
        &img,
        "shared/board-b-fw.img",
        "1.0.0",
        Some("board-b"),
    ));
    let text = ok(ota_repo(&repo, &["status"]));
    assert!(
        text.contains("paths board-b/*, shared/board-b-*, terminating")
            && text.contains("(policy 30d")
            && text.contains("team/board-b.pem"),
        "{text}"
    );
}
