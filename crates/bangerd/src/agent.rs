//! The host side of the guest agent protocol: one connection per VM (a
//! virtio-serial chardev accepts a single client) carrying many streams,
//! each with its own flow-control window ([`banger_agent_proto::mux`]).
//! The handshake negotiates the version; a keepalive notices an agent that
//! stopped answering within seconds and ends the connection, so the
//! supervisor connects again (and says hello to the agent that came back).

use std::sync::Arc;
use std::time::Duration;

use banger_agent_proto::mux::{self, Event, Mux, MuxError, Role, Stream};
use banger_agent_proto::{
    self as proto, Frame, FrameCodec, FrameKind, Hello, Reply, Request, CONTROL_STREAM, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use banger_vmm::AgentEndpoint;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite};

/// How long one hello waits for an answer before it is sent again (a
/// hello written before the guest opened its port is lost).
pub const HELLO_RETRY: Duration = Duration::from_millis(250);

/// A connection this quiet is pinged...
const QUIET: Duration = Duration::from_secs(1);

/// ...and one this quiet is dead: the agent stopped answering.
const DEAD_AFTER: Duration = Duration::from_secs(10);

/// Why the agent could not be reached or spoken to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No answer in time.
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent speaks no version we speak.
    #[error(
        "the guest agent speaks protocol {agent}, bangerd speaks {oldest} to {newest}: restart the VM to give it this banger's agent"
    )]
    Version {
        /// What the agent speaks, as it said.
        agent: String,
        /// Our oldest.
        oldest: u32,
        /// Our newest.
        newest: u32,
    },
    /// The agent refused our hello: it speaks none of our versions.
    #[error(
        "the guest agent does not speak bangerd's protocol {oldest} to {newest} (it said: {said}): restart the VM to give it this banger's agent"
    )]
    VersionRefused {
        /// The agent's words.
        said: String,
        /// Our oldest.
        oldest: u32,
        /// Our newest.
        newest: u32,
    },
    /// The connection broke.
    #[error("the connection to the guest agent closed")]
    Closed,
    /// A stream failed.
    #[error(transparent)]
    Stream(#[from] MuxError),
    /// The agent answered a request with an error.
    #[error("{message}")]
    Refused {
        /// What kind of failure.
        kind: proto::ErrorKind,
        /// The agent's words.
        message: String,
    },
    /// The agent answered with something the request does not expect.
    #[error("the guest agent answered unexpectedly: {0}")]
    Unexpected(String),
    /// A frame could not be read or written.
    #[error("guest agent protocol error")]
    Protocol(#[from] proto::ProtocolError),
}

/// A live, handshaken connection to one guest's agent.
pub struct AgentConn {
    mux: Mux,
    /// Held for its `Drop`: closing the connection when this goes.
    _tasks: Tasks,
    /// The agent's build version.
    pub agent_version: String,
    /// The protocol version in use.
    pub protocol: u32,
    /// What the agent offered.
    pub features: Vec<String>,
}

/// The tasks that own the socket's halves. Dropping this closes the
/// connection, which matters: a VMM's chardev serves one client at a time.
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl AgentConn {
    /// Connects and handshakes, retrying until `timeout` (the guest may
    /// still be booting, or the VMM still creating its socket).
    pub async fn connect(endpoint: &AgentEndpoint, timeout: Duration) -> Result<Arc<AgentConn>, AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stream = match endpoint.connect().await {
                Ok(stream) => stream,
                Err(e) => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::debug!(error = %e, "agent socket never accepted");
                        return Err(AgentError::Timeout(timeout));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match Self::handshake(stream, deadline, timeout).await {
                Err(AgentError::Closed) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn handshake<S>(
        stream: S,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Arc<AgentConn>, AgentError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        // FramedRead keeps a partly read frame across a timed-out wait.
        let mut frames = FramedRead::new(reader, FrameCodec::new());
        let mut sink = FramedWrite::new(writer, FrameCodec::new());
        let ours = Hello::ours();
        let hello = Frame::control(CONTROL_STREAM, &Request::Hello(ours.clone()));
        let theirs = loop {
            sink.send(&hello).await.map_err(|_| AgentError::Closed)?;
            let wait = HELLO_RETRY.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, answer_to_hello(&mut frames)).await {
                Ok(answer) => break answer?,
                Err(_) if tokio::time::Instant::now() >= deadline => return Err(AgentError::Timeout(timeout)),
                Err(_) => continue,
            }
        };
        let protocol = theirs.protocol;
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol) {
            let agent = protocol.to_string();
            return Err(AgentError::Version { agent, oldest: MIN_PROTOCOL_VERSION, newest: PROTOCOL_VERSION });
        }
        let peer_window = theirs.window.unwrap_or(mux::DEFAULT_WINDOW);
        let (mux, mut output) = Mux::new(Role::Host, mux::DEFAULT_WINDOW, peer_window);

        let writer_mux = mux.clone();
        let writer = tokio::spawn(async move {
            while let Some(frame) = output.next().await {
                if sink.send(frame).await.is_err() {
                    break;
                }
            }
            writer_mux.shut_down("the connection to the guest agent closed");
        });
        // One reader for the connection's whole life.
        let reader_mux = mux.clone();
        let reader = tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = frames.next() => frame,
                    // Shut down (the keepalive gave up): the socket must
                    // close, or the chardev would not take the next connection.
                    () = reader_mux.gone() => break,
                };
                let Some(Ok(frame)) = frame else { break };
                if let Some(stream) = reader_mux.receive(frame) {
                    // bangerd serves no streams the guest opens (yet).
                    drop(stream);
                }
            }
            reader_mux.shut_down("the connection to the guest agent closed");
        });
        let keepalive = tokio::spawn(keepalive(mux.clone()));
        let tasks = Tasks(vec![reader.abort_handle(), writer.abort_handle(), keepalive.abort_handle()]);
        Ok(Arc::new(AgentConn {
            mux,
            _tasks: tasks,
            agent_version: theirs.agent_version.unwrap_or_default(),
            protocol,
            features: theirs.features,
        }))
    }

    /// Whether the connection has broken.
    pub fn is_closed(&self) -> bool {
        self.mux.is_gone()
    }

    /// Opens a new stream; its first message says what it is for.
    pub fn open(&self) -> Result<Stream, AgentError> {
        Ok(self.mux.open()?)
    }

    /// Opens a stream, sends `request` on it and waits for the first reply;
    /// an `error` reply is [`AgentError::Refused`]. The stream stays open
    /// for what follows (data, more replies).
    pub async fn request(&self, request: &Request) -> Result<(Reply, Stream), AgentError> {
        let mut stream = self.open()?;
        stream.send(request).await?;
        let reply = next_reply(&mut stream).await?;
        Ok((reply, stream))
    }

    /// Pings the agent and waits for its pong (the caller bounds the wait).
    pub async fn ping(&self) -> Result<Duration, AgentError> {
        Ok(self.mux.ping().await?)
    }

    /// Asks the guest to power off; the VM ends without a reply.
    pub async fn poweroff(&self) {
        if let Ok(stream) = self.open() {
            // Dropping the stream resets it after the request is sent.
            let _ = stream.send(&Request::Poweroff).await;
        }
    }
}

