//! One command run for the host: spawned with pipes, its output pumped to
//! the host as data frames, its stdin fed from stdin frames, and `Exited`
//! sent once the process is reaped and its output pipes reached EOF (or a
//! background child kept them open past a short grace period). Each command
//! leads a process group of its own, which the host's signals go to.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use banger_agent_proto::{ExecRequest, Frame, FrameKind, Reply, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use crate::log::log;
use crate::outbox::Outbox;
use crate::reaper::Reaper;

/// Output is sent in frames of at most 32 KiB: the virtio-console driver
/// takes at most that much per write(2), so each frame leaves in one piece.
const OUTPUT_CHUNK: usize = 32 * 1024 - HEADER_LEN;

/// The most stdin the agent holds for one command that is not reading it.
/// The agent is often PID 1: a host sending faster than a command reads
/// must not grow it without limit.
pub(crate) const STDIN_LIMIT: usize = 1 << 20;

/// How long the output pipes may stay open after the command itself was
/// reaped: a background child that inherited them must not keep the exec
/// from ending.
const EXIT_GRACE: Duration = Duration::from_millis(100);

/// After the grace period, what is already in a pipe is still sent: reads
/// go on while each finds data within this long...
const DRAIN_IDLE: Duration = Duration::from_millis(10);

/// ...for at most this many reads: enough to empty the largest pipe an
/// unprivileged process can ask for (1 MiB), not enough for a chatty
/// background child to keep the exec open.
const DRAIN_READS: usize = (1 << 20) / OUTPUT_CHUNK + 2;

/// The stdin frames a command has not read yet, and the way to throw them away.
#[derive(Default)]
struct StdinQueue {
    bytes: AtomicUsize,
    discard: Notify,
}

/// The host's end of a command's stdin; dropping it closes the command's
/// stdin once the queued input is written.
pub(crate) struct StdinTx {
    chunks: mpsc::UnboundedSender<Vec<u8>>,
    queue: Arc<StdinQueue>,
}

/// Queueing the chunk would take a command's stdin over [`STDIN_LIMIT`].
#[derive(Debug)]
pub(crate) struct StdinOverflow;

