//! The accept loop: one task per connection, HTTP/1.1 by hyper, optional TLS.
//!
//! Written out here instead of `axum::serve` because a server facing a whole
//! fleet must bound what each client can hold:
//! * a connection limit: past `max_connections` the loop stops accepting, so
//!   further clients wait in the kernel's queue instead of exhausting file
//!   descriptors;
//! * a header read timeout (hyper's): a request head must arrive in time,
//!   so a slowloris client trickling a header is cut off;
//! * an idle timeout: a connection on which no byte has moved for that long
//!   is closed, whether idle between requests or stuck in a body (a
//!   stalled upload or a download the client stopped reading);
//! * a TLS handshake bounded by the header read timeout.

use crate::auth::PeerDevice;
use crate::metrics::Metrics;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// What each connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, asks every connection to finish its request, and waits.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
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
        let router = router.clone();
        let metrics = Arc::clone(&metrics);
        let tls = tls.clone();
        // Registered before the handshake, so shutdown waits for it too.
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            metrics.connection_opened();
            match tls {
                None => serve_connection(io, router, limits, &activity, watcher, None).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io));
                    match handshake.await {
                        Ok(Ok(tls_io)) => {
                            let peer = peer_device(&tls_io);
                            serve_connection(tls_io, router, limits, &activity, watcher, peer).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            metrics.connection_closed();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection<I>(
    io: I,
    router: Router,
    limits: Limits,
    activity: &Activity,
    watcher: hyper_util::server::graceful::Watcher,
    peer: Option<PeerDevice>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        // The identity the TLS handshake proved, for the handlers (reports).
        if let Some(peer) = &peer {
            request.extensions_mut().insert(peer.clone());
        }
        router.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
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
