//! The `ota-repo` binary: argument parsing, exit codes and one-line errors.

use std::process::{Command, Output};

fn run(repo: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ota-repo"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("OTA_ADMIN_TOKEN")
        .output()
        .expect("run ota-repo")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_add_resign_publish_status_from_the_command_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    let img = tmp.path().join("fw.img");
    std::fs::write(&img, vec![1u8; 5000]).expect("img");

    let o = run(
        &repo,
        &["init", "--key-type", "ecdsa", "--expires", "timestamp=12h"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        &repo,
        &[
            "add",
            img.to_str().expect("utf8"),
            "--version",
            "1.0.0",
            "--hardware-id",
            "board-a",
            "--notes",
            "n",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&repo, &["resign", "--role", "snapshot"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("signed snapshot version 3") && out.contains("signed timestamp version 3"),
        "{out}"
    );

    let o = run(&repo, &["status"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("software key file ") && out.contains("root-1.pem (development only)"),
        "{out}"
    );
    assert!(out.contains("ecdsa/ecdsa-sha2-nistp256"), "{out}");
    assert!(
        out.contains("fw.img  version 1.0.0  hardware ids board-a"),
        "{out}"
    );

    let www = tmp.path().join("www");
    let o = run(&repo, &["publish", "--dir", www.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(www.join("metadata/timestamp.json").exists());

    // Errors: exit 1 and one line naming the problem.
    let o = run(
        &repo,
        &[
            "add",
            img.to_str().expect("utf8"),
            "--version",
            "2",
            "--hardware-id",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid version \"2\""),
        "{}",
        stderr(&o)
    );
    let o = run(&repo, &["publish", "--server", "http://127.0.0.1:9/"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("OTA_ADMIN_TOKEN"), "{}", stderr(&o));
    let o = run(&repo, &["init"]);
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
}

/// Every file under `dir`, relative to it, with its bytes.
fn files_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                let rel = p.strip_prefix(dir).expect("rel").display().to_string();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn publish_dir_copies_the_chunk_store_of_delta_releases() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    let img = tmp.path().join("fw.img");
    let mut state = 7u64;
    let bytes: Vec<u8> = (0..600_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(&img, &bytes).expect("img");
    assert!(run(&repo, &["init"]).status.success());
    let o = run(
        &repo,
        &[
            "add",
            img.to_str().expect("utf8"),
            "--version",
            "1.0.0",
            "--hardware-id",
            "board-a",
            "--delta",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let store = files_under(&repo.join("targets/chunks"));
    assert!(
        store.iter().any(|(n, _)| n.ends_with(".zst"))
            && store.iter().any(|(n, _)| n.ends_with(".cidx")),
        "{:?}",
        store.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );

    let www = tmp.path().join("www");
    let o = run(&repo, &["publish", "--dir", www.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        files_under(&www.join("targets/chunks")),
        store,
        "served under the names devices ask for, byte for byte"
    );

    // A chunk corrupted in the local store is refused, not published.
    let (name, mut evil) = store
        .iter()
        .find(|(n, _)| n.ends_with(".zst"))
        .cloned()
        .expect("chunk");
    evil[0] ^= 0xff;
    std::fs::write(repo.join("targets/chunks").join(&name), evil).expect("tamper");
    let fresh = tmp.path().join("www2");
    let o = run(&repo, &["publish", "--dir", fresh.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("does not hash to the sha256 in its name"),
        "{}",
        stderr(&o)
    );
    assert!(!fresh.join("metadata/timestamp.json").exists());
}
