//! Key custody end to end, through the real `ota-repo` binary: keys inside
//! SoftHSM2 tokens, M-of-N root ceremonies with keys on other "machines",
//! root and targets key rotation followed by devices (our own TUF client
//! over `FileTransport`), revoked keys, and the audit log's tamper evidence.
//!
//! Each PKCS#11 test makes its own token under its own `SOFTHSM2_CONF`
//! (passed to the child processes only), so tests run in parallel.

use ota_common::tuf::{ClientOptions, FileTransport, TufClient};
use ota_repo::audit::AuditLog;
use ota_repo::key_ref::KeyRef;
use ota_repo::state::dir_url;
use std::path::Path;
use std::process::Output;

mod common;

use common::{ok, s, Token, MODULE};

fn ota_repo(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    common::ota_repo_as("alice", repo, args, env)
}

// Looser than common::fails: any failing exit code counts here.
fn fails(o: Output) -> String {
    assert!(
        !o.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A device: our TUF client trusting `root`, reading a published directory.
struct Device {
    client: TufClient<FileTransport>,
}

impl Device {
    fn new(state_dir: &Path, root: &[u8], published: &Path) -> Self {
        TufClient::<FileTransport>::init(state_dir, root).expect("client init");
        let options = ClientOptions::new(
            dir_url(&published.join("metadata")).expect("url"),
            dir_url(&published.join("targets")).expect("url"),
        );
        Device {
            client: TufClient::open(state_dir, options, FileTransport).expect("client open"),
        }
    }

    fn refresh(&mut self) -> Result<(), String> {
        self.client.refresh().map(|_| ()).map_err(|e| e.to_string())
    }

    fn root_version(&self) -> u64 {
        self.client.trusted().root.version
    }
}

fn publish(repo: &Path, www: &Path) {
    ok(ota_repo(repo, &["publish", "--dir", s(www)], &[]));
}

#[test]
fn token_keys_of_every_type_sign_a_repository_devices_accept() {
    // SoftHSM2 2.6 implements CKM_EDDSA, CKM_ECDSA and CKM_SHA256_RSA_PKCS_PSS.
    for key_type in ["ed25519", "ecdsa", "rsa"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let token = Token::new(tmp.path(), "release");
        let repo = tmp.path().join("repo");
        let env = token.env();
        let store = format!("pkcs11:token=release?module-path={MODULE}");
        ok(ota_repo(
            &repo,
            &["init", "--key-type", key_type, "--key-store", &store],
            &env,
        ));
        let config = std::fs::read_to_string(repo.join("repo.json")).expect("repo.json");
        assert!(
            config.contains("pkcs11:token=release;object=root-1;id=%"),
            "{config}"
        );
        assert!(
            !config.contains("1234"),
            "the PIN must never be stored: {config}"
        );
        assert!(
            !repo.join("keys/root-1.pem").exists(),
            "no software key may be written"
        );

        let img = tmp.path().join("fw.img");
        std::fs::write(&img, vec![7u8; 70_000]).expect("img");
        ok(ota_repo(
            &repo,
            &[
                "add",
                s(&img),
                "--version",
                "1.0.0",
                "--hardware-id",
                "board",
                "--compress",
                "none",
            ],
            &env,
        ));
        let status = ok(ota_repo(&repo, &["status", "--warn-within", "1d"], &env));
        assert!(
            status.contains("PKCS#11 token release, object targets-1"),
            "{status}"
        );
        assert!(!status.contains("software key file"), "{status}");

        let www = tmp.path().join("www");
        publish(&repo, &www);
        let root = std::fs::read(www.join("metadata/1.root.json")).expect("root");
        let mut device = Device::new(&tmp.path().join("device"), &root, &www);
        device
            .refresh()
            .unwrap_or_else(|e| panic!("{key_type}: device refused: {e}"));
        let target = device
            .client
            .find_target("fw.img")
            .expect("lookup")
            .expect("listed");
        let dest = tmp.path().join("downloaded");
        device
            .client
            .download_target(&target, &dest)
            .expect("image verifies");
        assert_eq!(std::fs::read(dest).expect("dest"), vec![7u8; 70_000]);

        // Without the PIN nothing signs, and the message says how to give one.
        let err = fails(ota_repo(
            &repo,
            &["resign"],
            &[("SOFTHSM2_CONF", s(&token.conf))],
        ));
        assert!(err.contains("OTA_PKCS11_PIN"), "{err}");
    }
}

#[test]
fn per_role_key_uris_with_a_pin_file_and_refusals() {
    let tmp = tempfile::tempdir().expect("tmp");
    let token = Token::new(tmp.path(), "hsm-a");
    let pin = tmp.path().join("pin");
    std::fs::write(&pin, "1234\n").expect("pin");
    let uri = |obj: &str| {
        format!(
            "pkcs11:token=hsm-a;object={obj}?module-path={MODULE}&pin-source=file:{}",
            pin.display()
        )
    };
    let only_conf = [("SOFTHSM2_CONF", s(&token.conf))];
    let repo = tmp.path().join("repo");
    ok(ota_repo(
        &repo,
        &[
            "init",
            "--key-type",
            "ecdsa",
            "--key-uri",
            &format!("root={}", uri("r1")),
            "--key-uri",
            &format!("root={}", uri("r2")),
            "--threshold",
            "root=2",
        ],
        &only_conf,
    ));
    let status = ok(ota_repo(
        &repo,
        &["status", "--warn-within", "1d"],
        &only_conf,
    ));
    assert!(status.contains("threshold 2 of 2"), "{status}");
    assert!(
        status.contains("PKCS#11 token hsm-a, object r2"),
        "{status}"
    );
    // A label already used in the token is refused rather than duplicated.
    let err = fails(ota_repo(
        &repo,
        &["keygen", "--key-uri", &uri("r1")],
        &only_conf,
    ));
    assert!(err.contains("already exists"), "{err}");
    // A PIN inside the URI is refused.
    let err = fails(ota_repo(
        &repo,
        &[
            "keygen",
            "--key-uri",
            &format!("pkcs11:token=hsm-a;object=x?module-path={MODULE}&pin-value=1234"),
        ],
        &only_conf,
    ));
    assert!(err.contains("pin-value is refused"), "{err}");
    let err = fails(ota_repo(
        &repo,
        &["keygen", "--key-uri", &uri("x").replace("hsm-a", "nope")],
        &only_conf,
    ));
    assert!(
        err.contains("no such token") && err.contains("hsm-a"),
        "{err}"
    );
}

#[test]
fn root_ceremony_two_of_three_with_keys_on_other_machines() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    ok(ota_repo(
        &repo,
        &["init", "--keys", "root=3", "--threshold", "root=2"],
        &[],
    ));
    // Each root key goes to its own "machine", out of the repository.
    let mut machine_keys = Vec::new();
    for i in 1..=3 {
        let dir = tmp.path().join(format!("machine{i}"));
        std::fs::create_dir_all(&dir).expect("machine");
        let dest = dir.join("root.pem");
        std::fs::rename(repo.join(format!("keys/root-{i}.pem")), &dest).expect("move key");
        machine_keys.push(dest);
    }
    let www = tmp.path().join("www");
    publish(&repo, &www);
    let root1 = std::fs::read(www.join("metadata/1.root.json")).expect("root");
    let mut device = Device::new(&tmp.path().join("device"), &root1, &www);
    device.refresh().expect("v1");

    // Root cannot be signed here any more.
    let err = fails(ota_repo(&repo, &["resign", "--role", "root"], &[]));
    assert!(
        err.contains("root needs 2 signature(s)") && err.contains("ceremony"),
        "{err}"
    );

    let payload = tmp.path().join("root-v2.payload.json");
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "export", "--role", "root", "--out", s(&payload)],
        &[],
    ));
    assert!(out.contains("version 2"), "{out}");
    let no_repo = tmp.path().join("no-repo");
    let sig = |i: usize, name: &str| {
        let out = tmp.path().join(name);
        ok(ota_repo(
            &no_repo,
            &[
                "sign",
                "--payload",
                s(&payload),
                "--key",
                s(&machine_keys[i]),
                "--out",
                s(&out),
            ],
            &[],
        ));
        out
    };
    let s1 = sig(0, "s1.json");
    let s1_again = sig(0, "s1b.json");
    // A key that is not a root key cannot even sign the payload.
    let err = fails(ota_repo(
        &no_repo,
        &[
            "sign",
            "--payload",
            s(&payload),
            "--key",
            s(&repo.join("keys/targets-1.pem")),
            "--out",
            s(&tmp.path().join("bad.json")),
        ],
        &[],
    ));
    assert!(err.contains("is not one of the keys"), "{err}");

    // Two signatures by one key count once: 1 of 2.
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "root", s(&s1), s(&s1_again)],
        &[],
    ));
    assert!(err.contains("1 of 2 required signatures"), "{err}");
    // A forged signature file does not count either.
    let forged = tmp.path().join("forged.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s1).expect("s1")).expect("json");
    let key3 = KeyRef::File(machine_keys[2].clone())
        .open(None)
        .expect("key3")
        .key_id;
    v["keyid"] = serde_json::Value::String(key3);
    std::fs::write(&forged, serde_json::to_vec(&v).expect("json")).expect("forged");
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "root", s(&s1), s(&forged)],
        &[],
    ));
    assert!(
        err.contains("1 of 2") && err.contains("does not verify"),
        "{err}"
    );

    // Publishing never ships a root below threshold: plant one and try.
    let one_sig_root = serde_json::json!({
        "signed": serde_json::from_slice::<serde_json::Value>(&std::fs::read(&payload).expect("p")).expect("p")["metadata"],
        "signatures": [{"keyid": v["keyid"], "sig": serde_json::from_slice::<serde_json::Value>(&std::fs::read(&s1).expect("s1")).expect("s1")["sig"]}],
    });
    let planted = repo.join("metadata/2.root.json");
    std::fs::write(
        &planted,
        serde_json::to_vec_pretty(&one_sig_root).expect("json"),
    )
    .expect("plant");
    let err = fails(ota_repo(
        &repo,
        &["publish", "--dir", s(&tmp.path().join("www-bad"))],
        &[],
    ));
    assert!(
        err.to_lowercase().contains("root") && err.contains("signature"),
        "{err}"
    );
    std::fs::remove_file(&planted).expect("unplant");

    let s3 = sig(2, "s3.json");
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "root", s(&s1), s(&s3)],
        &[],
    ));
    assert!(out.contains("signed root version 2 with 2 key(s)"), "{out}");
    publish(&repo, &www);
    device.refresh().expect("device accepts the 2-of-3 root");
    assert_eq!(device.root_version(), 2);

    let log = std::fs::read_to_string(repo.join("audit.jsonl")).expect("log");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"action\":\"merge\""))
            .count(),
        2
    );
    assert!(log.contains("\"operator\":\"alice\""));
    ok(ota_repo(&repo, &["audit", "verify"], &[]));
}

