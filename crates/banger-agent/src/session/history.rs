//! A session's recent output, as it was written: a bounded ring of bytes
//! that drops the oldest, and the last lines of it.

use std::collections::VecDeque;

/// How much output a session keeps in memory (and, at least, on disk).
pub(crate) const HISTORY_LIMIT: usize = 1 << 20;

/// The last bytes a session wrote, at most `limit` of them.
pub(crate) struct History {
    bytes: VecDeque<u8>,
    limit: usize,
}

impl History {
    pub(crate) fn new(limit: usize) -> History {
        History { bytes: VecDeque::new(), limit }
    }

    /// Appends output; the oldest goes once the ring is full.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(self.limit)..];
        let overflow = (self.bytes.len() + bytes.len()).saturating_sub(self.limit);
        self.bytes.drain(..overflow);
        self.bytes.extend(bytes);
    }

    /// A copy of what is kept: all of it, or the last `lines` lines.
    pub(crate) fn tail(&self, lines: Option<u64>) -> Vec<u8> {
        let (a, b) = self.bytes.as_slices();
        let all = [a, b].concat();
        match lines {
            None => all,
            Some(n) => tail_lines(&all, usize::try_from(n).unwrap_or(usize::MAX)).to_vec(),
        }
    }
}

/// The last `n` lines of `bytes`: a last line without its newline counts as one.
pub(crate) fn tail_lines(bytes: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let mut search = if bytes.ends_with(b"\n") { bytes.len() - 1 } else { bytes.len() };
    for _ in 0..n {
        match bytes[..search].iter().rposition(|b| *b == b'\n') {
            Some(newline) => search = newline,
            None => return bytes,
        }
    }
    &bytes[search + 1..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_cut_at_newlines() {
        let text = b"one\ntwo\r\nthree\nfour";
        assert_eq!(tail_lines(text, 1), b"four");
        assert_eq!(tail_lines(text, 2), b"three\nfour");
        assert_eq!(tail_lines(text, 3), b"two\r\nthree\nfour");
        assert_eq!(tail_lines(text, 10), text);
        assert_eq!(tail_lines(text, 0), b"");
        assert_eq!(tail_lines(b"a\nb\n", 1), b"b\n");
        assert_eq!(tail_lines(b"a\nb\n", 2), b"a\nb\n");
        assert_eq!(tail_lines(b"", 3), b"");
        assert_eq!(tail_lines(b"\n\n", 1), b"\n");
    }

    #[test]
    fn the_ring_drops_the_oldest() {
        let mut history = History::new(8);
        history.push(b"12345");
        history.push(b"6789");
        assert_eq!(history.tail(None), b"23456789");
        history.push(b"abcdefghijkl");
        assert_eq!(history.tail(None), b"efghijkl");
        history.push(b"\nxy");
        assert_eq!(history.tail(Some(1)), b"xy");
        assert_eq!(history.tail(Some(5)), b"hijkl\nxy");
    }
}
