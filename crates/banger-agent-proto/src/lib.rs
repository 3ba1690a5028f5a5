//! The protocol between bangerd and `banger-agent` in the guest. It runs
//! over one byte stream (a virtio-serial port, or a vsock connection) that
//! carries many logical streams at once: each frame names its stream, so
//! an exec, a session and a file copy can share the channel.
//!
//! A frame is a 12-byte header and a payload:
//! `magic "BA"` (2 bytes), `kind` (1), `reserved` (1, zero), `stream` (u32
//! big-endian), `length` (u32 big-endian), then `length` bytes. Control
//! frames carry one JSON message ([`Request`] host to guest, [`Reply`]
//! guest to host); data frames carry raw stdin, stdout or stderr bytes. An
//! empty stdin frame means end of input.
//!
//! Every connection starts with a `Hello` on stream 0 from the host; the
//! guest answers with its own `Hello`. The host refuses an agent whose
//! [`PROTOCOL_VERSION`] differs from its own.

mod codec;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

pub use codec::FrameCodec;

/// The protocol version both ends must agree on.
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-serial port the agent listens on (QEMU).
pub const PORT_NAME: &str = "banger.agent";

/// The vsock port the agent listens on (Firecracker, QEMU with vhost-vsock).
pub const VSOCK_PORT: u32 = 1024;

/// The largest payload a frame may carry.
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// First two bytes of every frame; lets a reader notice a desynchronised stream.
pub const MAGIC: [u8; 2] = *b"BA";

/// Size of a frame header.
pub const HEADER_LEN: usize = 12;

/// Stream 0 carries the handshake.
pub const CONTROL_STREAM: u32 = 0;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON [`Request`] or [`Reply`].
    Control = 0,
    /// Bytes for the process's stdin; empty means end of input.
    Stdin = 1,
    /// Bytes the process wrote to stdout.
    Stdout = 2,
    /// Bytes the process wrote to stderr.
    Stderr = 3,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            0 => FrameKind::Control,
            1 => FrameKind::Stdin,
            2 => FrameKind::Stdout,
            3 => FrameKind::Stderr,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The logical stream it belongs to.
    pub stream: u32,
    /// What it carries.
    pub kind: FrameKind,
    /// The bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A control frame holding `message` as JSON.
    pub fn control<T: Serialize>(stream: u32, message: &T) -> Frame {
        let payload = serde_json::to_vec(message).expect("protocol messages always serialize");
        Frame { stream, kind: FrameKind::Control, payload }
    }

    /// A data frame.
    pub fn data(stream: u32, kind: FrameKind, payload: Vec<u8>) -> Frame {
        Frame { stream, kind, payload }
    }

    /// Decodes a control frame's JSON.
    pub fn message<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtocolError> {
        if self.kind != FrameKind::Control {
            return Err(ProtocolError::NotControl(self.kind as u8));
        }
        serde_json::from_slice(&self.payload).map_err(ProtocolError::Json)
    }

    /// The frame's bytes on the wire (what [`FrameCodec`] writes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(self.kind as u8);
        out.push(0);
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Why a frame or message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The stream does not start with a frame header.
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes is too large")]
    TooLarge(u32),
    /// A control message was expected.
    #[error("expected a control frame, got kind {0}")]
    NotControl(u8),
    /// The control message is not valid JSON for its type.
    #[error("bad control message")]
    Json(#[source] serde_json::Error),
    /// The underlying stream failed.
    #[error("agent channel failed")]
    Io(#[from] std::io::Error),
}

/// Parses a frame header: (kind, stream, payload length).
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(FrameKind, u32, u32), ProtocolError> {
    check_header(header, MAX_PAYLOAD)
}

/// [`parse_header`] with payloads bounded by `max_payload`.
fn check_header(header: &[u8; HEADER_LEN], max_payload: u32) -> Result<(FrameKind, u32, u32), ProtocolError> {
    if header[..2] != MAGIC {
        return Err(ProtocolError::BadMagic([header[0], header[1]]));
    }
    let kind = FrameKind::from_u8(header[2]).ok_or(ProtocolError::BadKind(header[2]))?;
    let stream = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    if len > max_payload {
        return Err(ProtocolError::TooLarge(len));
    }
    Ok((kind, stream, len))
}

/// Reads one frame with [`FrameCodec`]; `None` at a clean end of stream
/// (between frames). Reads exactly one frame's bytes, never more, so the
/// reader can be used again afterwards; a long-lived reader is better
/// wrapped in a `FramedRead` once.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, ProtocolError> {
    let mut buf = BytesMut::zeroed(HEADER_LEN);
    match reader.read_exact(&mut buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let header: &[u8; HEADER_LEN] = buf[..].try_into().expect("HEADER_LEN bytes");
    // Checked before the payload is allocated.
    let (_, _, len) = parse_header(header)?;
    buf.resize(HEADER_LEN + len as usize, 0);
    reader.read_exact(&mut buf[HEADER_LEN..]).await?;
    let frame = FrameCodec::new().decode(&mut buf)?;
    Ok(Some(frame.expect("a whole frame was read")))
}

/// Writes one frame (encoded by [`FrameCodec`]) and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> Result<(), ProtocolError> {
    let mut buf = BytesMut::new();
    FrameCodec::new().encode(frame, &mut buf)?;
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

/// Host-to-guest control messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Opens the conversation (stream 0).
    Hello {
        /// The host's [`PROTOCOL_VERSION`].
        protocol: u32,
    },
    /// Runs a command on this frame's stream, which must be new.
    Exec(ExecRequest),
    /// Sends a signal to the process running on this stream.
    Signal {
        /// Signal number (15 for SIGTERM, 9 for SIGKILL).
        signal: i32,
    },
    /// Syncs the guest's disks and powers it off. No reply: the VM ends.
    Poweroff,
    /// A keepalive (stream 0): answered with `pong` and nothing else
    /// changes. An agent that predates it answers with an `error`, which
    /// shows it is alive just as well.
    Ping,
}

