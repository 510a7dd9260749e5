//! Server settings: defaults, an optional TOML file, environment variables and
//! command-line flags, in increasing order of precedence (CLI > env > file > defaults).

use crate::auth::DeviceAuth;
use crate::db::DatabaseUrl;
use crate::resign::{OnlineSigning, OnlineSigningFile};
use crate::rollout::{RolloutSettings, RolloutsFile};
use crate::storage::ObjectStoreConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default listen address: loopback only, so a server started without any
/// configuration is not reachable from the network by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default largest image a publication may upload.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Default tracing filter when neither `RUST_LOG` nor the config file sets one.
pub const DEFAULT_LOG_FILTER: &str = "info";
/// A client must send a complete request head within this time (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection on which no byte moves for this long, while no request is
/// being handled, is closed (idle keep-alive, stalled downloads and uploads).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections served at once; more wait in the kernel's accept queue. Each
/// takes a file descriptor (two while an image is served), so this stays
/// well under the usual 1024 soft limit unless raised together with it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 400;
/// More connection threads than this is a typo, not a machine.
pub const MAX_CONNECTION_THREADS: usize = 256;

/// Connections on the main, work-stealing runtime. Measured against
/// nginx (docs/LOAD.md, 2026-12-06): pinned connection threads halve the
/// idle poll's p99 but give up 10-30% of its rate, and the main runtime
/// already keeps both its rate above nginx's and its p99 below; operators
/// who want the lowest tail set `connection_threads`.
pub fn default_connection_threads() -> usize {
    0
}

/// PEM files of the TLS certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// File holding the admin bearer token; `None`: generate `<data_dir>/admin-token`.
    pub admin_token_file: Option<PathBuf>,
    pub max_upload_bytes: u64,
    /// `RUST_LOG`-style filter from the config file (the binary lets `RUST_LOG` override it).
    pub log_filter: String,
    /// `None`: SQLite at `<data_dir>/ota.db`.
    pub database_url: Option<DatabaseUrl>,
    /// `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Threads serving connections, each with its own single-threaded
    /// runtime (`crate::workers`); 0 serves them on the main runtime.
    pub connection_threads: usize,
    /// `[object_store]`: the repository in an S3-compatible bucket; `None`:
    /// under `<data_dir>/repository`.
    pub object_store: Option<ObjectStoreConfig>,
    /// How devices authenticate their reports (default: not at all).
    pub device_auth: DeviceAuth,
    /// PEM CA certificate(s) signing device client certificates (`mtls`).
    pub device_ca: Option<PathBuf>,
    /// Re-signing `timestamp.json` with an online key; `None`: never.
    pub online_signing: Option<OnlineSigning>,
    /// `[rollouts]`: automatic pause and fleet-status settings.
    pub rollouts: RolloutSettings,
    /// How often the metadata held in memory is compared with the store, to
    /// pick up publications committed by other instances.
    pub metadata_refresh: Duration,
}