/// Waits for the agent's hello on stream 0. An `error` there comes from an
/// agent that could not read our hello: one of protocol version 1.
async fn answer_to_hello<R: AsyncRead + Unpin>(frames: &mut FramedRead<R, FrameCodec>) -> Result<Hello, AgentError> {
    loop {
        let frame = frames.next().await.ok_or(AgentError::Closed)??;
        if frame.stream != CONTROL_STREAM || frame.kind != FrameKind::Control {
            continue;
        }
        match frame.message::<Reply>() {
            Ok(Reply::Hello(hello)) => return Ok(hello),
            Ok(Reply::Error { message, .. }) => {
                return Err(AgentError::VersionRefused {
                    said: message,
                    oldest: MIN_PROTOCOL_VERSION,
                    newest: PROTOCOL_VERSION,
                })
            }
            _ => continue,
        }
    }
}

/// The next control reply on a stream (data before it is skipped); an
/// `error` is [`AgentError::Refused`].
pub async fn next_reply(stream: &mut Stream) -> Result<Reply, AgentError> {
    loop {
        match stream.recv().await? {
            None => return Err(AgentError::Closed),
            Some(event @ Event::Control(_)) => match event.message::<Reply>() {
                Some(Reply::Error { message, kind }) => return Err(AgentError::Refused { kind, message }),
                Some(reply) => return Ok(reply),
                None => return Err(AgentError::Unexpected("a control message that is not a reply".into())),
            },
            Some(Event::Data { .. }) => continue,
        }
    }
}

