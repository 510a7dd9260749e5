//! A real S3 API for end-to-end tests: moto's S3 server (`moto_server`,
//! from PyPI, in the venv `./test` sets up) on a loopback port it picks,
//! holding one empty bucket, killed on drop.
//!
//! A second S3 implementation beside s3s-fs (which the server's own S3 tests
//! use). s3s-fs names a file after base64 of each object key, so keys past
//! about 165 bytes fail there (real S3 allows 1024): long SHA-512 names of
//! chunks were once placed, and would have been refused.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BUCKET: &str = "ota";
const PREFIX: &str = "fleet";

#[derive(Debug)]
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `OTA_TEST_MOTO_SERVER`, else the venv `./test` installs moto into.
fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("OTA_TEST_MOTO_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/moto_server");
    if venv.is_file() {
        return Ok(venv);
    }
    bail!(
        "no moto_server: run ./test (it makes {}) or set OTA_TEST_MOTO_SERVER",
        venv.display()
    )
}

impl S3Server {
    /// Starts moto's S3 server and creates the bucket.
    pub fn start() -> anyhow::Result<S3Server> {
        let mut child = Command::new(binary()?)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting moto_server")?;
        let stderr = child.stderr.take().context("moto_server stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining after the announcement so moto never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("Running on ") {
                    let _ = tx.send(line[at + "Running on ".len()..].trim().to_owned());
                }
            }
        });
        let Ok(endpoint) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("moto_server did not announce its address within 30 s");
        };
        let server = S3Server { child, endpoint };
        let created = server.client()?.put(server.url(BUCKET)).send()?;
        if !created.status().is_success() {
            bail!("creating bucket {BUCKET}: {}", created.status());
        }
        Ok(server)
    }

    // moto checks no signatures: plain requests read the bucket.
    fn client(&self) -> anyhow::Result<reqwest::blocking::Client> {
        crate::server::http_client()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.endpoint)
    }

    /// The `[object_store]` section of an ota-server configuration using this bucket.
    pub fn server_config(&self) -> String {
        format!(
            "[object_store]\nurl = \"s3://{BUCKET}/{PREFIX}\"\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n\
             allow_http = true\n",
            self.endpoint
        )
    }

    /// Keys of the repository's objects under `rel` (e.g. `targets/chunks/`),
    /// relative to the repository.
    pub fn list(&self, rel: &str) -> anyhow::Result<Vec<String>> {
        let prefix = format!("{PREFIX}/{rel}");
        let (mut keys, mut token) = (Vec::new(), None::<String>);
        loop {
            let mut query = vec![("list-type", "2".to_owned()), ("prefix", prefix.clone())];
            if let Some(t) = token.take() {
                query.push(("continuation-token", t));
            }
            let body = self
                .client()?
                .get(self.url(BUCKET))
                .query(&query)
                .send()?
                .error_for_status()?
                .text()?;
            for part in body.split("<Key>").skip(1) {
                let key = part.split("</Key>").next().unwrap_or_default();
                keys.push(
                    key.strip_prefix(&format!("{PREFIX}/"))
                        .unwrap_or(key)
                        .to_owned(),
                );
            }
            match body
                .split("<NextContinuationToken>")
                .nth(1)
                .and_then(|t| t.split("</NextContinuationToken>").next())
            {
                Some(t) => token = Some(t.to_owned()),
                None => return Ok(keys),
            }
        }
    }
}
