//! [`FrameCodec`]: the frame format as a tokio-util codec, so either end can
//! wrap its byte stream in `FramedRead`/`FramedWrite` instead of cutting
//! frames by hand. The wire format is the one the crate docs describe.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{check_header, Frame, Header, ProtocolError, HEADER_LEN, MAGIC, MAX_PAYLOAD};

/// Decodes and encodes [`Frame`]s, refusing payloads larger than its bound
/// (at most [`MAX_PAYLOAD`]) before buffering them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max_payload: u32,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec { max_payload: MAX_PAYLOAD }
    }
}

impl FrameCodec {
    /// A codec for payloads up to [`MAX_PAYLOAD`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec for payloads up to `max_payload` bytes (never above [`MAX_PAYLOAD`],
    /// which the other end enforces anyway).
    pub fn with_max_payload(max_payload: u32) -> Self {
        FrameCodec { max_payload: max_payload.min(MAX_PAYLOAD) }
    }

    /// The largest payload this codec accepts.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let Some(header) = src.get(..HEADER_LEN) else {
            src.reserve(HEADER_LEN - src.len());
            return Ok(None);
        };
        let header: &[u8; HEADER_LEN] = header.try_into().expect("HEADER_LEN bytes");
        let Header { kind, flags, stream, len } = check_header(header, self.max_payload)?;
        let total = HEADER_LEN + len as usize;
        if src.len() < total {
            // The bound was checked above, so this reservation is bounded too.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len as usize).freeze();
        Ok(Some(Frame { stream, kind, flags, payload }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the stream ended inside a frame ({} bytes of it read)", src.len()),
            ))),
        }
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let len = u32::try_from(frame.payload.len()).unwrap_or(u32::MAX);
        if len > self.max_payload {
            return Err(ProtocolError::TooLarge(len));
        }
        dst.reserve(HEADER_LEN + frame.payload.len());
        dst.put_slice(&MAGIC);
        dst.put_u8(frame.kind.to_u8());
        dst.put_u8(frame.flags);
        dst.put_u32(frame.stream);
        dst.put_u32(len);
        dst.put_slice(&frame.payload);
        Ok(())
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.encode(&frame, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameKind, Hello, Request};
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::{FramedRead, FramedWrite};

    fn samples() -> Vec<Frame> {
        vec![
            Frame::control(0, &Request::Hello(Hello::ours())),
            Frame::data(7, FrameKind::Stdout, b"hello\n".to_vec()),
            Frame::empty(7, FrameKind::Stdin).fin(),
            Frame::data(u32::MAX, FrameKind::Stderr, vec![0xab; 70_000]),
        ]
    }

    #[test]
    fn the_codec_writes_the_documented_wire_format() {
        for frame in samples() {
            let mut wire = BytesMut::new();
            FrameCodec::new().encode(&frame, &mut wire).unwrap();
            assert_eq!(wire[..], frame.encode()[..]);
        }
    }

    #[test]
    fn frames_arriving_a_byte_at_a_time_decode_whole() {
        let wire: Vec<u8> = samples().iter().flat_map(Frame::encode).collect();
        let (mut codec, mut buf, mut out) = (FrameCodec::new(), BytesMut::new(), Vec::new());
        for byte in wire {
            buf.put_u8(byte);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, samples());
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn framed_streams_round_trip() {
        let (a, b) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            let mut sink = FramedWrite::new(a, FrameCodec::new());
            for frame in samples() {
                sink.send(frame).await.unwrap();
            }
        });
        let got: Vec<Frame> = FramedRead::new(b, FrameCodec::new()).map(Result::unwrap).collect().await;
        writer.await.unwrap();
        assert_eq!(got, samples());
    }

    #[test]
    fn the_bound_is_checked_before_buffering() {
        let mut codec = FrameCodec::with_max_payload(16);
        assert_eq!(codec.max_payload(), 16);
        assert_eq!(FrameCodec::with_max_payload(u32::MAX).max_payload(), MAX_PAYLOAD);
        let big = Frame::data(1, FrameKind::Stdout, vec![0; 17]);
        // Only the header has arrived, and it already says too much.
        let mut buf = BytesMut::from(&big.encode()[..HEADER_LEN]);
        assert!(matches!(codec.decode(&mut buf), Err(ProtocolError::TooLarge(17))));
        assert!(buf.capacity() < 1024, "no room reserved for a refused payload");
        assert!(matches!(codec.encode(&big, &mut BytesMut::new()), Err(ProtocolError::TooLarge(17))));
        let mut huge = BytesMut::from(&Frame::data(1, FrameKind::Stdout, vec![]).encode()[..]);
        huge[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        assert!(matches!(FrameCodec::new().decode(&mut huge), Err(ProtocolError::TooLarge(_))));
    }

    #[test]
    fn bad_headers_and_cut_frames_are_errors() {
        let mut bad = BytesMut::from(&Frame::data(1, FrameKind::Stdout, vec![1]).encode()[..]);
        bad[0] = b'X';
        assert!(matches!(FrameCodec::new().decode(&mut bad), Err(ProtocolError::BadMagic(_))));
        let mut kind = BytesMut::from(&Frame::data(1, FrameKind::Stdout, vec![1]).encode()[..]);
        kind[2] = 99;
        let unknown = FrameCodec::new().decode(&mut kind).unwrap().unwrap();
        assert_eq!(unknown.kind, FrameKind::Unknown(99), "an unknown kind is a frame to skip, not an error");
        let mut cut = BytesMut::from(&Frame::data(1, FrameKind::Stdout, vec![1, 2, 3]).encode()[..14]);
        let err = FrameCodec::new().decode_eof(&mut cut).unwrap_err();
        assert!(matches!(&err, ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof), "{err}");
        assert_eq!(FrameCodec::new().decode_eof(&mut BytesMut::new()).unwrap(), None);
    }
}
