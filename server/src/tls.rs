//! TLS with rustls (aws-lc-rs provider) and certificate reload without a
//! restart: [`CertStore`] is the server's certificate resolver and swaps the
//! certificate it hands out when [`CertStore::reload`] succeeds (on SIGHUP,
//! or when the files change, see [`CertStore::reload_if_changed`]).
//!
//! A reload that fails (a half-written file, a key that does not match the
//! certificate) keeps the old certificate and logs why: renewing a
//! certificate must never take the server down.

use crate::auth::DeviceAuth;
use crate::config::{Config, TlsFiles};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often the certificate files are checked for changes.
pub const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {message}")]
    Cert { path: String, message: String },
    #[error("cannot read TLS private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS key {key} does not belong to certificate {cert}")]
    Mismatch { cert: String, key: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// What identifies a file version cheaply: replacing it (rename or rewrite)
/// changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// The certificate being served, and where it comes from.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Fingerprints of the files last tried, so a broken pair is reported
    /// once, not at every poll.
    tried: Mutex<(Option<Fingerprint>, Option<Fingerprint>)>,
}

impl CertStore {
    /// Loads the certificate chain and key; fails if they are unusable.
    pub fn load(files: &TlsFiles) -> Result<Arc<CertStore>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let seen = (fingerprint(&files.cert), fingerprint(&files.key));
        let key = load_pair(files, &provider)?;
        Ok(Arc::new(CertStore {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(key)),
            tried: Mutex::new(seen),
        }))
    }

    /// Rustls settings serving this store's certificate; HTTP/2 or HTTP/1.1
    /// as the client prefers (see [`alpn_protocols`]).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn_protocols();
        Ok(Arc::new(config))
    }

    /// [`Self::server_config`] asking clients for a certificate signed by
    /// the device CA. A client without one still connects (anonymous reads
    /// of metadata and images go on working); only what needs a device
    /// identity (reports) is refused without one.
    pub fn server_config_with_client_auth(
        self: &Arc<Self>,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn_protocols();
        Ok(Arc::new(config))
    }

    /// Reads the files again and serves them from the next handshake on.
    /// On error the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let seen = (fingerprint(&self.files.cert), fingerprint(&self.files.key));
        if let Ok(mut tried) = self.tried.lock() {
            *tried = seen;
        }
        let key = load_pair(&self.files, &self.provider)?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(key);
        }
        tracing::info!(cert = %self.files.cert.display(), "TLS certificate loaded");
        Ok(())
    }

    /// Reloads if either file changed since the last attempt. Returns
    /// whether a new certificate is now served.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (fingerprint(&self.files.cert), fingerprint(&self.files.key));
        let changed = self.tried.lock().map(|t| *t != now).unwrap_or(true);
        if !changed {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_path = files.cert.display().to_string();
    let key_path = files.key.display().to_string();
    let cert_err = |message: String| TlsError::Cert {
        path: cert_path.clone(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM CERTIFICATE block in it".to_owned()));
    }
    let key_err = |message: String| TlsError::Key {
        path: key_path.clone(),
        message,
    };
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| key_err(e.to_string()))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: cert_path,
            key: key_path,
        }),
        Err(e) => Err(cert_err(e.to_string())),
    }
}

/// What the server offers by ALPN, in its order of preference: HTTP/2 for
/// clients that speak it (one connection for many requests), HTTP/1.1 for
/// the rest. `crate::http` serves whichever was agreed.
pub fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// The verifier of device client certificates when `device_auth = "mtls"`:
/// chains to a CA certificate of `device_ca`; certificates are optional at
/// the TLS level (see [`CertStore::server_config_with_client_auth`]).
pub fn client_verifier(config: &Config) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    if config.device_auth != DeviceAuth::Mtls {
        return Ok(None);
    }
    let ca = config
        .device_ca
        .as_ref()
        .ok_or_else(|| TlsError::Setup("device_auth = \"mtls\" needs device_ca".to_owned()))?;
    let ca_err = |message: String| TlsError::Cert {
        path: ca.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| ca_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM CERTIFICATE block in it".to_owned()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| ca_err(e.to_string()))?;
    Ok(Some(verifier))
}

/// Checks the files every [`RELOAD_POLL_INTERVAL`] until the store is dropped
/// everywhere else.
pub fn spawn_reload_poller(store: &Arc<CertStore>) {
    let weak = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else { break };
            let result = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("{e}; still serving the previous certificate"),
                Err(e) => tracing::warn!("TLS reload task: {e}"),
            }
        }
    });
}
