//! The protocol between bangerd and `banger-agent` in the guest, version 2.
//! It runs over one byte stream (a virtio-serial port, or a vsock
//! connection) that carries many logical streams at once, each with its own
//! flow-control window ([`mux`]), so an exec, a session attach and a file
//! copy share the channel and a slow reader slows only its own stream.
//!
//! A frame is a 12-byte header and a payload:
//!
//! | bytes | field   | meaning                                         |
//! |-------|---------|-------------------------------------------------|
//! | 0..2  | magic   | `"BA"`                                          |
//! | 2     | kind    | [`FrameKind`]; unknown kinds are skipped        |
//! | 3     | flags   | [`FLAG_FIN`] on a data frame: its channel ended |
//! | 4..8  | stream  | u32 big-endian; 0 is the connection itself      |
//! | 8..12 | length  | u32 big-endian, at most [`MAX_PAYLOAD`]         |
//!
//! Control frames carry one JSON message ([`Request`] host to guest,
//! [`Reply`] guest to host); unknown fields and unknown message types are
//! ignored, not fatal. Data frames carry the raw bytes of a channel
//! (stdin, stdout, stderr) and count against the stream's window; window
//! frames return credit; close, reset, ping and pong frames manage streams
//! and the connection.
//!
//! Every connection starts with a `hello` on stream 0 from the host naming
//! the range of versions it speaks; the guest answers with the version
//! chosen. The header is the same in version 1, so a version-1 agent
//! answers a version-2 hello with an error, which the host reports clearly.

mod codec;
pub mod messages;
pub mod mux;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

pub use codec::FrameCodec;
pub use messages::*;

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

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

/// On a data frame: the sender sends no more bytes on this channel.
pub const FLAG_FIN: u8 = 1;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A JSON [`Request`] or [`Reply`].
    Control,
    /// Bytes for the process's stdin (or any host-to-guest byte stream).
    Stdin,
    /// Bytes the process wrote to stdout (or any guest-to-host byte stream).
    Stdout,
    /// Bytes the process wrote to stderr.
    Stderr,
    /// Credit: a u32 big-endian count of bytes the receiver may send more
    /// on this stream's data channels.
    Window,
    /// The sender sends nothing more on this stream.
    Close,
    /// The stream is abandoned; the payload is a UTF-8 reason.
    Reset,
    /// The receiver answers with a pong carrying the same payload.
    Ping,
    /// The answer to a ping.
    Pong,
    /// A kind this build does not know: skipped.
    Unknown(u8),
}

impl FrameKind {
    /// The kind's byte on the wire.
    pub fn to_u8(self) -> u8 {
        match self {
            FrameKind::Control => 0,
            FrameKind::Stdin => 1,
            FrameKind::Stdout => 2,
            FrameKind::Stderr => 3,
            FrameKind::Window => 4,
            FrameKind::Close => 5,
            FrameKind::Reset => 6,
            FrameKind::Ping => 7,
            FrameKind::Pong => 8,
            FrameKind::Unknown(v) => v,
        }
    }

    /// The kind of a wire byte.
    pub fn from_u8(v: u8) -> FrameKind {
        match v {
            0 => FrameKind::Control,
            1 => FrameKind::Stdin,
            2 => FrameKind::Stdout,
            3 => FrameKind::Stderr,
            4 => FrameKind::Window,
            5 => FrameKind::Close,
            6 => FrameKind::Reset,
            7 => FrameKind::Ping,
            8 => FrameKind::Pong,
            v => FrameKind::Unknown(v),
        }
    }

    /// Whether frames of this kind carry a channel's bytes (and use credit).
    pub fn is_data(self) -> bool {
        matches!(self, FrameKind::Stdin | FrameKind::Stdout | FrameKind::Stderr)
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The logical stream it belongs to.
    pub stream: u32,
    /// What it carries.
    pub kind: FrameKind,
    /// [`FLAG_FIN`] or nothing.
    pub flags: u8,
    /// The bytes.
    pub payload: Bytes,
}

impl Frame {
    /// A control frame holding `message` as JSON.
    pub fn control<T: Serialize>(stream: u32, message: &T) -> Frame {
        let payload = serde_json::to_vec(message).expect("protocol messages always serialize");
        Frame { stream, kind: FrameKind::Control, flags: 0, payload: payload.into() }
    }

