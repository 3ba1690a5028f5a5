//! Cuts frames out of the bytes read from the channel. Framing itself is
//! `banger_agent_proto::FrameCodec`; this decoder adds what a guest needs
//! on top: it survives garbage. A host that died mid-frame leaves a
//! desynchronised stream, and the decoder skips bytes until a header parses
//! again instead of failing the channel.

use banger_agent_proto::{Frame, FrameCodec, MAGIC};
use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// What the decoder found next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole frame.
    Frame(Frame),
    /// This many bytes were dropped while looking for a frame header.
    Skipped(usize),
}

/// [`FrameCodec`] that resynchronises on bad input rather than failing.
#[derive(Debug, Default)]
pub(crate) struct ResyncingDecoder {
    frames: FrameCodec,
}

impl ResyncingDecoder {
    fn skip(buf: &mut BytesMut, n: usize) -> Option<Decoded> {
        if n == 0 {
            return None;
        }
        buf.advance(n);
        Some(Decoded::Skipped(n))
    }
}

impl Decoder for ResyncingDecoder {
    type Item = Decoded;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Decoded>> {
        let Some(start) = buf.windows(2).position(|w| w == MAGIC) else {
            // Keep a trailing first magic byte: its second may be in the next read.
            let keep = usize::from(buf.last() == Some(&MAGIC[0]));
            return Ok(Self::skip(buf, buf.len() - keep));
        };
        if start > 0 {
            return Ok(Self::skip(buf, start));
        }
        match self.frames.decode(buf) {
            Ok(frame) => Ok(frame.map(Decoded::Frame)),
            // The magic was a coincidence inside garbage: look past it.
            Err(_) => Ok(Self::skip(buf, 1)),
        }
    }

    /// At the end of input a partial frame stays in the buffer: on a port the
    /// caller clears it, on a connection it goes with the connection.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Decoded>> {
        self.decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_agent_proto::FrameKind;
    use bytes::BufMut;

    fn drain(decoder: &mut ResyncingDecoder, buf: &mut BytesMut) -> Vec<Decoded> {
        std::iter::from_fn(|| decoder.decode(buf).unwrap()).collect()
    }

    #[test]
    fn frames_split_across_reads_are_joined() {
        let frame = Frame::data(7, FrameKind::Stdin, b"hello".to_vec());
        let wire = [frame.encode(), frame.encode()].concat();
        let (mut decoder, mut buf) = (ResyncingDecoder::default(), BytesMut::new());
        let mut out = Vec::new();
        for byte in &wire {
            buf.put_u8(*byte);
            out.extend(drain(&mut decoder, &mut buf));
        }
        assert_eq!(out, vec![Decoded::Frame(frame.clone()), Decoded::Frame(frame)]);
    }

    #[test]
    fn garbage_is_skipped_until_a_header_parses() {
        let frame = Frame::data(1, FrameKind::Stdout, b"x".to_vec());
        let (mut decoder, mut buf) = (ResyncingDecoder::default(), BytesMut::new());
        // Noise, a false magic with an impossible length, then noise ending in a lone 'B'.
        buf.put_slice(b"xyzBA\0\0\0\0\0\0\xff\xff\xff\xff--B");
        let skipped: usize = drain(&mut decoder, &mut buf)
            .into_iter()
            .map(|d| match d {
                Decoded::Skipped(n) => n,
                Decoded::Frame(f) => panic!("unexpected frame {f:?}"),
            })
            .sum();
        assert_eq!(skipped, 17);
        buf.put_slice(&frame.encode()[1..]);
        assert_eq!(drain(&mut decoder, &mut buf), vec![Decoded::Frame(frame)]);
    }

    #[test]
    fn an_oversized_header_is_skipped_not_buffered() {
        let mut big = Frame::data(1, FrameKind::Stdout, vec![]).encode();
        big[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let frame = Frame::data(2, FrameKind::Stdout, b"after".to_vec());
        let mut buf = BytesMut::from(&[big, frame.encode()].concat()[..]);
        let out = drain(&mut ResyncingDecoder::default(), &mut buf);
        assert_eq!(out.last(), Some(&Decoded::Frame(frame)));
        assert!(out[..out.len() - 1].iter().all(|d| matches!(d, Decoded::Skipped(_))), "{out:?}");
    }

    #[test]
    fn a_partial_frame_waits_until_cleared() {
        let frame = Frame::data(1, FrameKind::Stdout, vec![0; 100]);
        let (mut decoder, mut buf) = (ResyncingDecoder::default(), BytesMut::new());
        buf.put_slice(&frame.encode()[..50]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert_eq!(decoder.decode_eof(&mut buf).unwrap(), None, "left for the caller");
        buf.clear();
        buf.put_slice(&frame.encode());
        assert_eq!(drain(&mut decoder, &mut buf), vec![Decoded::Frame(frame)]);
    }
}
