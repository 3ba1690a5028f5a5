//! The host side of the guest agent protocol: one connection per VM (a
//! virtio-serial chardev accepts a single client), multiplexed by stream
//! id so execs run side by side. The handshake checks the protocol version.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_agent_proto::{self as proto, Frame, Reply, Request, CONTROL_STREAM, PROTOCOL_VERSION};
use banger_vmm::AgentEndpoint;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Frames one stream may have waiting for its reader (each at most 32 KiB
/// from the agent, so about 16 MiB).
const STREAM_BUFFER: usize = 512;

/// How long one hello waits for an answer before it is sent again.
const HELLO_RETRY: Duration = Duration::from_millis(250);

/// Why the agent could not be reached or spoken to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No answer in time.
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent speaks another protocol version.
    #[error("the guest agent speaks protocol version {agent}, bangerd speaks {ours}: rebuild the image with this banger's agent")]
    Version {
        /// The agent's version.
        agent: u32,
        /// Ours.
        ours: u32,
    },
    /// The connection broke.
    #[error("the connection to the guest agent closed")]
    Closed,
    /// A frame could not be read or written.
    #[error("guest agent protocol error")]
    Protocol(#[from] proto::ProtocolError),
}

/// A live, handshaken connection to one guest's agent.
pub struct AgentConn {
    writer: mpsc::Sender<Frame>,
    streams: Arc<Mutex<HashMap<u32, mpsc::Sender<Frame>>>>,
    next_stream: AtomicU32,
    closed: Arc<AtomicBool>,
    /// What the agent sends on stream 0 after the handshake: answers to pings.
    control: tokio::sync::Mutex<mpsc::UnboundedReceiver<Frame>>,
    /// Held for its `Drop`: closing the connection when this goes.
    _tasks: Tasks,
    /// The agent's build version.
    pub agent_version: String,
}

/// The tasks that own the socket's halves. Dropping this closes the
/// connection, which matters: a VMM's chardev serves one client at a time.
struct Tasks {
    reader: tokio::task::AbortHandle,
    writer: tokio::task::AbortHandle,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// One logical stream on the connection.
pub struct AgentStream {
    /// Its id.
    pub id: u32,
    /// Frames the agent sends on it.
    pub frames: mpsc::Receiver<Frame>,
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
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Frame>(256);
        let streams: Arc<Mutex<HashMap<u32, mpsc::Sender<Frame>>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));

        let writer_closed = Arc::clone(&closed);
        let writer_task = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if proto::write_frame(&mut writer, &frame).await.is_err() {
                    break;
                }
            }
            writer_closed.store(true, Ordering::SeqCst);
        });
        // One reader for the connection's whole life: the handshake never
        // cancels a read halfway through a frame. Stream 0 goes to the
        // handshake; other streams to whoever opened them.
        let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Frame>();
        let routes = Arc::clone(&streams);
        let reader_closed = Arc::clone(&closed);
        let writer_abort = writer_task.abort_handle();
        let reader_task = tokio::spawn(async move {
            while let Ok(Some(frame)) = proto::read_frame(&mut reader).await {
                if frame.stream == CONTROL_STREAM {
                    let _ = control_tx.send(frame);
                    continue;
                }
                let route = routes.lock().unwrap_or_else(|e| e.into_inner()).get(&frame.stream).cloned();
                if let Some(route) = route {
                    // A stream whose reader is far behind holds the others
                    // up rather than grow the daemon's memory without end.
                    let _ = route.send(frame).await;
                }
            }
            reader_closed.store(true, Ordering::SeqCst);
            // The socket closes only when both halves go; a chardev serves
            // one client at a time, so a dead reader must not keep it.
            writer_abort.abort();
            // Dropping the senders ends every open stream.
            routes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        let tasks = Tasks { reader: reader_task.abort_handle(), writer: writer_task.abort_handle() };

        let hello = Frame::control(CONTROL_STREAM, &Request::Hello { protocol: PROTOCOL_VERSION });
        let agent_version = loop {
            tx.send(hello.clone()).await.map_err(|_| AgentError::Closed)?;
            let wait = HELLO_RETRY.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let answered = tokio::time::timeout(wait, async {
                loop {
                    let frame = control_rx.recv().await.ok_or(AgentError::Closed)?;
                    if let Ok(Reply::Hello { protocol, agent_version }) = frame.message::<Reply>() {
                        if protocol != PROTOCOL_VERSION {
                            return Err(AgentError::Version { agent: protocol, ours: PROTOCOL_VERSION });
                        }
                        return Ok(agent_version);
                    }
                }
            })
            .await;
            match answered {
                Ok(result) => break result?,
                Err(_) if tokio::time::Instant::now() >= deadline => return Err(AgentError::Timeout(timeout)),
                Err(_) => continue,
            }
        };
        Ok(Arc::new(AgentConn {
            writer: tx,
            streams,
            next_stream: AtomicU32::new(1),
            closed,
            control: tokio::sync::Mutex::new(control_rx),
            _tasks: tasks,
            agent_version,
        }))
    }

    /// Whether the connection has broken.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Opens a new logical stream.
    pub fn open(&self) -> AgentStream {
        let id = self.next_stream.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        AgentStream { id, frames: rx }
    }

    /// Forgets a stream once its exchange is over.
    pub fn close(&self, id: u32) {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Pings the agent and waits for its answer (a `pong`, or an `error`
    /// from an agent that predates pings): the caller bounds the wait.
    pub async fn ping(&self) -> Result<(), AgentError> {
        let mut control = self.control.lock().await;
        // An answer to an earlier ping that timed out is not this one's.
        while control.try_recv().is_ok() {}
        self.send(Frame::control(CONTROL_STREAM, &Request::Ping)).await?;
        loop {
            let frame = control.recv().await.ok_or(AgentError::Closed)?;
            if matches!(frame.message::<Reply>(), Ok(Reply::Pong | Reply::Error { .. })) {
                return Ok(());
            }
        }
    }

    /// Asks the guest to power off; the VM ends without a reply.
    pub async fn poweroff(&self) {
        let stream = self.open();
        let _ = self.send(Frame::control(stream.id, &Request::Poweroff)).await;
        self.close(stream.id);
    }

    /// Sends a frame.
    pub async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        self.writer.send(frame).await.map_err(|_| AgentError::Closed)
    }
}

/// How long a command whose client went away gets after SIGHUP, and
/// again after SIGKILL, to report that it ended.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// Relays one exec between a client connection (which speaks the frame
/// protocol as a host would: an `exec` control frame first, then stdin and
/// signals) and the agent, renumbering streams both ways. Only stdin and
/// signals pass upstream: a client cannot say hello or power the VM off
/// through its exec. Ends when the agent reports the command ended (or
/// failed to start). A client that goes away first hangs the command up.
pub async fn relay_exec<C>(agent: Arc<AgentConn>, client: C) -> Result<(), AgentError>
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let first = proto::read_frame(&mut client_rx).await?.ok_or(AgentError::Closed)?;
    let client_stream = first.stream;
    if !matches!(first.message::<Request>(), Ok(Request::Exec(_))) {
        let error = Reply::Error { message: "the first frame must be an exec request".into() };
        proto::write_frame(&mut client_tx, &Frame::control(client_stream, &error)).await?;
        return Ok(());
    }
    let mut stream = agent.open();
    let agent_stream = stream.id;
    agent.send(Frame { stream: agent_stream, ..first }).await?;

    let upstream_agent = Arc::clone(&agent);
    // Ends with whether the client had closed stdin before it stopped
    // sending: then its end of stream is a half-close, not a departure.
    let mut upstream = tokio::spawn(async move {
        let mut stdin_closed = false;
        while let Ok(Some(frame)) = proto::read_frame(&mut client_rx).await {
            let allowed = match frame.kind {
                proto::FrameKind::Stdin => {
                    stdin_closed |= frame.payload.is_empty();
                    true
                }
                proto::FrameKind::Control => matches!(frame.message::<Request>(), Ok(Request::Signal { .. })),
                _ => false,
            };
            if allowed && upstream_agent.send(Frame { stream: agent_stream, ..frame }).await.is_err() {
                break;
            }
        }
        stdin_closed
    });

    let mut started = false;
    let mut client_gone = false;
    let mut upstream_done = false;
    let result = loop {
        tokio::select! {
            frame = stream.frames.recv() => {
                let Some(frame) = frame else {
                    if !client_gone {
                        let error = Reply::Error { message: "the connection to the guest agent closed".into() };
                        let _ = proto::write_frame(&mut client_tx, &Frame::control(client_stream, &error)).await;
                    }
                    break Err(AgentError::Closed);
                };
                let reply = (frame.kind == proto::FrameKind::Control).then(|| frame.message::<Reply>().ok()).flatten();
                started |= matches!(reply, Some(Reply::Started { .. }));
                // An error before the start means the command never ran;
                // after it (a refused signal, say) the command still runs.
                let last = matches!(reply, Some(Reply::Exited { .. })) || (!started && matches!(reply, Some(Reply::Error { .. })));
                if !client_gone && proto::write_frame(&mut client_tx, &Frame { stream: client_stream, ..frame }).await.is_err() {
                    client_gone = true;
                    hang_up(&agent, agent_stream).await;
                }
                if last {
                    break Ok(());
                }
            }
            half_closed = &mut upstream, if !upstream_done => {
                upstream_done = true;
                if !matches!(half_closed, Ok(true)) {
                    client_gone = true;
                    hang_up(&agent, agent_stream).await;
                }
            }
        }
    };
    upstream.abort();
    agent.close(agent_stream);
    result
}