    /// A data frame.
    pub fn data(stream: u32, kind: FrameKind, payload: impl Into<Bytes>) -> Frame {
        Frame { stream, kind, flags: 0, payload: payload.into() }
    }

    /// A frame of `kind` with no payload.
    pub fn empty(stream: u32, kind: FrameKind) -> Frame {
        Frame { stream, kind, flags: 0, payload: Bytes::new() }
    }

    /// This frame with [`FLAG_FIN`] set.
    pub fn fin(mut self) -> Frame {
        self.flags |= FLAG_FIN;
        self
    }

    /// Whether [`FLAG_FIN`] is set.
    pub fn is_fin(&self) -> bool {
        self.flags & FLAG_FIN != 0
    }

    /// Decodes a control frame's JSON.
    pub fn message<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtocolError> {
        if self.kind != FrameKind::Control {
            return Err(ProtocolError::NotControl(self.kind.to_u8()));
        }
        serde_json::from_slice(&self.payload).map_err(ProtocolError::Json)
    }

    /// The frame's bytes on the wire (what [`FrameCodec`] writes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(self.kind.to_u8());
        out.push(self.flags);
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

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame carries.
    pub kind: FrameKind,
    /// Its flags.
    pub flags: u8,
    /// Its stream.
    pub stream: u32,
    /// Its payload's length.
    pub len: u32,
}

/// Parses a frame header.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
    check_header(header, MAX_PAYLOAD)
}

/// [`parse_header`] with payloads bounded by `max_payload`.
fn check_header(header: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, ProtocolError> {
    if header[..2] != MAGIC {
        return Err(ProtocolError::BadMagic([header[0], header[1]]));
    }
    let stream = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    if len > max_payload {
        return Err(ProtocolError::TooLarge(len));
    }
    Ok(Header { kind: FrameKind::from_u8(header[2]), flags: header[3], stream, len })
}

/// Reads one frame with [`FrameCodec`]; `None` at a clean end of stream
/// (between frames). Reads exactly one frame's bytes, never more, so the
/// reader can be used again afterwards; a long-lived reader is better
/// wrapped in a `FramedRead` once (this is not cancel-safe).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, ProtocolError> {
    let mut buf = BytesMut::zeroed(HEADER_LEN);
    match reader.read_exact(&mut buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let header: &[u8; HEADER_LEN] = buf[..].try_into().expect("HEADER_LEN bytes");
    // Checked before the payload is allocated.
    let Header { len, .. } = parse_header(header)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::control(0, &Request::Hello(Hello::ours())),
            Frame::data(7, FrameKind::Stdout, b"hello\n".to_vec()),
            Frame::empty(7, FrameKind::Stdin).fin(),
            Frame::data(9, FrameKind::Window, 65536u32.to_be_bytes().to_vec()),
            Frame::data(9, FrameKind::Unknown(200), b"later".to_vec()),
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

    /// The binary header, checked in byte by byte: changing it breaks
    /// agents already running in guests, so it must be a deliberate act.
    #[test]
    fn header_snapshot() {
        let frames = [
            Frame::control(0, &serde_json::json!({})),
            Frame::data(1, FrameKind::Stdin, b"x".to_vec()).fin(),
            Frame::data(2, FrameKind::Stdout, vec![]),
            Frame::data(3, FrameKind::Stderr, vec![]),
            Frame::data(0x0102_0304, FrameKind::Window, 1u32.to_be_bytes().to_vec()),
            Frame::empty(5, FrameKind::Close),
            Frame::data(6, FrameKind::Reset, b"r".to_vec()),
            Frame::data(0, FrameKind::Ping, 7u64.to_be_bytes().to_vec()),
            Frame::data(0, FrameKind::Pong, 7u64.to_be_bytes().to_vec()),
        ];
        let headers: Vec<String> = frames
            .iter()
            .map(|f| f.encode()[..HEADER_LEN].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
            .collect();
        let expected: Vec<&str> = include_str!("../header.snapshot").lines().collect();
        assert_eq!(headers, expected);
    }
}
