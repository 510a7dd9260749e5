//! Every unit file in systemd/ passes `systemd-analyze verify` with no
//! warning, checked against the real binaries it starts.

use std::path::Path;
use std::process::Command;

#[test]
fn unit_files_verify_cleanly() {
    let units_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for entry in std::fs::read_dir(&units_dir).expect("systemd/ directory") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("service") {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).expect("unit file");
        // Point ExecStart at the binaries this build produced.
        for bin in ["ota-agent", "ota-server"] {
            let built = integration_tests::bins::path(bin).expect("binary built");
            text = text.replace(&format!("/usr/bin/{bin}"), &built.to_string_lossy());
        }
        let name = path.file_name().expect("file name");
        let copy = scratch.path().join(name);
        std::fs::write(&copy, text).expect("write copy");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .expect("systemd-analyze is installed (Debian package: systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{}: systemd-analyze verify reported:\n{stderr}",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "expected the agent, health-check and server units"
    );
}
