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
use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::HeaderValue;
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
/// answer is an error. A refused body that is not drained (larger, of no
/// declared length, or still arriving when the linger ends) gets
/// `Connection: close` on its refusal, as nginx does: the server is about to
/// close that connection, and a client that put it back in its pool would
/// lose its next request on it. Requests without a body (the repository's
/// reads) pass through untouched, keep-alive and all.
pub async fn drain_refused_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let has_body =
        declared.is_some_and(|n| n > 0) || request.headers().contains_key(TRANSFER_ENCODING);
    if !has_body {
        return next.run(request).await;
    }
    let Some(declared) = declared.filter(|n| *n <= LINGER_MAX_BYTES) else {
        let mut response = next.run(request).await;
        if is_refusal(&response) {
            close_after(&mut response);
        }
        return response;
    };
    let (parts, body) = request.into_parts();
    let shared = SharedBody(Arc::new(Mutex::new(body)));
    let mut response = next
        .run(Request::from_parts(parts, Body::new(shared.clone())))
        .await;
    if is_refusal(&response) && !drain(shared, declared).await {
        close_after(&mut response);
    }
    response
}

fn is_refusal(response: &Response) -> bool {
    response.status().is_client_error() || response.status().is_server_error()
}

fn close_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

/// Reads and discards the rest of a refused body; true when it ended within
/// the declared length and [`LINGER_TIME`], so the connection can be reused.
async fn drain(mut body: SharedBody, declared: u64) -> bool {
    let read_rest = async {
        let mut seen = 0u64;
        loop {
            match body.frame().await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        seen += data.len() as u64;
                    }
                    // A client sending more than it declared is not owed a linger.
                    if seen > declared {
                        return false;
                    }
                }
            }
        }
    };
    tokio::time::timeout(LINGER_TIME, read_rest)
        .await
        .unwrap_or(false)
}
