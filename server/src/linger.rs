//! Lingering close: when the server refuses a request before reading its
//! body (413 from the declared Content-Length, 401 for an upload without a
//! valid token), the client is usually still sending. Closing the socket
//! with its bytes unread makes the kernel answer with a reset, and the
//! client may lose the refusal it was about to read. nginx reads and throws
//! away what is left for a while before it closes (`lingering_close`); this
//! does the same, bounded in bytes and time so a hostile client cannot hold
//! the server busy with it.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// At most this much of a refused body is read and discarded. Refusals of
/// larger bodies close at once, as before: a 4 GiB upload is not worth
/// reading to deliver a 401.
pub const LINGER_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// ...and for at most this long.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// The request body, shared between the handler and this layer, so that
/// what the handler left unread can still be drained after it answered.
#[derive(Clone)]
struct SharedBody(Arc<Mutex<Body>>);

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        // The lock is never contended: the handler and the drain below
        // read one after the other, never at once.
        let mut body = match self.0.lock() {
            Ok(body) => body,
            Err(poisoned) => poisoned.into_inner(),
        };
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        match self.0.lock() {
            Ok(body) => body.is_end_stream(),
            Err(poisoned) => poisoned.into_inner().is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.0.lock() {
            Ok(body) => body.size_hint(),
            Err(poisoned) => poisoned.into_inner().size_hint(),
        }
    }
}

/// Middleware: for a request that declares a body of at most
/// [`LINGER_MAX_BYTES`], drain whatever the handler left unread when the
/// answer is an error. Requests without a declared length (and GETs) pass
/// through untouched: streamed uploads have their own limits, and the
/// repository's reads carry no body.
pub async fn drain_refused_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|n| (1..=LINGER_MAX_BYTES).contains(n)) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let shared = SharedBody(Arc::new(Mutex::new(body)));
    let response = next
        .run(Request::from_parts(parts, Body::new(shared.clone())))
        .await;
    if response.status().is_client_error() || response.status().is_server_error() {
        drain(shared, declared).await;
    }
    response
}

async fn drain(mut body: SharedBody, declared: u64) {
    let read_rest = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
            }
            // A client sending more than it declared is not owed a linger.
            if seen > declared {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, read_rest).await;
}
