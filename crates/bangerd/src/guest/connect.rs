//! TCP connections to a guest's own ports over its agent channel: the
//! agent's `connect` opened for a client's WebSocket (`vm connect`, the ssh
//! ProxyCommand) or for a host socket a forward accepted. It needs no
//! guest network, so it works for VMs without one.

use std::sync::Arc;

use banger_agent_proto::features::CONNECT;
use banger_agent_proto::mux::{Event, MuxError, Stream};
use banger_agent_proto::{FrameKind, Reply, Request};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{agent, unexpected};
use crate::agent::{next_reply, AgentError};
use crate::error::{Error, Result};
use crate::Daemon;

/// How much of a host socket's input is read at once.
const READ_CHUNK: usize = 64 << 10;

/// Opens a connection to `port` on VM `vm`'s loopback; the stream then
/// carries its bytes (stdin data to the guest, stdout data back).
pub async fn open(daemon: &Arc<Daemon>, vm: &str, port: u16) -> Result<Stream> {
    if port == 0 {
        return Err(Error::InvalidArgument("port 0 is not a port to connect to".into()));
    }
    let agent = agent(daemon, vm, "vm connect", CONNECT).await?;
    let mut stream = agent.open()?;
    stream.send(&Request::Connect { port }).await.map_err(AgentError::from)?;
    match next_reply(&mut stream).await? {
        Reply::Connected => Ok(stream),
        reply => Err(unexpected(&reply)),
    }
}

/// Carries `socket` (a host connection a forward accepted) over `stream`
/// until both sides ended; a failure on either side resets the other.
pub async fn pipe(socket: TcpStream, mut stream: Stream) {
    let _ = socket.set_nodelay(true);
    let (mut from_host, mut to_host) = socket.into_split();
    let sender = stream.sender();
    let upstream = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            match from_host.read_buf(&mut buf).await {
                Ok(0) => return sender.finish(FrameKind::Stdin).await.map_err(|e| e.to_string()),
                Ok(_) => sender.write(FrameKind::Stdin, buf.split().freeze()).await.map_err(|e| e.to_string())?,
                Err(e) => return Err(format!("the host's connection failed: {e}")),
            }
        }
    };
    let downstream = async {
        loop {
            match stream.recv().await {
                Ok(Some(Event::Data { kind: FrameKind::Stdout, bytes, fin })) => {
                    to_host.write_all(&bytes).await.map_err(|e| format!("the host's connection failed: {e}"))?;
                    if fin {
                        let _ = to_host.shutdown().await;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(MuxError::Reset(_) | MuxError::Gone(_)) => return Err(String::new()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    if let Err(reason) = tokio::try_join!(upstream, downstream) {
        if !reason.is_empty() {
            sender.reset(&reason);
        }
    }
}
