//! The daemon's WebSocket routes that carry a process's bytes (exec,
//! session attach, session logs), over the unix socket; the messages are
//! [`banger_api::stream`]'s. A stream splits into a [`StreamSender`]
//! (stdin, resize, signals; cloneable) and [`StreamEvents`] (output and
//! the end), so input and output move independently.

use std::sync::Arc;

use banger_api::stream::{Channel, ClientMessage, ExecStart, ServerMessage, TermSize, MAX_MESSAGE_BYTES};
use banger_api::ApiError;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::{api_error, segment, Client, ClientError, Result};

type Socket = WebSocketStream<UnixStream>;

/// The largest stdin message sent: bigger input goes as several.
const STDIN_CHUNK: usize = 64 * 1024;

/// What a command did (`Client::exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
}

/// What arrived on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The command runs (or the session is attached).
    Started {
        /// Its process id in the guest.
        pid: Option<u32>,
    },
    /// Output on stdout (all of it under a terminal).
    Stdout(Bytes),
    /// Output on stderr.
    Stderr(Bytes),
    /// No more output comes on stdout (a connection's guest side shut its
    /// writing half).
    StdoutEof,
    /// A failure. Before `Started`: nothing ran, and the stream ends.
    Error {
        /// The code and message.
        error: ApiError,
        /// The guest refused (no such program or session), not the daemon.
        guest: bool,
    },
    /// The process ended.
    Exited {
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal that killed it.
        signal: Option<i32>,
        /// As a shell has it: the code, or 128 + the signal.
        exit_status: i32,
    },
}

/// The sending half of a stream. Each call returns once the message is on
/// the socket, so a writer that outpaces the guest is slowed down.
#[derive(Clone)]
pub struct StreamSender {
    sink: Arc<tokio::sync::Mutex<SplitSink<Socket, Message>>>,
}

impl StreamSender {
    async fn send(&self, message: Message) -> Result<()> {
        self.sink.lock().await.send(message).await.map_err(ClientError::WebSocket)
    }

    async fn control(&self, message: &ClientMessage) -> Result<()> {
        let json = serde_json::to_string(message).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send(Message::text(json)).await
    }

    /// Sends input bytes (any amount; split into messages as needed).
    pub async fn stdin(&self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(STDIN_CHUNK) {
            self.send(Message::binary(Channel::Stdin.message(chunk))).await?;
        }
        Ok(())
    }

    /// Ends the input: the command reads end of file.
    pub async fn stdin_eof(&self) -> Result<()> {
        self.control(&ClientMessage::StdinEof {}).await
    }

    /// The terminal changed size.
    pub async fn resize(&self, size: TermSize) -> Result<()> {
        self.control(&ClientMessage::Resize(size)).await
    }

    /// Sends a signal (a Linux signal number) to the command.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.control(&ClientMessage::Signal { signal }).await
    }

    /// Closes the stream: an exec's command is hung up, an attach detaches.
    pub async fn close(&self) -> Result<()> {
        let mut sink = self.sink.lock().await;
        match sink.close().await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => Ok(()),
            Err(e) => Err(ClientError::WebSocket(e)),
        }
    }
}

/// The receiving half of a stream.
pub struct StreamEvents {
    stream: SplitStream<Socket>,
}

