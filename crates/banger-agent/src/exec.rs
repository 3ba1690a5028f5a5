//! One command run for the host: spawned with pipes, its output pumped to
//! the host as data frames, its stdin fed from stdin frames, and `Exited`
//! sent once the process is reaped and both output pipes reached EOF.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use banger_agent_proto::{ExecRequest, Frame, FrameKind, Reply, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use crate::log::log;
use crate::outbox::Outbox;
use crate::reaper::Reaper;

/// Output is sent in frames of at most 32 KiB: the virtio-console driver
/// takes at most that much per write(2), so each frame leaves in one piece.
const OUTPUT_CHUNK: usize = 32 * 1024 - HEADER_LEN;

/// Stdin for a running command; an empty chunk means end of input.
pub(crate) type StdinTx = mpsc::UnboundedSender<Vec<u8>>;

/// A command running for the current host connection.
pub(crate) struct Running {
    pub(crate) pid: u32,
    pub(crate) stdin: StdinTx,
}

/// The commands of one connection by stream id, shared with their supervisors
/// (which remove their entry when the command ends).
#[derive(Clone, Default)]
pub(crate) struct Streams(Arc<Mutex<HashMap<u32, Running>>>);

impl Streams {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<u32, Running>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
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
/// Holds a stdin sender of its own, so a host that goes away (and takes its
/// stream table with it) does not close the command's stdin.
pub(crate) async fn supervise(
    stream: u32,
    spawned: Spawned,
    stdin: (StdinTx, mpsc::UnboundedReceiver<Vec<u8>>),
    outbox: Outbox,
    streams: Streams,
) {
    let Spawned { pid, stdin: stdin_pipe, stdout, stderr, exit } = spawned;
    let (keep_stdin_open, stdin_rx) = stdin;
    outbox.send(Frame::control(stream, &Reply::Started { pid })).await;
    tokio::spawn(feed_stdin(stdin_pipe, stdin_rx));
    let (_, _, status) = tokio::join!(
        pump(stream, FrameKind::Stdout, stdout, &outbox),
        pump(stream, FrameKind::Stderr, stderr, &outbox),
        exit,
    );
    drop(keep_stdin_open);
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

async fn feed_stdin(mut pipe: pipe::Sender, mut chunks: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(chunk) = chunks.recv().await {
        // A write error means the process closed its stdin: the rest is dropped.
        if chunk.is_empty() || pipe.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// Sends everything the process writes on one pipe; keeps draining after
/// the host is gone so the process never blocks on a full pipe.
async fn pump(stream: u32, kind: FrameKind, mut pipe: pipe::Receiver, outbox: &Outbox) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut host_gone = false;
    loop {
        match pipe.read(&mut buf).await {
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
