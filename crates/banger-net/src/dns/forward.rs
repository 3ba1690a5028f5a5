//! Forwarding a question to the host's resolvers: UDP first, TCP when the
//! answer comes back truncated, the next upstream when one does not answer,
//! and a cap on how many questions wait at once.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

/// How long one upstream has to answer over UDP before the next is asked.
const UDP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP retry (connect, send, read the answer) may take.
const TCP_TIMEOUT: Duration = Duration::from_secs(3);

/// The upstreams and the cap on questions in flight.
#[derive(Debug)]
pub(super) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    permits: Arc<Semaphore>,
}

impl Forwarder {
    /// Forwards to `upstreams` in order, except any that is the server
    /// itself (`own`): that would send each question round in a loop.
    pub(super) fn new(upstreams: &[SocketAddr], own: SocketAddr, in_flight: usize) -> Forwarder {
        let upstreams = upstreams
            .iter()
            .copied()
            .filter(|u| {
                let looped = is_self(*u, own);
                if looped {
                    tracing::warn!(upstream = %u, "DNS upstream is this server itself, skipped");
                }
                !looped
            })
            .collect();
        Forwarder { upstreams, permits: Arc::new(Semaphore::new(in_flight)) }
    }

    /// A place among the questions in flight, or `None` when all are taken.
    pub(super) fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// The first usable answer to `query` (the raw request, parsed as
    /// `request`), with the client's id; `None` when no upstream answered.
    ///
    /// A SERVFAIL or REFUSED from one upstream sends the question on to
    /// the next; it is relayed only if no later one does better.
    pub(super) async fn forward(&self, query: &[u8], request: &Message) -> Option<Vec<u8>> {
        // A fresh id (and a fresh socket, so a fresh port) per question:
        // an off-path spoofer must guess both.
        let id: u16 = rand::random();
        let mut outgoing = query.to_vec();
        outgoing[..2].copy_from_slice(&id.to_be_bytes());

        let mut fallback = None;
        for &upstream in &self.upstreams {
            let Some((mut answer, truncated)) = udp_exchange(upstream, &outgoing, id, request).await else {
                continue;
            };
            if truncated {
                match tcp_exchange(upstream, &outgoing, id, request).await {
                    Some((full, _)) => answer = full,
                    // The client can still ask again over TCP itself.
                    None => tracing::debug!(%upstream, "DNS TCP retry failed, relaying the truncated answer"),
                }
            }
            answer[..2].copy_from_slice(&request.metadata.id.to_be_bytes());
            if matches!(rcode(&answer), ResponseCode::ServFail | ResponseCode::Refused) {
                fallback = Some(answer);
                continue;
            }
            return Some(answer);
        }
        fallback
    }
}

fn is_self(upstream: SocketAddr, own: SocketAddr) -> bool {
    if upstream == own {
        return true;
    }
    // Listening on every address: any local address on our port is us;
    // loopback and the unspecified address are the ones we can know.
    own.ip().is_unspecified()
        && upstream.port() == own.port()
        && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())
}

fn rcode(answer: &[u8]) -> ResponseCode {
    ResponseCode::from(0, answer[3] & 0x0f)
}

/// Checks that `bytes` answer our question; returns whether it is truncated.
fn check_answer(bytes: &[u8], id: u16, request: &Message) -> Option<bool> {
    let answer = Message::from_vec(bytes).ok()?;
    let ok = answer.metadata.id == id
        && answer.metadata.message_type == MessageType::Response
        && answer.queries == request.queries;
    ok.then_some(answer.metadata.truncation)
}