impl Config {
    /// Settings for a server storing everything under `data_dir`, listening on `listen`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Config {
            listen,
            data_dir,
            admin_token_file: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            log_filter: DEFAULT_LOG_FILTER.to_owned(),
            database_url: None,
            tls: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connection_threads: default_connection_threads(),
            object_store: None,
            device_auth: DeviceAuth::None,
            device_ca: None,
            online_signing: None,
            rollouts: RolloutSettings::default(),
            metadata_refresh: crate::storage::published::DEFAULT_REFRESH,
        }
    }

    /// The database to use: the configured one, else SQLite under `data_dir`.
    pub fn database(&self) -> DatabaseUrl {
        self.database_url
            .clone()
            .unwrap_or_else(|| DatabaseUrl::default_for(&self.data_dir))
    }

    /// Merges the layers. `env` looks up an environment variable (a closure so
    /// tests need not touch the process environment).
    pub fn resolve(
        file: Option<&Path>,
        cli: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file_cfg = match file {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let env_nonempty = |name: &str| env(name).filter(|v| !v.is_empty());

        let listen_text = cli
            .listen
            .clone()
            .or_else(|| env_nonempty("OTA_SERVER_LISTEN"))
            .or(file_cfg.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::BadListen(listen_text.clone()))?;

        let data_dir = cli
            .data_dir
            .clone()
            .or_else(|| env_nonempty("OTA_SERVER_DATA_DIR").map(PathBuf::from))
            .or(file_cfg.data_dir)
            .unwrap_or_else(|| default_data_dir(&env));

        let admin_token_file = cli
            .admin_token_file
            .clone()
            .or_else(|| env_nonempty("OTA_SERVER_ADMIN_TOKEN_FILE").map(PathBuf::from))
            .or(file_cfg.admin_token_file);

        let max_upload_bytes = file_cfg
            .max_upload_bytes
            .unwrap_or(DEFAULT_MAX_UPLOAD_BYTES);
        if max_upload_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_upload_bytes must be greater than 0".to_owned(),
            ));
        }

        let database_url = cli
            .database_url
            .clone()
            .or_else(|| env_nonempty("OTA_SERVER_DATABASE_URL"))
            .or(file_cfg.database_url)
            .map(|text| DatabaseUrl::parse(&text).map_err(|e| ConfigError::Invalid(e.to_string())))
            .transpose()?;

        let tls = match (file_cfg.tls_cert, file_cfg.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "tls_cert and tls_key must be given together".to_owned(),
                ))
            }
        };

        let seconds = |name: &str, value: Option<u64>, default: Duration| match value {
            None => Ok(default),
            Some(0) => Err(ConfigError::Invalid(format!(
                "{name} must be at least 1 second"
            ))),
            Some(s) => Ok(Duration::from_secs(s)),
        };
        let header_read_timeout = seconds(
            "header_read_timeout_secs",
            file_cfg.header_read_timeout_secs,
            DEFAULT_HEADER_READ_TIMEOUT,
        )?;
        let idle_timeout = seconds(
            "idle_timeout_secs",
            file_cfg.idle_timeout_secs,
            DEFAULT_IDLE_TIMEOUT,
        )?;
        let max_connections = file_cfg.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_connections must be greater than 0".to_owned(),
            ));
        }

        let connection_threads = match file_cfg.connection_threads {
            None => default_connection_threads(),
            Some(n @ 0..=MAX_CONNECTION_THREADS) => n,
            Some(n) => {
                return Err(ConfigError::Invalid(format!(
                    "connection_threads must be between 0 and {MAX_CONNECTION_THREADS}, not {n}"
                )))
            }
        };

        let metadata_refresh = match file_cfg.metadata_refresh_ms {
            None => crate::storage::published::DEFAULT_REFRESH,
            Some(ms @ 100..=60_000) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(ConfigError::Invalid(format!(
                    "metadata_refresh_ms must be between 100 and 60000, not {ms}"
                )))
            }
        };

        let device_auth = file_cfg.device_auth.unwrap_or_default();
        match (device_auth, &file_cfg.device_ca, &tls) {
            (DeviceAuth::Mtls, Some(_), Some(_)) => {}
            (DeviceAuth::Mtls, _, _) => {
                return Err(ConfigError::Invalid(
                    "device_auth = \"mtls\" needs tls_cert, tls_key and device_ca".to_owned(),
                ))
            }
            (_, Some(_), _) => {
                return Err(ConfigError::Invalid(
                    "device_ca is only used with device_auth = \"mtls\"".to_owned(),
                ))
            }
            _ => {}
        }
        let online_signing = file_cfg
            .online_signing
            .map(OnlineSigningFile::resolve)
            .transpose()
            .map_err(|e| ConfigError::Invalid(format!("[online_signing]: {e}")))?;

        let rollouts = file_cfg
            .rollouts
            .unwrap_or_default()
            .resolve()
            .map_err(|e| ConfigError::Invalid(format!("[rollouts]: {e}")))?;

        let object_store = file_cfg
            .object_store
            .map(|o| o.resolve(&env_nonempty))
            .transpose()
            .map_err(|e| ConfigError::Invalid(format!("[object_store]: {e}")))?;

        Ok(Config {
            object_store,
            listen,
            data_dir,
            admin_token_file,
            max_upload_bytes,
            log_filter: file_cfg
                .log
                .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned()),
            database_url,
            tls,
            header_read_timeout,
            idle_timeout,
            max_connections,
            connection_threads,
            device_auth,
            device_ca: file_cfg.device_ca,
            online_signing,
            rollouts,
            metadata_refresh,
        })
    }
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    pub database_url: Option<String>,
}

/// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`; it may list several
/// directories separated by ':', the first is ours), else `./ota-server-data`.
fn default_data_dir(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    env("STATE_DIRECTORY")
        .and_then(|v| v.split(':').next().map(str::to_owned))
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("./ota-server-data"))
}

/// The TOML file. Unknown keys are refused so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    max_upload_bytes: Option<u64>,
    log: Option<String>,
    database_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    header_read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    connection_threads: Option<usize>,
    metadata_refresh_ms: Option<u64>,
    object_store: Option<ObjectStoreFile>,
    device_auth: Option<DeviceAuth>,
    device_ca: Option<PathBuf>,
    online_signing: Option<OnlineSigningFile>,
    rollouts: Option<RolloutsFile>,
}

