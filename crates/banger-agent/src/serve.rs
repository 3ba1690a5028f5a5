//! Serving one channel: frames are read and decoded in one loop, which
//! answers the handshake, starts commands, routes stdin and signals, and
//! leaves everything written to the host to the channel's writer task.

use std::sync::Arc;
use std::time::Duration;

use banger_agent_proto::{ExecRequest, Frame, FrameKind, Reply, Request, CONTROL_STREAM, PROTOCOL_VERSION};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::FramedRead;

use crate::decoder::{Decoded, ResyncingDecoder};
use crate::exec::{self, Running, StdinOverflow, Streams};
use crate::init;
use crate::log::log;
use crate::outbox::Writer;
use crate::reaper::Reaper;

/// How often a port with no host connected is read again.
const HOST_POLL: Duration = Duration::from_millis(100);

const READ_CHUNK: usize = 64 * 1024;

/// What every connection shares.
pub(crate) struct Agent {
    pub(crate) reaper: Reaper,
    /// The agent is the guest's init, so it may power the machine off.
    pub(crate) is_init: bool,
}

/// How the channel behaves when the host goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A socket connection: end of stream ends it.
    Connection,
    /// A virtio-serial port: end of stream means no host is connected now;
    /// one may connect later and starts again with a hello.
    Port,
}

/// What a command is told when the host sends stdin faster than it reads.
const STDIN_OVERFLOW: &str = "stdin overflow: the command did not read its input fast enough; input closed";

/// Serves one channel until it ends (a [`Transport::Port`] never does).
pub(crate) async fn serve<R, W>(reader: R, writer: W, transport: Transport, agent: Arc<Agent>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut session =
        Session { agent, writer: Writer::start(writer, transport == Transport::Port), streams: Streams::default() };
    // A port's reads return 0 while no host is connected; FramedRead reads
    // again when polled after such an end, so one reader serves every host.
    let mut frames = FramedRead::with_capacity(reader, ResyncingDecoder::default(), READ_CHUNK);
    let mut host_present = false;
    loop {
        match (frames.next().await, transport) {
            (Some(Ok(decoded)), _) => {
                host_present = true;
                match decoded {
                    Decoded::Frame(frame) => session.handle(frame).await,
                    Decoded::Skipped(n) => log!("skipped {n} bytes that are not a frame"),
                }
            }
            (None, Transport::Connection) => return,
            (Some(Err(e)), Transport::Connection) => {
                log!("reading from the host failed: {e}");
                return;
            }
            (result, Transport::Port) => {
                if let Some(Err(e)) = result {
                    log!("reading the port failed: {e}");
                } else if host_present {
                    log!("the host disconnected from the port");
                }
                host_present = false;
                // No host, no more input: commands waiting for it see its end.
                session.streams.close_stdin();
                // A frame cut short by a departed host must not swallow the next host's hello.
                frames.read_buffer_mut().clear();
                tokio::time::sleep(HOST_POLL).await;
            }
        }
    }
}

/// The state of the channel as the host sees it.
struct Session {
    agent: Arc<Agent>,
    writer: Writer,
    streams: Streams,
}

impl Drop for Session {
    /// The host connection is over (or its handling panicked): its commands
    /// go on running, but no more input will come for them.
    fn drop(&mut self) {
        self.streams.close_stdin();
    }
}

impl Session {
    async fn handle(&mut self, frame: Frame) {
        let stream = frame.stream;
        match frame.kind {
            FrameKind::Control => match serde_json::from_slice::<Request>(&frame.payload) {
                Ok(Request::Hello { protocol }) if stream == CONTROL_STREAM => self.hello(stream, protocol).await,
                Ok(Request::Hello { .. }) => log!("ignoring a hello on stream {stream}: hellos belong on stream 0"),
                Ok(Request::Exec(req)) => self.exec(stream, req).await,
                Ok(Request::Signal { signal }) => self.signal(stream, signal).await,
                Ok(Request::Poweroff) => self.power_off(stream).await,
                Ok(Request::Ping) => self.reply(stream, Reply::Pong).await,
                Err(e) => self.reply(stream, Reply::Error { message: format!("bad request: {e}") }).await,
            },
            FrameKind::Stdin => self.stdin(stream, frame.payload).await,
            FrameKind::Stdout | FrameKind::Stderr => {
                log!("ignoring an output frame from the host on stream {stream}")
            }
        }
    }

