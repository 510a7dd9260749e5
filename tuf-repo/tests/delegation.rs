//! Delegated targets roles end to end, through the real `ota-repo` binary:
//! `delegate`, `add --role`, `status`, `resign --role`, `publish`, and a
//! device (our own TUF client, from a fresh copy of the first root) that
//! lists and downloads what the delegated role signed.

use ota_common::tuf::{ClientOptions, FileTransport, TufClient};
use ota_repo::state::dir_url;
use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::{fails, ok, s};

fn ota_repo(repo: &Path, args: &[&str]) -> Output {
    common::ota_repo_as("dana", repo, args, &[])
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
        // Stored as it is, so that what devices download is the image
        // (compressed delegated targets: their own test below).
        args.extend(["--role", r, "--compress", "none"]);
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
fn a_delegated_role_compresses_its_releases_like_top_level_targets() {
    use sha2::Digest as _;
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
    // Compressible: the default (zstd) must shrink it.
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
    let img = t.join("fw.img");
    std::fs::write(&img, &content).expect("img");
    let out = ok(ota_repo(
        &repo,
        &[
            "add",
            s(&img),
            "--name",
            "board-a/fw-2.img",
            "--version",
            "2.0.0",
            "--hardware-id",
            "board-a",
            "--role",
            "board-a",
        ],
    ));
    assert!(
        out.contains(", zstd of a 200000-byte image with sha256")
            && out.contains("to delegated role board-a"),
        "{out}"
    );

    let www = t.join("www");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    let mut client = device(&t.join("device"), &www);
    client.refresh().expect("device accepts the repository");
    let target = client
        .find_target("board-a/fw-2.img")
        .expect("lookup")
        .expect("listed by the delegated role");
    // The TUF target is the compressed file; the signed payload names the image.
    assert!(target.length < content.len() as u64, "{}", target.length);
    let payload = target
        .release()
        .expect("release")
        .payload
        .expect("a signed payload");
    assert_eq!(payload.encoding, "zstd");
    assert_eq!(payload.image_length, content.len() as u64);
    assert_eq!(
        payload.image_sha256,
        hex::encode(sha2::Sha256::digest(&content))
    );
    let dest = t.join("downloaded");
    client
        .download_target(&target, &dest)
        .expect("the compressed target verifies");
    let decoded = zstd::decode_all(std::fs::File::open(&dest).expect("open")).expect("zstd");
    assert_eq!(decoded, content);
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

fn key_id_of(repo: &Path, key: &Path) -> String {
    let out = ok(ota_repo(repo, &["keygen", "--out", s(key)]));
    out.split_whitespace().next().expect("key id").to_owned()
}

/// repo.json lists only these key files for `role` (the others are on
/// other machines).
fn set_role_keys(repo: &Path, role: &str, keys: &[&Path]) {
    let path = repo.join("repo.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("repo.json")).expect("json");
    config["delegations"][role]["keys"] =
        serde_json::json!(keys.iter().map(|k| s(k).to_owned()).collect::<Vec<_>>());
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
}

#[test]
fn a_two_of_three_delegated_role_signs_on_three_machines() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"]));
    let machines: Vec<_> = (1..=3).map(|n| t.join(format!("machine-{n}"))).collect();
    let mut keys = Vec::new();
    for m in &machines {
        std::fs::create_dir_all(m).expect("mkdir");
        let key = m.join("board-a.pem");
        let id = key_id_of(&t.join("no-repo"), &key);
        keys.push((key, id));
    }
    ok(ota_repo(
        &repo,
        &[
            "delegate",
            "--name",
            "board-a",
            "--paths",
            "board-a/*",
            "--key",
            s(&keys[0].0),
            "--key",
            s(&keys[1].0),
            "--key",
            s(&keys[2].0),
            "--threshold",
            "2",
        ],
    ));
    // From now on the release machine holds one of the three keys.
    set_role_keys(&repo, "board-a", &[&keys[0].0]);

    let img = t.join("fw.img");
    let content = b"board a firmware, signed by two of three".to_vec();
    std::fs::write(&img, &content).expect("img");
    let out = ok(add(
        &repo,
        &img,
        "board-a/fw-2.img",
        "2.0.0",
        Some("board-a"),
    ));
    assert!(
        out.contains("board-a version 2 is NOT signed yet")
            && out.contains("board-a version 2 is pending signatures: 1 of 2 signatures")
            && out.contains("ota-repo ceremony export --role board-a"),
        "{out}"
    );
    assert!(!repo.join("metadata/2.board-a.json").exists());
    // A second release into the role waits until this one is done.
    let err = fails(add(
        &repo,
        &img,
        "board-a/fw-3.img",
        "3.0.0",
        Some("board-a"),
    ));
    assert!(err.contains("waiting for signatures"), "{err}");

    let status = ota_repo(&repo, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status.status.code(), Some(2), "{text}");
    assert!(
        text.contains("board-a version 2: 1 of 2 signatures (keys of delegated role board-a"),
        "{text}"
    );
    let www = t.join("www");
    let err = fails(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    assert!(
        err.contains("refusing to publish") && err.contains("board-a version 2"),
        "{err}"
    );

    let payload = t.join("board-a.payload.json");
    let out = ok(ota_repo(
        &repo,
        &[
            "ceremony",
            "export",
            "--role",
            "board-a",
            "--out",
            s(&payload),
        ],
    ));
    assert!(
        out.contains("exported board-a version 2")
            && out.contains("added board-a/fw-2.img")
            && out.contains("2 of the keys of delegated role board-a"),
        "{out}"
    );
    // A payload whose key list was edited to let the targets key sign:
    // the signature is made, but merge counts only the keys targets lists.
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&payload).expect("payload")).expect("json");
    let targets_key = repo.join("keys/targets-1.pem");
    let root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("metadata/1.root.json")).expect("root"))
            .expect("json");
    let targets_id = root["signed"]["roles"]["targets"]["keyids"][0]
        .as_str()
        .expect("id")
        .to_owned();
    forged["keys"][&targets_id] = root["signed"]["keys"][&targets_id].clone();
    let forged_path = t.join("forged.payload.json");
    std::fs::write(&forged_path, serde_json::to_vec(&forged).expect("json")).expect("write");
    let bad_sig = t.join("bad.sig.json");
    ok(ota_repo(
        &t.join("no-repo"),
        &[
            "sign",
            "--payload",
            s(&forged_path),
            "--key",
            s(&targets_key),
            "--out",
            s(&bad_sig),
        ],
    ));
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "board-a", s(&bad_sig)],
    ));
    assert!(
        err.contains("board-a version 2 is NOT signed yet: 1 of 2")
            && err.contains("is not one of the keys"),
        "{err}"
    );
    fails(ota_repo(&repo, &["publish", "--dir", s(&www)]));

    // Machine 2 signs (without a repository); the merge reaches 2 of 2.
    let sig = machines[1].join("board-a.sig.json");
    let out = ok(ota_repo(
        &machines[1].join("no-repo"),
        &[
            "sign",
            "--payload",
            s(&payload),
            "--key",
            s(&keys[1].0),
            "--out",
            s(&sig),
        ],
    ));
    assert!(out.contains("signed board-a version 2"), "{out}");
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "board-a", s(&sig)],
    ));
    assert!(
        out.contains("signed board-a version 2 with 2 key(s)")
            && out.contains("signed snapshot version 3")
            && out.contains("signed timestamp version 3"),
        "{out}"
    );
    assert!(!repo.join("ceremony/delegated/board-a.json").exists());
    let signed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("metadata/2.board-a.json")).expect("role file"),
    )
    .expect("json");
    let mut signers: Vec<&str> = signed["signatures"]
        .as_array()
        .expect("sigs")
        .iter()
        .map(|s| s["keyid"].as_str().expect("id"))
        .collect();
    signers.sort();
    let mut want = vec![keys[0].1.as_str(), keys[1].1.as_str()];
    want.sort();
    assert_eq!(signers, want);
    let o = ota_repo(&repo, &["status"]);
    assert_eq!(o.status.code(), Some(0));

    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    let mut client = device(&t.join("device"), &www);
    client
        .refresh()
        .expect("a fresh device accepts the 2-of-3 role");
    let target = client
        .find_target("board-a/fw-2.img")
        .expect("lookup")
        .expect("listed");
    let dest = t.join("downloaded");
    client
        .download_target(&target, &dest)
        .expect("image verifies");
    assert_eq!(std::fs::read(&dest).expect("image"), content);

    // Re-signing by offline keys starts a ceremony of its own; abandon closes it.
    let again = t.join("again.json");
    let out = ok(ota_repo(
        &repo,
        &[
            "ceremony",
            "export",
            "--role",
            "board-a",
            "--out",
            s(&again),
        ],
    ));
    assert!(out.contains("exported board-a version 3"), "{out}");
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "abandon", "--role", "board-a"],
    ));
    assert!(
        out.contains("abandoned the board-a version 3 ceremony"),
        "{out}"
    );
    assert_eq!(ota_repo(&repo, &["status"]).status.code(), Some(0));
    let log = std::fs::read_to_string(repo.join("audit.jsonl")).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains("\"action\":\"merge\"") && l.contains("\"role\":\"board-a\"")),
        "{log}"
    );
    ok(ota_repo(&repo, &["audit", "verify"]));
}