async fn udp_exchange(upstream: SocketAddr, query: &[u8], id: u16, request: &Message) -> Option<(Vec<u8>, bool)> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let exchange = async {
        let socket = UdpSocket::bind(local).await?;
        // Connected: only the upstream's datagrams come in, and a closed
        // port shows as an error at once instead of a timeout.
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; 65535];
        loop {
            let len = socket.recv(&mut buf).await?;
            if let Some(truncated) = check_answer(&buf[..len], id, request) {
                buf.truncate(len);
                return Ok::<_, std::io::Error>((buf, truncated));
            }
            // Not ours (a late answer to someone else): keep waiting.
        }
    };
    match timeout(UDP_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(e)) => {
            tracing::debug!(%upstream, error = %e, "DNS upstream failed");
            None
        }
        Err(_) => {
            tracing::debug!(%upstream, "DNS upstream timed out");
            None
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, query: &[u8], id: u16, request: &Message) -> Option<(Vec<u8>, bool)> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        write_framed(&mut stream, query).await?;
        read_framed(&mut stream).await
    };
    match timeout(TCP_TIMEOUT, exchange).await {
        Ok(Ok(buf)) => {
            let truncated = check_answer(&buf, id, request)?;
            Some((buf, truncated))
        }
        Ok(Err(e)) => {
            tracing::debug!(%upstream, error = %e, "DNS upstream failed over TCP");
            None
        }
        Err(_) => {
            tracing::debug!(%upstream, "DNS upstream timed out over TCP");
            None
        }
    }
}

/// Writes one DNS message with its two-byte length (RFC 1035 4.2.2).
pub(super) async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message too long"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Reads one DNS message framed with its two-byte length.
pub(super) async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// `answer` as it may go back over UDP to a client that accepts `limit`
/// bytes: whole if it fits, else header and question with TC set, so the
/// client asks again over TCP.
pub(super) fn fit_udp(answer: Vec<u8>, limit: usize) -> Vec<u8> {
    if answer.len() <= limit {
        return answer;
    }
    match Message::from_vec(&answer).map(|m| m.truncate().to_vec()) {
        Ok(Ok(short)) if short.len() <= limit => short,
        // Cannot even be cut down: the bare header with TC.
        _ => {
            let mut header = answer[..12].to_vec();
            header[2] |= 0x02;
            header[4..].fill(0);
            header
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_address_is_never_an_upstream() {
        let own: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let ups: Vec<SocketAddr> =
            vec!["127.0.0.1:5353".parse().unwrap(), "127.0.0.53:53".parse().unwrap(), "127.0.0.1:53".parse().unwrap()];
        let f = Forwarder::new(&ups, own, 4);
        assert_eq!(f.upstreams, ups[1..]);
    }

    #[test]
    fn listening_everywhere_excludes_loopback_on_our_port() {
        let own: SocketAddr = "0.0.0.0:53".parse().unwrap();
        let ups: Vec<SocketAddr> = vec![
            "127.0.0.1:53".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            "192.0.2.1:53".parse().unwrap(),
            "127.0.0.1:5353".parse().unwrap(),
        ];
        let f = Forwarder::new(&ups, own, 4);
        assert_eq!(f.upstreams, ups[2..]);
    }

    #[test]
    fn permits_run_out_and_come_back() {
        let f = Forwarder::new(&[], "127.0.0.1:53".parse().unwrap(), 2);
        let a = f.try_permit().unwrap();
        let _b = f.try_permit().unwrap();
        assert!(f.try_permit().is_none());
        drop(a);
        assert!(f.try_permit().is_some());
    }

    #[test]
    fn long_answers_are_cut_to_header_and_question() {
        use hickory_proto::op::{OpCode, Query};
        use hickory_proto::rr::{rdata::A, Name, RData, Record, RecordType};
        let name = Name::from_ascii("big.example.").unwrap();
        let mut msg = Message::response(7, OpCode::Query);
        msg.add_query(Query::query(name.clone(), RecordType::A));
        for i in 0..100u8 {
            let rdata = RData::A(A(Ipv4Addr::new(192, 0, 2, i)));
            msg.add_answer(Record::from_rdata(name.clone(), 60, rdata));
        }
        let bytes = msg.to_vec().unwrap();
        assert!(bytes.len() > 512);
        assert_eq!(fit_udp(bytes.clone(), 4096), bytes);

        let cut = Message::from_vec(&fit_udp(bytes, 512)).unwrap();
        assert!(cut.metadata.truncation);
        assert_eq!(cut.metadata.id, 7);
        assert!(cut.answers.is_empty());
        assert_eq!(cut.queries, msg.queries);
    }
}
