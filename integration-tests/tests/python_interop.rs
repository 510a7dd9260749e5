//! Interoperability with python-tuf 7, the TUF reference implementation, both ways:
//!
//! * python-tuf's `ngclient.Updater` refreshes from and downloads out of a
//!   repository that the real `ota-repo` built and the real `ota-server` serves,
//!   for every key type `ota-repo` can create, and through a delegated role
//!   made by `ota-repo delegate` and `add --role`;
//! * repositories that python-tuf's Metadata API built (each key type, both
//!   RSA-PSS salt lengths, sha512-only targets, a delegation, a root rotation)
//!   are accepted by our `tuf-client`, and tampered copies of them are refused
//!   with the reason named. python-tuf checks each of those repositories
//!   itself first (`make_repo.py`), so a disagreement is our client's.
//!
//! The Python side is `integration-tests/python/`; the interpreter comes from
//! `integration_tests::python` (a venv in the target dir, or `$OTA_PYTHON`).

use integration_tests::fixture::{Fixture, HARDWARE_ID};
use integration_tests::python;
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---- python-tuf reads what ota-repo built and ota-server serves ----

/// Publishes two releases, then has python-tuf refresh and download the newest.
fn ngclient_downloads_from_ota_server(key_type: &str) {
    let fx = Fixture::with_init_args(&["--key-type", key_type]).expect("fixture");
    fx.release("1.1.0", true, 64 * 1024, &[HARDWARE_ID])
        .expect("release 1.1.0");
    let image = fx
        .release("1.2.0", true, 160 * 1024 + 3, &[HARDWARE_ID])
        .expect("release 1.2.0");
    let run = run_ngclient(&fx, &image);
    assert_success(&run.output, "python-tuf ngclient");
    assert!(
        stdout(&run.output).contains("ok: rootfs-1.2.0.img"),
        "python-tuf did not report the verified download: {}",
        stdout(&run.output)
    );
    assert_eq!(
        std::fs::read(run.download_dir.join("rootfs-1.2.0.img")).expect("python-tuf's download"),
        std::fs::read(&image).expect("image"),
        "python-tuf saved other bytes than the released image"
    );
    // python-tuf persisted the chain it verified: the newest snapshot and targets.
    for (role, version) in [("snapshot", 3), ("targets", 3)] {
        let doc = read_json(&run.metadata_dir.join(format!("{role}.json")));
        assert_eq!(
            doc["signed"]["version"], version,
            "{role} python-tuf trusts"
        );
    }
}

/// The compressed target (zstd frames, the decoded image signed in
/// `custom.payload`, a delta index in `custom.delta`) is ordinary TUF to
/// python-tuf: it verifies and saves the compressed bytes, and keeps the
/// custom fields it does not interpret.
#[test]
fn ngclient_downloads_a_compressed_release() {
    let fx = Fixture::new().expect("fixture");
    let image = fx.dir.path().join("rootfs-1.1.0.img");
    integration_tests::image::write_image(&image, "1.1.0", true, 200 * 1024).expect("image");
    fx.repo
        .add_with(
            &image,
            "1.1.0",
            &[HARDWARE_ID],
            &["--frame-size", "65536", "--delta"],
        )
        .expect("ota-repo add (zstd by default, with a delta index)");
    fx.repo.publish(&fx.server).expect("publish");
    let stored = std::fs::read_dir(fx.repo.dir.join("targets"))
        .expect("targets")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().ends_with(".rootfs-1.1.0.img"))
        .expect("the stored target");
    let run = run_ngclient_for(&fx, OsStr::new("rootfs-1.1.0.img"), &stored);
    assert_success(&run.output, "python-tuf ngclient");
    assert!(
        stdout(&run.output).contains("ok: rootfs-1.1.0.img"),
        "{}",
        stdout(&run.output)
    );
    let doc = read_json(&run.metadata_dir.join("targets.json"));
    let payload = &doc["signed"]["targets"]["rootfs-1.1.0.img"]["custom"]["payload"];
    assert_eq!(payload["encoding"], "zstd", "{doc}");
    assert_eq!(payload["image_length"], 200 * 1024);
    assert_eq!(payload["frames"].as_array().map(Vec::len), Some(4));
    // The delta index is custom metadata too: python-tuf verified and kept it.
    let delta = &doc["signed"]["targets"]["rootfs-1.1.0.img"]["custom"]["delta"];
    assert_eq!(
        delta["index_sha256"].as_str().map(str::len),
        Some(64),
        "{doc}"
    );
    assert!(delta["index_length"].as_u64().is_some(), "{doc}");
}

