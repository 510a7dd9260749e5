//! M-of-N ceremonies for targets, snapshot and timestamp, through the real
//! `ota-repo` binary: key holders on separate "machines" (a directory with
//! one key file each, or a SoftHSM2 token), `add` leaving a version pending
//! signatures, `publish` refusing until the threshold is met, `merge`
//! refusing duplicates, foreign keys and signatures over other bytes, and
//! devices (our own TUF client, from a fresh copy of the first root)
//! accepting the result.

use ota_common::tuf::{ClientOptions, FileTransport, TufClient};
use ota_repo::ceremony::RoleMeta;
use ota_repo::key_ref::KeyRef;
use ota_repo::role::Role;
use ota_repo::state::dir_url;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::{fails, ok, s, Token, MODULE};

fn ota_repo(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    common::ota_repo_as("carol", repo, args, env)
}

fn key_id(path: &Path) -> String {
    KeyRef::File(path.to_owned())
        .open(None)
        .expect("key opens")
        .key_id
}

/// A device that trusts only `root` (a fresh client state) and reads a
/// published directory.
fn device(state_dir: &Path, root: &[u8], www: &Path) -> TufClient<FileTransport> {
    TufClient::<FileTransport>::init(state_dir, root).expect("client init");
    let options = ClientOptions::new(
        dir_url(&www.join("metadata")).expect("url"),
        dir_url(&www.join("targets")).expect("url"),
    );
    TufClient::open(state_dir, options, FileTransport).expect("client open")
}

/// Refreshes a fresh device from version 1 of root and downloads `name`.
fn fresh_device_installs(tmp: &Path, www: &Path, name: &str, content: &[u8]) {
    let root1 = std::fs::read(www.join("metadata/1.root.json")).expect("root");
    let dir = tempfile::tempdir_in(tmp).expect("device dir");
    let mut client = device(&dir.path().join("state"), &root1, www);
    client.refresh().expect("device accepts the repository");
    let target = client
        .find_target(name)
        .expect("lookup")
        .unwrap_or_else(|| panic!("{name} listed"));
    let dest = dir.path().join("image");
    client
        .download_target(&target, &dest)
        .expect("image verifies");
    assert_eq!(std::fs::read(dest).expect("image"), content);
}

