//! The two listeners: a UDP receive loop and a TCP accept loop, each
//! owning the tasks it starts (forwarded questions, TCP connections) so
//! that cancelling it ends them all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::answer::{self, Decision, Zones};
use super::forward::{fit_udp, read_framed, write_framed, Forwarder};
use super::Records;

/// How many TCP clients may be connected at once; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 64;
/// How long a TCP client may stay silent before it is closed (RFC 7766
/// suggests seconds, not minutes).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The UDP answer size a client without EDNS accepts (RFC 1035).
const PLAIN_UDP_LIMIT: usize = 512;

/// What both listeners answer from.
pub(super) struct Shared {
    pub(super) zones: Zones,
    pub(super) records: Arc<dyn Records>,
    pub(super) forwarder: Forwarder,
}

/// The first thing to do with a request's bytes.
enum Step {
    Reply(Vec<u8>),
    Forward(Message, OwnedSemaphorePermit),
    Nothing,
}

fn first_step(shared: &Shared, bytes: &[u8]) -> Step {
    let request = match Message::from_vec(bytes) {
        Ok(request) => request,
        Err(_) => return answer::formerr(bytes).map_or(Step::Nothing, Step::Reply),
    };
    match answer::decide(&shared.zones, shared.records.as_ref(), &request) {
        Decision::Answer(reply) => encode(&reply).map_or(Step::Nothing, Step::Reply),
        Decision::Ignore => Step::Nothing,
        Decision::Forward => match shared.forwarder.try_permit() {
            Some(permit) => Step::Forward(request, permit),
            None => {
                tracing::debug!("DNS forwarding at capacity, answering SERVFAIL");
                servfail(&request).map_or(Step::Nothing, Step::Reply)
            }
        },
    }
}

/// The upstreams' answer to a forwarded request, or SERVFAIL.
async fn forwarded(shared: &Shared, bytes: &[u8], request: &Message) -> Option<Vec<u8>> {
    match shared.forwarder.forward(bytes, request).await {
        Some(answer) => Some(answer),
        None => servfail(request),
    }
}

fn servfail(request: &Message) -> Option<Vec<u8>> {
    encode(&answer::reply(request, ResponseCode::ServFail))
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a DNS answer");
            None
        }
    }
}

fn udp_limit(request: &Message) -> usize {
    match &request.edns {
        Some(edns) => usize::from(edns.max_payload()).max(PLAIN_UDP_LIMIT),
        None => PLAIN_UDP_LIMIT,
    }
}

/// Serves UDP until `cancel`; forwarded questions run in their own tasks.
pub(super) async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>, cancel: CancellationToken) {
    let socket = Arc::new(socket);
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            // Reap finished tasks so the set stays as small as the cap.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    continue;
                }
            },
        };
        match first_step(&shared, &buf[..len]) {
            Step::Reply(reply) => send_udp(&socket, &reply, peer).await,
            Step::Nothing => {}
            Step::Forward(request, permit) => {
                let bytes = buf[..len].to_vec();
                let (socket, shared) = (socket.clone(), shared.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = forwarded(&shared, &bytes, &request).await {
                        send_udp(&socket, &fit_udp(reply, udp_limit(&request)), peer).await;
                    }
                });
            }
        }
    }
    tasks.shutdown().await;
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(reply, peer).await {
        tracing::debug!(%peer, error = %e, "DNS UDP send failed");
    }
}

/// Serves TCP until `cancel`; each connection runs in its own task.
pub(super) async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut tasks = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept failed");
                    // Out of file descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "DNS TCP connections at capacity, closing");
            continue;
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_connection(stream, &shared).await {
                tracing::debug!(%peer, error = %e, "DNS TCP connection ended");
            }
        });
    }
    tasks.shutdown().await;
}

/// Answers the questions of one TCP client in turn until it closes or idles.
async fn serve_connection(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    loop {
        let bytes = match timeout(TCP_IDLE, read_framed(&mut stream)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let reply = match first_step(shared, &bytes) {
            Step::Reply(reply) => Some(reply),
            Step::Nothing => None,
            Step::Forward(request, permit) => {
                let reply = forwarded(shared, &bytes, &request).await;
                drop(permit);
                reply
            }
        };
        if let Some(reply) = reply {
            // A client that does not read its answers must not hold us.
            timeout(TCP_IDLE, write_framed(&mut stream, &reply))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        }
    }
}