struct NgclientRun {
    _dir: tempfile::TempDir,
    metadata_dir: PathBuf,
    download_dir: PathBuf,
    output: Output,
}

/// Runs `ngclient_download.py` against the fixture's server, trusting the repository's 1.root.json.
fn run_ngclient(fx: &Fixture, image: &Path) -> NgclientRun {
    let name = image.file_name().expect("image name");
    run_ngclient_for(fx, name, image)
}

/// [`run_ngclient`] for target `name`, whose bytes must equal `image`.
fn run_ngclient_for(fx: &Fixture, name: &OsStr, image: &Path) -> NgclientRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let metadata_dir = dir.path().join("metadata");
    let download_dir = dir.path().join("download");
    std::fs::create_dir_all(&metadata_dir).expect("metadata dir");
    std::fs::create_dir_all(&download_dir).expect("download dir");
    std::fs::copy(fx.repo.initial_root(), metadata_dir.join("root.json")).expect("seed root");
    let metadata_url = format!("{}/metadata/", fx.server.url);
    let targets_url = format!("{}/targets/", fx.server.url);
    let output = python::run_script(
        "ngclient_download.py",
        &[
            OsStr::new("--metadata-dir"),
            metadata_dir.as_os_str(),
            OsStr::new("--metadata-url"),
            OsStr::new(&metadata_url),
            OsStr::new("--targets-url"),
            OsStr::new(&targets_url),
            OsStr::new("--target-name"),
            name,
            OsStr::new("--download-dir"),
            download_dir.as_os_str(),
            OsStr::new("--expected-file"),
            image.as_os_str(),
        ],
    )
    .expect("python-tuf available");
    NgclientRun {
        _dir: dir,
        metadata_dir,
        download_dir,
        output,
    }
}

#[test]
fn ngclient_downloads_from_ota_server_ed25519() {
    ngclient_downloads_from_ota_server("ed25519");
}

#[test]
fn ngclient_downloads_from_ota_server_ecdsa() {
    ngclient_downloads_from_ota_server("ecdsa");
}

#[test]
fn ngclient_downloads_from_ota_server_rsa() {
    ngclient_downloads_from_ota_server("rsa");
}

/// python-tuf walks the delegation the real `ota-repo delegate` made and
/// downloads what the real `ota-repo add --role` signed into that role.
#[test]
fn ngclient_downloads_from_a_delegated_role_built_by_ota_repo() {
    let fx = Fixture::new().expect("fixture");
    fx.repo
        .run(&[
            "delegate",
            "--name",
            "board-a",
            "--paths",
            "board-a/*",
            "--generate-key",
            "--key-type",
            "ecdsa",
        ])
        .expect("ota-repo delegate");
    let image = fx.dir.path().join("board-a-fw.img");
    let bytes: Vec<u8> = (0..96 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image, &bytes).expect("image");
    let name = "board-a/fw-2.0.0.img";
    fx.repo
        .run(&[
            "add",
            image.to_str().expect("utf-8 path"),
            "--name",
            name,
            "--version",
            "2.0.0",
            "--hardware-id",
            HARDWARE_ID,
            "--role",
            "board-a",
            // Stored as it is: the test compares the download with the image.
            "--compress",
            "none",
        ])
        .expect("ota-repo add --role");
    fx.repo.publish(&fx.server).expect("publish");
    let run = run_ngclient_for(&fx, OsStr::new(name), &image);
    assert_success(&run.output, "python-tuf ngclient");
    assert!(
        stdout(&run.output).contains(&format!("ok: {name}")),
        "python-tuf did not report the verified download: {}",
        stdout(&run.output)
    );
    // python-tuf verified and kept the delegated role's metadata.
    let doc = read_json(&run.metadata_dir.join("board-a.json"));
    assert_eq!(doc["signed"]["version"], 2, "board-a python-tuf trusts");
    assert!(doc["signed"]["targets"].get(name).is_some(), "{doc}");
}