/// Pings a quiet connection, and ends one silent for [`DEAD_AFTER`]: the
/// agent died or restarted (a new agent waits for a new hello).
async fn keepalive(mux: Mux) {
    let mut ticks = tokio::time::interval(QUIET);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let silent = mux.last_heard().elapsed();
        if silent >= DEAD_AFTER {
            tracing::warn!(silent_s = silent.as_secs(), "the guest agent stopped answering; closing its connection");
            mux.shut_down("the guest agent stopped answering");
            return;
        }
        if silent >= QUIET {
            let ping = mux.clone();
            tokio::spawn(async move { tokio::time::timeout(DEAD_AFTER, ping.ping()).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A stand-in agent on a unix socket that answers the hello with `answer`.
    async fn answering(answer: Reply) -> (tempfile::TempDir, AgentEndpoint) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let hello = proto::read_frame(&mut stream).await.unwrap().unwrap();
            assert!(matches!(hello.message::<Request>(), Ok(Request::Hello(_))));
            proto::write_frame(&mut stream, &Frame::control(CONTROL_STREAM, &answer)).await.unwrap();
            // Keep the connection open while the test looks at it.
            let _ = proto::read_frame(&mut stream).await;
        });
        (dir, AgentEndpoint::Unix(path))
    }

    fn hello_reply(protocol: u32) -> Reply {
        Reply::Hello(Hello { protocol, agent_version: Some("test".into()), ..Hello::ours() })
    }

    #[tokio::test]
    async fn agents_of_other_protocol_versions_are_refused_clearly() {
        // A version-1 agent cannot parse a version-2 hello and says so.
        let v1 = Reply::Error { message: "bad control message".into(), kind: Default::default() };
        for answer in [hello_reply(PROTOCOL_VERSION + 1), hello_reply(1), v1] {
            let (_dir, endpoint) = answering(answer).await;
            let error = AgentConn::connect(&endpoint, Duration::from_secs(5)).await.err().expect("refused");
            assert!(matches!(error, AgentError::Version { .. } | AgentError::VersionRefused { .. }), "{error}");
            assert!(error.to_string().contains("restart the VM"), "{error}");
        }
    }

    #[tokio::test]
    async fn an_agent_of_our_version_is_accepted() {
        let (_dir, endpoint) = answering(hello_reply(PROTOCOL_VERSION)).await;
        let conn = AgentConn::connect(&endpoint, Duration::from_secs(5)).await.expect("accepted");
        assert_eq!(conn.agent_version, "test");
        assert_eq!(conn.protocol, PROTOCOL_VERSION);
        assert!(!conn.is_closed());
    }

    /// A stand-in agent speaking version 2: it starts every exec and hands
    /// the streams to the test.
    async fn exec_agent() -> (tempfile::TempDir, Arc<AgentConn>, mpsc::UnboundedReceiver<Stream>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, writer) = stream.into_split();
            let mut frames = FramedRead::new(reader, FrameCodec::new());
            let mut sink = FramedWrite::new(writer, FrameCodec::new());
            frames.next().await.unwrap().unwrap();
            sink.send(Frame::control(CONTROL_STREAM, &hello_reply(PROTOCOL_VERSION))).await.unwrap();
            let (mux, mut output) = Mux::new(Role::Guest, mux::DEFAULT_WINDOW, mux::DEFAULT_WINDOW);
            tokio::spawn(async move {
                while let Some(frame) = output.next().await {
                    sink.send(frame).await.unwrap();
                }
            });
            while let Some(Ok(frame)) = frames.next().await {
                if let Some(mut stream) = mux.receive(frame) {
                    stream.recv().await.unwrap();
                    stream.send(&Reply::Started { pid: 7 }).await.unwrap();
                    let _ = streams_tx.send(stream);
                }
            }
        });
        let conn = AgentConn::connect(&AgentEndpoint::Unix(path), Duration::from_secs(5)).await.unwrap();
        (dir, conn, streams)
    }

    #[tokio::test]
    async fn requests_get_their_reply_and_errors_are_refusals() {
        let (_dir, agent, _streams) = exec_agent().await;
        let (reply, _stream) = agent.request(&Request::Exec(Default::default())).await.unwrap();
        assert_eq!(reply, Reply::Started { pid: 7 });
        assert!(agent.ping().await.unwrap() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn silence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = AgentEndpoint::Unix(dir.path().join("nobody.sock"));
        let error = AgentConn::connect(&endpoint, Duration::from_millis(300)).await.err().expect("times out");
        assert!(matches!(error, AgentError::Timeout(_)), "{error}");
    }
}