#[test]
fn rollout_and_evidence_follow_the_role_that_lists_the_target() {
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
    let img = t.join("fw.img");
    std::fs::write(&img, b"board a staged release").expect("img");
    let targets_before = std::fs::read(repo.join("metadata/2.targets.json")).expect("targets");
    let out = ok(ota_repo(
        &repo,
        &[
            "add",
            s(&img),
            "--name",
            "board-a/fw-1.img",
            "--version",
            "1.0.0",
            "--hardware-id",
            "board-a",
            "--role",
            "board-a",
            "--wave",
            "canary=bench@+0h",
            "--wave",
            "all=100%@+3d",
        ],
    ));
    assert!(out.contains("signed board-a version 2"), "{out}");

    let out = ok(ota_repo(
        &repo,
        &[
            "rollout",
            "set",
            "board-a/fw-1.img",
            "--wave",
            "all=100%@+1h",
        ],
    ));
    assert!(
        out.contains("rollout of board-a/fw-1.img changed; signed board-a version 3, snapshot version 4, timestamp version 4"),
        "{out}"
    );
    // Top-level targets is not re-signed for a delegated target.
    assert!(!repo.join("metadata/3.targets.json").exists());
    assert_eq!(
        std::fs::read(repo.join("metadata/2.targets.json")).expect("targets"),
        targets_before
    );
    let www = t.join("www");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    let mut client = device(&t.join("device"), &www);
    client.refresh().expect("refresh");
    let release = client
        .find_target("board-a/fw-1.img")
        .expect("lookup")
        .expect("listed")
        .release()
        .expect("release");
    let plan = release.rollout.expect("signed plan");
    assert_eq!(
        plan.waves
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        ["all"]
    );

    let out = ok(ota_repo(&repo, &["rollout", "clear", "board-a/fw-1.img"]));
    assert!(out.contains("signed board-a version 4"), "{out}");
    let out = ok(ota_repo(&repo, &["rollout", "clear", "board-a/fw-1.img"]));
    assert!(out.contains("has no rollout plan; nothing signed"), "{out}");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    client.refresh().expect("refresh");
    let release = client
        .find_target("board-a/fw-1.img")
        .expect("lookup")
        .expect("listed")
        .release()
        .expect("release");
    assert!(release.rollout.is_none());

    // Evidence names the role that signed the file and checks its signatures.
    let ev_dir = t.join("evidence");
    let o = ota_repo(
        &repo,
        &[
            "evidence",
            "--release",
            "1.0.0",
            "--out",
            s(&ev_dir),
            "--published-dir",
            s(&www),
        ],
    );
    let ev: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ev_dir.join("evidence-1.0.0.json")).expect("evidence json"),
    )
    .expect("json");
    assert!(o.status.success(), "{ev:#}");
    assert_eq!(ev["passed"], true, "{ev:#}");
    assert_eq!(ev["files"][0]["name"], "board-a/fw-1.img");
    assert_eq!(ev["files"][0]["signed_by"], "board-a");
    let role = ev["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["role"] == "board-a")
        .expect("the delegated role's signatures are evidence");
    assert_eq!(role["version"], 4);
    assert_eq!(role["threshold"], 1);
    assert_eq!(role["threshold_met"], true);
    assert_eq!(role["keyids"].as_array().expect("ids").len(), 1);
    assert_eq!(ev["verification"]["passed"], true, "{ev:#}");
    assert!(
        ev["audit"]["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["role"] == "board-a"),
        "{ev:#}"
    );
    let md = std::fs::read_to_string(ev_dir.join("evidence-1.0.0.md")).expect("md");
    assert!(md.contains("| board-a |"), "{md}");
}

fn names(client: &mut TufClient<FileTransport>) -> Vec<String> {
    client.refresh().expect("refresh");
    client
        .all_targets()
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect()
}

#[test]
fn devices_follow_a_changed_delegation_and_its_removal() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"]));
    let (k1, k2) = (t.join("k1.pem"), t.join("k2.pem"));
    let _id1 = key_id_of(&t.join("no-repo"), &k1);
    let id2 = key_id_of(&t.join("no-repo"), &k2);
    ok(ota_repo(
        &repo,
        &[
            "delegate",
            "--name",
            "board-a",
            "--paths",
            "board-a/*",
            "--key",
            s(&k1),
        ],
    ));
    let img = t.join("fw.img");
    std::fs::write(&img, b"board a 1").expect("img");
    ok(add(
        &repo,
        &img,
        "board-a/fw-1.img",
        "1.0.0",
        Some("board-a"),
    ));
    let top = t.join("top.img");
    std::fs::write(&top, b"top level").expect("img");
    ok(add(&repo, &top, "top.img", "0.1.0", None));
    let www = t.join("www");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    let mut old_device = device(&t.join("old-device"), &www);
    assert_eq!(names(&mut old_device), ["board-a/fw-1.img", "top.img"]);

    // New key, a second path: the role's next version is signed by k2 only.
    let out = ok(ota_repo(
        &repo,
        &[
            "delegate",
            "--name",
            "board-a",
            "--paths",
            "board-a/*",
            "--paths",
            "shared/*",
            "--key",
            s(&k2),
        ],
    ));
    assert!(out.contains("signed targets version"), "{out}");
    let v3: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("metadata/3.board-a.json")).expect("next version"),
    )
    .expect("json");
    assert_eq!(v3["signatures"].as_array().expect("sigs").len(), 1);
    assert_eq!(v3["signatures"][0]["keyid"], id2.as_str());
    let img2 = t.join("shared.img");
    std::fs::write(&img2, b"shared image").expect("img");
    ok(add(
        &repo,
        &img2,
        "shared/fw-2.img",
        "2.0.0",
        Some("board-a"),
    ));
    let text = ok(ota_repo(&repo, &["status"]));
    assert!(
        text.contains("paths board-a/*, shared/*")
            && text.contains("k2.pem")
            && !text.contains("k1.pem"),
        "{text}"
    );
    let targets: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("metadata/4.targets.json")).expect("targets"),
    )
    .expect("json");
    let keys = targets["signed"]["delegations"]["keys"]
        .as_object()
        .expect("keys");
    assert_eq!(
        keys.keys().collect::<Vec<_>>(),
        [&id2],
        "the old key is gone"
    );
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    let want = ["board-a/fw-1.img", "shared/fw-2.img", "top.img"];
    assert_eq!(names(&mut old_device), want);
    let mut fresh = device(&t.join("fresh-1"), &www);
    assert_eq!(names(&mut fresh), want);

    // Removing the delegation: its targets disappear for every device.
    let out = ok(ota_repo(&repo, &["undelegate", "--name", "board-a"]));
    assert!(
        out.contains("removed the delegation to board-a; signed targets version 5"),
        "{out}"
    );
    let err = fails(add(
        &repo,
        &img,
        "board-a/fw-9.img",
        "9.0.0",
        Some("board-a"),
    ));
    assert!(err.contains("no delegated role \"board-a\""), "{err}");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    assert_eq!(names(&mut old_device), ["top.img"]);
    let mut fresh = device(&t.join("fresh-2"), &www);
    assert_eq!(names(&mut fresh), ["top.img"]);
    // A directory published for the first time after the removal works too.
    let www2 = t.join("www2");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www2)]));
    let mut fresh = device(&t.join("fresh-3"), &www2);
    assert_eq!(names(&mut fresh), ["top.img"]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("repo.json")).expect("repo.json"))
            .expect("json");
    assert!(config["delegations"].get("board-a").is_none(), "{config:#}");
    ok(ota_repo(&repo, &["audit", "verify"]));
}

