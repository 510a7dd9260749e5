//! `ota-repo evidence` through the real binary: the IEC 81001-5-1 record of
//! a release with development key files and with keys in a SoftHSM2 token
//! (whose protection attributes must be read back from the token), and a
//! tampered published repository that makes the evidence fail.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn ota_repo(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ota-repo"));
    cmd.arg("--repo").arg(repo).args(args);
    cmd.env_remove("OTA_PKCS11_PIN")
        .env("OTA_OPERATOR", "alice");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ota-repo")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A repository with release 1.2.0 (one image) next to an older 1.0.0.
fn repo_with_release(dir: &Path, init_args: &[&str], env: &[(&str, &str)]) -> PathBuf {
    let repo = dir.join("repo");
    let mut args = vec!["init"];
    args.extend_from_slice(init_args);
    ok(ota_repo(&repo, &args, env));
    for (version, fill) in [("1.0.0", 1u8), ("1.2.0", 2u8)] {
        let image = dir.join(format!("fw-{version}.img"));
        std::fs::write(&image, vec![fill; 100_000 + usize::from(fill)]).expect("image");
        ok(ota_repo(
            &repo,
            &[
                "add",
                s(&image),
                "--version",
                version,
                "--hardware-id",
                "board-a",
                "--compress",
                "none",
            ],
            env,
        ));
    }
    repo
}

