//! A connection's socket that tells its table entry when bytes arrive or
//! the client has sent nothing more, and leaves the table when it closes, wherever it ends up (an exec relay
//! holds it after an upgrade).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use super::table::{Slot, Table};

/// A unix stream counted in a [`Table`].
pub struct TrackedStream {
    stream: UnixStream,
    slot: Arc<Slot>,
    table: Arc<Table>,
}

impl TrackedStream {
    pub fn new(stream: UnixStream, slot: Arc<Slot>, table: Arc<Table>) -> TrackedStream {
        TrackedStream { stream, slot, table }
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.table.remove(&self.slot);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.slot.read(true),
            Poll::Pending => self.slot.read(false),
            Poll::Ready(_) => {}
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
