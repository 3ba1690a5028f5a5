//! A small host for tests: the agent binary on a unix socket, and a client
//! speaking protocol v2 to it through `banger_agent_proto::mux` directly,
//! as bangerd does (hello, then a multiplexer fed by a reader task and
//! drained by a writer task).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use banger_agent_proto::mux::{self, Event, Mux, Role, Stream};
use banger_agent_proto::{
    ErrorKind, ExecRequest, Frame, FrameCodec, FrameKind, Hello, Reply, Request, TtySize, CONTROL_STREAM,
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio_util::codec::{FramedRead, FramedWrite};

/// The longest any one step may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The agent binary serving a unix socket in a temporary directory.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub sessions: PathBuf,
    pub child: Child,
}

impl Agent {
    pub async fn start() -> Agent {
        Agent::start_with(&[]).await
    }

    /// Starts the agent with `extra` arguments after its own.
    pub async fn start_with(extra: &[&OsStr]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("sessions");
        Agent::start_in(dir, sessions, extra).await
    }

    /// Starts an agent whose sessions live in `sessions` (to restart one).
    pub async fn start_in(dir: tempfile::TempDir, sessions: PathBuf, extra: &[&OsStr]) -> Agent {
        let socket = dir.path().join("agent.sock");
        // BANGER_TEST_AGENT runs these tests against another build (the static release one).
        let binary = std::env::var_os("BANGER_TEST_AGENT").unwrap_or_else(|| env!("CARGO_BIN_EXE_banger-agent").into());
        let child = Command::new(binary)
            .arg("--listen-unix")
            .arg(&socket)
            .arg("--sessions-dir")
            .arg(&sessions)
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The socket file appears at bind(), before listen(): wait until
        // a connection is accepted, not merely until the file exists.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if UnixStream::connect(&socket).await.is_ok() {
                return Agent { dir, socket, sessions, child };
            }
            assert!(tokio::time::Instant::now() < deadline, "the agent never listened on {}", socket.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.socket).await
    }

    /// Stops the agent, keeping its directory (and sessions) for another.
    pub async fn stop(mut self) -> (tempfile::TempDir, PathBuf) {
        self.child.kill().await.unwrap();
        (self.dir, self.sessions)
    }
}

/// One handshaken v2 connection.
pub struct Client {
    pub mux: Mux,
    pub hello: Hello,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Client {
    pub async fn connect(socket: &Path) -> Client {
        Client::over(UnixStream::connect(socket).await.unwrap(), None).await.expect("the agent refused our hello")
    }

    /// Says hello over `channel` (again every `retry` until answered, for a
    /// guest that may not have opened its port yet); the agent's refusal
    /// is an error.
    pub async fn over<S>(channel: S, retry: Option<Duration>) -> Result<Client, (ErrorKind, String)>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(channel);
        let mut frames = FramedRead::new(reader, FrameCodec::new());
        let mut sink = FramedWrite::new(writer, FrameCodec::new());
        let hello = Frame::control(CONTROL_STREAM, &Request::Hello(Hello::ours()));
        let theirs = tokio::time::timeout(TIMEOUT, async {
            loop {
                sink.send(&hello).await.unwrap();
                let answer = async {
                    loop {
                        let frame = frames.next().await.expect("the agent closed the connection").unwrap();
                        if frame.stream != CONTROL_STREAM || frame.kind != FrameKind::Control {
                            continue;
                        }
                        match frame.message::<Reply>().unwrap() {
                            Reply::Hello(hello) => return Ok(hello),
                            Reply::Error { message, kind } => return Err((kind, message)),
                            _ => continue,
                        }
                    }
                };
                match retry {
                    None => return answer.await,
                    Some(every) => {
                        if let Ok(answer) = tokio::time::timeout(every, answer).await {
                            return answer;
                        }
                    }
                }
            }
        })
        .await
        .expect("no answer to our hello")?;
        let (mux, mut output) = Mux::new(Role::Host, mux::DEFAULT_WINDOW, theirs.window.unwrap_or(mux::DEFAULT_WINDOW));
        let writer_mux = mux.clone();
        let writer = tokio::spawn(async move {
            while let Some(frame) = output.next().await {
                if sink.send(&frame).await.is_err() {
                    break;
                }
            }
            writer_mux.shut_down("the connection closed");
        });
        let reader_mux = mux.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = frames.next().await {
                drop(reader_mux.receive(frame));
            }
            reader_mux.shut_down("the connection closed");
        });
        Ok(Client { mux, hello: theirs, tasks: vec![writer, reader] })
    }

    /// Opens a stream and sends `request` on it.
    pub async fn open(&self, request: &Request) -> Stream {
        let stream = self.mux.open().unwrap();
        stream.send(request).await.unwrap();
        stream
    }

    /// Sends `request` on a new stream and reads its one reply.
    pub async fn request(&self, request: &Request) -> Reply {
        let mut stream = self.open(request).await;
        let reply = next_reply(&mut stream).await;
        stream.close().await.ok();
        reply
    }

    pub async fn exec(&self, req: ExecRequest) -> Stream {
        self.open(&Request::Exec(req)).await
    }

    /// Runs `argv` to its end.
    pub async fn run(&self, argv: &[&str]) -> Outcome {
        let mut stream = self.exec(exec(argv)).await;
        outcome(&mut stream).await
    }
}