fn evidence(repo: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Output, Value) {
    let mut args = vec!["evidence", "--release", "1.2.0", "--out", s(out)];
    args.extend_from_slice(extra);
    let o = ota_repo(repo, &args, env);
    let json = std::fs::read(out.join("evidence-1.2.0.json"))
        .unwrap_or_else(|e| panic!("no evidence JSON ({e}): {}", text(&o)));
    (o, serde_json::from_slice(&json).expect("evidence JSON"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn file_keys_give_passing_evidence_labelled_development() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = repo_with_release(tmp.path(), &[], &[]);
    let out = tmp.path().join("evidence");
    let (o, ev) = evidence(&repo, &out, &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(ev["passed"], true, "{ev:#}");

    // 5.8.3: the release's one file, with the image's real digests; not 1.0.0's.
    let files = ev["files"].as_array().expect("files");
    assert_eq!(files.len(), 1);
    let image = std::fs::read(tmp.path().join("fw-1.2.0.img")).expect("image");
    assert_eq!(files[0]["name"], "fw-1.2.0.img");
    assert_eq!(files[0]["length"], image.len() as u64);
    assert_eq!(files[0]["sha256"], sha256_hex(&image));
    assert_eq!(files[0]["clause"], "IEC 81001-5-1 5.8.3");

    // Every role, signed at threshold, with its expiry.
    let roles = ev["roles"].as_array().expect("roles");
    let names: Vec<_> = roles
        .iter()
        .map(|r| r["role"].as_str().expect("role"))
        .collect();
    assert_eq!(names, ["root", "targets", "snapshot", "timestamp"]);
    for r in roles {
        assert_eq!(r["threshold_met"], true, "{r}");
        assert_eq!(r["valid_signatures"], 1, "{r}");
        assert!(r["expires"].as_str().is_some_and(|e| e.starts_with("20")));
    }

    // 5.8.4: key files are labelled development only, and warned about.
    for k in ev["keys"].as_array().expect("keys") {
        assert_eq!(k["storage"], "software-file", "{k}");
        assert!(k["location"]
            .as_str()
            .expect("loc")
            .contains("development only"));
        assert_eq!(k["clause"], "IEC 81001-5-1 5.8.4");
    }
    assert!(ev["warnings"].to_string().contains("development only"));

    // Audit: intact, and the signing events of the metadata holding the release
    // (targets version 3 = init 1, add 1.0.0 2, add 1.2.0 3).
    assert_eq!(ev["audit"]["intact"], true);
    assert_eq!(ev["audit"]["targets_versions"], serde_json::json!([3]));
    let entries = ev["audit"]["entries"].as_array().expect("entries");
    let roles_logged: Vec<_> = entries
        .iter()
        .map(|e| e["role"].as_str().expect("role"))
        .collect();
    assert!(
        roles_logged.contains(&"targets")
            && roles_logged.contains(&"snapshot")
            && roles_logged.contains(&"timestamp"),
        "{roles_logged:?}"
    );
    assert!(entries
        .iter()
        .all(|e| e["role"] != "targets" || e["version"] == 3));

    // The independent verification downloaded and checked the file.
    let v = &ev["verification"];
    assert_eq!(v["passed"], true, "{v:#}");
    assert_eq!(v["targets"][0]["passed"], true);
    assert_eq!(v["root_version"], 1);

    let md = std::fs::read_to_string(out.join("evidence-1.2.0.md")).expect("md");
    for needle in [
        "**Result: PASSED**",
        "5.8.3",
        "5.8.4",
        &sha256_hex(&image),
        "software key file",
        "audit log intact",
        "Result of the independent verification: **PASSED**",
    ] {
        assert!(md.contains(needle), "{needle:?} missing from:\n{md}");
    }
}

#[test]
fn a_tampered_published_repository_fails_the_evidence() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = repo_with_release(tmp.path(), &[], &[]);
    let www = tmp.path().join("www");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    let out = tmp.path().join("evidence");
    let (o, ev) = evidence(&repo, &out, &["--published-dir", s(&www)], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(ev["verification"]["passed"], true);

    // Flip one byte of the published image (its one content-addressed
    // name: the target lists sha256 only).
    let image = std::fs::read(tmp.path().join("fw-1.2.0.img")).expect("image");
    let hash = sha256_hex(&image);
    let mut tampered = 0;
    for entry in std::fs::read_dir(www.join("targets")).expect("targets") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".fw-1.2.0.img") {
            let mut bytes = std::fs::read(&path).expect("read");
            bytes[5000] ^= 0x01;
            std::fs::write(&path, bytes).expect("write");
            tampered += 1;
        }
    }
    assert_eq!(tampered, 1);
    let (o, ev) = evidence(&repo, &out, &["--published-dir", s(&www)], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(ev["passed"], false);
    assert_eq!(ev["verification"]["passed"], false);
    let detail = ev["verification"]["targets"][0]["detail"]
        .as_str()
        .expect("detail");
    assert!(detail.contains("mismatch"), "{detail}");
    assert!(
        text(&o).contains("independent verification failed"),
        "{}",
        text(&o)
    );
    let md = std::fs::read_to_string(out.join("evidence-1.2.0.md")).expect("md");
    assert!(md.contains("**Result: FAILED**"), "{md}");
    assert!(md.contains(&hash));

    // Tampered signed metadata: the fresh client refuses it.
    let www2 = tmp.path().join("www2");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www2)], &[]));
    let ts = www2.join("metadata/timestamp.json");
    let text_ts = std::fs::read_to_string(&ts).expect("timestamp");
    std::fs::write(&ts, text_ts.replacen("\"version\": ", "\"version\": 1", 1)).expect("write");
    let (o, ev) = evidence(&repo, &out, &["--published-dir", s(&www2)], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        ev["verification"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("timestamp")),
        "{ev:#}"
    );

    // An unknown release is an error, and no evidence is claimed for it.
    let o = ota_repo(
        &repo,
        &["evidence", "--release", "9.9.9", "--out", s(&out)],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("no target of release 9.9.9"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_tampered_audit_log_fails_the_evidence() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = repo_with_release(tmp.path(), &[], &[]);
    let log = repo.join("audit.jsonl");
    let content = std::fs::read_to_string(&log).expect("log");
    std::fs::write(&log, content.replacen("alice", "mallory", 1)).expect("write");
    let out = tmp.path().join("evidence");
    let (o, ev) = evidence(&repo, &out, &[], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(ev["audit"]["intact"], false);
    assert!(
        ev["audit"]["verify_result"]
            .as_str()
            .expect("r")
            .contains("line 1"),
        "{ev:#}"
    );
    assert_eq!(ev["verification"]["passed"], true);
}

/// A SoftHSM2 token in its own directory (see tests/key_custody.rs).
fn softhsm_token(dir: &Path, label: &str) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokendir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("conf");
    let o = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            "5678",
            "--pin",
            "1234",
        ])
        .output()
        .expect("softhsm2-util (Debian package softhsm2) must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    conf
}

