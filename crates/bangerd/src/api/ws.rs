//! The WebSocket side of the routes that carry a process's bytes: one
//! client WebSocket ([`banger_api::stream`]'s messages) relayed to and from
//! one agent stream, with back-pressure both ways. A client message is
//! read only once the guest took the last one (its stdin waits for the
//! stream's credit), and agent output is read only as the client takes
//! it, so a slow client slows only its own stream and nothing is dropped
//! or buffered without bound.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use banger_agent_proto::mux::{Event, MuxError, Stream, StreamSender};
use banger_agent_proto::{FrameKind, Reply, Request, TtySize};
use banger_api::stream::{Channel, ClientMessage, ServerMessage, TermSize, MAX_MESSAGE_BYTES};
use banger_api::{ApiError, ErrorCode};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Mutex;

use crate::error::Error;

/// Close codes (RFC 6455): done, the daemon is going away, a failure.
pub const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_ERROR: u16 = 1011;

/// A WebSocket upgrade, or the API's JSON error for a request that is not one.
pub struct Upgrade(pub WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match WebSocketUpgrade::from_request_parts(parts, state).await {
            Ok(upgrade) => {
                Ok(Upgrade(upgrade.max_message_size(MAX_MESSAGE_BYTES + 1).max_frame_size(MAX_MESSAGE_BYTES + 1)))
            }
            Err(rejection) => Err(Error::InvalidArgument(format!(
                "this route is a WebSocket (RFC 6455; see banger_api::stream): {}",
                axum::response::IntoResponse::into_response(rejection)
                    .status()
                    .canonical_reason()
                    .unwrap_or("no upgrade")
            ))),
        }
    }
}

/// What the client may send once the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// An exec: stdin (if it asked for it), its end, signals, resizes.
    Exec {
        /// The client said it sends stdin.
        stdin: bool,
    },
    /// A session attach: typing (unless read-only) and resizes.
    Attach {
        /// Watch only.
        read_only: bool,
    },
    /// Output only (session logs, a copy out): client messages are ignored.
    None,
    /// Bytes and their end only (a copy in): the agent answers once, at
    /// the end or when it refuses.
    Upload,
    /// A TCP connection: bytes and their end both ways.
    Tunnel,
}

/// The client's WebSocket, split in its two halves.
pub struct Client {
    /// What goes to the client.
    pub tx: Tx,
    rx: SplitStream<WebSocket>,
}

/// The sending half of a client's WebSocket, shared by the relay's two
/// directions (the upstream one answers a bad message).
pub struct Tx(Mutex<SplitSink<WebSocket, Message>>);

impl Client {
    /// Wraps an upgraded socket.
    pub fn new(socket: WebSocket) -> Client {
        let (tx, rx) = socket.split();
        Client { tx: Tx(Mutex::new(tx)), rx }
    }

    /// The next control message, skipping pings; `None` once the client
    /// left. Bytes before it are an error: nothing runs yet to take them.
    pub async fn first_message(&mut self, within: Duration) -> Result<Option<ClientMessage>, Error> {
        let read = async {
            while let Some(message) = self.rx.next().await {
                match message {
                    Ok(Message::Text(text)) => return parse(text.as_str()).map(Some),
                    Ok(Message::Binary(_)) => {
                        return Err(Error::InvalidArgument("the first message must be `start`, as text".into()))
                    }
                    Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                    Ok(Message::Close(_)) | Err(_) => return Ok(None),
                }
            }
            Ok(None)
        };
        tokio::time::timeout(within, read)
            .await
            .map_err(|_| Error::InvalidArgument(format!("no `start` message within {}s", within.as_secs())))?
    }
}

impl Tx {
    /// Sends a control message; false once the client is gone.
    pub async fn send(&self, message: &ServerMessage) -> bool {
        let json = serde_json::to_string(message).expect("stream messages serialize");
        self.0.lock().await.send(Message::text(json)).await.is_ok()
    }

    async fn send_bytes(&self, channel: Channel, bytes: &[u8]) -> bool {
        self.0.lock().await.send(Message::binary(channel.message(bytes))).await.is_ok()
    }

