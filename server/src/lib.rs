//! `ota-server`: serves signed TUF metadata and images to devices, accepts
//! publications atomically, and records device reports.
//!
//! [`Server::bind`] builds everything from a [`Config`] (the binary is a thin
//! wrapper around it), so tests run the real server in-process on a random port.

pub mod api;
pub mod auth;
pub mod config;
pub mod credentials;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod files;
pub mod http;
mod linger;
pub mod metrics;
pub mod paths;
pub mod resign;
pub mod rollout;
// Above config and rollout: it reads the one to run the other.
pub mod rollout_cli;
pub mod storage;
pub mod tls;
pub mod workers;

pub use config::Config;

use crate::auth::{AdminAuth, AdminToken, DeviceAuth, RequireRole, TokenError};
use crate::db::{Db, DbError};
use crate::error::ApiError;
use crate::files::EtagCache;
use crate::metrics::Metrics;
use crate::storage::{Storage, StorageError};
use crate::tls::{CertStore, TlsError};
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub storage: Arc<Storage>,
    pub db: Db,
    pub etags: Arc<EtagCache>,
    pub max_upload_bytes: u64,
    pub metrics: Arc<Metrics>,
    /// How devices authenticate their reports.
    pub device_auth: DeviceAuth,
    /// Staged rollouts: holds, fleet status, automatic pause.
    pub rollouts: Arc<rollout::Rollouts>,
    /// The online keys (`[online_signing]`): a publication's commit issues
    /// timestamp (and snapshot) with them.
    pub resigner: Option<Arc<resign::Resigner>>,
    /// Admin credentials and dashboard sessions (the log-in checks tokens).
    pub admin: Arc<AdminAuth>,
    /// Served over TLS: session cookies are marked `Secure`.
    pub secure_cookies: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Resign(#[from] resign::ResignError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A server bound to its address, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    db: Db,
    local_addr: SocketAddr,
    limits: http::Limits,
    tls: Option<Arc<CertStore>>,
    metrics: Arc<Metrics>,
    /// Client certificate verification (`device_auth = "mtls"`).
    client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// The timestamp re-signing job (`[online_signing]`).
    resigner: Option<Arc<resign::Resigner>>,
    /// The periodic rollout check (automatic pause).
    rollouts: Arc<rollout::Rollouts>,
    /// The repository, whose in-memory metadata is refreshed periodically.
    storage: Arc<Storage>,
    metadata_refresh: std::time::Duration,
}