#[test]
fn token_keys_attributes_are_read_back_from_the_token() {
    let tmp = tempfile::tempdir().expect("tmp");
    let conf = softhsm_token(tmp.path(), "release");
    let env = [("SOFTHSM2_CONF", s(&conf)), ("OTA_PKCS11_PIN", "1234")];
    let store = format!("pkcs11:token=release?module-path={MODULE}");
    let repo = repo_with_release(
        tmp.path(),
        &["--key-type", "ecdsa", "--key-store", &store],
        &env,
    );
    let out = tmp.path().join("evidence");
    let (o, ev) = evidence(&repo, &out, &[], &env);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(ev["passed"], true);
    let keys = ev["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 4);
    for k in keys {
        assert_eq!(k["storage"], "pkcs11", "{k}");
        let p = &k["protection"];
        // What the token says about the private key, not what init asked for.
        assert_eq!(p["sensitive"], true, "{k}");
        assert_eq!(p["always_sensitive"], true, "{k}");
        assert_eq!(p["never_extractable"], true, "{k}");
        assert_eq!(p["extractable"], false, "{k}");
        assert_eq!(p["local"], true, "{k}");
        assert_eq!(p["private"], true, "{k}");
        assert_eq!(p["sign"], true, "{k}");
        assert_eq!(p["decrypt"], false, "{k}");
        assert_eq!(p["token_label"], "release");
        assert!(
            p["token_manufacturer"]
                .as_str()
                .is_some_and(|m| m.contains("SoftHSM")),
            "{k}"
        );
    }
    assert!(
        ev["warnings"].as_array().expect("warnings").is_empty(),
        "{ev:#}"
    );
    let md = std::fs::read_to_string(out.join("evidence-1.2.0.md")).expect("md");
    assert!(md.contains("PKCS#11 token release, object root-1"), "{md}");
    assert!(
        md.contains("| true | true | false | true | true | true | true |"),
        "{md}"
    );

    // Without the PIN the private key's attributes cannot be read: the
    // evidence says so instead of guessing, and still verifies the release.
    let (o, ev) = evidence(&repo, &out, &[], &[("SOFTHSM2_CONF", s(&conf))]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(ev["keys"][0]["protection"].is_null());
    assert!(
        ev["keys"][0]["protection_error"]
            .as_str()
            .is_some_and(|e| e.contains("PIN")),
        "{ev:#}"
    );
    assert!(ev["warnings"]
        .to_string()
        .contains("protection attributes not read"));
}

/// Writes one online signature to the server's log in `dir`, as ota-server does.
fn online_sign(dir: &Path, role: &str, version: u64) {
    ota_repo::audit::AuditLog::new(dir, "ota-server (online key)".to_owned())
        .record(&ota_repo::audit::Event {
            action: "online-sign",
            role,
            version,
            signed_bytes: format!("{role} {version}").as_bytes(),
            keyid: "ab12",
            key_location: "pkcs11:token=online",
        })
        .expect("record");
}

#[test]
fn evidence_lists_the_servers_online_signatures_of_the_release() {
    let tmp = tempfile::tempdir().expect("tmp");
    let online = tmp.path().join("online-audit");
    let repo = tmp.path().join("repo");
    ok(ota_repo(&repo, &["init"], &[]));
    let image = tmp.path().join("fw-1.0.0.img");
    std::fs::write(&image, vec![1u8; 1000]).expect("image");
    let add = |image: &Path, version: &str| {
        ok(ota_repo(
            &repo,
            &[
                "add",
                s(image),
                "--version",
                version,
                "--hardware-id",
                "board-a",
                "--compress",
                "none",
            ],
            &[],
        ))
    };
    add(&image, "1.0.0");
    // Signed while only 1.0.0 was published: not the release's.
    online_sign(&online, "timestamp", 50);
    // Times are in whole seconds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let image = tmp.path().join("fw-1.2.0.img");
    std::fs::write(&image, vec![2u8; 1000]).expect("image");
    add(&image, "1.2.0");
    online_sign(&online, "snapshot", 7);
    online_sign(&online, "timestamp", 51);

    let log = online.join("audit.jsonl");
    let out = tmp.path().join("evidence");
    let (o, ev) = evidence(&repo, &out, &["--online-audit", s(&log)], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let online_ev = &ev["online_audit"];
    assert_eq!(online_ev["clause"], "IEC 81001-5-1 5.8.4");
    assert_eq!(online_ev["intact"], true, "{online_ev:#}");
    assert_eq!(online_ev["verify_result"], "audit log intact: 3 entries");
    let signed: Vec<(String, u64)> = online_ev["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["role"].as_str().expect("role").to_owned(),
                e["version"].as_u64().expect("version"),
            )
        })
        .collect();
    assert_eq!(
        signed,
        [("snapshot".to_owned(), 7), ("timestamp".to_owned(), 51)]
    );
    let md = std::fs::read_to_string(out.join("evidence-1.2.0.md")).expect("md");
    assert!(
        md.contains("Online signing by the server (IEC 81001-5-1 5.8.4)"),
        "{md}"
    );
    assert!(md.contains("| online-sign | timestamp | 51 |"), "{md}");

    // A tampered server log fails the evidence, naming the line.
    let content = std::fs::read_to_string(&log).expect("log");
    std::fs::write(
        &log,
        content.replacen("\"version\":50", "\"version\":49", 1),
    )
    .expect("write");
    let (o, ev) = evidence(&repo, &out, &["--online-audit", s(&log)], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(ev["online_audit"]["intact"], false);
    let failures = ev["failures"].to_string();
    assert!(
        failures.contains("online audit log:") && failures.contains("line 2"),
        "{failures}"
    );
}
