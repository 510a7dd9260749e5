//! The accept loop: one task per connection, HTTP/1.1 and HTTP/2 by hyper on
//! the same port, optional TLS.
//!
//! Which protocol a connection speaks: over TLS, what ALPN negotiated (`h2`
//! or `http/1.1`; a client offering neither gets whichever its first bytes
//! are); in plaintext, HTTP/2 only with prior knowledge (the client opens
//! with the HTTP/2 preface), else HTTP/1.1. There is no `Upgrade: h2c`.
//!
//! Written out here instead of `axum::serve` because a server facing a whole
//! fleet must bound what each client can hold:
//! * a connection limit: past `max_connections` the loop stops accepting, so
//!   further clients wait in the kernel's queue instead of exhausting file
//!   descriptors;
//! * a first-request deadline: a connection on which no request has arrived
//!   within the header read timeout is closed, whatever the protocol (a
//!   client that stalls in the HTTP/2 preface or SETTINGS holds no slot);
//! * a header read timeout (hyper's, HTTP/1.1): every request head must
//!   arrive in time, so a slowloris client trickling a header is cut off;
//! * an idle timeout: a connection on which no byte has moved for that long
//!   is closed, whether idle between requests or stuck in a body (a
//!   stalled upload or a download the client stopped reading). The server
//!   sends no HTTP/2 PINGs of its own, which would count as traffic and keep
//!   an idle connection open forever;
//! * per HTTP/2 connection: at most [`H2_MAX_CONCURRENT_STREAMS`] requests
//!   at once, a header list of at most [`H2_MAX_HEADER_LIST_BYTES`], a bounded
//!   send buffer per stream, and hyper's limits on reset streams (the "rapid
//!   reset" attack);
//! * a TLS handshake bounded by the header read timeout.

use crate::auth::PeerDevice;
use crate::metrics::Metrics;
use crate::storage::Storage;
use crate::workers::Workers;
use axum::Router;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Requests one HTTP/2 connection may have in flight at once: what HTTP/1.1
/// pipelining never gave one connection, so the connection limit alone no
/// longer bounds concurrent requests (at most `max_connections` times this).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Largest decoded header list an HTTP/2 request may carry (as hyper's HTTP/1.1
/// side, which refuses heads past its buffer; our requests need a few hundred bytes).
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Response bytes buffered per HTTP/2 stream before the handler is paused:
/// two 64 KiB file chunks, so 100 streams of one connection hold at most
/// 12.5 MiB instead of hyper's default 400 KiB each.
pub const H2_MAX_SEND_BUF_BYTES: usize = 128 * 1024;

/// What answers the idle poll before the router (see
/// [`crate::api::repository::answer_from_memory`]).
#[derive(Debug)]
struct FastPath {
    router: Router,
    storage: Arc<Storage>,
    metrics: Arc<Metrics>,
}

/// The protocol a TLS connection agreed on by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alpn {
    H2,
    Http11,
    /// The client offered no ALPN: decide by its first bytes, as in plaintext.
    None,
}

/// What each connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Threads serving connections ([`crate::workers`]); 0: the caller's runtime.
    pub connection_threads: usize,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, asks every connection to finish its request, and waits.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    metrics: Arc<Metrics>,
    storage: Arc<Storage>,
    shutdown: impl Future<Output = ()>,
) {
    let fast = Arc::new(FastPath {
        router,
        storage,
        metrics: Arc::clone(&metrics),
    });
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let workers = match limits.connection_threads {
        0 => None,
        n => match Workers::start(n) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot start {n} connection threads, serving on the main runtime: {e}"
                );
                None
            }
        },
    };
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed; stop rather than spin
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait for some
                    // to be released instead of spinning on the error.
                    tracing::warn!("accept failed: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        // Headers and body go out in separate writes; with Nagle on, the body
        // waits for the client's delayed ACK (~40 ms per response).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on {peer}: {e}");
        }
        let activity = Arc::new(Activity::new());
        let io = Tracked {
            inner: stream,
            activity: Arc::clone(&activity),
        };
        let metrics = Arc::clone(&metrics);
        let fast = Arc::clone(&fast);
        let tls = tls.clone();
        // Registered before the handshake, so shutdown waits for it too.
        let watcher = graceful.watcher();
        let connection = async move {
            metrics.connection_opened();
            match tls {
                None => {
                    serve_connection(io, &fast, limits, &activity, watcher, None, Alpn::None).await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io));
                    match handshake.await {
                        Ok(Ok(tls_io)) => {
                            let peer = peer_device(&tls_io);
                            let alpn = match tls_io.get_ref().1.alpn_protocol() {
                                Some(b"h2") => Alpn::H2,
                                Some(_) => Alpn::Http11,
                                None => Alpn::None,
                            };
                            serve_connection(tls_io, &fast, limits, &activity, watcher, peer, alpn)
                                .await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            metrics.connection_closed();
            drop(permit);
        };
        match &workers {
            Some(workers) => workers.spawn(connection),
            None => drop(tokio::spawn(connection)),
        }
    }
    drop(listener);
    graceful.shutdown().await;
    drop(workers);
}

async fn serve_connection<I>(
    io: I,
    fast: &Arc<FastPath>,
    limits: Limits,
    activity: &Activity,
    watcher: hyper_util::server::graceful::Watcher,
    peer: Option<PeerDevice>,
    alpn: Alpn,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requested = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&requested);
    let fast = Arc::clone(fast);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        // The identity the TLS handshake proved, for the handlers (reports).
        if let Some(peer) = &peer {
            request.extensions_mut().insert(peer.clone());
        }
        match crate::api::repository::answer_from_memory(
            &fast.storage,
            &fast.metrics,
            request.method(),
            request.uri(),
            request.headers(),
        ) {
            Some(response) => Either::Left(std::future::ready(Ok(response))),
            None => Either::Right(fast.router.clone().oneshot(request)),
        }
    });
    let builder = connection_builder(limits, alpn);
    let connection = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
        }
        () = activity.idle(limits.idle_timeout) => {
            tracing::debug!("closing connection idle for {:?}", limits.idle_timeout);
        }
        () = first_request_missed(&requested, limits.header_read_timeout) => {
            tracing::debug!(
                "closing connection without a request after {:?}",
                limits.header_read_timeout
            );
        }
    }
}

/// Both protocols with their limits; only the one ALPN chose, if it did.
fn connection_builder(limits: Limits, alpn: Alpn) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .max_send_buf_size(H2_MAX_SEND_BUF_BYTES)
        // No server PINGs: see the module documentation (idle timeout).
        .keep_alive_interval(None);
    match alpn {
        Alpn::H2 => builder.http2_only(),
        Alpn::Http11 => builder.http1_only(),
        Alpn::None => builder,
    }
}

/// Completes if no request has reached the service `timeout` after the
/// connection was set up; never completes once one has.
async fn first_request_missed(requested: &AtomicBool, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if requested.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// The device a verified client certificate names (rustls has already
/// checked its chain against `device_ca` when it is there at all).
fn peer_device<S>(tls: &tokio_rustls::server::TlsStream<S>) -> Option<PeerDevice> {
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    Some(PeerDevice {
        device_id: crate::auth::device_id_from_cert(cert.as_ref()),
    })
}

/// When a byte last moved on a connection.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.start + last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A stream that records progress in both directions.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