impl Server {
    /// Prepares the data directory, database, admin token and listener.
    pub async fn bind(config: &Config) -> Result<Server, StartError> {
        ota_common::atomic::create_dir_all_durable(&config.data_dir).map_err(|source| {
            StartError::DataDir {
                path: config.data_dir.clone(),
                source,
            }
        })?;
        let storage = Arc::new(Storage::open_with(
            &config.data_dir,
            config.object_store.as_ref(),
        )?);
        // The first polls are answered from memory too; an unreachable
        // bucket is not fatal here (readiness reports it; the refresh retries).
        if let Err(e) = storage.refresh_published(&[]).await {
            tracing::warn!("cannot load the published metadata: {e}");
        }
        match storage.clean_stale_staging(storage::STALE_STAGING_AGE) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} abandoned publication(s)"),
            Err(e) => tracing::warn!("cannot clean staging: {e}"),
        }
        let token =
            AdminToken::load_or_create(config.admin_token_file.as_deref(), &config.data_dir)?;
        // Before the database: a bad certificate path should not first
        // create or migrate anything.
        let tls = config.tls.as_ref().map(CertStore::load).transpose()?;
        let database = config.database();
        let db = Db::open(&database).await?;
        let client_auth = tls::client_verifier(config)?;
        let metrics = Arc::new(Metrics::default());
        let resigner = match config.online_signing.as_ref() {
            Some(o) => Some(Arc::new(
                resign::Resigner::new(o, Arc::clone(&storage), db.clone())
                    .await?
                    .with_metrics(Arc::clone(&metrics)),
            )),
            None => None,
        };
        let rollouts = Arc::new(rollout::Rollouts {
            db: db.clone(),
            storage: Arc::clone(&storage),
            metrics: Arc::clone(&metrics),
            settings: config.rollouts,
        });
        let auth = Arc::new(AdminAuth {
            bootstrap: token,
            db: db.clone(),
            sessions: auth::session::Sessions::default(),
        });
        let state = AppState {
            storage: Arc::clone(&storage),
            db: db.clone(),
            etags: Arc::new(EtagCache::default()),
            max_upload_bytes: config.max_upload_bytes,
            metrics: Arc::clone(&metrics),
            device_auth: config.device_auth,
            rollouts: Arc::clone(&rollouts),
            resigner: resigner.clone(),
            admin: Arc::clone(&auth),
            secure_cookies: tls.is_some(),
        };
        let router = router(state, auth);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        tracing::info!(
            data_dir = %config.data_dir.display(),
            database = %database,
            tls = tls.is_some(),
            "ota-server ready"
        );
        Ok(Server {
            listener,
            router,
            db,
            local_addr,
            limits: http::Limits {
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
                max_connections: config.max_connections,
                connection_threads: config.connection_threads,
            },
            tls,
            metrics,
            client_auth,
            resigner,
            rollouts,
            storage,
            metadata_refresh: config.metadata_refresh,
        })
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The certificate store, to reload it on demand (SIGHUP); `None` without TLS.
    pub fn tls(&self) -> Option<Arc<CertStore>> {
        self.tls.clone()
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let acceptor = match &self.tls {
            Some(store) => {
                tls::spawn_reload_poller(store);
                let config = match &self.client_auth {
                    Some(verifier) => store.server_config_with_client_auth(Arc::clone(verifier))?,
                    None => store.server_config()?,
                };
                Some(tokio_rustls::TlsAcceptor::from(config))
            }
            None => None,
        };
        let resign_job = self.resigner.as_ref().map(|r| Arc::clone(r).spawn());
        let rollout_job = Arc::clone(&self.rollouts).spawn();
        let refresh_job = self.storage.spawn_published_refresh(self.metadata_refresh);
        http::serve(
            self.listener,
            self.router,
            acceptor,
            self.limits,
            self.metrics,
            Arc::clone(&self.storage),
            shutdown,
        )
        .await;
        if let Some(job) = resign_job {
            job.abort();
        }
        rollout_job.abort();
        refresh_job.abort();
        self.db.close().await;
        Ok(())
    }
}

/// Every route of the server: the table in [`api::routes`], each admin
/// route behind [`auth::require_role`] with the role the table names.
pub fn router(state: AppState, auth: Arc<AdminAuth>) -> Router {
    let mut router = Router::new();
    for (spec, handler) in api::routes::all() {
        let handler = match spec.access {
            api::routes::Access::Admin(role) => {
                handler.route_layer(middleware::from_fn_with_state(
                    RequireRole {
                        auth: Arc::clone(&auth),
                        role,
                    },
                    auth::require_role,
                ))
            }
            api::routes::Access::Public | api::routes::Access::Device => handler,
        };
        router = router.route(spec.path, handler);
    }
    router
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(linger::drain_refused_bodies))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            log_request,
        ))
        .with_state(state)
}

async fn no_such_endpoint(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed on {}", uri.path()),
    )
}

/// One log line and one count per request; device polls are logged at
/// debug level so an idle fleet does not flood the log.
async fn log_request(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    // Only what the log line needs, and only when it will be written: the
    // idle poll of a fleet should cost no allocation here.
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    let logged = if is_read {
        tracing::enabled!(tracing::Level::DEBUG)
    } else {
        tracing::enabled!(tracing::Level::INFO)
    };
    let line = logged.then(|| (request.method().clone(), request.uri().path().to_owned()));
    // The route template, not the path: a bounded set of label values
    // (`MatchedPath` is a shared string, cloned without copying).
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    metrics.request(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        status,
    );
    // A body whose length is known in advance (metadata from memory, errors)
    // is counted now; only streamed bodies are counted frame by frame.
    let response = match axum::body::HttpBody::size_hint(response.body()).exact() {
        Some(len) => {
            metrics.body_bytes_sent(len);
            response
        }
        None => {
            let counter = Arc::clone(&metrics);
            response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    if let Some(data) = frame.data_ref() {
                        counter.body_bytes_sent(data.len() as u64);
                    }
                    frame
                }))
            })
        }
    };
    if let Some((method, path)) = line {
        let ms = started.elapsed().as_millis() as u64;
        if is_read {
            tracing::debug!(%method, path, status, ms, "request");
        } else {
            tracing::info!(%method, path, status, ms, "request");
        }
    }
    response
}
