//! Running a command in a VM through the daemon's upgraded exec connection.

use banger_agent_proto::{self as proto, ExecRequest, Frame, FrameKind, Reply, Request};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Client, ClientError, Result};

/// The stream id the client uses for its one exec.
const STREAM: u32 = 1;

/// What a command did.
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

impl Client {
    /// Runs `argv` in VM `name` with `stdin` as its input and collects its output.
    pub async fn exec(&self, name: &str, argv: &[&str], stdin: &[u8]) -> Result<ExecOutput> {
        let channel = self.exec_channel(name).await?;
        let (mut reader, mut writer) = tokio::io::split(channel);
        start(
            &mut writer,
            ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() },
        )
        .await?;
        for chunk in stdin.chunks(64 * 1024) {
            send_stdin(&mut writer, chunk.to_vec()).await?;
        }
        send_stdin(&mut writer, Vec::new()).await?;
        let mut output = ExecOutput { stdout: Vec::new(), stderr: Vec::new(), code: None, signal: None };
        let mut started = false;
        loop {
            match next_event(&mut reader).await? {
                ExecEvent::Stdout(data) => output.stdout.extend(data),
                ExecEvent::Stderr(data) => output.stderr.extend(data),
                ExecEvent::Started => started = true,
                ExecEvent::Error(message) if !started => return Err(not_started(message)),
                ExecEvent::Error(_) => {}
                ExecEvent::Exited { code, signal } => {
                    output.code = code;
                    output.signal = signal;
                    return Ok(output);
                }
            }
        }
    }
}

/// Sends the exec request that opens the exchange.
pub async fn start<W: AsyncWrite + Unpin>(writer: &mut W, request: ExecRequest) -> Result<()> {
    write(writer, Frame::control(STREAM, &Request::Exec(request))).await
}

/// Sends stdin bytes; empty means end of input.
pub async fn send_stdin<W: AsyncWrite + Unpin>(writer: &mut W, data: Vec<u8>) -> Result<()> {
    write(writer, Frame::data(STREAM, FrameKind::Stdin, data)).await
}

/// Sends a signal to the running command.
pub async fn send_signal<W: AsyncWrite + Unpin>(writer: &mut W, signal: i32) -> Result<()> {
    write(writer, Frame::control(STREAM, &Request::Signal { signal })).await
}

/// What the command did next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// It started.
    Started,
    /// It wrote to stdout.
    Stdout(Vec<u8>),
    /// It wrote to stderr.
    Stderr(Vec<u8>),
    /// The agent refused something: before `Started`, the command never
    /// ran (no such program); after it, the command still runs (a refused
    /// signal, input it did not read in time).
    Error(String),
    /// It ended.
    Exited {
        /// Exit code.
        code: Option<i32>,
        /// Killing signal.
        signal: Option<i32>,
    },
}

/// Reads the next event.
pub async fn next_event<R: AsyncRead + Unpin>(reader: &mut R) -> Result<ExecEvent> {
    loop {
        let frame = proto::read_frame(reader)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .ok_or_else(|| ClientError::Protocol("the exec connection closed before the command ended".into()))?;
        match frame.kind {
            FrameKind::Stdout => return Ok(ExecEvent::Stdout(frame.payload.to_vec())),
            FrameKind::Stderr => return Ok(ExecEvent::Stderr(frame.payload.to_vec())),
            FrameKind::Control => match frame.message::<Reply>().map_err(|e| ClientError::Protocol(e.to_string()))? {
                Reply::Started { .. } => return Ok(ExecEvent::Started),
                Reply::Exited { code, signal } => return Ok(ExecEvent::Exited { code, signal }),
                Reply::Error { message, .. } => return Ok(ExecEvent::Error(message)),
                _ => continue,
            },
            _ => continue,
        }
    }
}

/// The error for a command that never started.
pub fn not_started(message: String) -> ClientError {
    ClientError::Api(banger_api::ApiError { code: banger_api::ErrorCode::InvalidArgument, message })
}

async fn write<W: AsyncWrite + Unpin>(writer: &mut W, frame: Frame) -> Result<()> {
    proto::write_frame(writer, &frame).await.map_err(|e| ClientError::Protocol(e.to_string()))
}
