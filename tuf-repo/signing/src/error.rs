//! Every way opening a key, signing or keeping the audit log can fail, each
//! naming the key, file or URI at fault. The messages are the ones
//! `ota-repo` has always printed: `ota_repo::SigningError` converts each
//! variant into its own variant of the same name.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("key file {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("generating a {key_type} key failed")]
    KeyGeneration { key_type: &'static str },
    #[error("{key}: {detail}")]
    Pkcs11 { key: String, detail: String },
    #[error("audit log: {0}")]
    Audit(String),
    #[error("repository metadata is inconsistent: {0}")]
    Inconsistent(String),
}

impl SigningError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SigningError {
        let path = path.into();
        move |source| SigningError::Io { path, source }
    }
}

pub type Result<T, E = SigningError> = std::result::Result<T, E>;
