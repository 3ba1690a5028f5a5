//! Between the blocking tar code and the async WebSocket: a writer whose
//! chunks a channel carries off (a full channel blocks the writer, so the
//! guest's pace reaches the file being read), and a reader fed chunk by
//! chunk that ends only when told the stream is whole.

use std::io::{self, Read, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

/// How much a chunk holds: what one WebSocket message carries.
pub const CHUNK: usize = 64 * 1024;

/// Chunks on their way; with [`CHUNK`], what the CLI holds at most.
const QUEUE: usize = 8;

/// A writer sending [`CHUNK`]-sized pieces to `chunks`.
pub struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Bytes>,
}

/// A writer and the receiving end of its chunks.
pub fn writer() -> (ChunkWriter, mpsc::Receiver<Bytes>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (ChunkWriter { buf: Vec::with_capacity(CHUNK), tx }, rx)
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the copy ended"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// What the reader is fed.
pub enum Piece {
    /// More of the stream.
    Data(Bytes),
    /// The stream is whole.
    End,
    /// The stream failed; the reader fails with this.
    Failed(String),
}

/// A reader of the pieces sent to it. A sender that goes away without
/// [`Piece::End`] is a stream cut short: an error, never an end of file.
pub struct PieceReader {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

/// A reader and the sender feeding it.
pub fn reader() -> (mpsc::Sender<Piece>, PieceReader) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, PieceReader { rx, current: Bytes::new(), ended: false })
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(bytes)) => self.current = bytes,
                Some(Piece::End) => self.ended = true,
                Some(Piece::Failed(why)) => return Err(io::Error::other(why)),
                None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the copy was cut short")),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_ends_only_when_told() {
        let (tx, mut reader) = super::reader();
        std::thread::spawn(move || {
            tx.blocking_send(Piece::Data(Bytes::from_static(b"abc"))).unwrap();
            tx.blocking_send(Piece::End).unwrap();
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abc");

        let (tx, mut reader) = super::reader();
        std::thread::spawn(move || {
            tx.blocking_send(Piece::Data(Bytes::from_static(b"abc"))).unwrap();
        });
        let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_writer_sends_whole_chunks() {
        let (mut writer, mut rx) = writer();
        let reader = std::thread::spawn(move || {
            let mut sizes = Vec::new();
            while let Some(chunk) = rx.blocking_recv() {
                sizes.push(chunk.len());
            }
            sizes
        });
        writer.write_all(&vec![1u8; CHUNK * 2 + 10]).unwrap();
        writer.flush().unwrap();
        drop(writer);
        assert_eq!(reader.join().unwrap(), [CHUNK, CHUNK, 10]);
    }
}