/// The ngclient script really verifies: an image changed on the server is refused.
#[test]
fn ngclient_refuses_an_image_changed_on_ota_server() {
    let fx = Fixture::new().expect("fixture");
    let image = fx
        .release("1.1.0", true, 64 * 1024, &[HARDWARE_ID])
        .expect("release");
    let targets = fx.server.repository_dir().join("targets");
    let mut flipped = 0;
    for entry in std::fs::read_dir(&targets).expect("server's targets dir") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().ends_with(".rootfs-1.1.0.img") {
            flip_byte(&path, 1000);
            flipped += 1;
        }
    }
    assert!(
        flipped > 0,
        "no served copy of the image in {}",
        targets.display()
    );
    let run = run_ngclient(&fx, &image);
    assert_eq!(
        run.output.status.code(),
        Some(1),
        "{}",
        describe(&run.output)
    );
    assert!(
        stderr(&run.output).contains("LengthOrHashMismatchError"),
        "python-tuf should name the hash mismatch: {}",
        describe(&run.output)
    );
}

// ---- our tuf-client reads what python-tuf built ----

/// What `make_repo.py CASE OUT` built: the valid repository and its tampered copies.
struct PythonRepo {
    _dir: tempfile::TempDir,
    target_name: String,
    expected: PathBuf,
    trusted_root: PathBuf,
    repos: Value,
    /// What python-tuf itself said of each variant.
    reference_verdicts: Value,
}

fn make_repo(case: &str) -> PythonRepo {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = python::run_script("make_repo.py", &[OsStr::new(case), dir.path().as_os_str()])
        .expect("python-tuf available");
    assert_success(&out, &format!("make_repo.py {case}"));
    let manifest: Value = serde_json::from_slice(&out.stdout).expect("make_repo.py manifest");
    let field = |name: &str| {
        manifest[name]
            .as_str()
            .unwrap_or_else(|| panic!("manifest has no {name}: {manifest}"))
            .to_owned()
    };
    PythonRepo {
        target_name: field("target_name"),
        expected: PathBuf::from(field("expected")),
        trusted_root: PathBuf::from(field("root")),
        repos: manifest["repos"].clone(),
        reference_verdicts: manifest["reference_verdicts"].clone(),
        _dir: dir,
    }
}

impl PythonRepo {
    fn repo(&self, variant: &str) -> PathBuf {
        PathBuf::from(
            self.repos[variant]
                .as_str()
                .unwrap_or_else(|| panic!("make_repo.py built no {variant:?}: {}", self.repos)),
        )
    }

    fn variants(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .repos
            .as_object()
            .expect("repos object")
            .keys()
            .filter(|k| *k != "valid")
            .cloned()
            .collect();
        names.sort();
        names
    }
}

/// One run of our client over a repository directory, with a fresh trusted state.
struct ClientRun {
    dir: tempfile::TempDir,
}