    /// Closes the WebSocket with `code`.
    pub async fn close(&self, code: u16, reason: &str) {
        // A close reason is at most 123 bytes.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame { code, reason: reason[..end].into() };
        let mut tx = self.0.lock().await;
        let _ = tx.send(Message::Close(Some(frame))).await;
        let _ = tx.close().await;
    }

    /// Sends `error` and closes: what the client gets when nothing runs.
    pub async fn refuse(&self, error: ApiError, guest: bool) {
        let code = if error.code == ErrorCode::Internal { CLOSE_ERROR } else { CLOSE_NORMAL };
        let reason = error.message.clone();
        self.send(&ServerMessage::Error { code: error.code, message: error.message, guest }).await;
        self.close(code, &reason).await;
    }
}

fn parse(text: &str) -> Result<ClientMessage, Error> {
    serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("a stream message: {e}")))
}

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The process ended (`exited` was sent) or the agent closed the stream.
    Done,
    /// The client left (or its socket broke); the agent stream was reset
    /// (an exec is hung up) or closed (an attach detaches).
    ClientGone,
    /// The agent stream failed; the client was told.
    AgentFailed(String),
}

/// Relays between `client` and the agent `stream` until the process ends,
/// either side leaves, or `stop` resolves (the daemon shuts down).
pub async fn relay(
    client: Client,
    mut stream: Stream,
    input: Input,
    stop: impl std::future::Future<Output = ()>,
) -> Ended {
    let Client { tx, mut rx } = client;
    let tx = &tx;
    let sender = stream.sender();
    let downstream = async move {
        loop {
            let event = match stream.recv().await {
                Ok(Some(event)) => event,
                Ok(None) => {
                    tx.close(CLOSE_NORMAL, "").await;
                    return Ended::Done;
                }
                Err(e) => {
                    let message = match &e {
                        MuxError::Gone(reason) => format!("the connection to the guest agent closed: {reason}"),
                        other => other.to_string(),
                    };
                    let error = ApiError { code: ErrorCode::Internal, message: message.clone() };
                    tx.refuse(error, false).await;
                    return Ended::AgentFailed(message);
                }
            };
            let delivered = match event {
                Event::Data { kind: FrameKind::Stdout, bytes, fin } if !bytes.is_empty() => {
                    let sent = tx.send_bytes(Channel::Stdout, &bytes).await;
                    if sent && fin && input == Input::Tunnel {
                        tx.send(&ServerMessage::StdoutEof {}).await
                    } else {
                        sent
                    }
                }
                Event::Data { kind: FrameKind::Stderr, bytes, .. } if !bytes.is_empty() => {
                    tx.send_bytes(Channel::Stderr, &bytes).await
                }
                Event::Data { kind: FrameKind::Stdout, fin: true, .. } if input == Input::Tunnel => {
                    tx.send(&ServerMessage::StdoutEof {}).await
                }
                Event::Data { .. } => true,
                event @ Event::Control(_) => match event.message::<Reply>() {
                    Some(Reply::Exited { code, signal }) => {
                        tx.send(&ServerMessage::exited(code, signal)).await;
                        tx.close(CLOSE_NORMAL, "").await;
                        return Ended::Done;
                    }
                    Some(Reply::Done) => {
                        tx.close(CLOSE_NORMAL, "").await;
                        return Ended::Done;
                    }
                    // Output-only streams and uploads have no start to
                    // pass: their errors (no such session or path) end them.
                    Some(Reply::Error { message, kind })
                        if matches!(input, Input::None | Input::Upload | Input::Tunnel) =>
                    {
                        tx.refuse(ApiError { code: crate::error::refusal_code(kind), message }, true).await;
                        return Ended::Done;
                    }
                    Some(Reply::Error { message, kind }) => {
                        let code = crate::error::refusal_code(kind);
                        tx.send(&ServerMessage::Error { code, message, guest: true }).await
                    }
                    Some(Reply::Started { pid }) => tx.send(&ServerMessage::Started { pid: Some(pid) }).await,
                    _ => true,
                },
            };
            if !delivered {
                return Ended::ClientGone;
            }
        }
    };
    let upstream = upstream(&mut rx, &sender, input);
    let ended = tokio::select! {
        ended = downstream => ended,
        problem = upstream => match problem {
            Upstream::Gone => Ended::ClientGone,
            Upstream::Bad(error) => {
                sender.reset("the client sent a bad message");
                tx.refuse(error.to_api(), false).await;
                Ended::ClientGone
            }
        },
        () = stop => {
            sender.reset("the daemon is shutting down");
            tx.send(&ServerMessage::Error { code: ErrorCode::Unavailable, message: "the daemon is shutting down".into(), guest: false }).await;
            tx.close(CLOSE_GOING_AWAY, "the daemon is shutting down").await;
            return Ended::ClientGone;
        }
    };
    if ended == Ended::ClientGone {
        match input {
            // Hangs the command up.
            Input::Exec { .. } | Input::None | Input::Upload | Input::Tunnel => sender.reset("the client went away"),
            // A detach: the session runs on.
            Input::Attach { .. } => {
                let _ = tokio::time::timeout(Duration::from_secs(1), sender.close()).await;
            }
        }
    }
    ended
}

