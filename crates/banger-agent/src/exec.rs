//! One command run on a stream: `started`, its output as stdout and stderr
//! data (all as stdout under a terminal), then `exited` once it was reaped
//! and its output is done. Output waits for the stream's credit, so a host
//! that stops reading stops only this command (on its full pipe); stdin is
//! taken from the stream only as fast as the command reads it, so nothing
//! is dropped and the window bounds what is held. A stream that is reset,
//! or a connection that ends, while the command runs hangs it up.

use std::time::Duration;

use banger_agent_proto::mux::{Event, MuxError, Stream, StreamSender};
use banger_agent_proto::{ExecRequest, FrameKind, Reply, Request};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::log::log;
use crate::output::{Output, Reaped, Source};
use crate::reaper::Reaper;
use crate::requests::{self, Refusal};
use crate::serve::Agent;
use crate::spawn::{self, Child, ChildIo};
use std::sync::Arc;

use crate::pty::PtyMaster;

/// How long a hung-up command gets between SIGHUP and SIGKILL.
const HANG_UP_GRACE: Duration = Duration::from_secs(2);

/// Runs `req` on `stream` until the command ended and the host closed the stream.
pub(crate) async fn run(mut stream: Stream, req: ExecRequest, agent: &Agent) {
    let Child { pid, io, exit } = match spawn::spawn(&req, &agent.reaper) {
        Ok(child) => child,
        Err(refusal) => return requests::answer(stream, refusal.reply()).await,
    };
    let sender = stream.sender();
    let _ = sender.send(&Reply::Started { pid }).await;
    let (done_tx, done) = watch::channel(false);
    let (stdin, outputs) = match io {
        ChildIo::Pipes { stdin, stdout, stderr } => (Stdin::Pipe(Some(stdin)), Outputs::Pipes(stdout, stderr)),
        ChildIo::Pty(master) => (Stdin::Pty(master.clone()), Outputs::Pty(master)),
    };
    let command = async {
        let reaped = Reaped::new();
        let status = async {
            let status = exit.await;
            reaped.now();
            status
        };
        let pumped = async {
            match outputs {
                Outputs::Pipes(stdout, stderr) => {
                    tokio::join!(
                        pump(reaped.output(stdout).named("stdout"), &sender, FrameKind::Stdout),
                        pump(reaped.output(stderr).named("stderr"), &sender, FrameKind::Stderr),
                    );
                }
                Outputs::Pty(master) => pump(reaped.output(master).named("terminal"), &sender, FrameKind::Stdout).await,
            }
        };
        let (status, ()) = tokio::join!(status, pumped);
        done_tx.send_replace(true);
        let reply = match status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                Reply::Exited { code: status.code(), signal: status.signal() }
            }
            Err(_) => {
                Refusal::new(banger_agent_proto::ErrorKind::Internal, format!("lost track of process {pid}")).reply()
            }
        };
        let _ = sender.send(&reply).await;
        let _ = sender.close().await;
    };
    let input = Input { pid, reaper: &agent.reaper, stdin, done }.run(&mut stream);
    tokio::join!(command, input);
}

enum Outputs {
    Pipes(pipe::Receiver, pipe::Receiver),
    Pty(Arc<PtyMaster>),
}

/// Sends what one output yields; once the host is gone, goes on reading
/// (and dropping) so the command never blocks on a full pipe.
async fn pump<S: Source>(mut output: Output<S>, sender: &StreamSender, kind: FrameKind) {
    let mut host_gone = false;
    while let Some(bytes) = output.next().await {
        if !host_gone && sender.write(kind, bytes).await.is_err() {
            host_gone = true;
        }
    }
}

/// Where typed input goes.
enum Stdin {
    /// `None` once closed.
    Pipe(Option<pipe::Sender>),
    Pty(Arc<PtyMaster>),
}

impl Stdin {
    /// Writes some of `bytes`; an error means the command took no more input.
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Stdin::Pipe(Some(pipe)) => pipe.write(bytes).await,
            Stdin::Pipe(None) => Err(std::io::ErrorKind::BrokenPipe.into()),
            Stdin::Pty(master) => master.write(bytes).await,
        }
    }

    /// The input ended: a pipe is closed; a terminal gets its EOF character
    /// (the line discipline turns it into the end of input for its reader).
    async fn finish(&mut self) {
        match self {
            Stdin::Pipe(pipe) => drop(pipe.take()),
            Stdin::Pty(master) => {
                let eof = master.eof_char();
                let _ = master.write_all(&[eof]).await;
            }
        }
    }

    /// The command is done: nothing more goes to it.
    fn close(&mut self) {
        if let Stdin::Pipe(pipe) = self {
            drop(pipe.take());
        }
    }
}

/// What the host sends on the stream after the exec.
struct Input<'a> {
    pid: u32,
    reaper: &'a Reaper,
    stdin: Stdin,
    done: watch::Receiver<bool>,
}

