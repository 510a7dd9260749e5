//! `ota-agent verify` through the real binary, on a device whose slots are
//! files and whose trusted metadata was signed by the real `ota-repo` and
//! fetched by our TUF client: verified, modified (one flipped byte),
//! unknown image (identified, or not), empty, and the exit codes.

use ota_agent::slot::SlotId;
use ota_agent::state::{AgentState, InstalledRelease, StateStore};
use ota_common::tuf::{ClientOptions, FileTransport, TufClient};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The ota-repo binary: `$OTA_REPO_BIN`, else the one beside this test's
/// target directory (`cargo test --workspace` builds it). Never built from
/// here: a nested cargo would wait forever on the outer cargo's build lock.
fn ota_repo_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("OTA_REPO_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("exe");
    let debug = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = debug.join("ota-repo");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p ota-repo` or `cargo test --workspace`, or set OTA_REPO_BIN",
        bin.display()
    );
    bin
}

fn ota_repo(repo: &Path, args: &[&str]) {
    let o = Command::new(ota_repo_bin())
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env("OTA_OPERATOR", "test")
        .output()
        .expect("run ota-repo");
    assert!(
        o.status.success(),
        "ota-repo {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    /// A repository with releases 2.0.0 and 3.0.0 (different lengths), and
    /// a device whose TUF client has fetched its metadata.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let d = Device { dir };
        let repo = d.path("repo");
        ota_repo(&repo, &["init"]);
        for (v, len) in [("2.0.0", 300_000usize), ("3.0.0", 200_001)] {
            let img = d.path(&format!("fw-{v}.img"));
            std::fs::write(&img, image(v, len)).expect("image");
            let img = img.display().to_string();
            ota_repo(
                &repo,
                &["add", &img, "--version", v, "--hardware-id", "board-a"],
            );
        }
        let www = d.path("www");
        ota_repo(&repo, &["publish", "--dir", &www.display().to_string()]);
        let tuf = d.path("state/tuf");
        let root = std::fs::read(repo.join("metadata/1.root.json")).expect("root");
        TufClient::<FileTransport>::init(&tuf, &root).expect("init");
        let url = |p: PathBuf| url::Url::from_directory_path(p).expect("url");
        let options = ClientOptions::new(url(www.join("metadata")), url(www.join("targets")));
        TufClient::open(&tuf, options, FileTransport)
            .expect("open")
            .refresh()
            .expect("refresh");
        let p = |n: &str| d.path(n).display().to_string();
        let config = format!(
            r#"
server_url = "http://127.0.0.1:9"
trusted_root = "{root}"
state_dir = "{state}"
hardware_id = "board-a"
device_id = "verify-test"
initial_version = "1.0.0"
[slots]
a = "{a}"
b = "{b}"
[boot]
backend = "sim"
sim_state = "{sim}"
"#,
            root = p("repo/metadata/1.root.json"),
            state = p("state"),
            a = p("a.img"),
            b = p("b.img"),
            sim = p("boot.json"),
        );
        std::fs::write(d.path("agent.toml"), config).expect("config");
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The image of release `v`, followed by `pad` bytes of other data (a
    /// partition is larger than the image it holds).
    fn flash(&self, slot: &str, v: &str, len: usize, pad: usize) {
        let mut bytes = image(v, len);
        bytes.extend(std::iter::repeat_n(0xa5, pad));
        std::fs::write(self.path(slot), bytes).expect("flash");
    }

    fn record(&self, a: Option<InstalledRelease>, b: Option<InstalledRelease>) {
        let mut state = AgentState::fresh(SlotId::A, &semver::Version::new(1, 0, 0));
        state.slot_a = a;
        state.slot_b = b;
        StateStore::new(self.path("state/state.json"))
            .save(&state)
            .expect("save");
    }

    fn verify(&self, args: &[&str]) -> (Output, Value) {
        let o = Command::new(env!("CARGO_BIN_EXE_ota-agent"))
            .arg("--config")
            .arg(self.path("agent.toml"))
            .arg("verify")
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run ota-agent");
        let json = if args.contains(&"--json") && !o.stdout.is_empty() {
            serde_json::from_slice(&o.stdout).expect("JSON array")
        } else {
            Value::Null
        };
        (o, json)
    }
}

fn image(version: &str, len: usize) -> Vec<u8> {
    let seed = version
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed).to_be_bytes()[1])
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn release(v: &str, len: usize) -> InstalledRelease {
    InstalledRelease {
        version: semver::Version::parse(v).expect("version"),
        target: Some(format!("fw-{v}.img")),
        sha256: Some(sha256_hex(&image(v, len))),
    }
}

fn out(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn verified_modified_unknown_and_empty_slots() {
    let d = Device::new();
    // A holds 2.0.0 in a larger partition; B holds 3.0.0; both recorded.
    d.flash("a.img", "2.0.0", 300_000, 65_536 * 3 + 11);
    d.flash("b.img", "3.0.0", 200_001, 0);
    d.record(
        Some(release("2.0.0", 300_000)),
        Some(release("3.0.0", 200_001)),
    );
    let (o, json) = d.verify(&["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let slots = json.as_array().expect("array");
    assert_eq!(slots.len(), 2);
    for (s, name) in slots.iter().zip(["fw-2.0.0.img", "fw-3.0.0.img"]) {
        assert_eq!(s["verdict"], "verified", "{s:#}");
        assert_eq!(s["signed"]["name"], name);
    }
    // Only the signed length is hashed, not the partition's padding.
    assert_eq!(slots[0]["bytes_hashed"], 300_000);
    let (o, _) = d.verify(&[]);
    let text = out(&o);
    assert!(
        text.contains("slot A (") && text.contains("): verified"),
        "{text}"
    );
    assert!(text.contains("targets version 3"), "{text}");

    // One flipped byte in B: modified, exit 1.
    let mut b = std::fs::read(d.path("b.img")).expect("b");
    b[123_456] ^= 0x10;
    std::fs::write(d.path("b.img"), &b).expect("b");
    let (o, json) = d.verify(&["--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert_eq!(json[0]["verdict"], "verified");
    assert_eq!(json[1]["verdict"], "modified");
    assert!(
        json[1]["detail"]
            .as_str()
            .expect("d")
            .contains("do not match"),
        "{json:#}"
    );
    // Truncated below the signed length: modified too.
    std::fs::write(d.path("b.img"), &b[..1000]).expect("b");
    let (o, json) = d.verify(&["--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        json[1]["detail"]
            .as_str()
            .expect("d")
            .contains("fewer than"),
        "{json:#}"
    );

    // The factory image recorded in A, which actually holds 3.0.0 (padded):
    // unknown image, identified by its content. B recorded as nothing and
    // missing: empty. Nothing modified: exit 0.
    d.flash("a.img", "3.0.0", 200_001, 4096);
    std::fs::remove_file(d.path("b.img")).expect("rm b");
    d.record(
        Some(InstalledRelease::factory(semver::Version::new(1, 0, 0))),
        None,
    );
    let (o, json) = d.verify(&["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(json[0]["verdict"], "unknown_image", "{json:#}");
    assert_eq!(
        json[0]["identified_as"],
        serde_json::json!(["fw-3.0.0.img"])
    );
    assert_eq!(json[1]["verdict"], "empty", "{json:#}");
    let (o, _) = d.verify(&[]);
    assert!(out(&o).contains("unknown image"), "{}", out(&o));

    // Recorded release the trusted metadata does not list, random content:
    // unknown image, not identified.
    std::fs::write(d.path("a.img"), image("junk", 50_000)).expect("a");
    let mut gone = release("9.0.0", 10);
    gone.target = Some("fw-9.0.0.img".into());
    d.record(Some(gone), None);
    let (o, json) = d.verify(&["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(json[0]["verdict"], "unknown_image");
    assert_eq!(json[0]["identified_as"], serde_json::json!([]));
    assert!(
        json[0]["detail"]
            .as_str()
            .expect("d")
            .contains("does not list fw-9.0.0.img"),
        "{json:#}"
    );
}

#[test]
fn read_errors_exit_2() {
    let d = Device::new();
    d.flash("a.img", "2.0.0", 300_000, 0);
    // A slot that cannot be read as a file.
    std::fs::create_dir(d.path("b.img")).expect("dir");
    d.record(Some(release("2.0.0", 300_000)), None);
    let (o, json) = d.verify(&["--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert_eq!(json[0]["verdict"], "verified");
    assert_eq!(json[1]["verdict"], "error");

    // A corrupt state file is an error, not a guess.
    std::fs::write(d.path("state/state.json"), b"{ not json").expect("state");
    let (o, _) = d.verify(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("state.json"), "{}", out(&o));

    // No trusted metadata at all: nothing can be verified; said, not fatal.
    std::fs::remove_file(d.path("state/state.json")).expect("rm");
    std::fs::remove_dir_all(d.path("state/tuf")).expect("rm tuf");
    let (o, json) = d.verify(&["--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert_eq!(json[0]["verdict"], "unknown_image");
    let (o, _) = d.verify(&[]);
    assert!(out(&o).contains("no trusted metadata"), "{}", out(&o));
}
