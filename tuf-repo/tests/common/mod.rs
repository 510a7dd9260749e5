//! Helpers shared by the end-to-end tests that run the real `ota-repo`
//! binary (`mod common;` in each test file).
// Each test file uses only some of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Runs `ota-repo --repo REPO ARGS` as `operator` (recorded in the audit
/// log), with no PIN from the test's own environment and `env` added.
pub fn ota_repo_as(operator: &str, repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ota-repo"));
    cmd.arg("--repo").arg(repo).args(args);
    cmd.env_remove("OTA_PKCS11_PIN")
        .env("OTA_OPERATOR", operator);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ota-repo")
}

/// Stdout of a run that must succeed.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr of a run that must be refused with exit code 1.
pub fn fails(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a refusal: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A SoftHSM2 token in its own directory (its own `SOFTHSM2_CONF`, passed
/// to the child processes only, so tests run in parallel).
pub struct Token {
    pub conf: PathBuf,
}

impl Token {
    pub fn new(dir: &Path, label: &str) -> Self {
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
        Token { conf }
    }

    pub fn env(&self) -> [(&str, &str); 2] {
        [("SOFTHSM2_CONF", s(&self.conf)), ("OTA_PKCS11_PIN", "1234")]
    }
}