impl ClientRun {
    fn new(trusted_root: &Path) -> ClientRun {
        let run = ClientRun {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let init = run.tuf_client(&[OsStr::new("init"), trusted_root.as_os_str()]);
        assert_success(&init, "tuf-client init");
        run
    }

    fn metadata_dir(&self) -> PathBuf {
        self.dir.path().join("metadata")
    }

    fn target_dir(&self) -> PathBuf {
        self.dir.path().join("targets")
    }

    fn tuf_client(&self, args: &[&OsStr]) -> Output {
        Command::new(integration_tests::bins::path("tuf-client").expect("tuf-client built"))
            .arg("--metadata-dir")
            .arg(self.metadata_dir())
            .args(args)
            .output()
            .expect("running tuf-client")
    }

    fn refresh(&self, repo: &Path) -> Output {
        let url = file_url(&repo.join("metadata"));
        self.tuf_client(&[
            OsStr::new("--metadata-url"),
            OsStr::new(&url),
            OsStr::new("refresh"),
        ])
    }

    fn download(&self, repo: &Path, target_name: &str) -> Output {
        let metadata_url = file_url(&repo.join("metadata"));
        let targets_url = file_url(&repo.join("targets"));
        let target_dir = self.target_dir();
        self.tuf_client(&[
            OsStr::new("--metadata-url"),
            OsStr::new(&metadata_url),
            OsStr::new("--target-name"),
            OsStr::new(target_name),
            OsStr::new("--target-base-url"),
            OsStr::new(&targets_url),
            OsStr::new("--target-dir"),
            target_dir.as_os_str(),
            OsStr::new("download"),
        ])
    }

    /// Every file the client left in its target directory.
    fn downloaded(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.target_dir()) {
            Ok(entries) => entries.map(|e| e.expect("entry").path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("{}: {e}", self.target_dir().display()),
        }
    }
}

/// Our client accepts the valid repository and refuses each tampered copy
/// with the reason in `refusals` (variant, words stderr must contain).
/// Returns the run over the valid repository, for checks of its trusted state.
fn our_client_reads_python_repo(case: &str, refusals: &[(&str, String)]) -> ClientRun {
    let built = make_repo(case);
    let expected = std::fs::read(&built.expected).expect("expected image");

    let valid = built.repo("valid");
    let valid_run = ClientRun::new(&built.trusted_root);
    assert_success(
        &valid_run.refresh(&valid),
        &format!("{case}: tuf-client refresh"),
    );
    assert_success(
        &valid_run.download(&valid, &built.target_name),
        &format!("{case}: tuf-client download"),
    );
    let files = valid_run.downloaded();
    assert_eq!(files.len(), 1, "{case}: one downloaded file: {files:?}");
    assert_eq!(
        std::fs::read(&files[0]).expect("downloaded target"),
        expected,
        "{case}: downloaded bytes differ from the target python-tuf signed"
    );

    let mut expected_variants: Vec<String> =
        refusals.iter().map(|(v, _)| (*v).to_owned()).collect();
    expected_variants.sort();
    assert_eq!(
        built.variants(),
        expected_variants,
        "{case}: tampered variants built"
    );
    for (variant, reason) in refusals {
        let run = ClientRun::new(&built.trusted_root);
        let out = run.download(&built.repo(variant), &built.target_name);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{case}/{variant}: tuf-client must refuse it: {}",
            describe(&out)
        );
        assert!(
            stderr(&out).contains(reason.as_str()),
            "{case}/{variant}: stderr should say {reason:?}: {}",
            describe(&out)
        );
        assert_eq!(
            run.downloaded(),
            Vec::<PathBuf>::new(),
            "{case}/{variant}: nothing may be left in the target directory"
        );
        // The reference refuses a repeated key id for the same reason, not
        // by accident of some other check.
        if variant.starts_with("duplicate-keyid-") {
            let verdict = built.reference_verdicts[*variant].as_str().unwrap_or("");
            assert!(
                verdict.contains("Multiple signatures found for keyid"),
                "{case}/{variant}: python-tuf's verdict: {verdict:?}"
            );
        }
    }
    valid_run
}

/// The attacks every case is checked against; `holder` is the role listing the target.
fn common_refusals(holder: &'static str, hash: &str) -> Vec<(&'static str, String)> {
    let repeated = |role: &str| format!("{role} metadata is invalid: key id");
    let mut refusals = vec![
        ("image-flipped", format!("{hash} mismatch")),
        (
            "targets-modified",
            format!("{holder} metadata has 0 valid signature(s) of the 2 required"),
        ),
        (
            "signature-removed",
            format!("{holder} metadata has 1 valid signature(s) of the 2 required"),
        ),
        // One valid signature listed twice: invalid before any counting.
        ("signature-duplicated", repeated(holder)),
        (
            "timestamp-expired",
            "timestamp metadata expired at".to_owned(),
        ),
        // Every signature valid and the threshold met, one key id repeated.
        ("duplicate-keyid-timestamp", repeated("timestamp")),
        ("duplicate-keyid-snapshot", repeated("snapshot")),
        ("duplicate-keyid-targets", repeated("targets")),
    ];
    if holder == "board-a" {
        refusals.push(("duplicate-keyid-board-a", repeated("board-a")));
    }
    refusals
}

#[test]
fn python_repo_ed25519() {
    our_client_reads_python_repo("ed25519", &common_refusals("targets", "sha256"));
}

#[test]
fn python_repo_ecdsa() {
    our_client_reads_python_repo("ecdsa", &common_refusals("targets", "sha256"));
}

/// keytype "ecdsa-sha2-nistp256", as older repositories and the spec's examples write it.
#[test]
fn python_repo_ecdsa_legacy_keytype() {
    our_client_reads_python_repo(
        "ecdsa-legacy-keytype",
        &common_refusals("targets", "sha256"),
    );
}