/// Why the client's side of a relay stopped.
enum Upstream {
    /// It closed or its socket broke.
    Gone,
    /// It sent something it may not.
    Bad(Error),
}

/// Reads the client's messages and applies each before reading the next:
/// stdin waits for the stream's credit.
async fn upstream(rx: &mut SplitStream<WebSocket>, sender: &StreamSender, input: Input) -> Upstream {
    let (mut stdin_open, signals) = match input {
        Input::Exec { stdin } => (stdin, true),
        Input::Attach { read_only } => (!read_only, false),
        Input::None => (false, false),
        Input::Upload | Input::Tunnel => (true, false),
    };
    let resizes = matches!(input, Input::Exec { .. } | Input::Attach { .. });
    while let Some(message) = rx.next().await {
        let applied = match message {
            Ok(Message::Binary(data)) => match Channel::split(&data) {
                Some((Channel::Stdin, bytes)) if stdin_open && !bytes.is_empty() => {
                    sender.write(FrameKind::Stdin, data.slice(1..)).await
                }
                // Input nobody asked for, or after its end: dropped, as a
                // closed pipe would.
                Some((Channel::Stdin, _)) => Ok(()),
                _ => {
                    return Upstream::Bad(Error::InvalidArgument(
                        "a binary message must start with channel 0 (stdin)".into(),
                    ))
                }
            },
            Ok(Message::Text(text)) => match parse(text.as_str()) {
                Err(error) => return Upstream::Bad(error),
                Ok(ClientMessage::StdinEof {}) if stdin_open => {
                    stdin_open = false;
                    sender.finish(FrameKind::Stdin).await
                }
                Ok(ClientMessage::StdinEof {}) => Ok(()),
                Ok(ClientMessage::Signal { signal }) if signals => sender.send(&Request::Signal { signal }).await,
                Ok(ClientMessage::Resize(TermSize { rows, cols })) if resizes => {
                    sender.send(&Request::Resize(TtySize { rows, cols })).await
                }
                Ok(ClientMessage::Start(_)) => {
                    return Upstream::Bad(Error::InvalidArgument("`start` comes once, first, on the exec route".into()))
                }
                Ok(other) => {
                    return Upstream::Bad(Error::InvalidArgument(format!("this stream does not take {other:?}")))
                }
            },
            Ok(Message::Ping(_) | Message::Pong(_)) => Ok(()),
            Ok(Message::Close(_)) | Err(_) => return Upstream::Gone,
        };
        if applied.is_err() {
            // The agent stream ended; the downstream half reports why.
            return std::future::pending().await;
        }
    }
    Upstream::Gone
}

#[cfg(test)]
mod tests {
    use axum::extract::State;
    use axum::routing::get;
    use banger_agent_proto::mux::{Mux, MuxOutput, Role, DEFAULT_WINDOW};
    use banger_api::stream::ExecStart;
    use banger_client::StreamEvent;
    use bytes::Bytes;
    use tokio::sync::mpsc;

    use super::*;

