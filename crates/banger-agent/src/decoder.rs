//! Cuts frames out of the bytes read from the channel. Unlike
//! `banger_agent_proto::read_frame` it survives garbage: a host that died
//! mid-frame leaves a desynchronised stream, and the decoder skips bytes
//! until a header parses again.

use banger_agent_proto::{parse_header, Frame, HEADER_LEN, MAGIC};

/// What the decoder found next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole frame.
    Frame(Frame),
    /// This many bytes were dropped while looking for a frame header.
    Skipped(usize),
}

/// Buffers bytes and yields frames.
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Adds bytes read from the channel.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forgets a partial frame (its sender went away).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    /// The next frame or skip, or `None` until more bytes arrive.
    pub(crate) fn next(&mut self) -> Option<Decoded> {
        let Some(start) = self.buf.windows(2).position(|w| w == MAGIC) else {
            // Keep a trailing first magic byte: its second may be in the next read.
            let keep = usize::from(self.buf.last() == Some(&MAGIC[0]));
            return self.skip(self.buf.len() - keep);
        };
        if start > 0 {
            return self.skip(start);
        }
        if self.buf.len() < HEADER_LEN {
            return None;
        }
        let header: &[u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("HEADER_LEN bytes");
        match parse_header(header) {
            Ok((kind, stream, len)) => {
                let end = HEADER_LEN + len as usize;
                if self.buf.len() < end {
                    return None;
                }
                let payload = self.buf[HEADER_LEN..end].to_vec();
                self.buf.drain(..end);
                Some(Decoded::Frame(Frame { stream, kind, payload }))
            }
            // The magic was a coincidence inside garbage: look past it.
            Err(_) => self.skip(1),
        }
    }

    fn skip(&mut self, n: usize) -> Option<Decoded> {
        if n == 0 {
            return None;
        }
        self.buf.drain(..n);
        Some(Decoded::Skipped(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_agent_proto::FrameKind;

    fn drain(decoder: &mut FrameDecoder) -> Vec<Decoded> {
        std::iter::from_fn(|| decoder.next()).collect()
    }

    #[test]
    fn frames_split_across_reads_are_joined() {
        let frame = Frame::data(7, FrameKind::Stdin, b"hello".to_vec());
        let wire = [frame.encode(), frame.encode()].concat();
        let mut decoder = FrameDecoder::default();
        let mut out = Vec::new();
        for byte in &wire {
            decoder.push(std::slice::from_ref(byte));
            out.extend(drain(&mut decoder));
        }
        assert_eq!(out, vec![Decoded::Frame(frame.clone()), Decoded::Frame(frame)]);
    }

    #[test]
    fn garbage_is_skipped_until_a_header_parses() {
        let frame = Frame::data(1, FrameKind::Stdout, b"x".to_vec());
        let mut decoder = FrameDecoder::default();
        // Noise, a false magic with a bad kind, then noise ending in a lone 'B'.
        decoder.push(b"xyzBA\x09\0\0\0\0\0\0\0\0\0--B");
        let skipped: usize = drain(&mut decoder)
            .into_iter()
            .map(|d| match d {
                Decoded::Skipped(n) => n,
                Decoded::Frame(f) => panic!("unexpected frame {f:?}"),
            })
            .sum();
        assert_eq!(skipped, 17);
        decoder.push(&frame.encode()[1..]);
        assert_eq!(drain(&mut decoder), vec![Decoded::Frame(frame)]);
    }

    #[test]
    fn a_partial_frame_waits_and_clear_forgets_it() {
        let frame = Frame::data(1, FrameKind::Stdout, vec![0; 100]);
        let mut decoder = FrameDecoder::default();
        decoder.push(&frame.encode()[..50]);
        assert_eq!(decoder.next(), None);
        decoder.clear();
        decoder.push(&frame.encode());
        assert_eq!(drain(&mut decoder), vec![Decoded::Frame(frame)]);
    }
}