/// securesystemslib's signer: RSASSA-PSS with a 32-byte salt.
#[test]
fn python_repo_rsa_pss_salt32() {
    our_client_reads_python_repo("rsa-pss-salt32", &common_refusals("targets", "sha256"));
}

/// RSASSA-PSS with the maximum salt length (go-tuf's and older signers' choice).
#[test]
fn python_repo_rsa_pss_salt_max() {
    our_client_reads_python_repo("rsa-pss-salt-max", &common_refusals("targets", "sha256"));
}

/// Targets listing only sha512: the file is fetched by its sha512 name and checked with it.
#[test]
fn python_repo_sha512_only() {
    our_client_reads_python_repo("sha512-only", &common_refusals("targets", "sha512"));
}

/// The target is listed by delegated role board-a (images/board-a/*), not by targets.
#[test]
fn python_repo_delegated_role() {
    our_client_reads_python_repo("delegated", &common_refusals("board-a", "sha256"));
}

/// 1.root -> 2.root with every key replaced; the client must walk to 2.root
/// and verify the rest with its keys, and refuse a 2.root the old root key did not sign.
#[test]
fn python_repo_root_rotation() {
    let run = our_client_reads_python_repo("root-rotation", &rotation_refusals());
    // The rotation is persisted: the trusted root is now version 2.
    let root = read_json(&run.metadata_dir().join("root.json"));
    assert_eq!(
        root["signed"]["version"], 2,
        "trusted root after the rotation"
    );
}

// ---- helpers ----

/// A file:// URL for a local directory (temp paths need no escaping; refuse any that would).
fn file_url(path: &Path) -> String {
    let text = path.to_str().expect("UTF-8 path");
    assert!(
        text.starts_with('/')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
        "{text}: path needs URL escaping"
    );
    format!("file://{text}/")
}

/// Replaces `path` by a copy with one byte flipped. A new file, not an edit in
/// place: the server hard-links one image under its sha256 and sha512 names,
/// and flipping the shared inode twice would restore it.
fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset] ^= 0x01;
    let tmp = path.with_extension("tampered");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read metadata")).expect("JSON")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
}

fn rotation_refusals() -> Vec<(&'static str, String)> {
    let mut refusals = common_refusals("targets", "sha256");
    refusals.push((
        "root-new-keys-only",
        "root metadata has 0 valid signature(s) of the 1 required".to_owned(),
    ));
    refusals.push((
        "duplicate-keyid-root",
        "root metadata is invalid: key id".to_owned(),
    ));
    refusals
}

/// The trusted 1.root has expired: only the newest root's expiry counts (spec 5.3.10).
#[test]
fn python_repo_rotation_from_expired_root() {
    let run = our_client_reads_python_repo("rotation-from-expired-root", &rotation_refusals());
    let root = read_json(&run.metadata_dir().join("root.json"));
    assert_eq!(
        root["signed"]["version"], 2,
        "trusted root after the rotation"
    );
}

/// consistent_snapshot false: snapshot.json, targets.json and the target by its plain name.
#[test]
fn python_repo_without_consistent_snapshots() {
    our_client_reads_python_repo(
        "no-consistent-snapshot",
        &common_refusals("targets", "sha256"),
    );
}

/// Snapshot and timestamp give the length and sha256 of the files they list:
/// changed targets metadata is refused by those before any signature is checked.
#[test]
fn python_repo_with_snapshot_hashes() {
    let mut refusals = common_refusals("targets", "sha256");
    for (variant, reason) in &mut refusals {
        *reason = match *variant {
            // Longer than the length the snapshot signed: cut off while it arrives.
            "targets-modified" => "1.targets.json: more than the limit of".to_owned(),
            "signature-removed" => "targets metadata: length".to_owned(),
            "signature-duplicated" => "targets metadata: sha256 mismatch".to_owned(),
            _ => continue,
        };
    }
    our_client_reads_python_repo("snapshot-hashes", &refusals);
}

/// A target path with non-ASCII and spaces, custom fields with escapes,
/// control characters, emoji and big integers: canonical JSON must match
/// securesystemslib's byte for byte or no signature verifies.
#[test]
fn python_repo_unicode_names_and_custom_fields() {
    our_client_reads_python_repo("unicode", &common_refusals("targets", "sha256"));
}
