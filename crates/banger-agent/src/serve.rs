//! Serving one channel: a reader loop cuts frames, answers each host's
//! hello and feeds every other frame to the current host's multiplexer; a
//! writer task owns the write side. Each hello starts a new generation: a
//! fresh [`Mux`] for the host that said it, the previous one shut down (its
//! commands hung up), so frames meant for an old host never reach a new one.

use std::sync::Arc;
use std::time::Duration;

use banger_agent_proto::mux::{self, Mux, MuxOutput, Role};
use banger_agent_proto::{ErrorKind, Frame, FrameCodec, FrameKind, Hello, Reply, Request, CONTROL_STREAM};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::decoder::{Decoded, ResyncingDecoder};
use crate::log::log;
use crate::reaper::Reaper;
use crate::requests;
use crate::session::Sessions;

/// How often a port with no host connected is read again.
const HOST_POLL: Duration = Duration::from_millis(100);

const READ_CHUNK: usize = 64 * 1024;

/// What every connection shares.
pub(crate) struct Agent {
    pub(crate) reaper: Reaper,
    /// The agent is the guest's init, so it may power the machine off.
    pub(crate) is_init: bool,
    /// Sessions outlive every connection.
    pub(crate) sessions: Sessions,
    /// The one protocol version to speak, when not this build's range.
    pub(crate) protocol: Option<u32>,
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

/// Serves one channel until it ends (a [`Transport::Port`] never does).
pub(crate) async fn serve<R, W>(reader: R, writer: W, transport: Transport, agent: Arc<Agent>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (switches, switched) = mpsc::channel(4);
    tokio::spawn(write_frames(writer, switched, transport));
    let mut host = Host { agent, mux: None, switches, strays: 0, taken: 0 };
    // A port's reads return 0 while no host is connected; FramedRead reads
    // again when polled after such an end, so one reader serves every host.
    let mut frames = FramedRead::with_capacity(reader, ResyncingDecoder::default(), READ_CHUNK);
    let mut host_present = false;
    loop {
        match (frames.next().await, transport) {
            (Some(Ok(decoded)), _) => {
                host_present = true;
                match decoded {
                    Decoded::Frame(frame) => host.handle(frame).await,
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
                host.end_generation("the host disconnected");
                // A frame cut short by a departed host must not swallow the next host's hello.
                frames.read_buffer_mut().clear();
                tokio::time::sleep(HOST_POLL).await;
            }
        }
    }
}

/// What the writer writes next: the answer to a hello, and the output of
/// the multiplexer it started (none when the hello was refused).
struct Switch {
    answer: Frame,
    output: Option<MuxOutput>,
}

/// The host on the other end of the channel, as far as the reader knows it.
struct Host {
    agent: Arc<Agent>,
    /// The current generation's multiplexer, once a host said hello.
    mux: Option<Mux>,
    switches: mpsc::Sender<Switch>,
    /// Frames that came with no generation to take them (logged once per gap).
    strays: u64,
    /// Frames the current generation took: a hello repeated before any
    /// (a host retrying while the guest boots) is not logged again.
    taken: u64,
}

impl Drop for Host {
    /// The connection is over (or its handling panicked): its streams end,
    /// and the commands still running on them are hung up.
    fn drop(&mut self) {
        self.end_generation("the connection to the host ended");
    }
}

impl Host {
    async fn handle(&mut self, frame: Frame) {
        if frame.stream == CONTROL_STREAM && frame.kind == FrameKind::Control {
            return match frame.message::<Request>() {
                Ok(Request::Hello(hello)) => self.hello(hello).await,
                Ok(other) => log!("ignoring {other:?} on stream 0, which is for the handshake"),
                Err(e) => log!("ignoring a bad message on stream 0: {e}"),
            };
        }
        let Some(mux) = &self.mux else {
            if self.strays == 0 {
                log!("frames before any hello (for an earlier agent or host) are dropped");
            }
            self.strays += 1;
            return;
        };
        self.taken += 1;
        if let Some(mut stream) = mux.receive(frame) {
            // Taken now, before a reset right behind it can discard it: a
            // request sent and abandoned (a power-off) is still carried out.
            let first = stream.recv().now_or_never();
            tokio::spawn(requests::serve(stream, first, self.agent.clone()));
        }
    }

    /// A hello starts a new generation whether it is accepted or not: it
    /// comes from a new host, so the previous host's streams end.
    async fn hello(&mut self, theirs: Hello) {
        let repeated = self.mux.is_some() && self.taken == 0;
        self.end_generation("a new host said hello");
        self.strays = 0;
        self.taken = 0;
        let mut ours = Hello::ours();
        if let Some(only) = self.agent.protocol {
            (ours.protocol, ours.min_protocol) = (only, Some(only));
        }
        let switch = match ours.negotiate(&theirs) {
            Some(protocol) => {
                let peer_window = theirs.window.unwrap_or(mux::DEFAULT_WINDOW);
                let window = ours.window.unwrap_or(mux::DEFAULT_WINDOW);
                let (mux, output) = Mux::new(Role::Guest, window, peer_window);
                self.mux = Some(mux);
                if !repeated {
                    log!("a host said hello; speaking protocol {protocol}");
                }
                // All of ours: each side uses those both offer.
                let hello = Hello { protocol, agent_version: Some(env!("CARGO_PKG_VERSION").into()), ..ours };
                Switch { answer: Frame::control(CONTROL_STREAM, &Reply::Hello(hello)), output: Some(output) }
            }
            None => {
                let message = version_mismatch(&ours, &theirs);
                log!("{message}");
                let refusal = Reply::Error { message, kind: ErrorKind::Unsupported };
                Switch { answer: Frame::control(CONTROL_STREAM, &refusal), output: None }
            }
        };
        // Only fails once the writer is gone, and then nothing can be said.
        let _ = self.switches.send(switch).await;
    }

    fn end_generation(&mut self, reason: &str) {
        if let Some(mux) = self.mux.take() {
            mux.shut_down(reason);
        }
    }
}

/// The refusal of a host with no version in common, naming both ranges.
fn version_mismatch(ours: &Hello, theirs: &Hello) -> String {
    let range = |min: u32, max: u32| if min == max { format!("{max}") } else { format!("{min} to {max}") };
    let host = range(theirs.min_protocol.unwrap_or(theirs.protocol), theirs.protocol);
    format!(
        "the host speaks agent protocol {host}, this agent (banger-agent {}) speaks {}: \
         restart the VM with the banger that runs it, so it gets that banger's agent",
        env!("CARGO_PKG_VERSION"),
        range(ours.min_protocol.unwrap_or(ours.protocol), ours.protocol),
    )
}

/// Owns the write side: writes each generation's frames, starting with the
/// answer to its hello; a newer generation replaces an older one at once
/// (the old one's queued frames are dropped). On a port a failed write
/// drops the frame and goes on; on a connection it ends the writer.
async fn write_frames<W>(writer: W, mut switches: mpsc::Receiver<Switch>, transport: Transport)
where
    W: AsyncWrite + Unpin,
{
    let mut sink = FramedWrite::new(writer, FrameCodec::new());
    let mut output: Option<MuxOutput> = None;
    loop {
        let frame = tokio::select! {
            biased;
            switch = switches.recv() => match switch {
                Some(Switch { answer, output: next }) => {
                    output = next;
                    answer
                }
                None => return,
            },
            frame = next_frame(&mut output) => match frame {
                Some(frame) => frame,
                None => {
                    output = None;
                    continue;
                }
            },
        };
        // `send` flushes, so each frame leaves as soon as it is taken.
        if let Err(e) = sink.send(&frame).await {
            if transport == Transport::Connection {
                return;
            }
            log!("writing to the host failed: {e}");
            // The frame is dropped whole: a next host must not get its tail.
            sink.write_buffer_mut().clear();
            tokio::time::sleep(HOST_POLL).await;
        }
    }
}

/// The next frame of the current generation; pending while there is none.
async fn next_frame(output: &mut Option<MuxOutput>) -> Option<Frame> {
    match output {
        Some(output) => output.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_agent_proto::PROTOCOL_VERSION;

    #[test]
    fn a_refused_host_is_told_both_ranges() {
        let v1 = Hello { protocol: 1, min_protocol: None, agent_version: None, features: vec![], window: None };
        let message = version_mismatch(&Hello::ours(), &v1);
        assert!(message.contains("the host speaks agent protocol 1,"), "{message}");
        assert!(message.contains(&format!("speaks {PROTOCOL_VERSION}")), "{message}");
        let future = Hello { protocol: 9, min_protocol: Some(7), ..Hello::ours() };
        assert!(version_mismatch(&Hello::ours(), &future).contains("protocol 7 to 9"));
    }
}