impl Input<'_> {
    /// Takes the host's input until it closes or resets the stream: stdin
    /// data (one chunk at a time, as the command reads it), signals and
    /// resizes (read past waiting data).
    async fn run(mut self, stream: &mut Stream) {
        // A chunk the command has not taken yet, and what follows it.
        let mut pending: Option<Bytes> = None;
        let mut fin_after_pending = false;
        let mut stdin_open = true;
        // Set when the host can send no more control messages while data waits.
        let mut controls_over = false;
        let mut done = false;
        loop {
            let listen = pending.is_none() || !controls_over;
            tokio::select! {
                event = next_event(stream, pending.is_none()), if listen => match event {
                    Err(e) => {
                        if !*self.done.borrow() {
                            hang_up(self.pid, self.reaper.clone(), &e.to_string());
                        }
                        return;
                    }
                    Ok(None) if pending.is_none() => {
                        // The host sends nothing more: that is the end of input too.
                        if stdin_open {
                            self.stdin.finish().await;
                        }
                        return self.watch_for_reset(stream.sender()).await;
                    }
                    Ok(None) => controls_over = true,
                    Ok(Some(Incoming::Data { bytes, fin })) => {
                        if stdin_open && !done {
                            if !bytes.is_empty() {
                                pending = Some(bytes);
                            }
                            if fin {
                                fin_after_pending = true;
                            }
                        }
                    }
                    Ok(Some(Incoming::Control(request))) => self.control(request),
                },
                written = self.stdin.write(pending.as_deref().unwrap_or_default()), if pending.is_some() => match written {
                    Ok(n) => {
                        let rest = pending.take().map(|mut b| b.split_off(n)).filter(|b| !b.is_empty());
                        pending = rest;
                        controls_over = false;
                    }
                    Err(_) => {
                        // The command closed its stdin: what it did not take is dropped.
                        pending = None;
                        stdin_open = false;
                        self.stdin.close();
                    }
                },
                _ = self.done.changed(), if !done => {
                    done = true;
                    pending = None;
                    stdin_open = false;
                    self.stdin.close();
                }
            }
            if pending.is_none() && fin_after_pending {
                fin_after_pending = false;
                if stdin_open {
                    stdin_open = false;
                    self.stdin.finish().await;
                }
            }
        }
    }

    /// After the host closed its side: a reset (or the connection's end)
    /// before the command ended still hangs it up.
    async fn watch_for_reset(self, sender: StreamSender) {
        let mut done = self.done.clone();
        let ended = async move {
            let _ = done.wait_for(|done| *done).await;
        };
        tokio::select! {
            why = sender.reset_seen() => {
                if !*self.done.borrow() {
                    hang_up(self.pid, self.reaper.clone(), &why);
                }
            }
            () = ended => {}
        }
    }

    fn control(&self, request: Option<Request>) {
        match request {
            Some(Request::Signal { signal }) if !*self.done.borrow() => {
                match self.reaper.signal_group(self.pid, signal) {
                    Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                        log!("cannot send signal {signal} to process group {}: {e}", self.pid);
                    }
                    _ => {}
                }
            }
            Some(Request::Resize(size)) => {
                if let Stdin::Pty(master) = &self.stdin {
                    if let Err(e) = master.resize(size) {
                        log!("cannot resize the terminal of process {}: {e}", self.pid);
                    }
                }
            }
            _ => {}
        }
    }
}

/// An event the input loop acts on.
pub(crate) enum Incoming {
    Data {
        bytes: Bytes,
        fin: bool,
    },
    /// A control message (`None`: one this build cannot read).
    Control(Option<Request>),
}

/// The next event of the stream; with `data` false, only control messages
/// (data waits in the stream's window).
pub(crate) async fn next_event(stream: &mut Stream, data: bool) -> Result<Option<Incoming>, MuxError> {
    if !data {
        return Ok(stream.recv_control().await?.map(|json| Incoming::Control(serde_json::from_slice(&json).ok())));
    }
    Ok(match stream.recv().await? {
        None => None,
        Some(event @ Event::Control(_)) => Some(Incoming::Control(event.message())),
        Some(Event::Data { kind: FrameKind::Stdin, bytes, fin }) => Some(Incoming::Data { bytes, fin }),
        // Output frames from the host mean nothing here.
        Some(Event::Data { .. }) => Some(Incoming::Data { bytes: Bytes::new(), fin: false }),
    })
}

/// The client (or the daemon) went away while the command ran: it gets
/// SIGHUP, as from a closed terminal, and SIGKILL if its group is still
/// there after [`HANG_UP_GRACE`].
pub(crate) fn hang_up(pid: u32, reaper: Reaper, why: &str) {
    log!("hanging up process group {pid}: {why}");
    let _ = reaper.signal_group(pid, libc::SIGHUP);
    let _ = reaper.signal_group(pid, libc::SIGCONT);
    tokio::spawn(async move {
        tokio::time::sleep(HANG_UP_GRACE).await;
        let _ = reaper.signal_group(pid, libc::SIGKILL);
    });
}
