//! Bodies that watch a request: a request body that fails when the client
//! stops sending it while a handler waits, and a response body; once both
//! are done (sent, read or dropped) the connection is idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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

/// One request and its response on a connection: the connection is idle
/// once both bodies are done, whichever ends last (a handler may answer
/// before it has read the whole request).
pub struct Exchange {
    slot: Arc<Slot>,
    open: AtomicU8,
}

impl Exchange {
    /// A request just begun on `slot`'s connection.
    pub fn begin(slot: Arc<Slot>) -> (Part, Part) {
        slot.request_started();
        let exchange = Arc::new(Exchange { slot, open: AtomicU8::new(2) });
        (Part(Some(Arc::clone(&exchange))), Part(Some(exchange)))
    }
}

/// The request's or the response's share of an [`Exchange`].
pub struct Part(Option<Arc<Exchange>>);

impl Part {
    /// This body is done; the last one done leaves the connection idle.
    fn done(&mut self) {
        if let Some(exchange) = self.0.take() {
            if exchange.open.fetch_sub(1, Ordering::AcqRel) == 1 {
                exchange.slot.response_done();
            }
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.done();
    }
}

/// The error a stalled request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyStalled(Duration);

/// A request body that fails with [`BodyStalled`] when a handler has
/// waited `timeout` for its next bytes; time the handler spends elsewhere
/// does not count.
pub struct StallTimeout {
    inner: Incoming,
    part: Part,
    timeout: Duration,
    /// Armed while the handler waits for bytes.
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
    stalled: Arc<AtomicBool>,
}

impl StallTimeout {
    /// Wraps `inner`, the request's `part`; `stalled` is set if it times out.
    pub fn new(inner: Incoming, part: Part, timeout: Duration, stalled: Arc<AtomicBool>) -> StallTimeout {
        let sleep = Box::pin(tokio::time::sleep(timeout));
        StallTimeout { inner, part, timeout, sleep, waiting: false, stalled }
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
                if frame.is_none() {
                    this.part.done();
                }
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

/// A response body that tells its [`Exchange`] when it is done (fully
/// sent, or dropped).
pub struct Observed {
    inner: axum::body::Body,
    part: Part,
}

impl Observed {
    /// Wraps `inner`, the response's `part`.
    pub fn new(inner: axum::body::Body, part: Part) -> Observed {
        Observed { inner, part }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.part.done();
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

#[cfg(test)]
mod tests {
    use super::super::table::{Admission, Phase, Table};
    use super::*;

    #[test]
    fn a_connection_is_idle_once_the_request_and_the_response_are_done() {
        let table = Table::default();
        let Admission::Admitted(slot) = table.admit(1) else { panic!("room") };
        let (request, response) = Exchange::begin(Arc::clone(&slot));
        assert_eq!(slot.state().0, Phase::Busy);
        // Answered before the whole request was read: still busy.
        drop(response);
        assert_eq!(slot.state().0, Phase::Busy);
        drop(request);
        assert_eq!(slot.state().0, Phase::Idle);
    }
}