impl StdinTx {
    /// Queues a chunk for the command; an empty chunk means end of input.
    /// Input for a command that closed its stdin is dropped.
    pub(crate) fn send(&self, chunk: Vec<u8>) -> Result<(), StdinOverflow> {
        let len = chunk.len();
        if self.queue.bytes.load(Ordering::Relaxed) + len > STDIN_LIMIT {
            return Err(StdinOverflow);
        }
        self.queue.bytes.fetch_add(len, Ordering::Relaxed);
        if self.chunks.send(chunk).is_err() {
            self.queue.bytes.fetch_sub(len, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Closes the command's stdin now, dropping the input not written yet.
    pub(crate) fn discard(self) {
        self.queue.discard.notify_one();
    }
}

/// The command's end of its stdin queue, for the task that feeds the pipe.
pub(crate) struct StdinRx {
    chunks: mpsc::UnboundedReceiver<Vec<u8>>,
    queue: Arc<StdinQueue>,
}

/// A queue for a command's stdin.
pub(crate) fn stdin_queue() -> (StdinTx, StdinRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(StdinQueue::default());
    (StdinTx { chunks: tx, queue: queue.clone() }, StdinRx { chunks: rx, queue })
}

/// A command running for the current host connection.
pub(crate) struct Running {
    /// The command's pid, which is also its process group id.
    pub(crate) pid: u32,
    /// `None` once the host can send no more input (gone, or overflowed).
    pub(crate) stdin: Option<StdinTx>,
}

/// The commands of one connection by stream id, shared with their supervisors
/// (which remove their entry when the command ends).
#[derive(Clone, Default)]
pub(crate) struct Streams(Arc<Mutex<HashMap<u32, Running>>>);

impl Streams {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<u32, Running>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host that fed these commands is gone: each sees the end of its
    /// input (after what is queued) but goes on running.
    pub(crate) fn close_stdin(&self) {
        for running in self.lock().values_mut() {
            running.stdin = None;
        }
    }
}

/// A started process and its ends of the pipes.
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    exit: oneshot::Receiver<ExitStatus>,
}

/// Starts `req`; the error is a message for the host.
pub(crate) fn spawn(req: &ExecRequest, reaper: &Reaper) -> Result<Spawned, String> {
    let Some(program) = req.argv.first() else {
        return Err("nothing to run: argv is empty".into());
    };
    let cwd = req.cwd.as_deref().unwrap_or("/");
    if !Path::new(cwd).is_dir() {
        return Err(format!("cannot run {program}: no directory {cwd}"));
    }
    let mut command = Command::new(program);
    command
        .args(&req.argv[1..])
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        // Its own group, so a signal from the host reaches its children too.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, exit) = reaper.spawn(&mut command).map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id();
    let pipes = (|| -> io::Result<_> {
        let taken = |fd: Option<OwnedFd>| fd.ok_or_else(|| io::Error::other("pipe missing"));
        Ok((
            pipe::Sender::from_owned_fd(taken(child.stdin.take().map(Into::into))?)?,
            pipe::Receiver::from_owned_fd(taken(child.stdout.take().map(Into::into))?)?,
            pipe::Receiver::from_owned_fd(taken(child.stderr.take().map(Into::into))?)?,
        ))
    })();
    match pipes {
        Ok((stdin, stdout, stderr)) => Ok(Spawned { pid, stdin, stdout, stderr, exit }),
        Err(e) => {
            let _ = reaper.signal(pid, libc::SIGKILL);
            Err(format!("cannot run {program}: cannot set up its pipes: {e}"))
        }
    }
}

/// Reports on a spawned command until it ends: `Started`, its output, `Exited`.
///
/// `Exited` follows the reaping of the command itself: output pipes still
/// held open by a background child get [`EXIT_GRACE`] to reach EOF, then
/// what they hold is sent and the rest of their output is dropped.
pub(crate) async fn supervise(stream: u32, spawned: Spawned, stdin: StdinRx, outbox: Outbox, streams: Streams) {
    let Spawned { pid, stdin: stdin_pipe, stdout, stderr, exit } = spawned;
    outbox.send(Frame::control(stream, &Reply::Started { pid })).await;
    tokio::spawn(feed_stdin(stdin_pipe, stdin));
    let (reaped_tx, reaped) = watch::channel(None);
    let reaped_at = async {
        let status = exit.await;
        reaped_tx.send_replace(Some(Instant::now() + EXIT_GRACE));
        status
    };
    let (_, _, status) = tokio::join!(
        pump(stream, FrameKind::Stdout, stdout, &outbox, reaped.clone()),
        pump(stream, FrameKind::Stderr, stderr, &outbox, reaped),
        reaped_at,
    );
    {
        let mut streams = streams.lock();
        if streams.get(&stream).is_some_and(|r| r.pid == pid) {
            streams.remove(&stream);
        }
    }
    let reply = match status {
        Ok(status) => Reply::Exited { code: status.code(), signal: status.signal() },
        Err(_) => Reply::Error { message: format!("lost track of process {pid}") },
    };
    outbox.send(Frame::control(stream, &reply)).await;
}

/// Writes the queued stdin to the command until end of input, a closed
/// queue, a discard, or a command that closed its stdin.
async fn feed_stdin(mut pipe: pipe::Sender, stdin: StdinRx) {
    let StdinRx { mut chunks, queue } = stdin;
    loop {
        let chunk = tokio::select! {
            chunk = chunks.recv() => chunk,
            () = queue.discard.notified() => return,
        };
        let Some(chunk) = chunk.filter(|c| !c.is_empty()) else {
            return;
        };
        // A write error means the process closed its stdin: the rest is dropped.
        let written = tokio::select! {
            result = pipe.write_all(&chunk) => result.is_ok(),
            () = queue.discard.notified() => false,
        };
        queue.bytes.fetch_sub(chunk.len(), Ordering::Relaxed);
        if !written {
            return;
        }
    }
}

/// Sends everything the process writes on one pipe; keeps draining after
/// the host is gone so the process never blocks on a full pipe. `reaped`
/// turns into the end of the grace period once the command is reaped.
async fn pump(
    stream: u32,
    kind: FrameKind,
    mut pipe: pipe::Receiver,
    outbox: &Outbox,
    mut reaped: watch::Receiver<Option<Instant>>,
) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut host_gone = false;
    let mut drain_reads = 0;
    loop {
        let grace_end = *reaped.borrow_and_update();
        let read = match grace_end {
            None => tokio::select! {
                read = pipe.read(&mut buf) => read,
                // The sender always sends before it goes, so this cannot spin.
                _ = reaped.changed() => continue,
            },
            Some(end) if Instant::now() < end => match tokio::time::timeout_at(end, pipe.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => continue,
            },
            Some(_) => {
                drain_reads += 1;
                if drain_reads > DRAIN_READS {
                    return;
                }
                match tokio::time::timeout(DRAIN_IDLE, pipe.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => return,
                }
            }
        };
        match read {
            Ok(0) => return,
            Ok(n) => {
                if !host_gone {
                    host_gone = !outbox.send(Frame::data(stream, kind, buf[..n].to_vec())).await;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log!("reading the output of stream {stream} failed: {e}");
                return;
            }
        }
    }
}