pub fn exec(argv: &[&str]) -> ExecRequest {
    ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

pub fn tty(argv: &[&str], rows: u16, cols: u16) -> ExecRequest {
    ExecRequest { tty: Some(TtySize { rows, cols }), ..exec(argv) }
}

/// What one exec produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exited: Option<(Option<i32>, Option<i32>)>,
    pub error: Option<(ErrorKind, String)>,
}

impl Outcome {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// The next event, within [`TIMEOUT`].
pub async fn event(stream: &mut Stream) -> Option<Event> {
    tokio::time::timeout(TIMEOUT, stream.recv()).await.expect("the agent went quiet").expect("the stream was reset")
}

/// The next control reply (data before it is skipped).
pub async fn next_reply(stream: &mut Stream) -> Reply {
    loop {
        match event(stream).await.expect("the stream ended without a reply") {
            event @ Event::Control(_) => return event.message().expect("a reply"),
            Event::Data { .. } => continue,
        }
    }
}

/// Reads an exec's stream until `exited` or `error`.
pub async fn outcome(stream: &mut Stream) -> Outcome {
    let mut outcome = Outcome::default();
    while outcome.exited.is_none() && outcome.error.is_none() {
        match event(stream).await.expect("the stream ended before the command") {
            Event::Data { kind: FrameKind::Stdout, bytes, .. } => outcome.stdout.extend(&bytes),
            Event::Data { kind: FrameKind::Stderr, bytes, .. } => outcome.stderr.extend(&bytes),
            Event::Data { kind, .. } => panic!("the agent sent {kind:?} data"),
            event @ Event::Control(_) => match event.message::<Reply>().unwrap() {
                Reply::Started { pid } => outcome.pid = Some(pid),
                Reply::Exited { code, signal } => outcome.exited = Some((code, signal)),
                Reply::Error { message, kind } => outcome.error = Some((kind, message)),
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    outcome
}

/// Reads stdout data until it contains `needle`; returns all of it.
pub async fn stdout_until(stream: &mut Stream, needle: &str) -> String {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match event(stream).await {
            Some(Event::Data { kind: FrameKind::Stdout, bytes, .. }) => seen.extend(&bytes),
            Some(other) => panic!("waiting for {needle:?} in {:?}, got {other:?}", String::from_utf8_lossy(&seen)),
            None => panic!("the stream ended before {needle:?} in {:?}", String::from_utf8_lossy(&seen)),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

pub async fn type_in(stream: &Stream, text: &str) {
    stream.write(FrameKind::Stdin, Bytes::copy_from_slice(text.as_bytes())).await.unwrap();
}

/// Waits until `/proc/PID` is gone (or a zombie).
pub async fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        });
        if state.as_deref().is_none_or(|s| s == "Z") {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a child of `pid` runs `program` (it has exec'd).
pub async fn wait_for_child(pid: u32, program: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if children
            .split_whitespace()
            .any(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|name| name.trim() == program))
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{pid} never started {program}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `path` exists.
pub async fn wait_for_file(path: &Path, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !path.exists() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