fn role_keys_in_repo_json(repo: &Path, role: &str) -> Vec<String> {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("repo.json")).expect("repo.json"))
            .expect("json");
    config["delegations"][role]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().expect("key").to_owned())
        .collect()
}

fn signers(repo: &Path, file: &str) -> Vec<String> {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("metadata").join(file)).expect(file))
            .expect("json");
    doc["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .map(|s| s["keyid"].as_str().expect("keyid").to_owned())
        .collect()
}

/// `delegate` changing a role's keys lists old and new keys in repo.json
/// before signing and the new ones alone after: a power cut at either
/// point leaves a repository whose next `add --role` signs with the keys
/// the signed delegation names. The files are those the cut leaves.
#[test]
fn a_power_cut_while_changing_a_delegations_keys_leaves_a_working_repository() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"]));
    let (k1, k2) = (t.join("k1.pem"), t.join("k2.pem"));
    let id1 = key_id_of(&t.join("no-repo"), &k1);
    let id2 = key_id_of(&t.join("no-repo"), &k2);
    let delegate = |key: &Path| {
        ok(ota_repo(
            &repo,
            &[
                "delegate",
                "--name",
                "board-a",
                "--paths",
                "board-a/*",
                "--key",
                s(key),
            ],
        ))
    };
    delegate(&k1);
    let img = t.join("fw.img");
    let add_version = |n: u32| {
        std::fs::write(&img, format!("board a {n}")).expect("img");
        ok(add(
            &repo,
            &img,
            &format!("board-a/fw-{n}.img"),
            &format!("1.0.{n}"),
            Some("board-a"),
        ))
    };
    add_version(1);
    assert_eq!(signers(&repo, "2.board-a.json"), [id1.as_str()]);

    // Cut 1: repo.json saved (k2 and k1), nothing signed yet. The signed
    // delegation still names k1, which still signs.
    set_role_keys(&repo, "board-a", &[&k2, &k1]);
    add_version(2);
    assert_eq!(signers(&repo, "3.board-a.json"), [id1.as_str()]);

    // Rerunning the command completes it; repo.json then lists k2 alone.
    delegate(&k2);
    assert_eq!(role_keys_in_repo_json(&repo, "board-a"), [s(&k2)]);
    assert_eq!(signers(&repo, "4.board-a.json"), [id2.as_str()]);

    // Cut 2: the new delegation signed, repo.json not yet narrowed to k2:
    // k1 is no key of the role any more and signs nothing.
    set_role_keys(&repo, "board-a", &[&k2, &k1]);
    add_version(3);
    assert_eq!(signers(&repo, "5.board-a.json"), [id2.as_str()]);

    let www = t.join("www");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    let mut client = device(&t.join("device"), &www);
    assert_eq!(
        names(&mut client),
        ["board-a/fw-1.img", "board-a/fw-2.img", "board-a/fw-3.img"]
    );
}

