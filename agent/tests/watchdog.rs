//! `ota-agent run` as a systemd `Type=notify` service: a fake NOTIFY_SOCKET
//! (a Unix datagram socket bound in a temp dir) receives what the real binary
//! sends: READY=1 once started, WATCHDOG=1 at half of WATCHDOG_USEC, and no
//! WATCHDOG=1 when WATCHDOG_PID names another process.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A device whose server is unreachable: every cycle fails (and is retried),
/// which is a healthy loop as far as the watchdog is concerned.
fn device(dir: &Path) -> PathBuf {
    let p = |n: &str| dir.join(n).display().to_string();
    std::fs::write(dir.join("a.img"), b"factory").expect("a");
    std::fs::write(dir.join("cmdline"), b"root=/dev/x ota.slot=A\n").expect("cmdline");
    std::fs::write(dir.join("boot_id"), b"boot-1\n").expect("boot id");
    // Not a valid root: the TUF client refuses it, a failure the loop retries.
    std::fs::write(dir.join("root.json"), b"{}").expect("root");
    let config = format!(
        r#"
server_url = "http://127.0.0.1:9"
trusted_root = "{root}"
state_dir = "{state}"
hardware_id = "board-a"
device_id = "wd-test"
initial_version = "1.0.0"
poll_interval_secs = 1
reboot_command = ["true"]
http_timeout_secs = 2
[slots]
a = "{a}"
b = "{b}"
[boot]
backend = "sim"
sim_state = "{sim}"
cmdline_path = "{cmdline}"
boot_id_path = "{boot_id}"
"#,
        root = p("root.json"),
        state = p("state"),
        a = p("a.img"),
        b = p("b.img"),
        sim = p("boot.json"),
        cmdline = p("cmdline"),
        boot_id = p("boot_id"),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).expect("config");
    path
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, socket: &Path, watchdog_pid: Option<&str>) -> Agent {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ota-agent"));
    cmd.arg("--config")
        .arg(device(dir))
        .arg("run")
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).expect("log"));
    match watchdog_pid {
        Some(pid) => cmd.env("WATCHDOG_PID", pid),
        None => cmd.env_remove("WATCHDOG_PID"),
    };
    Agent(cmd.spawn().expect("start ota-agent"))
}

/// Every message received on `socket` within `window`.
fn collect(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let end = Instant::now() + window;
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    messages
}

#[test]
fn run_notifies_ready_and_feeds_the_watchdog_from_its_loop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    let mut agent = start(dir.path(), &socket_path, None);
    // Over 2.5 s and at least two failed poll cycles, pings every ~200 ms.
    let messages = collect(&socket, Duration::from_millis(2500));
    assert!(
        agent.0.try_wait().expect("wait").is_none(),
        "the agent keeps running: {}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    assert_eq!(
        messages.first().map(String::as_str),
        Some("READY=1"),
        "{messages:?}"
    );
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        (5..=30).contains(&pings),
        "WATCHDOG=1 about every 200 ms: {pings} in {messages:?}"
    );
}

#[test]
fn watchdog_pings_belong_to_the_process_systemd_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    // PID 1 is never the agent.
    let _agent = start(dir.path(), &socket_path, Some("1"));
    let messages = collect(&socket, Duration::from_millis(1200));
    assert_eq!(messages, ["READY=1"]);
}
