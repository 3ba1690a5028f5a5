//! Bodies that watch a request: a request body that fails when the client
//! stops sending it while a handler waits, and a response body that marks
//! the connection idle once it is done.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use banger_api::{ApiError, ErrorCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::table::Slot;

/// The error a stalled request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyStalled(Duration);

/// A request body that fails with [`BodyStalled`] when a handler has
/// waited `timeout` for its next bytes; time the handler spends elsewhere
/// does not count.
pub struct StallTimeout {
    inner: Incoming,
    timeout: Duration,
    /// Armed while the handler waits for bytes.
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
    stalled: Arc<AtomicBool>,
}

impl StallTimeout {
    /// Wraps `inner`; `stalled` is set if it times out.
    pub fn new(inner: Incoming, timeout: Duration, stalled: Arc<AtomicBool>) -> StallTimeout {
        StallTimeout { inner, timeout, sleep: Box::pin(tokio::time::sleep(timeout)), waiting: false, stalled }
    }
}

impl Body for StallTimeout {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.sleep.as_mut().reset(Instant::now() + this.timeout);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.stalled.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(Box::new(BodyStalled(this.timeout)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body stalled, whatever the handler made
/// of the error; the connection closes after it, its body half read.
pub fn stalled_response(timeout: Duration) -> Response {
    let code = ErrorCode::Timeout;
    let body = ApiError { code, message: BodyStalled(timeout).to_string() };
    let mut response = (crate::error::status_for(code), axum::Json(body)).into_response();
    debug_assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A response body that tells the connection's [`Slot`] when it is done
/// (fully sent, or dropped).
pub struct Observed {
    inner: axum::body::Body,
    slot: Arc<Slot>,
}

impl Observed {
    /// Wraps `inner`, the response to a request on `slot`'s connection.
    pub fn new(inner: axum::body::Body, slot: Arc<Slot>) -> Observed {
        Observed { inner, slot }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.slot.response_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.slot.response_done();
    }
}