/// The client left before its command ended: SIGHUP now, SIGKILL if it is
/// still there after a grace period (the relay keeps waiting for `exited`).
async fn hang_up(agent: &Arc<AgentConn>, stream: u32) {
    let signal = move |signal| Frame::control(stream, &Request::Signal { signal });
    let _ = agent.send(signal(libc::SIGHUP)).await;
    let agent = Arc::clone(agent);
    tokio::spawn(async move {
        tokio::time::sleep(HANGUP_GRACE).await;
        if agent.streams.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&stream) {
            let _ = agent.send(signal(libc::SIGKILL)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in agent on a unix socket that answers hello with `protocol`.
    async fn fake_agent(protocol: u32) -> (tempfile::TempDir, AgentEndpoint) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let hello = proto::read_frame(&mut stream).await.unwrap().unwrap();
            assert!(matches!(hello.message::<Request>(), Ok(Request::Hello { .. })));
            let reply = Reply::Hello { protocol, agent_version: "test".into() };
            proto::write_frame(&mut stream, &Frame::control(CONTROL_STREAM, &reply)).await.unwrap();
            // Keep the connection open while the test looks at it.
            let _ = proto::read_frame(&mut stream).await;
        });
        (dir, AgentEndpoint::Unix(path))
    }

    #[tokio::test]
    async fn an_agent_of_another_protocol_version_is_refused() {
        let (_dir, endpoint) = fake_agent(PROTOCOL_VERSION + 1).await;
        let error = AgentConn::connect(&endpoint, Duration::from_secs(5)).await.err().expect("refused");
        assert!(matches!(error, AgentError::Version { .. }), "{error}");
        assert!(error.to_string().contains("rebuild the image"), "{error}");
    }

    #[tokio::test]
    async fn an_agent_of_our_version_is_accepted() {
        let (_dir, endpoint) = fake_agent(PROTOCOL_VERSION).await;
        let conn = AgentConn::connect(&endpoint, Duration::from_secs(5)).await.expect("accepted");
        assert_eq!(conn.agent_version, "test");
        assert!(!conn.is_closed());
    }

    /// A stand-in agent that starts every exec and reports each frame it
    /// gets; it answers `exited` when told to through `finish`.
    async fn exec_agent() -> (tempfile::TempDir, Arc<AgentConn>, mpsc::UnboundedReceiver<Frame>, mpsc::Sender<u32>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (seen_tx, seen_rx) = mpsc::unbounded_channel();
        let (finish_tx, mut finish_rx) = mpsc::channel::<u32>(1);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut reader, mut writer) = tokio::io::split(stream);
            loop {
                tokio::select! {
                    frame = proto::read_frame(&mut reader) => {
                        let Ok(Some(frame)) = frame else { return };
                        let reply = match frame.message::<Request>() {
                            Ok(Request::Hello { .. }) => Some(Reply::Hello { protocol: PROTOCOL_VERSION, agent_version: "t".into() }),
                            Ok(Request::Exec(_)) => Some(Reply::Started { pid: 7 }),
                            _ => None,
                        };
                        if let Some(reply) = reply {
                            proto::write_frame(&mut writer, &Frame::control(frame.stream, &reply)).await.unwrap();
                        }
                        let _ = seen_tx.send(frame);
                    }
                    Some(stream) = finish_rx.recv() => {
                        let exited = Reply::Exited { code: Some(0), signal: None };
                        proto::write_frame(&mut writer, &Frame::control(stream, &exited)).await.unwrap();
                    }
                }
            }
        });
        let conn = AgentConn::connect(&AgentEndpoint::Unix(path), Duration::from_secs(5)).await.unwrap();
        (dir, conn, seen_rx, finish_tx)
    }

    fn exec_frame() -> Frame {
        Frame::control(1, &Request::Exec(proto::ExecRequest { argv: vec!["cat".into()], env: vec![], cwd: None }))
    }

    async fn next_signal(seen: &mut mpsc::UnboundedReceiver<Frame>, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, async {
            loop {
                let frame = seen.recv().await?;
                if let Ok(Request::Signal { signal }) = frame.message::<Request>() {
                    return Some(signal);
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    #[tokio::test]
    async fn a_client_that_leaves_hangs_its_command_up() {
        let (_dir, agent, mut seen, _finish) = exec_agent().await;
        let (client, relay_side) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(relay_exec(Arc::clone(&agent), relay_side));
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        proto::write_frame(&mut client_tx, &exec_frame()).await.unwrap();
        let started = proto::read_frame(&mut client_rx).await.unwrap().unwrap();
        assert!(matches!(started.message::<Reply>(), Ok(Reply::Started { .. })));
        drop((client_rx, client_tx));
        assert_eq!(next_signal(&mut seen, Duration::from_secs(2)).await, Some(libc::SIGHUP));
        relay.abort();
    }

    #[tokio::test]
    async fn a_client_that_only_closed_its_input_is_not_hung_up() {
        let (_dir, agent, mut seen, finish) = exec_agent().await;
        let (client, relay_side) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(relay_exec(Arc::clone(&agent), relay_side));
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        proto::write_frame(&mut client_tx, &exec_frame()).await.unwrap();
        proto::write_frame(&mut client_tx, &Frame::data(1, proto::FrameKind::Stdin, Vec::new())).await.unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut client_tx).await.unwrap();
        assert_eq!(next_signal(&mut seen, Duration::from_millis(500)).await, None, "no hang-up for a half-close");
        finish.send(1).await.unwrap();
        let mut last = None;
        while let Ok(Some(frame)) = proto::read_frame(&mut client_rx).await {
            last = frame.message::<Reply>().ok();
        }
        assert_eq!(last, Some(Reply::Exited { code: Some(0), signal: None }));
        relay.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn silence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = AgentEndpoint::Unix(dir.path().join("nobody.sock"));
        let error = AgentConn::connect(&endpoint, Duration::from_millis(300)).await.err().expect("times out");
        assert!(matches!(error, AgentError::Timeout(_)), "{error}");
    }
}