#[test]
fn devices_follow_root_rotations_and_refuse_a_revoked_targets_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    ok(ota_repo(&repo, &["init"], &[]));
    let www = tmp.path().join("www");
    publish(&repo, &www);
    let root1 = std::fs::read(www.join("metadata/1.root.json")).expect("root");
    let mut device = Device::new(&tmp.path().join("device"), &root1, &www);
    device.refresh().expect("v1");

    // Three root rotations, each replacing the root key; the device is
    // offline until the end and must walk the whole chain.
    let mut current = repo.join("keys/root-1.pem");
    for i in 2..=4 {
        let new_key = tmp.path().join(format!("root-{i}.pem"));
        let id = ok(ota_repo(&repo, &["keygen", "--out", s(&new_key)], &[]));
        let new_id = id.split_whitespace().next().expect("id").to_owned();
        let old_id = KeyRef::File(current.clone())
            .open(None)
            .expect("old")
            .key_id;
        let out = ok(ota_repo(
            &repo,
            &[
                "rotate",
                "--role",
                "root",
                "--add-key",
                s(&new_key),
                "--remove-key",
                &old_id,
            ],
            &[],
        ));
        assert!(out.contains(&format!("signed root version {i}")), "{out}");
        let status = ok(ota_repo(&repo, &["status", "--warn-within", "1d"], &[]));
        assert!(
            status.contains(&new_id) && !status.contains(&old_id),
            "{status}"
        );
        current = new_key;
    }
    publish(&repo, &www);
    device.refresh().expect("device follows 1 -> 4");
    assert_eq!(device.root_version(), 4);

    // Revoke the targets key: new key in, old key out; targets re-signed.
    let old_targets = repo.join("keys/targets-1.pem");
    let stolen = tmp.path().join("stolen-targets.pem");
    std::fs::copy(&old_targets, &stolen).expect("attacker's copy");
    let old_id = KeyRef::File(old_targets).open(None).expect("old").key_id;
    let new_targets = tmp.path().join("targets-2.pem");
    ok(ota_repo(&repo, &["keygen", "--out", s(&new_targets)], &[]));
    let out = ok(ota_repo(
        &repo,
        &[
            "rotate",
            "--role",
            "targets",
            "--add-key",
            s(&new_targets),
            "--remove-key",
            &old_id,
        ],
        &[],
    ));
    assert!(
        out.contains("signed root version 5") && out.contains("signed targets version 2"),
        "{out}"
    );
    publish(&repo, &www);
    device
        .refresh()
        .expect("device accepts the rotated targets key");

    // The attacker signs a release with the revoked key; everything else is genuine.
    let img = tmp.path().join("evil.img");
    std::fs::write(&img, b"evil").expect("img");
    let evil_repo = tmp.path().join("evil-repo");
    copy_dir(&repo, &evil_repo);
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(evil_repo.join("repo.json")).expect("cfg"))
            .expect("cfg");
    config["roles"]["targets"]["keys"] = serde_json::json!([s(&stolen)]);
    std::fs::write(
        evil_repo.join("repo.json"),
        serde_json::to_vec(&config).expect("cfg"),
    )
    .expect("cfg");
    // Our tool itself refuses to sign with it...
    let err = fails(ota_repo(
        &evil_repo,
        &[
            "add",
            s(&img),
            "--version",
            "6.6.6",
            "--hardware-id",
            "board",
            "--compress",
            "none",
        ],
        &[],
    ));
    assert!(err.contains("not a targets key in root metadata"), "{err}");
    // ...and a release forged with it by other means is refused by devices.
    forge_release_signed_by(&evil_repo, &stolen, &www);
    let err = device
        .refresh()
        .expect_err("revoked key must not be trusted");
    assert!(
        err.contains("targets metadata has 0 valid signature"),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// Builds targets N+1 signed only by `key`, with genuine snapshot and
/// timestamp, straight into the published directory.
fn forge_release_signed_by(repo: &Path, key: &Path, www: &Path) {
    use ota_repo::editor;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    rt.block_on(async {
        let layout = ota_repo::layout::Layout::new(repo);
        let state = ota_repo::state::RepoState::load(&layout)
            .await
            .expect("state");
        let log = AuditLog::new(repo.join("attacker"), "mallory".to_owned());
        let mut targets = state.targets.signed.clone();
        targets.version = targets.version.checked_add(1).expect("v");
        let evil = vec![KeyRef::File(key.to_owned()).open(None).expect("stolen key")];
        let sigs = editor::signatures(&targets, &evil, &log)
            .await
            .expect("sign");
        let signed = tough::schema::Signed {
            signed: targets.clone(),
            signatures: sigs,
        };
        let targets_bytes = editor::signed_bytes(&signed).expect("bytes");
        let root = &state.root.signed;
        let snapshot_key = vec![KeyRef::File(repo.join("keys/snapshot-1.pem"))
            .open(None)
            .expect("snapshot key")];
        let timestamp_key = vec![KeyRef::File(repo.join("keys/timestamp-1.pem"))
            .open(None)
            .expect("ts key")];
        let mut snapshot = state.snapshot.signed.clone();
        snapshot.version = snapshot.version.checked_add(1).expect("v");
        snapshot.meta.insert(
            "targets.json".to_owned(),
            editor::metafile(&targets_bytes, targets.version),
        );
        let snap = editor::sign(snapshot.clone(), root, &snapshot_key, &log)
            .await
            .expect("snapshot");
        let mut timestamp = state.timestamp.signed.clone();
        timestamp.version = timestamp.version.checked_add(1).expect("v");
        timestamp.meta.insert(
            "snapshot.json".to_owned(),
            editor::metafile(&snap.bytes, snapshot.version),
        );
        let ts = editor::sign(timestamp, root, &timestamp_key, &log)
            .await
            .expect("timestamp");
        let meta = www.join("metadata");
        std::fs::write(
            meta.join(format!("{}.targets.json", targets.version)),
            &targets_bytes,
        )
        .expect("w");
        std::fs::write(
            meta.join(format!("{}.snapshot.json", snapshot.version)),
            &snap.bytes,
        )
        .expect("w");
        std::fs::write(meta.join("timestamp.json"), &ts.bytes).expect("w");
    });
}

#[test]
fn status_exits_2_when_metadata_expires_within_the_window() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    ok(ota_repo(&repo, &["init", "--expires", "timestamp=2d"], &[]));
    let o = ota_repo(&repo, &["status", "--warn-within", "1d"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let o = ota_repo(&repo, &["status", "--warn-within", "3d"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("timestamp metadata expires soon"));
    let o = ota_repo(&repo, &["status"], &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the default window scales to the 2d timestamp's own lifetime"
    );
    let o = ota_repo(&repo, &["status", "--warn-within", "soon"], &[]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn audit_verify_names_the_line_of_every_kind_of_tampering() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    ok(ota_repo(&repo, &["init"], &[]));
    ok(ota_repo(&repo, &["resign", "--role", "targets"], &[]));
    let out = ok(ota_repo(&repo, &["audit", "verify"], &[]));
    assert!(out.contains("intact: 7 entries"), "{out}");
    let original = std::fs::read_to_string(repo.join("audit.jsonl")).expect("log");
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 7);

    let check = |name: &str, new_lines: Vec<String>, expect: &str| {
        std::fs::write(repo.join("audit.jsonl"), new_lines.join("\n") + "\n").expect("write");
        let err = fails(ota_repo(&repo, &["audit", "verify"], &[]));
        assert!(err.contains(expect), "{name}: {err}");
    };
    let owned = |v: &[&str]| v.iter().map(|l| l.to_string()).collect::<Vec<_>>();

    let mut edited = owned(&lines);
    edited[2] = edited[2].replace("\"operator\":\"alice\"", "\"operator\":\"bob\"");
    assert_ne!(edited[2], lines[2]);
    check(
        "edited",
        edited,
        "line 4: `prev` does not match the hash of line 3",
    );

    let mut removed = owned(&lines);
    removed.remove(2);
    check("removed", removed, "line 3:");

    let mut inserted = owned(&lines);
    inserted.insert(2, lines[5].to_owned());
    check("inserted", inserted, "line 3:");

    let mut reordered = owned(&lines);
    reordered.swap(2, 3);
    check("reordered", reordered, "line 3:");

    let mut last_edited = owned(&lines);
    last_edited[6] = last_edited[6].replace("alice", "bob");
    check("last edited", last_edited, "line 7");

    check("truncated", owned(&lines[..6]), "entries were removed");

    // Restored, the log verifies and accepts new entries again.
    std::fs::write(repo.join("audit.jsonl"), &original).expect("restore");
    ok(ota_repo(&repo, &["resign"], &[]));
    assert!(ok(ota_repo(&repo, &["audit", "verify"], &[])).contains("8 entries"));
}

/// The server's online-signing log (`<audit_dir>/audit.jsonl`, written with
/// the library as ota-server writes it) verifies without a repository and
/// reports tampering as the repository's own log does.
#[test]
fn audit_verify_log_checks_the_servers_online_signing_log() {
    use ota_repo::audit::Event;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("online-audit");
    let log = AuditLog::new(&dir, "ota-server (online key)".to_owned());
    for (role, version) in [("snapshot", 5), ("timestamp", 9), ("timestamp", 10)] {
        log.record(&Event {
            action: "online-sign",
            role,
            version,
            signed_bytes: format!("{role} {version}").as_bytes(),
            keyid: "ab12",
            key_location: "pkcs11:token=online",
        })
        .expect("record");
    }
    let file = dir.join("audit.jsonl");
    // No repository at --repo: none is needed.
    let nowhere = tmp.path().join("no-repo");
    let verify = || ota_repo(&nowhere, &["audit", "verify", "--log", s(&file)], &[]);
    assert!(ok(verify()).contains("audit log intact: 3 entries"));
    assert!(!nowhere.exists());

    let original = std::fs::read_to_string(&file).expect("log");
    let lines: Vec<&str> = original.lines().collect();
    let check = |name: &str, new_lines: Vec<String>, expect: &str| {
        std::fs::write(&file, new_lines.join("\n") + "\n").expect("write");
        let err = fails(verify());
        assert!(err.contains(expect), "{name}: {err}");
    };
    let owned = |v: &[&str]| v.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let mut edited = owned(&lines);
    edited[0] = edited[0].replace("\"version\":5", "\"version\":6");
    check(
        "edited",
        edited,
        "line 2: `prev` does not match the hash of line 1",
    );
    let mut removed = owned(&lines);
    removed.remove(1);
    check("removed", removed, "line 2:");
    let mut inserted = owned(&lines);
    inserted.insert(1, lines[2].to_owned());
    check("inserted", inserted, "line 2:");
    let mut reordered = owned(&lines);
    reordered.swap(1, 2);
    check("reordered", reordered, "line 2:");
    let mut last_edited = owned(&lines);
    last_edited[2] = last_edited[2].replace("online-sign", "forged");
    check("last edited", last_edited, "line 3");
    check(
        "truncated",
        owned(&lines[..2]),
        "has 2 entries but audit.head records 3",
    );

    std::fs::write(&file, &original).expect("restore");
    std::fs::remove_file(dir.join("audit.head")).expect("rm head");
    assert!(fails(verify()).contains("audit.head is missing"));
    let missing = tmp.path().join("nope.jsonl");
    assert!(fails(ota_repo(
        &nowhere,
        &["audit", "verify", "--log", s(&missing)],
        &[]
    ))
    .contains("no such file"));
}
