//! A guest's TCP ports from the host over the agent channel, on the test
//! driver (the agent runs as a host process, so "the guest's loopback" is
//! the host's and a test listener stands for a guest server): one
//! connection as a WebSocket (`vm connect`), port forwards on the host's
//! loopback, their refusals, and their lifetime: removed, kept across a
//! daemon restart, gone with the VM.

use std::time::Duration;

use banger_api::{ErrorCode, Forward, ForwardRequest};
use banger_client::{ClientError, StreamEvent};
use banger_testkit::requests::{succeed, vm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A "guest" server on the host's loopback that answers each connection
/// with what it read, upper-cased, once the client shut its side.
async fn upper_case_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                socket.read_to_end(&mut got).await.unwrap();
                socket.write_all(&got.to_ascii_uppercase()).await.unwrap();
            });
        }
    });
    port
}

/// A port nothing listens on (now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends `text` through host port `port`, shuts the writing side, reads the answer.
async fn through(port: u16, text: &str) -> std::io::Result<String> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
    socket.write_all(text.as_bytes()).await?;
    socket.shutdown().await?;
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await?;
    Ok(answer)
}

fn api_code(error: ClientError) -> ErrorCode {
    match error {
        ClientError::Api(api) => api.code,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn connections_and_forwards_reach_the_guests_ports_and_go_with_the_vm() {
    banger_testkit::with_timeout(TEST_TIMEOUT, body()).await;
}

async fn body() {
    let agent = banger_testkit::guest::agent_binary();
    let Some(mut daemon) = banger_testkit::local_daemon(&agent, |_| {}).await else { return };
    let client = daemon.client.clone();
    succeed(&client, client.create_vm(&vm("dev", "tiny")).await.unwrap()).await;
    let guest_port = upper_case_server().await;

    // One connection, as `vm connect` (ssh's ProxyCommand) makes it.
    let (sender, mut events) = client.connect("dev", guest_port).await.unwrap();
    sender.stdin(b"hello ").await.unwrap();
    sender.stdin(b"guest").await.unwrap();
    sender.stdin_eof().await.unwrap();
    let mut answer = Vec::new();
    let mut ended = false;
    while let Some(event) = events.next().await.unwrap() {
        match event {
            StreamEvent::Stdout(data) => answer.extend(&data),
            StreamEvent::StdoutEof => ended = true,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(String::from_utf8(answer).unwrap(), "HELLO GUEST");
    assert!(ended, "the guest's end is passed on before the close");
    let refused = client.connect("dev", free_port()).await.err().expect("nothing listens there");
    assert_eq!(api_code(refused), ErrorCode::NotFound);

    // A forward.
    let host_port = free_port();
    let request = ForwardRequest { guest_port, host_port: Some(host_port) };
    let forward = client.add_forward("dev", &request).await.unwrap();
    let expected = Forward { vm: "dev".into(), host_address: "127.0.0.1".into(), host_port, guest_port };
    assert_eq!(forward, expected);
    assert_eq!(through(host_port, "through a forward").await.unwrap(), "THROUGH A FORWARD");
    let many =
        futures::future::join_all((0..8).map(|i| async move { through(host_port, &format!("client {i}")).await }))
            .await;
    for (i, answer) in many.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), format!("CLIENT {i}"));
    }
    assert_eq!(client.forwards("dev").await.unwrap(), std::slice::from_ref(&expected));

    // Refusals: the same host port again, a port another program holds, no such VM.
    assert_eq!(api_code(client.add_forward("dev", &request).await.unwrap_err()), ErrorCode::Conflict);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let in_use = client.add_forward("dev", &ForwardRequest { guest_port, host_port: Some(taken_port) }).await;
    assert_eq!(api_code(in_use.unwrap_err()), ErrorCode::Conflict);
    assert_eq!(client.forwards("dev").await.unwrap(), std::slice::from_ref(&expected), "a refused forward is not kept");
    assert_eq!(api_code(client.add_forward("nope", &request).await.unwrap_err()), ErrorCode::NotFound);

    // Removed, and made again.
    client.remove_forward("dev", host_port).await.unwrap();
    assert!(through(host_port, "x").await.is_err(), "nothing listens after the removal");
    assert_eq!(api_code(client.remove_forward("dev", host_port).await.unwrap_err()), ErrorCode::NotFound);
    client.add_forward("dev", &request).await.unwrap();

    // Kept across a daemon restart.
    daemon.stop().await;
    assert!(through(host_port, "x").await.is_err(), "the daemon's listener went with it");
    daemon.restart().await;
    let client = daemon.client.clone();
    assert_eq!(through(host_port, "after a restart").await.unwrap(), "AFTER A RESTART");
    assert_eq!(client.forwards("dev").await.unwrap(), [expected]);

    // Gone with the VM.
    succeed(&client, client.remove_vm("dev", true).await.unwrap()).await;
    assert!(through(host_port, "x").await.is_err(), "the forward went with its VM");
    assert_eq!(api_code(client.forwards("dev").await.unwrap_err()), ErrorCode::NotFound);
    std::net::TcpListener::bind(("127.0.0.1", host_port)).expect("the host port is free again");
}