fn set_config_keys(repo: &Path, role: &str, keys: serde_json::Value) {
    let path = repo.join("repo.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("repo.json")).expect("json");
    config["roles"][role]["keys"] = keys;
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
}

/// A key holder's machine: no repository, one key.
struct Holder {
    home: PathBuf,
    key: Vec<String>,
    env: Vec<(String, String)>,
}

impl Holder {
    fn sign(&self, payload: &Path, out: &Path) -> String {
        let mut args = vec!["sign", "--payload", s(payload), "--out", s(out)];
        args.extend(self.key.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ok(ota_repo(&self.home.join("no-repo"), &args, &env))
    }
}

fn file_holder(tmp: &Path, n: usize, key: PathBuf) -> Holder {
    let home = tmp.join(format!("machine{n}"));
    std::fs::create_dir_all(&home).expect("machine");
    let dest = home.join("targets.pem");
    std::fs::rename(&key, &dest).expect("move the key to its machine");
    Holder {
        home,
        key: vec!["--key".to_owned(), s(&dest).to_owned()],
        env: Vec::new(),
    }
}

#[test]
fn targets_two_of_three_signed_on_three_machines_one_with_a_token() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(
        &repo,
        &["init", "--keys", "targets=3", "--threshold", "targets=2"],
        &[],
    ));

    // The third holder keeps a key inside a token: it replaces targets-3.
    let machine3 = t.join("machine3");
    let token = Token::new(&machine3, "holder3");
    let uri = format!("pkcs11:token=holder3;object=targets?module-path={MODULE}");
    let out = ok(ota_repo(
        &repo,
        &["keygen", "--key-uri", &uri],
        &token.env(),
    ));
    let token_id = out.split_whitespace().next().expect("key id").to_owned();
    let out = ok(ota_repo(
        &repo,
        &[
            "rotate",
            "--role",
            "targets",
            "--add-key",
            &uri,
            "--remove-key",
            &key_id(&repo.join("keys/targets-3.pem")),
        ],
        &token.env(),
    ));
    assert!(out.contains("signed targets version 2"), "{out}");
    std::fs::remove_file(repo.join("keys/targets-3.pem")).expect("rm");
    // The other two targets keys leave for their machines: none is here.
    let h1 = file_holder(t, 1, repo.join("keys/targets-1.pem"));
    let h2 = file_holder(t, 2, repo.join("keys/targets-2.pem"));
    let h3 = Holder {
        home: machine3.clone(),
        key: vec!["--key-uri".to_owned(), uri.clone()],
        env: token
            .env()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    set_config_keys(&repo, "targets", serde_json::json!([]));
    let www = t.join("www");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));

    // `add` leaves targets version 3 pending rather than failing.
    let img = t.join("fw-1.img");
    let content = vec![0x5au8; 3000];
    std::fs::write(&img, &content).expect("img");
    let out = ok(ota_repo(
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
        &[],
    ));
    assert!(
        out.contains("targets version 3 is pending signatures: 0 of 2 signatures"),
        "{out}"
    );
    let err = fails(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    assert!(
        err.contains("targets version 3 is pending signatures: 0 of 2 signatures")
            && err.contains("ceremony merge --role targets"),
        "{err}"
    );
    // A second release cannot fork the pending version.
    let err = fails(ota_repo(
        &repo,
        &[
            "add",
            s(&img),
            "--version",
            "1.0.1",
            "--name",
            "x.img",
            "--hardware-id",
            "board",
            "--compress",
            "none",
        ],
        &[],
    ));
    assert!(err.contains("targets is waiting for signatures"), "{err}");

    let payload = t.join("targets-v3.payload.json");
    let out = ok(ota_repo(
        &repo,
        &[
            "ceremony",
            "export",
            "--role",
            "targets",
            "--out",
            s(&payload),
        ],
        &[],
    ));
    let sha256 = ota_common::hash::sha256_hex(&content);
    assert!(
        out.contains("targets version 3, expires")
            && out.contains(&format!("added fw-1.img: 3000 bytes, sha256 {sha256}")),
        "{out}"
    );

    // Holder 1 signs and shows what they sign; one signature is 1 of 2.
    let s1 = t.join("s1.json");
    let shown = h1.sign(&payload, &s1);
    assert!(shown.contains(&format!("sha256 {sha256}")), "{shown}");
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "targets", s(&s1)],
        &[],
    ));
    assert!(err.contains("1 of 2 required signatures"), "{err}");
    let err = fails(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    assert!(
        err.contains("targets version 3 is pending signatures: 1 of 2 signatures"),
        "{err}"
    );

    // The same key again (a second file) does not count twice.
    let s1_again = t.join("s1-again.json");
    h1.sign(&payload, &s1_again);
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "targets", s(&s1_again)],
        &[],
    ));
    assert!(
        err.contains("1 of 2 required signatures") && err.contains("counted once"),
        "{err}"
    );

    // A key that is not a targets key: its holder got a payload doctored to
    // accept it, so `sign` signs, but merge judges by the trusted root.
    let outsider = t.join("outsider.pem");
    ok(ota_repo(&repo, &["keygen", "--out", s(&outsider)], &[]));
    let mut doctored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&payload).expect("payload")).expect("json");
    let outsider_key = KeyRef::File(outsider.clone())
        .public_key(None)
        .expect("public");
    doctored["keys"][key_id(&outsider)] = serde_json::to_value(outsider_key).expect("key");
    let doctored_path = t.join("doctored.json");
    std::fs::write(&doctored_path, serde_json::to_vec(&doctored).expect("json")).expect("w");
    let s_out = t.join("s-outsider.json");
    ok(ota_repo(
        &t.join("no-repo"),
        &[
            "sign",
            "--payload",
            s(&doctored_path),
            "--key",
            s(&outsider),
            "--out",
            s(&s_out),
        ],
        &[],
    ));
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "targets", s(&s_out)],
        &[],
    ));
    assert!(
        err.contains(&format!(
            "key {} is not one of the keys targets version 3 accepts",
            key_id(&outsider)
        )) && err.contains("1 of 2"),
        "{err}"
    );

    // Holder 2 is handed a payload whose targets were swapped (consistent
    // in itself): the signature covers other bytes and does not count.
    let mut evil = doctored.clone();
    let mut meta = evil["metadata"].clone();
    meta["targets"]["fw-1.img"]["length"] = serde_json::json!(3001);
    let canonical = RoleMeta::from_value(Role::Targets, meta.clone())
        .expect("targets")
        .canonical()
        .expect("canonical");
    {
        use base64::Engine as _;
        evil["metadata"] = meta;
        evil["canonical"] =
            serde_json::json!(base64::engine::general_purpose::STANDARD.encode(&canonical));
        evil["sha256"] = serde_json::json!(ota_common::hash::sha256_hex(&canonical));
    }
    let evil_path = t.join("evil.json");
    std::fs::write(&evil_path, serde_json::to_vec(&evil).expect("json")).expect("w");
    let s2_evil = t.join("s2-evil.json");
    h2.sign(&evil_path, &s2_evil);
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "targets", s(&s2_evil)],
        &[],
    ));
    assert!(
        err.contains("signs other bytes") && err.contains("1 of 2"),
        "{err}"
    );

    // The token holder signs the genuine payload: 2 of 2, and snapshot and
    // timestamp (keys here) are signed over the final targets.
    let s3 = t.join("s3.json");
    h3.sign(&payload, &s3);
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "targets", s(&s3)],
        &[],
    ));
    assert!(
        out.contains("signed targets version 3 with 2 key(s)")
            && out.contains(&token_id)
            && out.contains("signed snapshot version 3")
            && out.contains("signed timestamp version 3"),
        "{out}"
    );
    let snapshot: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("metadata/3.snapshot.json")).expect("snapshot"),
    )
    .expect("json");
    assert_eq!(snapshot["signed"]["meta"]["targets.json"]["version"], 3);
    assert!(!repo.join("ceremony/targets.json").exists());
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    fresh_device_installs(t, &www, "fw-1.img", &content);

    // Next release: an old signature (version 3) does not count for 4.
    let img2 = t.join("fw-2.img");
    let content2 = vec![0xa5u8; 4000];
    std::fs::write(&img2, &content2).expect("img");
    let out = ok(ota_repo(
        &repo,
        &[
            "add",
            s(&img2),
            "--version",
            "2.0.0",
            "--hardware-id",
            "board",
            "--compress",
            "none",
        ],
        &[],
    ));
    assert!(
        out.contains("targets version 4 is pending signatures"),
        "{out}"
    );
    let err = fails(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "targets", s(&s1), s(&s3)],
        &[],
    ));
    assert!(
        err.contains("signs targets version 3, but the open ceremony is for version 4")
            && err.contains("0 of 2"),
        "{err}"
    );
    let payload4 = t.join("targets-v4.payload.json");
    ok(ota_repo(
        &repo,
        &[
            "ceremony",
            "export",
            "--role",
            "targets",
            "--out",
            s(&payload4),
        ],
        &[],
    ));
    let (a, b) = (t.join("v4-1.json"), t.join("v4-2.json"));
    h1.sign(&payload4, &a);
    h2.sign(&payload4, &b);
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "targets", s(&a), s(&b)],
        &[],
    ));
    assert!(
        out.contains("signed targets version 4 with 2 key(s)"),
        "{out}"
    );
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    fresh_device_installs(t, &www, "fw-2.img", &content2);

    // Every accepted signature is in the hash-chained audit log.
    let log = std::fs::read_to_string(repo.join("audit.jsonl")).expect("log");
    let merges = log
        .lines()
        .filter(|l| l.contains("\"action\":\"merge\"") && l.contains("\"role\":\"targets\""))
        .count();
    assert_eq!(merges, 4, "{log}");
    assert!(log.contains("\"operator\":\"carol\""));
    ok(ota_repo(&repo, &["audit", "verify"], &[]));
}