/// `[object_store]` in the TOML file. The credentials, region and endpoint
/// may come from the usual `AWS_*` variables instead (env beats file, as for
/// every other setting).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectStoreFile {
    url: String,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    #[serde(default)]
    allow_http: bool,
}

impl ObjectStoreFile {
    fn resolve(self, env: &impl Fn(&str) -> Option<String>) -> Result<ObjectStoreConfig, String> {
        let config = ObjectStoreConfig {
            url: self.url,
            endpoint: env("AWS_ENDPOINT_URL").or(self.endpoint),
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .or(self.region),
            access_key_id: env("AWS_ACCESS_KEY_ID").or(self.access_key_id),
            secret_access_key: env("AWS_SECRET_ACCESS_KEY").or(self.secret_access_key),
            allow_http: self.allow_http,
        };
        config.validate()?;
        Ok(config)
    }
}

impl FileConfig {
    fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid listen address {0:?} (expected IP:PORT, e.g. 127.0.0.1:8080)")]
    BadListen(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_without_anything() {
        let c = Config::resolve(None, &Overrides::default(), env_of(&[])).expect("config");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from("./ota-server-data"));
        assert_eq!(c.max_upload_bytes, DEFAULT_MAX_UPLOAD_BYTES);
        assert_eq!(c.admin_token_file, None);
        assert_eq!(c.database_url, None);
        assert_eq!(
            c.database(),
            DatabaseUrl::Sqlite(PathBuf::from("./ota-server-data/ota.db"))
        );
        assert_eq!(c.tls, None);
        assert_eq!(c.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT);
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.connection_threads, 0);
    }

    #[test]
    fn fleet_settings_from_file_and_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "database_url = \"sqlite:///file.db\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n\
             header_read_timeout_secs = 5\nidle_timeout_secs = 60\nmax_connections = 10\n\
             metadata_refresh_ms = 250\nconnection_threads = 3\n",
        )
        .expect("write");
        let env = env_of(&[("OTA_SERVER_DATABASE_URL", "postgres://ota@db/ota")]);
        let c = Config::resolve(Some(&file), &Overrides::default(), env).expect("config");
        assert_eq!(
            c.database_url,
            Some(DatabaseUrl::Postgres("postgres://ota@db/ota".into()))
        );
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        assert_eq!(c.header_read_timeout, Duration::from_secs(5));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.metadata_refresh, Duration::from_millis(250));
        assert_eq!(c.connection_threads, 3);

        for (text, needle) in [
            ("tls_cert = \"/c.pem\"\n", "tls_key"),
            ("idle_timeout_secs = 0\n", "idle_timeout_secs"),
            ("max_connections = 0\n", "max_connections"),
            ("connection_threads = 100000\n", "connection_threads"),
            ("metadata_refresh_ms = 10\n", "metadata_refresh_ms"),
            ("metadata_refresh_ms = 3600000\n", "metadata_refresh_ms"),
            ("database_url = \"mysql://x/y\"\n", "database_url"),
        ] {
            std::fs::write(&file, text).expect("write");
            let err = Config::resolve(Some(&file), &Overrides::default(), env_of(&[]))
                .expect_err(text)
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn state_directory_is_the_default_data_dir() {
        let c = Config::resolve(
            None,
            &Overrides::default(),
            env_of(&[("STATE_DIRECTORY", "/var/lib/ota:/other")]),
        )
        .expect("config");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/ota"));
    }

    #[test]
    fn cli_beats_env_beats_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/file\"\nadmin_token_file = \"/file-token\"\nmax_upload_bytes = 1000\nlog = \"debug\"\n",
        )
        .expect("write");
        let env = env_of(&[
            ("OTA_SERVER_LISTEN", "127.0.0.1:2"),
            ("OTA_SERVER_DATA_DIR", "/env"),
        ]);
        let cli = Overrides {
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let c = Config::resolve(Some(&file), &cli, env).expect("config");
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.data_dir, PathBuf::from("/env"));
        assert_eq!(c.admin_token_file, Some(PathBuf::from("/file-token")));
        assert_eq!(c.max_upload_bytes, 1000);
        assert_eq!(c.log_filter, "debug");
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("server.toml");
        std::fs::write(&file, "listne = \"127.0.0.1:1\"\n").expect("write");
        let err = Config::resolve(Some(&file), &Overrides::default(), env_of(&[]))
            .expect_err("typo must be refused");
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn bad_listen_is_named() {
        let cli = Overrides {
            listen: Some("localhost".into()),
            ..Default::default()
        };
        let err = Config::resolve(None, &cli, env_of(&[])).expect_err("must fail");
        assert!(err.to_string().contains("localhost"), "{err}");
    }
}