impl StreamEvents {
    /// The next event; `None` once the daemon closed the stream. Read
    /// promptly: output waits in the guest until it is read.
    pub async fn next(&mut self) -> Result<Option<StreamEvent>> {
        loop {
            let Some(message) = self.stream.next().await else { return Ok(None) };
            let message = match message {
                Ok(message) => message,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(None),
                Err(e) => return Err(ClientError::WebSocket(e)),
            };
            match message {
                Message::Binary(data) => match Channel::split(&data) {
                    Some((Channel::Stdout, _)) => return Ok(Some(StreamEvent::Stdout(data.slice(1..)))),
                    Some((Channel::Stderr, _)) => return Ok(Some(StreamEvent::Stderr(data.slice(1..)))),
                    _ => continue,
                },
                Message::Text(text) => {
                    let message: ServerMessage = serde_json::from_str(text.as_str())
                        .map_err(|e| ClientError::Protocol(format!("a stream message: {e}")))?;
                    return Ok(Some(match message {
                        ServerMessage::Started { pid } => StreamEvent::Started { pid },
                        ServerMessage::Exited { code, signal, exit_status } => {
                            StreamEvent::Exited { code, signal, exit_status }
                        }
                        ServerMessage::Error { code, message, guest } => {
                            StreamEvent::Error { error: ApiError { code, message }, guest }
                        }
                        ServerMessage::StdoutEof {} => StreamEvent::StdoutEof,
                        ServerMessage::Unknown => continue,
                    }));
                }
                Message::Close(_) => return Ok(None),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }
}

impl Client {
    /// Opens `path` (a WebSocket route) on the daemon's socket. A route
    /// that refuses before the upgrade answers with an API error.
    pub(crate) async fn websocket(&self, path: &str) -> Result<(StreamSender, StreamEvents)> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Unreachable { socket: self.socket.clone(), source })?;
        let request = format!("ws://bangerd{path}").into_client_request().map_err(ClientError::WebSocket)?;
        let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES + 1));
        let (socket, _) = match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok(answer) => answer,
            Err(tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                return Err(api_error(response.status(), &body));
            }
            Err(e) => return Err(ClientError::WebSocket(e)),
        };
        let (sink, stream) = socket.split();
        Ok((StreamSender { sink: Arc::new(tokio::sync::Mutex::new(sink)) }, StreamEvents { stream }))
    }

    /// `GET /v1/vms/{name}/exec`: starts a command; read its start (or
    /// refusal) and output from the events, feed it through the sender.
    pub async fn exec_stream(&self, name: &str, start: ExecStart) -> Result<(StreamSender, StreamEvents)> {
        let (sender, events) = self.websocket(&format!("/v1/vms/{}/exec", segment(name))).await?;
        sender.control(&ClientMessage::Start(start)).await?;
        Ok((sender, events))
    }

    /// `GET /v1/vms/{name}/connect`: a TCP connection to `port` on the
    /// guest's loopback. Send its bytes with `stdin` (`stdin_eof` shuts
    /// its writing side); the guest's come as `Stdout` events, then
    /// `StdoutEof`. Nothing listening is an error here (`not_found`).
    pub async fn connect(&self, name: &str, port: u16) -> Result<(StreamSender, StreamEvents)> {
        self.websocket(&format!("/v1/vms/{}/connect?port={port}", segment(name))).await
    }

    /// `GET /v1/vms/{name}/sessions/{session}/attach`: the session's
    /// screen and live output; stdin is typed into it unless `read_only`.
    /// Closing the sender detaches.
    pub async fn attach(
        &self,
        name: &str,
        session: &str,
        size: Option<TermSize>,
        read_only: bool,
    ) -> Result<(StreamSender, StreamEvents)> {
        let mut path = format!("/v1/vms/{}/sessions/{}/attach?read_only={read_only}", segment(name), segment(session));
        if let Some(TermSize { rows, cols }) = size {
            path.push_str(&format!("&rows={rows}&cols={cols}"));
        }
        self.websocket(&path).await
    }

    /// `GET /v1/vms/{name}/sessions/{session}/logs`: the session's output
    /// (its last `tail` lines first), live too with `follow`.
    pub async fn session_logs(
        &self,
        name: &str,
        session: &str,
        follow: bool,
        tail: Option<u64>,
    ) -> Result<StreamEvents> {
        let mut path = format!("/v1/vms/{}/sessions/{}/logs?follow={follow}", segment(name), segment(session));
        if let Some(tail) = tail {
            path.push_str(&format!("&tail={tail}"));
        }
        Ok(self.websocket(&path).await?.1)
    }

    /// Runs `argv` in VM `name` with `stdin` as its whole input and
    /// collects its output. A command that could not start is an error
    /// (`not_found` for no such program).
    pub async fn exec(&self, name: &str, argv: &[&str], stdin: &[u8]) -> Result<ExecOutput> {
        let start = ExecStart { argv: argv.iter().map(|s| s.to_string()).collect(), stdin: true, ..Default::default() };
        let (sender, mut events) = self.exec_stream(name, start).await?;
        // Input and output move together: a command that echoes its input
        // would otherwise stall once the output is not read.
        let feed = async {
            sender.stdin(stdin).await?;
            sender.stdin_eof().await
        };
        let collect = async {
            let mut output = ExecOutput { stdout: Vec::new(), stderr: Vec::new(), code: None, signal: None };
            let mut started = false;
            while let Some(event) = events.next().await? {
                match event {
                    StreamEvent::Started { .. } => started = true,
                    StreamEvent::Stdout(data) => output.stdout.extend_from_slice(&data),
                    StreamEvent::Stderr(data) => output.stderr.extend_from_slice(&data),
                    StreamEvent::Error { error, .. } if !started => return Err(ClientError::Api(error)),
                    StreamEvent::Error { .. } | StreamEvent::StdoutEof => {}
                    StreamEvent::Exited { code, signal, .. } => {
                        output.code = code;
                        output.signal = signal;
                        return Ok(output);
                    }
                }
            }
            Err(ClientError::Protocol("the exec stream closed before the command ended".into()))
        };
        tokio::pin!(collect);
        tokio::select! {
            result = &mut collect => result,
            fed = feed => match fed {
                // The command may end (or fail to start) before it read
                // all its input; its events say what happened.
                Ok(()) | Err(_) => collect.await,
            },
        }
    }
}
