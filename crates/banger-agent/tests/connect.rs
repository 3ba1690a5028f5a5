//! Connections to the guest's own ports through the agent binary: bytes
//! both ways and each side's end passed on, a refused port answered, and
//! a reset from the host dropping the connection. The agent runs as a
//! host process here, so "the guest's loopback" is the host's.

mod common;

use std::time::Duration;

use banger_agent_proto::mux::{Event, MuxError};
use banger_agent_proto::{ErrorKind, FrameKind, Reply, Request};
use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WITHIN: Duration = Duration::from_secs(10);

async fn stdout_to_end(stream: &mut banger_agent_proto::mux::Stream) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(WITHIN, stream.recv()).await.expect("output in time").unwrap() {
            Some(Event::Data { kind: FrameKind::Stdout, bytes, fin }) => {
                got.extend(&bytes);
                if fin {
                    return got;
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn bytes_pass_both_ways_and_each_end_reaches_the_other_side() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // The guest's server: reads everything, then answers with its length and a digest-like echo.
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        socket.read_to_end(&mut got).await.unwrap();
        socket.write_all(format!("{} bytes\n", got.len()).as_bytes()).await.unwrap();
        socket.write_all(&got[..16]).await.unwrap();
        got
    });
    let mut stream = client.open(&Request::Connect { port }).await;
    assert_eq!(next_reply(&mut stream).await, Reply::Connected);
    let sent: Vec<u8> = (0..8 << 20).map(|i: u32| (i * 7) as u8).collect();
    let sender = stream.sender();
    let upload = sent.clone();
    let feeding = tokio::spawn(async move {
        for chunk in upload.chunks(100_000) {
            sender.write(FrameKind::Stdin, Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        sender.finish(FrameKind::Stdin).await.unwrap();
    });
    let answer = stdout_to_end(&mut stream).await;
    feeding.await.unwrap();
    assert_eq!(server.await.unwrap(), sent, "the server got every byte, in order, then an end");
    let mut expected = format!("{} bytes\n", sent.len()).into_bytes();
    expected.extend(&sent[..16]);
    assert_eq!(answer, expected, "its answer, then its end, came back");
    // Both halves are shut: the agent closes the stream.
    assert!(tokio::time::timeout(WITHIN, stream.recv()).await.unwrap().unwrap().is_none());
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_refused_clearly() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    match client.request(&Request::Connect { port }).await {
        Reply::Error { kind: ErrorKind::NotFound, message } => {
            assert_eq!(message, format!("nothing listens on port {port} in the guest (connection refused)"))
        }
        other => panic!("{other:?}"),
    }
    match client.request(&Request::Connect { port: 0 }).await {
        Reply::Error { kind: ErrorKind::InvalidArgument, .. } => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_reset_from_the_host_drops_the_connection_and_a_dropped_connection_resets_the_stream() {
    let agent = Agent::start().await;
    let client = agent.connect().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    let mut stream = client.open(&Request::Connect { port }).await;
    assert_eq!(next_reply(&mut stream).await, Reply::Connected);
    let (mut socket, _) = listener.accept().await.unwrap();
    stream.reset("the client went away");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WITHIN, socket.read(&mut buf)).await.expect("the server sees the end");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let mut stream = client.open(&Request::Connect { port }).await;
    assert_eq!(next_reply(&mut stream).await, Reply::Connected);
    let (socket, _) = listener.accept().await.unwrap();
    // A zero linger makes the close an RST, not an end: what is tested here.
    #[allow(deprecated)]
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop(socket);
    let seen = tokio::time::timeout(WITHIN, async {
        loop {
            match stream.recv().await {
                Ok(Some(Event::Data { fin: false, .. })) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(seen, Err(MuxError::Reset(_)) | Ok(Some(Event::Data { fin: true, .. }))), "{seen:?}");
}
