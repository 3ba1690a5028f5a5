//! `connect`: a TCP connection to one of the guest's own ports, carried by
//! its stream (ssh through banger, port forwards), so it needs no guest
//! network. Bytes flow both ways at the stream's pace; each side's FIN
//! shuts the other's writing half, and a reset drops the connection.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use banger_agent_proto::mux::{Event, MuxError, Stream};
use banger_agent_proto::{ErrorKind, FrameKind, Reply};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::requests::{answer, close, Refusal};

/// How long the guest's own listener may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the connection's output is read at once.
const READ_CHUNK: usize = 64 << 10;

/// Connects to `port` on the guest's loopback and carries the connection.
pub(crate) async fn connect(mut stream: Stream, port: u16) {
    let socket = match open(port).await {
        Ok(socket) => socket,
        Err(refusal) => return answer(stream, refusal.reply()).await,
    };
    if stream.send(&Reply::Connected).await.is_err() {
        return;
    }
    let _ = socket.set_nodelay(true);
    let (mut from_guest, mut to_guest) = socket.into_split();
    let sender = stream.sender();
    let outbound = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            match from_guest.read_buf(&mut buf).await {
                Ok(0) => return sender.finish(FrameKind::Stdout).await.map_err(|e| e.to_string()),
                Ok(_) => sender.write(FrameKind::Stdout, buf.split().freeze()).await.map_err(|e| e.to_string())?,
                Err(e) => return Err(format!("the guest's connection failed: {e}")),
            }
        }
    };
    let inbound = async {
        loop {
            match stream.recv().await {
                Ok(Some(Event::Data { kind: FrameKind::Stdin, bytes, fin })) => {
                    if let Err(e) = to_guest.write_all(&bytes).await {
                        return Err(format!("the guest's connection failed: {e}"));
                    }
                    if fin {
                        let _ = to_guest.shutdown().await;
                        return Ok(());
                    }
                }
                Ok(Some(_)) => {}
                // The host closed without a FIN first: nothing more comes.
                Ok(None) => {
                    let _ = to_guest.shutdown().await;
                    return Ok(());
                }
                Err(MuxError::Reset(_) | MuxError::Gone(_)) => return Err(String::new()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::try_join!(outbound, inbound) {
        Ok(((), ())) => close(stream).await,
        // A reset from the host needs no answer; any other failure resets
        // the stream, so the host's side of the connection ends too.
        Err(reason) if reason.is_empty() => {}
        Err(reason) => stream.reset(&reason),
    }
}

/// The guest's listener on `port`: IPv4 loopback, else IPv6's.
async fn open(port: u16) -> Result<TcpStream, Refusal> {
    if port == 0 {
        return Err(Refusal::invalid("port 0 is not a port to connect to"));
    }
    let (mut refused, mut last) = (None, None);
    for address in [SocketAddr::from((Ipv4Addr::LOCALHOST, port)), SocketAddr::from((Ipv6Addr::LOCALHOST, port))] {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(socket)) => return Ok(socket),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused = refused.or(Some(e)),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                return Err(Refusal::new(
                    ErrorKind::Internal,
                    format!("port {port} in the guest did not accept within {}s", CONNECT_TIMEOUT.as_secs()),
                ))
            }
        }
    }
    // IPv4's refusal says more than a guest without IPv6 saying so.
    let error = refused.or(last).expect("two addresses were tried");
    Err(match error.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            Refusal::not_found(format!("nothing listens on port {port} in the guest (connection refused)"))
        }
        _ => Refusal::of_io(&error, format!("cannot connect to port {port} in the guest: {error}")),
    })
}