    async fn reply(&self, stream: u32, reply: Reply) {
        self.writer.outbox().send(Frame::control(stream, &reply)).await;
    }

    /// Queues input for the command on `stream`. Input beyond
    /// [`exec::STDIN_LIMIT`] closes its stdin: the command goes on running.
    async fn stdin(&mut self, stream: u32, chunk: Vec<u8>) {
        let overflowed = {
            let mut streams = self.streams.lock();
            let Some(running) = streams.get_mut(&stream) else {
                return;
            };
            match running.stdin.as_ref().map(|stdin| stdin.send(chunk)) {
                Some(Err(StdinOverflow)) => running.stdin.take(),
                // Sent, or the input was closed before: dropped.
                Some(Ok(())) | None => None,
            }
        };
        if let Some(stdin) = overflowed {
            stdin.discard();
            log!("stream {stream}: {STDIN_OVERFLOW}");
            self.reply(stream, Reply::Error { message: STDIN_OVERFLOW.into() }).await;
        }
    }

    /// A hello starts a new host connection. Commands of the previous one keep
    /// running (their stdin is closed), but their output is dropped.
    async fn hello(&mut self, stream: u32, protocol: u32) {
        if protocol != PROTOCOL_VERSION {
            log!("the host speaks protocol {protocol}, this agent {PROTOCOL_VERSION}");
        }
        self.writer.next_generation();
        self.streams.close_stdin();
        self.streams = Streams::default();
        let reply = Reply::Hello { protocol: PROTOCOL_VERSION, agent_version: env!("CARGO_PKG_VERSION").into() };
        self.reply(stream, reply).await;
    }

    async fn exec(&mut self, stream: u32, req: ExecRequest) {
        let refusal = if stream == CONTROL_STREAM {
            Some("stream 0 is for the handshake; run commands on a new stream".to_string())
        } else if self.streams.lock().contains_key(&stream) {
            Some(format!("stream {stream} is already running a command"))
        } else {
            None
        };
        if let Some(message) = refusal {
            return self.reply(stream, Reply::Error { message }).await;
        }
        match exec::spawn(&req, &self.agent.reaper) {
            Ok(spawned) => {
                let (stdin, stdin_rx) = exec::stdin_queue();
                self.streams.lock().insert(stream, Running { pid: spawned.pid, stdin: Some(stdin) });
                let (outbox, streams) = (self.writer.outbox(), self.streams.clone());
                tokio::spawn(exec::supervise(stream, spawned, stdin_rx, outbox, streams));
            }
            Err(message) => self.reply(stream, Reply::Error { message }).await,
        }
    }

    /// Signals the command's whole process group, which may outlive the
    /// command itself while its output is drained.
    async fn signal(&self, stream: u32, signal: i32) {
        let Some(pid) = self.streams.lock().get(&stream).map(|r| r.pid) else {
            return; // The command already ended; its Exited is on the way.
        };
        match self.agent.reaper.signal_group(pid, signal) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                let message = format!("cannot send signal {signal} to process {pid}: {e}");
                self.reply(stream, Reply::Error { message }).await;
            }
            _ => {}
        }
    }

    async fn power_off(&self, stream: u32) {
        if !self.agent.is_init {
            // Not init (a host process standing for a guest, in tests): the
            // machine's power-off ends the agent and what it runs, as a
            // guest's power-off ends its VMM. No reply, as from a guest.
            log!("power-off requested: not the guest's init, so the agent ends its commands and exits");
            self.agent.reaper.signal_all_groups(libc::SIGKILL);
            std::process::exit(0);
        }
        let message = match tokio::task::spawn_blocking(init::power_off).await {
            Ok(e) => format!("cannot power off: {e}"),
            Err(e) => format!("cannot power off: {e}"),
        };
        log!("{message}");
        self.reply(stream, Reply::Error { message }).await;
    }
}