#[test]
fn offline_snapshot_and_timestamp_are_signed_after_targets_in_turn() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"], &[]));
    let snap_key = t.join("snapshot.pem");
    let ts_key = t.join("timestamp.pem");
    std::fs::rename(repo.join("keys/snapshot-1.pem"), &snap_key).expect("mv");
    std::fs::rename(repo.join("keys/timestamp-1.pem"), &ts_key).expect("mv");
    set_config_keys(&repo, "snapshot", serde_json::json!([]));
    set_config_keys(&repo, "timestamp", serde_json::json!([]));
    let sign = |payload: &Path, key: &Path, out: &Path| {
        ok(ota_repo(
            &t.join("no-repo"),
            &[
                "sign",
                "--payload",
                s(payload),
                "--key",
                s(key),
                "--out",
                s(out),
            ],
            &[],
        ))
    };

    // Targets is signed here; the snapshot that lists it waits.
    let a = t.join("a.img");
    std::fs::write(&a, b"first").expect("img");
    let out = ok(ota_repo(
        &repo,
        &[
            "add",
            s(&a),
            "--version",
            "1.0.0",
            "--hardware-id",
            "hw",
            "--compress",
            "none",
        ],
        &[],
    ));
    assert!(
        out.contains("snapshot version 2 is pending signatures: 0 of 1"),
        "{out}"
    );
    assert!(repo.join("metadata/2.targets.json").exists());
    // Abandoning it drops the targets version no snapshot lists.
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "abandon", "--role", "snapshot"],
        &[],
    ));
    assert!(
        out.contains("abandoned the snapshot version 2 ceremony"),
        "{out}"
    );
    assert!(!repo.join("metadata/2.targets.json").exists());
    ok(ota_repo(
        &repo,
        &["publish", "--dir", s(&t.join("www-old"))],
        &[],
    ));

    let b = t.join("b.img");
    std::fs::write(&b, b"second").expect("img");
    ok(ota_repo(
        &repo,
        &[
            "add",
            s(&b),
            "--version",
            "2.0.0",
            "--hardware-id",
            "hw",
            "--compress",
            "none",
        ],
        &[],
    ));
    let www = t.join("www");
    let err = fails(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    assert!(
        err.contains("snapshot version 2 is pending signatures: 0 of 1 signatures"),
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
        &[],
    ));
    assert!(out.contains("targets.json: version 2"), "{out}");
    let sig = t.join("snap.sig.json");
    sign(&payload, &snap_key, &sig);
    // The wrong role's key cannot sign it.
    let err = fails(ota_repo(
        &t.join("no-repo"),
        &[
            "sign",
            "--payload",
            s(&payload),
            "--key",
            s(&ts_key),
            "--out",
            s(&t.join("x.json")),
        ],
        &[],
    ));
    assert!(err.contains("is not one of the keys"), "{err}");
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "snapshot", s(&sig)],
        &[],
    ));
    assert!(
        out.contains("signed snapshot version 2 with 1 key(s)")
            && out.contains("timestamp version 2 is pending signatures: 0 of 1"),
        "{out}"
    );
    let err = fails(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    assert!(err.contains("timestamp version 2 is pending"), "{err}");

    let payload = t.join("timestamp.payload.json");
    let out = ok(ota_repo(
        &repo,
        &[
            "ceremony",
            "export",
            "--role",
            "timestamp",
            "--out",
            s(&payload),
        ],
        &[],
    ));
    assert!(out.contains("snapshot.json: version 2"), "{out}");
    let sig = t.join("ts.sig.json");
    sign(&payload, &ts_key, &sig);
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "timestamp", s(&sig)],
        &[],
    ));
    assert!(out.contains("signed timestamp version 2"), "{out}");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    fresh_device_installs(t, &www, "b.img", b"second");

    // A re-signing ceremony for a role with no pending version.
    let payload = t.join("timestamp3.payload.json");
    let out = ok(ota_repo(
        &repo,
        &[
            "ceremony",
            "export",
            "--role",
            "timestamp",
            "--expires",
            "2d",
            "--out",
            s(&payload),
        ],
        &[],
    ));
    assert!(out.contains("timestamp version 3"), "{out}");
    sign(&payload, &ts_key, &sig);
    ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "timestamp", s(&sig)],
        &[],
    ));
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    fresh_device_installs(t, &www, "b.img", b"second");
    ok(ota_repo(&repo, &["audit", "verify"], &[]));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("readdir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// Replaces `dir` with the copy `saved` (what the disk held before a step).
fn restore_dir(saved: &Path, dir: &Path) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).expect("rm");
    }
    copy_dir(saved, dir);
}