/// A command to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up on `PATH`.
    pub argv: Vec<String>,
    /// Extra environment variables, over the agent's defaults.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    #[serde(default)]
    pub cwd: Option<String>,
}

/// Guest-to-host control messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Answers the host's hello (stream 0).
    Hello {
        /// The agent's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The agent's build version.
        agent_version: String,
    },
    /// The command started.
    Started {
        /// Its process id in the guest.
        pid: u32,
    },
    /// The command ended; all its output was sent before this.
    Exited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Signal number, when a signal killed it.
        signal: Option<i32>,
    },
    /// The request on this stream failed (for example, no such program).
    Error {
        /// What went wrong.
        message: String,
    },
    /// Answers a ping.
    Pong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::control(0, &Request::Hello { protocol: PROTOCOL_VERSION }),
            Frame::data(7, FrameKind::Stdout, b"hello\n".to_vec()),
            Frame::data(7, FrameKind::Stdin, Vec::new()),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            write_frame(&mut wire, f).await.unwrap();
        }
        let mut reader = &wire[..];
        for f in &frames {
            assert_eq!(read_frame(&mut reader).await.unwrap().as_ref(), Some(f));
        }
        assert!(read_frame(&mut reader).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_headers_are_refused() {
        let mut bad = Frame::data(1, FrameKind::Stdout, vec![1]).encode();
        bad[0] = b'X';
        assert!(matches!(read_frame(&mut &bad[..]).await, Err(ProtocolError::BadMagic(_))));
        let mut big = Frame::data(1, FrameKind::Stdout, vec![]).encode();
        big[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        assert!(matches!(read_frame(&mut &big[..]).await, Err(ProtocolError::TooLarge(_))));
    }

    /// The wire form of each message, checked in: changing it breaks
    /// agents already inside images, so it must be a deliberate act (and a
    /// version bump).
    #[test]
    fn message_schema_snapshot() {
        let samples = [
            serde_json::to_string(&Request::Hello { protocol: 1 }).unwrap(),
            serde_json::to_string(&Request::Exec(ExecRequest {
                argv: vec!["uname".into(), "-a".into()],
                env: vec![("K".into(), "V".into())],
                cwd: Some("/".into()),
            }))
            .unwrap(),
            serde_json::to_string(&Request::Signal { signal: 15 }).unwrap(),
            serde_json::to_string(&Request::Poweroff).unwrap(),
            serde_json::to_string(&Request::Ping).unwrap(),
            serde_json::to_string(&Reply::Hello { protocol: 1, agent_version: "0.1.0".into() }).unwrap(),
            serde_json::to_string(&Reply::Started { pid: 42 }).unwrap(),
            serde_json::to_string(&Reply::Exited { code: Some(3), signal: None }).unwrap(),
            serde_json::to_string(&Reply::Error { message: "no such program".into() }).unwrap(),
            serde_json::to_string(&Reply::Pong).unwrap(),
        ];
        let expected = include_str!("../schema.snapshot").lines().collect::<Vec<_>>();
        assert_eq!(samples.to_vec(), expected);
    }
}
