//! Blocking tar work on a thread of its own, joined to a stream by a
//! bounded channel of chunks: the stream goes as fast as the disk, and
//! what waits in between is a few chunks, never a whole archive.

use std::io::{self, Read, Write};

use banger_agent_proto::mux::DATA_CHUNK;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunks in flight between the stream and the thread.
const CHUNKS: usize = 8;

/// The thread's end of an incoming byte stream.
pub(crate) struct ChannelReader {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

/// A channel whose receiving end reads like a file: an error sent into it
/// is the reader's error, and its closing is the end of the file.
pub(crate) fn reader() -> (mpsc::Sender<io::Result<Bytes>>, ChannelReader) {
    let (tx, chunks) = mpsc::channel(CHUNKS);
    (tx, ChannelReader { chunks, current: Bytes::new() })
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The thread's end of an outgoing byte stream, sending chunks of at
/// most [`DATA_CHUNK`]; fails once the receiver is gone.
pub(crate) struct ChannelWriter {
    chunks: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

pub(crate) fn writer() -> (ChannelWriter, mpsc::Receiver<Bytes>) {
    let (chunks, rx) = mpsc::channel(CHUNKS);
    (ChannelWriter { chunks, buf: Vec::with_capacity(DATA_CHUNK) }, rx)
}

impl ChannelWriter {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(DATA_CHUNK)));
        self.chunks
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the copy was abandoned"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(DATA_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == DATA_CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_cross_in_order_and_errors_reach_the_reader() {
        let (tx, mut reader) = reader();
        let read = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            let result = reader.read_to_end(&mut all);
            (all, result.map_err(|e| e.kind()))
        });
        tx.send(Ok(Bytes::from_static(b"hello "))).await.unwrap();
        tx.send(Ok(Bytes::from_static(b"world"))).await.unwrap();
        tx.send(Err(io::ErrorKind::ConnectionReset.into())).await.unwrap();
        let (all, result) = read.await.unwrap();
        assert_eq!(all, b"hello world");
        assert_eq!(result, Err(io::ErrorKind::ConnectionReset));
    }

    #[tokio::test]
    async fn writes_leave_in_chunks_and_fail_once_nobody_reads() {
        let (mut writer, mut rx) = writer();
        let write = tokio::task::spawn_blocking(move || {
            writer.write_all(&vec![7u8; DATA_CHUNK * 2 + 10]).unwrap();
            writer.flush().unwrap();
            writer
        });
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < DATA_CHUNK * 2 + 10 {
            sizes.push(rx.recv().await.unwrap().len());
        }
        assert_eq!(sizes, [DATA_CHUNK, DATA_CHUNK, 10]);
        let mut writer = write.await.unwrap();
        drop(rx);
        let failed = tokio::task::spawn_blocking(move || writer.write_all(&vec![0; DATA_CHUNK]).map_err(|e| e.kind()));
        assert_eq!(failed.await.unwrap(), Err(io::ErrorKind::BrokenPipe));
    }
}