/// Export, sign on each holder's machine (no repository there), merge.
fn sign_offline(
    repo: &Path,
    t: &Path,
    role: &str,
    holders: &[(&Path, &Path)],
    tag: &str,
) -> String {
    let payload = t.join(format!("{role}-{tag}.payload.json"));
    ok(ota_repo(
        repo,
        &["ceremony", "export", "--role", role, "--out", s(&payload)],
    ));
    let mut sigs = Vec::new();
    for (dir, key) in holders {
        let sig = dir.join(format!("{tag}.sig.json"));
        ok(ota_repo(
            &dir.join("no-repo"),
            &[
                "sign",
                "--payload",
                s(&payload),
                "--key",
                s(key),
                "--out",
                s(&sig),
            ],
        ));
        sigs.push(sig);
    }
    let mut args = vec!["ceremony", "merge", "--role", role];
    args.extend(sigs.iter().map(|p| s(p)));
    ok(ota_repo(repo, &args))
}

/// Merging a delegated role whose snapshot key is offline too writes
/// `N.ROLE.json`, opens the snapshot ceremony that lists it and only then
/// closes its own. A cut in between leaves both open; the next command
/// closes the delegated one (it is signed) and keeps the rest.
#[test]
fn a_cut_between_a_delegated_merge_and_its_close_is_healed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"]));
    let holder = t.join("holder");
    std::fs::create_dir_all(&holder).expect("mkdir");
    let key = holder.join("board-a.pem");
    key_id_of(&t.join("no-repo"), &key);
    ok(ota_repo(
        &repo,
        &[
            "delegate",
            "--name",
            "board-a",
            "--paths",
            "board-a/*",
            "--key",
            s(&key),
        ],
    ));
    set_role_keys(&repo, "board-a", &[]);
    std::fs::rename(repo.join("keys/snapshot-1.pem"), t.join("snapshot.pem")).expect("mv");
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
    assert!(out.contains("board-a version 2 is NOT signed yet"), "{out}");
    let pending = repo.join("ceremony/delegated/board-a.json");
    let kept = std::fs::read(&pending).expect("delegated payload");
    let out = sign_offline(&repo, t, "board-a", &[(&holder, &key)], "v2");
    assert!(
        out.contains("signed board-a version 2 with 1 key(s)")
            && out.contains("snapshot version 3 is pending signatures"),
        "{out}"
    );
    assert!(!pending.exists());

    // The cut: the delegated ceremony is still there beside the snapshot's.
    std::fs::write(&pending, &kept).expect("restore");
    let o = ota_repo(
        &repo,
        &[
            "ceremony",
            "export",
            "--role",
            "snapshot",
            "--out",
            s(&t.join("snapshot.payload.json")),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    assert!(
        err.contains(
            "closed the board-a version 2 ceremony: it was signed and the open snapshot ceremony lists it"
        ),
        "{err}"
    );
    assert!(!pending.exists());
    assert!(repo.join("ceremony/snapshot.json").exists());
    assert!(repo.join("metadata/2.board-a.json").exists());
}

#[test]
fn a_role_whose_keys_are_all_elsewhere_is_delegated_through_a_ceremony() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"]));
    // Each holder keeps the private key in a directory of their own and
    // hands over only the public key JSON.
    let mut holders = Vec::new();
    for who in ["holder-a", "holder-b"] {
        let dir = t.join(who);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let key = dir.join("board-a.pem");
        let id = key_id_of(&dir.join("no-repo"), &key);
        let public = dir.join("board-a.pub.json");
        let out = ok(ota_repo(
            &dir.join("no-repo"),
            &["key", "export-pub", "--key", s(&key), "--out", s(&public)],
        ));
        assert!(out.contains(&id), "{out}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&public).expect("pub")).expect("json");
        assert_eq!(json["keytype"], "ed25519", "{json}");
        assert!(json["keyval"]["public"].is_string(), "{json}");
        holders.push((dir, key, public, id));
    }
    let bad = t.join("bad.json");
    std::fs::write(&bad, b"{\"keytype\":").expect("write");
    let delegate = |pubs: [&Path; 2]| {
        ota_repo(
            &repo,
            &[
                "delegate",
                "--name",
                "board-a",
                "--paths",
                "board-a/*",
                "--key-pub",
                s(pubs[0]),
                "--key-pub",
                s(pubs[1]),
                "--threshold",
                "2",
            ],
        )
    };
    let err = fails(delegate([&holders[0].2, &bad]));
    assert!(err.contains("not a TUF public key"), "{err}");

    let out = ok(delegate([&holders[0].2, &holders[1].2]));
    assert!(
        out.contains("board-a version 1 are NOT committed yet")
            && out.contains("board-a version 1 is pending signatures: 0 of 2 signatures"),
        "{out}"
    );
    // Nothing is in metadata/ until the role's file can be: a targets that
    // delegates to a missing file would break every client.
    assert!(!repo.join("metadata/1.board-a.json").exists());
    assert!(!repo.join("metadata/2.targets.json").exists());
    let status = ota_repo(&repo, &["status"]);
    assert_eq!(status.status.code(), Some(2));
    let www = t.join("www");
    let err = fails(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    assert!(
        err.contains("refusing to publish") && err.contains("board-a version 1"),
        "{err}"
    );
    // Delegating the name again would fork the pending version.
    let err = fails(delegate([&holders[0].2, &holders[1].2]));
    assert!(err.contains("waiting for signatures"), "{err}");

    // Holder A signs; one signature of two is kept and nothing is committed.
    let payload = t.join("board-a.payload.json");
    ok(ota_repo(
        &repo,
        &[
            "ceremony",
            "export",
            "--role",
            "board-a",
            "--out",
            s(&payload),
        ],
    ));
    let sig_a = holders[0].0.join("one.sig.json");
    ok(ota_repo(
        &holders[0].0.join("no-repo"),
        &[
            "sign",
            "--payload",
            s(&payload),
            "--key",
            s(&holders[0].1),
            "--out",
            s(&sig_a),
        ],
    ));
    // An edited pending payload cannot swap the delegating targets for an
    // unsigned one (it must verify against root's targets keys).
    let pending = repo.join("ceremony/delegated/board-a.json");
    let original = std::fs::read(&pending).expect("pending");
    let mut edited: serde_json::Value = serde_json::from_slice(&original).expect("json");
    let mut unsigned: serde_json::Value = serde_json::from_slice(&base64_decode(
        edited["delegating_targets"].as_str().expect("delegating"),
    ))
    .expect("json");
    unsigned["signatures"] = serde_json::json!([]);
    edited["delegating_targets"] =
        serde_json::Value::String(base64_encode(&serde_json::to_vec(&unsigned).expect("json")));
    std::fs::write(&pending, serde_json::to_vec(&edited).expect("json")).expect("write");
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "board-a", s(&sig_a)],
    ));
    assert!(err.contains("not signed by the targets keys"), "{err}");
    std::fs::write(&pending, &original).expect("restore");
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "board-a", s(&sig_a)],
    ));
    assert!(err.contains("1 of 2"), "{err}");
    assert!(!repo.join("metadata/2.targets.json").exists());

    let both = [
        (holders[0].0.as_path(), holders[0].1.as_path()),
        (holders[1].0.as_path(), holders[1].1.as_path()),
    ];
    let out = sign_offline(&repo, t, "board-a", &both, "v1");
    assert!(
        out.contains("signed board-a version 1 with 2 key(s)")
            && out.contains("signed snapshot version 2")
            && out.contains("signed timestamp version 2"),
        "{out}"
    );
    assert!(repo.join("metadata/1.board-a.json").exists());
    assert!(repo.join("metadata/2.targets.json").exists());
    assert!(!pending.exists());
    assert_eq!(ota_repo(&repo, &["status"]).status.code(), Some(0));

    // A release into the role: no key of it is here, so it waits too.
    let img = t.join("fw.img");
    let content = b"board a firmware, signed where the keys are".to_vec();
    std::fs::write(&img, &content).expect("img");
    let out = ok(add(
        &repo,
        &img,
        "board-a/fw-1.img",
        "1.0.0",
        Some("board-a"),
    ));
    assert!(out.contains("board-a version 2 is NOT signed yet"), "{out}");
    fails(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    let out = sign_offline(&repo, t, "board-a", &both, "v2");
    assert!(
        out.contains("signed board-a version 2 with 2 key(s)"),
        "{out}"
    );

    ok(ota_repo(&repo, &["publish", "--dir", s(&www)]));
    let mut client = device(&t.join("device"), &www);
    client.refresh().expect("a fresh device accepts the role");
    let target = client
        .find_target("board-a/fw-1.img")
        .expect("lookup")
        .expect("listed");
    let dest = t.join("downloaded");
    client
        .download_target(&target, &dest)
        .expect("image verifies");
    assert_eq!(std::fs::read(&dest).expect("image"), content);
    let signed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("metadata/1.board-a.json")).expect("role file"),
    )
    .expect("json");
    let mut got: Vec<&str> = signed["signatures"]
        .as_array()
        .expect("sigs")
        .iter()
        .map(|s| s["keyid"].as_str().expect("id"))
        .collect();
    got.sort_unstable();
    let mut want = vec![holders[0].3.as_str(), holders[1].3.as_str()];
    want.sort_unstable();
    assert_eq!(got, want);
    ok(ota_repo(&repo, &["audit", "verify"]));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
