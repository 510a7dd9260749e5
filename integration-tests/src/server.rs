//! A real `ota-server` process on a loopback port chosen by the kernel.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug)]
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `ota-server` with embedded defaults on 127.0.0.1:0 and waits until it listens.
    pub fn start(data_dir: &Path) -> anyhow::Result<Server> {
        Self::start_with_config(data_dir, None)
    }

    /// Starts `ota-server` with a TOML configuration file holding `config`
    /// (listen address and data directory still come from the command line).
    pub fn start_with_config(data_dir: &Path, config: Option<&str>) -> anyhow::Result<Server> {
        std::fs::create_dir_all(data_dir)?;
        let log = data_dir.with_extension("log");
        let mut command = Command::new(crate::bins::path("ota-server")?);
        if let Some(config) = config {
            let file = data_dir.with_extension("toml");
            std::fs::write(&file, config)?;
            command.arg("--config").arg(file);
        }
        let mut child = command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting ota-server")?;
        let stdout = child.stdout.take().context("ota-server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("ota-server listening on ") {
                        break url.trim().to_owned();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                    bail!("ota-server exited before listening:\n{log_text}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            log,
        })
    }

    /// The admin token the server generated in its data directory.
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }

    pub fn admin_get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let token = std::fs::read_to_string(self.admin_token_file())?;
        let resp = http_client()?
            .get(format!("{}{}", self.url, path))
            .bearer_auth(token.trim())
            .send()?;
        let status = resp.status();
        let body = resp.text()?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The server's record of every device.
    pub fn devices(&self) -> anyhow::Result<Vec<ota_common::wire::DeviceRecord>> {
        Ok(serde_json::from_value(
            self.admin_get("/admin/v1/devices")?,
        )?)
    }

    /// Every report one device sent, oldest first.
    pub fn events(&self, device_id: &str) -> anyhow::Result<Vec<ota_common::wire::DeviceEvent>> {
        Ok(serde_json::from_value(self.admin_get(&format!(
            "/admin/v1/devices/{device_id}/events"
        ))?)?)
    }

    /// Runs an `ota-server` administration command on this server's data
    /// directory (e.g. `device add ID`) and returns what it printed.
    pub fn admin_command(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(crate::bins::path("ota-server")?)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "ota-server {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Where the server keeps the published repository, for tests that tamper with it.
    pub fn repository_dir(&self) -> PathBuf {
        self.data_dir.join("repository")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_client() -> anyhow::Result<reqwest::blocking::Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Ok(reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}
