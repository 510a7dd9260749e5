//! Runs the real server in-process on 127.0.0.1:0 for the integration tests.
#![allow(dead_code)]

pub mod postgres;

use ota_server::db::DatabaseUrl;
use ota_server::{Config, Server};
use std::path::PathBuf;
use tokio::sync::oneshot;

pub struct TestServer {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub token: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    /// The PostgreSQL database when running on [`Backend::Postgres`].
    pub pg: Option<postgres::PgTestDb>,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

/// The database a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn install_crypto() {
    // reqwest is built without a default TLS provider; plain HTTP still needs one set.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    start_on_with(Backend::Sqlite, adjust).await
}

pub async fn start_on(backend: Backend) -> TestServer {
    start_on_with(backend, |_| {}).await
}

pub async fn start_on_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestServer {
    install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let mut config = Config::new("127.0.0.1:0".parse().expect("addr"), data_dir.clone());
    // Files written straight into the repository (as another instance
    // would) reach the in-memory view within this period.
    config.metadata_refresh = std::time::Duration::from_millis(100);
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let db = postgres::PgTestDb::create().await;
            config.database_url = Some(DatabaseUrl::parse(&db.url).expect("test database url"));
            Some(db)
        }
    };
    adjust(&mut config);
    let server = Server::bind(&config).await.expect("server starts");
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let token = std::fs::read_to_string(data_dir.join("admin-token"))
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    TestServer {
        base: format!("http://{addr}"),
        addr,
        token,
        data_dir,
        client: reqwest::Client::new(),
        pg,
        _dir: dir,
        stop: Some(stop),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Puts a file straight into the repository (as a commit would).
    pub fn put_repo_file(&self, rel: &str, content: &[u8]) {
        let path = self.data_dir.join("repository").join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        // Whole or not at all, as a publishing instance writes: the server's
        // refresh may read the file at any moment, and a plain write could
        // let it see the truncated, still empty file.
        let tmp = path.with_file_name(format!(
            ".{}.put",
            path.file_name().expect("name").to_string_lossy()
        ));
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }

    /// Sends a request line exactly as given (no client-side normalisation
    /// of `..` or percent escapes) and returns the status code.
    pub async fn raw_status(&self, method: &str, target: &str) -> u16 {
        self.raw_request(method, target, "").await
    }

    /// Like [`Self::raw_status`], with the admin token and an empty body.
    pub async fn raw_status_admin(&self, method: &str, target: &str) -> u16 {
        let auth = format!(
            "Authorization: Bearer {}\r\nContent-Length: 0\r\n",
            self.token
        );
        self.raw_request(method, target, &auth).await
    }

    async fn raw_request(&self, method: &str, target: &str, extra_headers: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: test\r\n{extra_headers}Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        text.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
    }
}

/// Reads `{"error": "..."}` and returns the message.
pub async fn error_message(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {body}"))
        .to_owned()
}
