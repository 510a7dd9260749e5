//! The real `ota-server` binary: starts with no configuration at all, prints
//! its listening line, generates a private admin token, stops on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn command(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ota-server"));
    cmd.current_dir(dir)
        .env_remove("STATE_DIRECTORY")
        .env_remove("OTA_SERVER_LISTEN")
        .env_remove("OTA_SERVER_DATA_DIR")
        .env_remove("OTA_SERVER_ADMIN_TOKEN_FILE")
        .env_remove("OTA_SERVER_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn starts_without_config_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 0 so parallel test runs never collide; everything else is default.
    let mut guard = KillOnDrop(Some(
        command(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .spawn()
            .expect("spawn ota-server"),
    ));
    let child = guard.0.as_mut().expect("child");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read listening line");
    let addr = line
        .trim_end()
        .strip_prefix("ota-server listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let addr: std::net::SocketAddr = addr.parse().expect("real address");
    assert_ne!(addr.port(), 0);

    // Default data dir, relative to the working directory, with a private token.
    let data = dir.path().join("ota-server-data");
    let token_path = data.join("admin-token");
    let mode = std::fs::metadata(&token_path)
        .expect("token")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_path).expect("read token");
    assert!(data.join("ota.db").exists());
    assert!(data.join("repository/metadata").is_dir());

    // A plain HTTP exchange: no repository yet, so 404 with a JSON error.
    let answer = http_get(addr, "/metadata/timestamp.json");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(
        stderr.contains("admin-token"),
        "token path logged: {stderr}"
    );
    assert!(
        !stderr.contains(token.trim()),
        "the token itself must never be logged"
    );
}

#[test]
fn unknown_config_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nmax_uplod_bytes = 5\n").expect("write");
    let out = command(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_uplod_bytes"), "{stderr}");
    assert!(out.stdout.is_empty());
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// Kills the server if a test fails before stopping it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn tls_and_database_from_config_and_sighup_reloads_instead_of_killing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    std::fs::write(dir.path().join("cert.pem"), generated.cert.pem()).expect("cert");
    std::fs::write(
        dir.path().join("key.pem"),
        generated.key_pair.serialize_pem(),
    )
    .expect("key");
    let db = dir.path().join("elsewhere.db");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\
             database_url = \"sqlite://{}\"\n",
            db.display()
        ),
    )
    .expect("write");
    let mut guard = KillOnDrop(Some(
        command(dir.path())
            .arg("--config")
            .arg(&config)
            .spawn()
            .expect("spawn ota-server"),
    ));
    let child = guard.0.as_mut().expect("child");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read listening line");
    assert!(
        line.starts_with("ota-server listening on https://127.0.0.1:"),
        "{line:?}"
    );
    assert!(db.exists(), "the configured database is used");
    assert!(!dir.path().join("ota-server-data/ota.db").exists());

    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "SIGHUP must reload, not stop"
    );
}