    /// A relay served on a unix socket: each exec WebSocket gets a stream of
    /// `host`, whose guest ends come out of the returned channel.
    struct Harness {
        _dir: tempfile::TempDir,
        client: banger_client::Client,
        guest_streams: mpsc::UnboundedReceiver<Stream>,
    }

    fn carry(mut from: MuxOutput, to: Mux) -> mpsc::UnboundedReceiver<Stream> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(frame) = from.next().await {
                if let Some(stream) = to.receive(frame) {
                    let _ = tx.send(stream);
                }
            }
            to.shut_down("the other side went away");
        });
        rx
    }

    async fn harness(input: Input) -> Harness {
        let (host, host_out) = Mux::new(Role::Host, DEFAULT_WINDOW, DEFAULT_WINDOW);
        let (guest, guest_out) = Mux::new(Role::Guest, DEFAULT_WINDOW, DEFAULT_WINDOW);
        let guest_streams = carry(host_out, guest);
        let _ = carry(guest_out, host.clone());
        let route = move |State(host): State<Mux>, Upgrade(upgrade): Upgrade| async move {
            upgrade.on_upgrade(move |socket| async move {
                let mut client = Client::new(socket);
                let Ok(Some(ClientMessage::Start(start))) = client.first_message(Duration::from_secs(5)).await else {
                    return;
                };
                let stream = host.open().unwrap();
                stream
                    .send(&Request::Exec(banger_agent_proto::ExecRequest { argv: start.argv, ..Default::default() }))
                    .await
                    .unwrap();
                client.tx.send(&ServerMessage::Started { pid: Some(1) }).await;
                relay(client, stream, input, std::future::pending()).await;
            })
        };
        let app = axum::Router::new().route("/v1/vms/{name}/exec", get(route)).with_state(host);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Harness { _dir: dir, client: banger_client::Client::new(path), guest_streams }
    }

    fn start(stdin: bool) -> ExecStart {
        ExecStart { argv: vec!["cat".into()], stdin, ..Default::default() }
    }

    async fn guest_data(stream: &mut Stream) -> Option<Vec<u8>> {
        match stream.recv().await.unwrap()? {
            Event::Data { bytes, fin: false, .. } => Some(bytes.to_vec()),
            Event::Data { fin: true, .. } => None,
            Event::Control(json) => panic!("a control message: {json:?}"),
        }
    }

    #[tokio::test]
    async fn bytes_and_messages_pass_both_ways_in_order() {
        let mut h = harness(Input::Exec { stdin: true }).await;
        let (sender, mut events) = h.client.exec_stream("v", start(true)).await.unwrap();
        let mut guest = h.guest_streams.recv().await.unwrap();
        assert!(matches!(guest.recv().await.unwrap().unwrap().message::<Request>(), Some(Request::Exec(_))));
        assert_eq!(events.next().await.unwrap(), Some(StreamEvent::Started { pid: Some(1) }));

        sender.stdin(b"typed").await.unwrap();
        sender.signal(2).await.unwrap();
        sender.resize(TermSize { rows: 5, cols: 6 }).await.unwrap();
        sender.stdin_eof().await.unwrap();
        assert_eq!(guest_data(&mut guest).await.unwrap(), b"typed");
        assert_eq!(guest.recv().await.unwrap().unwrap().message::<Request>(), Some(Request::Signal { signal: 2 }));
        assert_eq!(
            guest.recv().await.unwrap().unwrap().message::<Request>(),
            Some(Request::Resize(TtySize { rows: 5, cols: 6 }))
        );
        assert_eq!(guest_data(&mut guest).await, None, "stdin_eof is the stream's FIN");

        guest.write(FrameKind::Stdout, Bytes::from_static(b"\x00out\xff")).await.unwrap();
        guest.write(FrameKind::Stderr, Bytes::from_static(b"err")).await.unwrap();
        guest.send(&Reply::Exited { code: None, signal: Some(9) }).await.unwrap();
        assert_eq!(events.next().await.unwrap(), Some(StreamEvent::Stdout(Bytes::from_static(b"\x00out\xff"))));
        assert_eq!(events.next().await.unwrap(), Some(StreamEvent::Stderr(Bytes::from_static(b"err"))));
        assert_eq!(
            events.next().await.unwrap(),
            Some(StreamEvent::Exited { code: None, signal: Some(9), exit_status: 137 })
        );
        assert_eq!(events.next().await.unwrap(), None, "the daemon closes after exited");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_holds_up_the_guest_and_loses_nothing() {
        let mut h = harness(Input::Exec { stdin: false }).await;
        let (_sender, mut events) = h.client.exec_stream("v", start(false)).await.unwrap();
        let mut guest = h.guest_streams.recv().await.unwrap();
        guest.recv().await.unwrap();
        let total = 64 << 20;
        let writer = tokio::spawn(async move {
            let chunk = Bytes::from((0..=255u8).cycle().take(1 << 20).collect::<Vec<u8>>());
            for _ in 0..total >> 20 {
                guest.write(FrameKind::Stdout, chunk.clone()).await.unwrap();
            }
            guest.send(&Reply::Exited { code: Some(0), signal: None }).await.unwrap();
            guest
        });
        // Nothing reads: the guest gets a window and the sockets' buffers through, no more.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!writer.is_finished(), "the guest's writer waits for the client");
        let mut got = 0usize;
        let mut expected = (0..=255u8).cycle();
        loop {
            match events.next().await.unwrap() {
                Some(StreamEvent::Started { .. }) => {}
                Some(StreamEvent::Stdout(data)) => {
                    assert!(data.iter().all(|b| Some(*b) == expected.next()), "bytes in order at {got}");
                    got += data.len();
                }
                Some(StreamEvent::Exited { exit_status, .. }) => {
                    assert_eq!(exit_status, 0);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, total);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_leaves_resets_the_guest_stream() {
        let mut h = harness(Input::Exec { stdin: true }).await;
        let (sender, _events) = h.client.exec_stream("v", start(true)).await.unwrap();
        let mut guest = h.guest_streams.recv().await.unwrap();
        guest.recv().await.unwrap();
        sender.close().await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), guest.recv()).await.unwrap();
        assert!(matches!(seen, Err(MuxError::Reset(_))), "{seen:?}");
    }

    /// A raw WebSocket client, as a browser would be.
    async fn raw(h: &Harness) -> tokio_tungstenite::WebSocketStream<tokio::net::UnixStream> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let stream = tokio::net::UnixStream::connect(h.client.socket()).await.unwrap();
        let request = "ws://bangerd/v1/vms/v/exec".into_client_request().unwrap();
        tokio_tungstenite::client_async(request, stream).await.unwrap().0
    }

    #[tokio::test]
    async fn a_bad_message_is_an_error_and_ends_the_stream() {
        use tokio_tungstenite::tungstenite::Message as Raw;
        for bad in [
            Raw::text(r#"{"type":"start","argv":["again"]}"#),
            Raw::text(r#"{"type":"stdin_eof","now":true}"#),
            Raw::binary(&b"\x01not stdin"[..]),
        ] {
            let mut h = harness(Input::Exec { stdin: true }).await;
            let mut socket = raw(&h).await;
            socket.send(Raw::text(r#"{"type":"start","argv":["cat"],"stdin":true}"#)).await.unwrap();
            let mut guest = h.guest_streams.recv().await.unwrap();
            guest.recv().await.unwrap();
            assert_eq!(socket.next().await.unwrap().unwrap(), Raw::text(r#"{"type":"started","pid":1}"#));
            socket.send(bad.clone()).await.unwrap();
            let Raw::Text(error) = socket.next().await.unwrap().unwrap() else { panic!("an error message") };
            let error: ServerMessage = serde_json::from_str(error.as_str()).unwrap();
            assert!(
                matches!(&error, ServerMessage::Error { code: ErrorCode::InvalidArgument, guest: false, .. }),
                "{bad:?}: {error:?}"
            );
            assert!(matches!(socket.next().await.unwrap().unwrap(), Raw::Close(Some(_))));
            assert!(matches!(guest.recv().await, Err(MuxError::Reset(_))), "the command is hung up");
        }
    }
}
