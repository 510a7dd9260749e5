//! Where releases come from: verified TUF targets. The state machine sees
//! only this trait, so it never touches unverified bytes or metadata.

use crate::config::Config;
use ota_common::tuf::http::HttpTransport;
use ota_common::tuf::{ClientOptions, RefreshOutcome, Target, Transport, TufClient, TufError};
use std::io::Read;
use std::time::Duration;

/// Verified releases and their byte streams.
pub trait UpdateSource {
    /// Brings trusted metadata up to date (TUF client workflow).
    fn refresh(&mut self) -> Result<RefreshOutcome, TufError>;
    /// Every verified target: top-level targets and those of delegated
    /// roles (e.g. one per board team), each as the TUF search would
    /// resolve its name (a role counts only for its delegated paths).
    fn targets(&self) -> Result<Vec<Target>, TufError>;
    /// The target's bytes from `offset`; the caller verifies them.
    fn open(&self, target: &Target, offset: u64) -> Result<Box<dyn Read + Send>, TufError>;
    /// The time rollout waves are judged by: the system clock, but never
    /// earlier than the newest time a verified refresh vouched for (the
    /// same rule the TUF client applies to expiry).
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
    /// Fetches files under the targets URL that signed metadata names by
    /// hash (a delta release's index and chunks); `None` when this source
    /// has none, and a delta install falls back to the full image.
    fn files(&self) -> Option<Box<dyn FileFetch>> {
        None
    }
}

/// Unlisted files from the repository's targets URL, each length-capped
/// while it arrives; the caller checks the bytes against signed hashes.
/// `Send`, so a delta install's image stream can own one.
pub trait FileFetch: Send {
    /// GET `rel` (e.g. `chunks/ab/….zst`), at most `max_len` bytes.
    fn fetch(&self, rel: &str, max_len: u64) -> Result<Vec<u8>, TufError>;
}

struct TargetsFiles<T> {
    /// The targets URL, ending in a `/`-separated path a file's segments extend.
    base: url::Url,
    transport: T,
}

impl<T: Transport + Send> FileFetch for TargetsFiles<T> {
    fn fetch(&self, rel: &str, max_len: u64) -> Result<Vec<u8>, TufError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| TufError::Url {
                what: rel.to_owned(),
                detail: format!("{} cannot be a base", self.base),
            })?
            .pop_if_empty()
            .extend(rel.split('/'));
        match self.transport.fetch(&url, max_len, None) {
            Ok(ota_common::tuf::Fetched::Body { bytes, .. }) => Ok(bytes),
            Ok(ota_common::tuf::Fetched::NotModified) => Err(TufError::Fetch {
                url: url.to_string(),
                error: ota_common::tuf::FetchError::Http { status: 304 },
            }),
            Err(error) => Err(TufError::Fetch {
                url: url.to_string(),
                error,
            }),
        }
    }
}

impl<T: Transport + Clone + Send + 'static> UpdateSource for TufClient<T> {
    fn refresh(&mut self) -> Result<RefreshOutcome, TufError> {
        TufClient::refresh(self)
    }

    fn targets(&self) -> Result<Vec<Target>, TufError> {
        // Delegated metadata is fetched only when the snapshot lists a new
        // version of it; an idle poll re-verifies the stored copies.
        self.all_targets()
    }

    fn open(&self, target: &Target, offset: u64) -> Result<Box<dyn Read + Send>, TufError> {
        self.open_target(target, offset)
    }

    fn files(&self) -> Option<Box<dyn FileFetch>> {
        Some(Box::new(TargetsFiles {
            base: self.targets_file_url("").ok()?,
            transport: self.transport().clone(),
        }))
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let clock = chrono::Utc::now();
        self.trusted().trusted_time.map_or(clock, |t| t.max(clock))
    }
}

/// Why the TUF client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("reading trusted_root {path}: {source}")]
    TrustedRoot {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TUF client: {0}")]
    Tuf(#[from] TufError),
    #[error("HTTP transport: {0}")]
    Transport(String),
}

/// Largest trusted root file read from disk.
const MAX_ROOT_BYTES: u64 = 512 * 1024;

/// Opens the TUF client over HTTP, initialising its metadata directory from
/// `trusted_root` on first start (when it holds no root.json yet).
pub fn open_tuf(config: &Config) -> Result<TufClient<HttpTransport>, SourceError> {
    let dir = config.tuf_dir();
    // TufClient::init stores the root as DIR/root.json (atomically); once it
    // is there, only roots the client verified may replace it.
    let first_start = !dir.join("root.json").exists();
    if first_start {
        ota_common::atomic::create_dir_all_durable(&dir).map_err(|source| SourceError::Dir {
            path: dir.clone(),
            source,
        })?;
        let root = read_capped(&config.trusted_root)?;
        TufClient::<HttpTransport>::init(&dir, &root)?;
        tracing::info!(root = %config.trusted_root.display(), dir = %dir.display(), "initialised TUF metadata from the trusted root");
    }
    crate::install_crypto_provider();
    let transport = HttpTransport::trusting(
        Duration::from_secs(config.http_timeout_secs),
        crate::USER_AGENT,
        &config.server_trust_anchors()?,
    )
    .map_err(|e| SourceError::Transport(e.to_string()))?;
    let options = ClientOptions::new(config.metadata_url()?, config.targets_url()?);
    Ok(TufClient::open(&dir, options, transport)?)
}

fn read_capped(path: &std::path::Path) -> Result<Vec<u8>, SourceError> {
    let err = |source| SourceError::TrustedRoot {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_ROOT_BYTES + 1).read_to_end(&mut bytes))
        .map_err(err)?;
    if bytes.len() as u64 > MAX_ROOT_BYTES {
        return Err(err(std::io::Error::other(format!(
            "larger than {MAX_ROOT_BYTES} bytes"
        ))));
    }
    Ok(bytes)
}
