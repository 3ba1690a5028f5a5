//! The HTTP server on the API socket: its own accept loop over hyper, so
//! that it caps open connections (shedding the one waiting longest for a
//! request), times out stalled headers, bodies and idle connections, and
//! gives each request its [`Caller`]. Responses, however long they stream,
//! are never cut: the timeouts apply only to reading requests and to the
//! time between them.

mod alarm;
mod body;
mod io;
pub mod limits;
mod table;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::caller::Caller;
use alarm::{Alarm, Alarms};
use body::{Exchange, Observed, StallTimeout};
pub use limits::Limits;
use table::{Admission, Phase, Slot, Table};

/// How long accepting pauses after it failed (out of file descriptors, say),
/// so a full backlog does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Shed connections still closing at most before accepting waits for them.
const MAX_CLOSING: usize = 32;

/// What a refused connection reads before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 81\r\nconnection: close\r\n\r\n\
{\"code\":\"unavailable\",\"message\":\"too many connections are busy; try again later\"}";

/// Serves `app` on `listener` within `limits` until `shutdown` resolves;
/// then stops accepting, lets requests in flight finish, closes idle
/// connections and returns once every connection is closed.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let table = Arc::new(Table::default());
    let alarms = Arc::new(Alarms::new(limits));
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let connections = TaskTracker::new();
    let mut flush = tokio::time::interval(alarm::INTERVAL);
    let mut stopped = stopping.clone();
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            _ = flush.tick() => {
                alarms.flush();
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                alarms.raise(Alarm::AcceptFailed, Some(&e));
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let slot = match table.admit(limits.max_connections) {
            Admission::Admitted(slot) => slot,
            Admission::AdmittedAfterShedding(slot) => {
                alarms.raise(Alarm::Shed, None);
                slot
            }
            Admission::Refused => {
                alarms.raise(Alarm::Refused, None);
                refuse(stream);
                continue;
            }
        };
        let connection = Connection {
            caller: Caller::of(&stream),
            stream: io::TrackedStream::new(stream, Arc::clone(&slot), Arc::clone(&table)),
            slot,
            app: app.clone(),
            limits,
            alarms: Arc::clone(&alarms),
        };
        connections.spawn(connection.serve(stopping.clone()));
        // Shed connections close before many more are taken, so the files
        // held stay near the cap however fast clients connect.
        table.settle(MAX_CLOSING).await;
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    alarms.flush();
    Ok(())
}

/// Tells a connection refused at the cap why, without waiting on it.
fn refuse(stream: UnixStream) {
    // A new socket's send buffer is empty, so the answer fits at once; a
    // write on the socket itself, not gated on the runtime's readiness.
    if let Ok(mut stream) = stream.into_std() {
        let _ = std::io::Write::write(&mut stream, REFUSAL);
    }
}

/// One accepted connection and what it needs to serve its requests.
struct Connection {
    stream: io::TrackedStream,
    slot: Arc<Slot>,
    caller: Caller,
    app: Router,
    limits: Limits,
    alarms: Arc<Alarms>,
}

impl Connection {
    /// Serves requests until the client leaves, a timeout or shedding
    /// closes the connection, or, after shutdown began, its last response.
    async fn serve(self, mut stopping: watch::Receiver<bool>) {
        let Connection { stream, slot, caller, app, limits, alarms } = self;
        let service = {
            let slot = Arc::clone(&slot);
            let alarms = Arc::clone(&alarms);
            hyper::service::service_fn(move |request| {
                handle(request, app.clone(), Arc::clone(&slot), caller.clone(), limits, Arc::clone(&alarms))
            })
        };
        // The header timeout is ours (see `expiry`): hyper's runs between
        // requests too, where the idle timeout applies instead.
        let connection = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "API connection ended with an error");
                    }
                    return;
                }
                phase = expiry(&slot, &limits) => {
                    match phase {
                        Phase::Head => alarms.raise(Alarm::HeaderTimeout, None),
                        _ => tracing::debug!("closed an API connection idle for {:?}", limits.idle_timeout),
                    }
                    return;
                }
                _ = slot.shed.notified() => return,
                _ = stopping.wait_for(|s| *s), if !draining => {
                    // Without a request in hand there is nothing to finish
                    // (hyper would wait for a header half sent).
                    if matches!(slot.state().0, Phase::Head | Phase::Idle) {
                        return;
                    }
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Resolves when the connection has spent too long in its phase: waiting
/// for a header or idle between requests; never while a request is in hand.
async fn expiry(slot: &Slot, limits: &Limits) -> Phase {
    // With a request in hand there is no deadline; the phase is looked at
    // again this often, no later than a new one could expire.
    let recheck = limits.header_timeout.min(limits.idle_timeout);
    loop {
        let before = slot.state();
        match slot.deadline(limits) {
            Some((phase, deadline)) => {
                tokio::time::sleep_until(deadline).await;
                if slot.state() == before {
                    return phase;
                }
            }
            None => tokio::time::sleep(recheck).await,
        }
    }
}

/// Answers one request: the router sees the body through a stall timeout
/// and the caller in `ConnectInfo`; a response to a stalled body becomes a 408.
async fn handle(
    request: Request<Incoming>,
    app: Router,
    slot: Arc<Slot>,
    caller: Caller,
    limits: Limits,
    alarms: Arc<Alarms>,
) -> Result<Response<Observed>, Infallible> {
    let (request_part, response_part) = Exchange::begin(Arc::clone(&slot));
    let stalled = Arc::new(AtomicBool::new(false));
    let mut request = request.map(|body| {
        axum::body::Body::new(StallTimeout::new(body, request_part, limits.body_timeout, Arc::clone(&stalled)))
    });
    request.extensions_mut().insert(ConnectInfo(caller));
    let Ok(mut response) = tower_service::Service::call(&mut app.clone(), request).await;
    if stalled.load(Ordering::Acquire) {
        alarms.raise(Alarm::BodyTimeout, None);
        response = body::stalled_response(limits.body_timeout);
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        slot.upgraded();
    }
    Ok(response.map(|body| Observed::new(body, response_part)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_json_error() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        assert_eq!(body.len(), length);
        let error: banger_api::ApiError = serde_json::from_str(body).unwrap();
        assert_eq!(error.code, banger_api::ErrorCode::Unavailable);
        assert_eq!(crate::error::status_for(error.code), StatusCode::SERVICE_UNAVAILABLE);
    }
}
