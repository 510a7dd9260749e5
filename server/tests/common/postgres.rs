//! A fresh PostgreSQL database per test.
//!
//! The server comes from `OTA_TEST_POSTGRES_URL` (a role allowed to CREATE
//! DATABASE) or, when that is unset, from a throwaway cluster this test
//! process starts: `initdb` into a private directory under /tmp, `postgres`
//! listening on a Unix socket in it only (no TCP port, so parallel test
//! binaries never collide), run as the `postgres` user when we are root
//! (initdb refuses root). The cluster is stopped and its directory removed
//! when this process exits, even by a panic or a kill: a shell holds it and
//! waits for our end of a pipe to close.
//!
//! Without either, the tests fail with what to install; they never pass
//! silently.

use sqlx::{Connection, Executor, PgConnection};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const HOW_TO_GET_POSTGRES: &str = "these tests need PostgreSQL: install it \
    (Debian/Ubuntu: apt-get install postgresql) so `initdb` and `postgres` are in \
    /usr/lib/postgresql/*/bin or on PATH, or set OTA_TEST_POSTGRES_URL=postgres://USER@HOST/DB \
    for a role allowed to CREATE DATABASE";

/// One database of its own for a test.
#[derive(Debug)]
pub struct PgTestDb {
    /// For the server under test.
    pub url: String,
    pub name: String,
    /// The maintenance database of the same server (to create/alter ours).
    admin_url: String,
}

impl PgTestDb {
    /// Creates a database with a random name on the test server.
    pub async fn create() -> PgTestDb {
        let base = base_url();
        let name = format!("ota_test_{:016x}", rand::random::<u64>());
        let mut admin = connect(&base).await;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE on {base}: {e}"));
        let mut url = url::Url::parse(&base).expect("test url");
        url.set_path(&format!("/{name}"));
        PgTestDb {
            url: url.to_string(),
            name,
            admin_url: base,
        }
    }

    /// Refuses new connections to this database and cuts the open ones:
    /// to the server, the database is gone.
    pub async fn cut_off(&self) {
        let mut admin = connect(&self.admin_url).await;
        admin
            .execute(format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name).as_str())
            .await
            .expect("disallow connections");
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.name)
            .execute(&mut admin)
            .await
            .expect("terminate connections");
    }

    /// Undoes [`Self::cut_off`].
    pub async fn restore(&self) {
        let mut admin = connect(&self.admin_url).await;
        admin
            .execute(format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name).as_str())
            .await
            .expect("allow connections");
    }
}

/// Connects, retrying while a just-started cluster finishes starting up.
async fn connect(url: &str) -> PgConnection {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match PgConnection::connect(url).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => {
                panic!("cannot connect to test PostgreSQL {url}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The URL of the test server's `postgres` database.
fn base_url() -> String {
    if let Ok(url) = std::env::var("OTA_TEST_POSTGRES_URL") {
        if !url.is_empty() {
            return url;
        }
    }
    static CLUSTER: OnceLock<Result<String, String>> = OnceLock::new();
    match CLUSTER.get_or_init(start_cluster) {
        Ok(url) => url.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The shell keeping the cluster alive; never dropped, so its stdin closes
/// only when this process ends.
static HOLDER: Mutex<Option<Child>> = Mutex::new(None);

const HOLDER_SCRIPT: &str = r#"set -eu
d=$(mktemp -d /tmp/ota-test-pg.XXXXXX)
trap 'rm -rf "$d"' EXIT
if ! "$1" -D "$d/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >"$d/initdb.log" 2>&1; then
  cat "$d/initdb.log" >&2
  exit 1
fi
"$2" -D "$d/data" -k "$d" -p 5432 -c listen_addresses= -c fsync=off \
  -c full_page_writes=off -c synchronous_commit=off >"$d/postgres.log" 2>&1 &
pid=$!
echo "$d"
cat >/dev/null || true
kill -INT "$pid" 2>/dev/null || true
wait "$pid" || true
"#;

fn start_cluster() -> Result<String, String> {
    let initdb = find_tool("initdb").ok_or_else(|| HOW_TO_GET_POSTGRES.to_owned())?;
    let postgres = initdb.with_file_name("postgres");
    if !postgres.is_file() {
        return Err(format!(
            "{} not found; {HOW_TO_GET_POSTGRES}",
            postgres.display()
        ));
    }
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let mut cmd = if root {
        // initdb refuses to run as root.
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", HOLDER_SCRIPT, "sh"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", HOLDER_SCRIPT, "sh"]);
        c
    };
    let mut child = cmd
        .arg(&initdb)
        .arg(&postgres)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot start the test PostgreSQL cluster: {e}; {HOW_TO_GET_POSTGRES}")
        })?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let _ = BufReader::new(stdout).read_line(&mut line);
    let dir = PathBuf::from(line.trim());
    if line.trim().is_empty() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.wait();
        let hint = if root {
            " (as root the cluster runs as the `postgres` user, created by the Debian package)"
        } else {
            ""
        };
        return Err(format!(
            "the test PostgreSQL cluster did not start{hint}: {}; {HOW_TO_GET_POSTGRES}",
            err.trim()
        ));
    }
    if let Ok(mut holder) = HOLDER.lock() {
        *holder = Some(child);
    }
    wait_for_socket(&dir)?;
    Ok(format!(
        "postgres://postgres@localhost:5432/postgres?host={}",
        dir.display()
    ))
}

/// Waits until postgres accepts connections on its socket.
fn wait_for_socket(dir: &Path) -> Result<(), String> {
    let socket = dir.join(".s.PGSQL.5432");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        // Startup may still be finishing; `connect` retries for that.
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
    Err(format!("test PostgreSQL did not start within 30 s: {log}"))
}

/// `name` on PATH, else in the newest /usr/lib/postgresql/*/bin (Debian
/// keeps the server tools off PATH).
fn find_tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if let Some(found) = on_path {
        // /usr/local/bin/initdb may be a link into the real bin directory,
        // where `postgres` sits next to it.
        return Some(std::fs::canonicalize(&found).unwrap_or(found));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin").join(name)))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}
