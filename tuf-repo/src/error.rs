//! Every way an `ota-repo` command can fail, each naming the file, role or
//! value at fault so the one-line message is enough to act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("repository {path} already exists and is not empty; refusing to initialise over it")]
    NotEmpty { path: PathBuf },
    #[error(
        "{path} is not an ota-repo repository (no repo.json); create one with `ota-repo init`"
    )]
    NotARepository { path: PathBuf },
    #[error("invalid repository config {path}: {detail}")]
    InvalidConfig { path: PathBuf, detail: String },
    #[error("key file {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("generating a {key_type} key failed")]
    KeyGeneration { key_type: &'static str },
    #[error(
        "{role} needs {threshold} signature(s) but only {available} of its key file(s) could be used{details}"
    )]
    ThresholdUnreachable {
        role: String,
        threshold: u64,
        available: usize,
        details: String,
    },
    #[error("{role} metadata expired at {expires}; re-sign it with `{fix}`")]
    ExpiredRole {
        role: String,
        expires: String,
        fix: String,
    },
    #[error(
        "new {role} expiry {expires} is not in the future (check the {role} expiry in repo.json or --expires; `ota-repo resign --allow-expired` creates expired metadata on purpose)"
    )]
    ExpiryInPast { role: String, expires: String },
    #[error("cannot read image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("target {name} is already in the repository")]
    TargetExists { name: String },
    #[error(
        "version {version} is already published for hardware id {hardware_id} (target {target})"
    )]
    VersionPublished {
        version: String,
        hardware_id: String,
        target: String,
    },
    #[error("invalid version {value:?}: {detail} (expected semantic version such as 1.2.0)")]
    InvalidVersion { value: String, detail: String },
    #[error(
        "invalid hardware id {0:?}: expected 1 to 128 characters of letters, digits, '.', '_', ':' or '-'"
    )]
    InvalidHardwareId(String),
    #[error("invalid target name {name:?}: {detail}")]
    InvalidTargetName { name: String, detail: String },
    #[error("repository metadata is inconsistent: {0}")]
    Inconsistent(String),
    #[error("{context}: {source}")]
    Tough {
        context: String,
        // Boxed: tough's error carries a backtrace and is large.
        #[source]
        source: Box<tough::error::Error>,
    },
    #[error("{0}")]
    Publish(String),
    #[error("{key}: {detail}")]
    Pkcs11 { key: String, detail: String },
    #[error("audit log: {0}")]
    Audit(String),
    #[error("ceremony: {0}")]
    Ceremony(String),
    #[error("invalid --wave {spec:?}: {detail} (expected NAME=WHO@WHEN, e.g. early=10%@+24h or lab=lab-a,5%@2026-12-01T08:00:00Z)")]
    InvalidWave { spec: String, detail: String },
    #[error(
        "invalid rollout plan{}: {source}",
        .spec.as_ref().map(|s| format!(" (--wave {s:?})")).unwrap_or_default()
    )]
    RolloutPlan {
        source: ota_common::rollout::PlanError,
        /// The `--wave` spec of the wave at fault, when there is one.
        spec: Option<String>,
    },
    #[error(
        "no target named {name:?} in the signed targets metadata (`ota-repo status` lists them)"
    )]
    UnknownTarget { name: String },
}

impl RepoError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RepoError {
        let path = path.into();
        move |source| RepoError::Io { path, source }
    }

    pub(crate) fn tough(
        context: impl Into<String>,
    ) -> impl FnOnce(tough::error::Error) -> RepoError {
        let context = context.into();
        move |source| RepoError::Tough {
            context,
            source: Box::new(source),
        }
    }
}

impl From<ota_signing::SigningError> for RepoError {
    fn from(e: ota_signing::SigningError) -> Self {
        use ota_signing::SigningError as S;
        match e {
            S::Io { path, source } => RepoError::Io { path, source },
            S::InvalidArgument(m) => RepoError::InvalidArgument(m),
            S::Key { path, detail } => RepoError::Key { path, detail },
            S::KeyGeneration { key_type } => RepoError::KeyGeneration { key_type },
            S::Pkcs11 { key, detail } => RepoError::Pkcs11 { key, detail },
            S::Audit(m) => RepoError::Audit(m),
            S::Inconsistent(m) => RepoError::Inconsistent(m),
        }
    }
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;