fn status(repo: &Path) -> (Option<i32>, String, String) {
    let o = ota_repo(repo, &["status"], &[]);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn add_image(repo: &Path, img: &Path, version: &str) -> Output {
    ota_repo(
        repo,
        &[
            "add",
            s(img),
            "--version",
            version,
            "--hardware-id",
            "hw",
            "--compress",
            "none",
        ],
        &[],
    )
}

#[test]
fn a_power_cut_in_any_signing_step_does_not_block_the_next_command() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let repo = t.join("repo");
    ok(ota_repo(&repo, &["init"], &[]));
    let (a, b, c) = (t.join("a.img"), t.join("b.img"), t.join("c.img"));
    std::fs::write(&a, b"first").expect("img");
    std::fs::write(&b, b"second").expect("img");
    std::fs::write(&c, b"third").expect("img");

    // All keys here: cut after N.targets.json and N.snapshot.json were
    // written, before timestamp.json (the commit point).
    let before = t.join("before-a");
    copy_dir(&repo.join("metadata"), &before);
    ok(add_image(&repo, &a, "1.0.0"));
    std::fs::copy(
        before.join("timestamp.json"),
        repo.join("metadata/timestamp.json"),
    )
    .expect("the old timestamp: the cut came before the new one");
    assert!(repo.join("metadata/2.targets.json").exists());
    let o = add_image(&repo, &b, "2.0.0");
    let out = ok(o.clone());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("2.targets.json: written by a signing run that was interrupted")
            && err.contains("2.snapshot.json: written by a signing run that was interrupted"),
        "{err}"
    );
    assert!(out.contains("signed targets version 2"), "{out}");
    let (code, text, _) = status(&repo);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("b.img") && !text.contains("a.img"), "{text}");
    assert!(text.contains("ceremonies: none open"), "{text}");

    // Snapshot kept offline: the cut comes after N.targets.json, before the
    // snapshot ceremony file.
    let snap_key = t.join("snapshot.pem");
    std::fs::rename(repo.join("keys/snapshot-1.pem"), &snap_key).expect("mv");
    set_config_keys(&repo, "snapshot", serde_json::json!([]));
    let out = ok(add_image(&repo, &c, "3.0.0"));
    // The first line is truthful: targets is signed, snapshot is not.
    let first = out.lines().next().expect("a line");
    assert!(
        first.contains("signed targets version 3; snapshot version 3 is NOT signed yet"),
        "{out}"
    );
    let (code, text, err) = status(&repo);
    assert_eq!(
        code,
        Some(2),
        "an open ceremony is an unfinished release: {text}"
    );
    assert!(
        text.contains("ceremonies open (1):")
            && text.contains("snapshot version 3: 0 of 1 signatures"),
        "{text}"
    );
    assert!(err.contains("ceremony merge --role snapshot"), "{err}");
    std::fs::remove_file(repo.join("ceremony/snapshot.json")).expect("the cut");
    let _ = std::fs::remove_dir_all(repo.join("ceremony/snapshot.signatures"));
    let o = add_image(&repo, &c, "3.0.0");
    let out = ok(o.clone());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("3.targets.json: written by a signing run"),
        "{err}"
    );
    assert!(
        out.contains("snapshot version 3 is pending signatures"),
        "{out}"
    );

    // Merging the snapshot with timestamp offline too: the timestamp
    // ceremony opens, then the snapshot one closes. Cut in between: both open.
    let ts_key = t.join("timestamp.pem");
    std::fs::rename(repo.join("keys/timestamp-1.pem"), &ts_key).expect("mv");
    set_config_keys(&repo, "timestamp", serde_json::json!([]));
    let sign = |role: &str, key: &Path| -> PathBuf {
        let payload = t.join(format!("{role}.payload.json"));
        ok(ota_repo(
            &repo,
            &["ceremony", "export", "--role", role, "--out", s(&payload)],
            &[],
        ));
        let sig = t.join(format!("{role}.sig.json"));
        ok(ota_repo(
            &t.join("no-repo"),
            &[
                "sign",
                "--payload",
                s(&payload),
                "--key",
                s(key),
                "--out",
                s(&sig),
            ],
            &[],
        ));
        sig
    };
    let sig = sign("snapshot", &snap_key);
    let ceremonies_before = t.join("ceremony-before-snapshot-merge");
    copy_dir(&repo.join("ceremony"), &ceremonies_before);
    let out = ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "snapshot", s(&sig)],
        &[],
    ));
    assert!(
        out.contains("timestamp version 3 is pending signatures"),
        "{out}"
    );
    std::fs::copy(
        ceremonies_before.join("snapshot.json"),
        repo.join("ceremony/snapshot.json"),
    )
    .expect("the cut left the snapshot ceremony open");
    let (code, text, _) = status(&repo);
    assert_eq!(code, Some(2));
    assert!(text.contains("ceremonies open (2):"), "{text}");
    let sig = {
        let o = ota_repo(
            &repo,
            &[
                "ceremony",
                "export",
                "--role",
                "timestamp",
                "--out",
                s(&t.join("ts.json")),
            ],
            &[],
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        ok(o);
        assert!(
            err.contains("closed the snapshot version 3 ceremony: it was signed and the open timestamp ceremony lists it"),
            "{err}"
        );
        assert!(
            repo.join("metadata/3.snapshot.json").exists(),
            "kept: the timestamp ceremony lists it"
        );
        let sig = t.join("ts.sig.json");
        ok(ota_repo(
            &t.join("no-repo"),
            &[
                "sign",
                "--payload",
                s(&t.join("ts.json")),
                "--key",
                s(&ts_key),
                "--out",
                s(&sig),
            ],
            &[],
        ));
        sig
    };

    // The timestamp merge writes timestamp.json, then closes its ceremony:
    // cut in between, the ceremony is stale and is closed next time.
    let ceremonies_before = t.join("ceremony-before-timestamp-merge");
    copy_dir(&repo.join("ceremony"), &ceremonies_before);
    ok(ota_repo(
        &repo,
        &["ceremony", "merge", "--role", "timestamp", s(&sig)],
        &[],
    ));
    restore_dir(&ceremonies_before, &repo.join("ceremony"));
    let o = ota_repo(
        &repo,
        &["resign", "--role", "timestamp", "--expires", "timestamp=3d"],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    // The heal ran first (the resign itself then needs the offline key).
    assert!(
        err.contains("closed the timestamp version 3 ceremony: the repository already has timestamp version 3"),
        "{err}"
    );
    let (code, text, _) = status(&repo);
    assert_eq!(code, Some(0), "{text}");
    let www = t.join("www");
    ok(ota_repo(&repo, &["publish", "--dir", s(&www)], &[]));
    fresh_device_installs(t, &www, "c.img", b"third");
}
