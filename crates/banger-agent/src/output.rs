//! Reading what a process writes until it is done: the end of its pipes
//! (or terminal), or, once the process itself was reaped, a short grace for
//! a background child still holding them, then what they hold already. A
//! command's end is then never held up by a daemon it started.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use banger_agent_proto::mux::DATA_CHUNK;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::log::log;
use crate::pty::PtyMaster;

/// How long the output may stay open after the process was reaped.
pub(crate) const EXIT_GRACE: Duration = Duration::from_millis(100);

/// After the grace period, what is already there is still read: reads go
/// on while each finds data within this long...
const DRAIN_IDLE: Duration = Duration::from_millis(10);

/// ...for at most this many reads: enough to empty the largest pipe an
/// unprivileged process can ask for (1 MiB), not enough for a chatty
/// background child to keep the command open.
const DRAIN_READS: usize = (1 << 20) / DATA_CHUNK + 2;

/// Where output comes from.
pub(crate) trait Source {
    /// Reads some bytes; 0 at the end.
    fn read(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
}

impl Source for pipe::Receiver {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        AsyncReadExt::read(self, buf).await
    }
}

impl Source for Arc<PtyMaster> {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        PtyMaster::read(self, buf).await
    }
}

/// Tells every [`Output`] of a process when it was reaped.
pub(crate) struct Reaped(watch::Sender<Option<Instant>>);

impl Reaped {
    pub(crate) fn new() -> Reaped {
        Reaped(watch::channel(None).0)
    }

    /// The process was reaped now: its outputs' grace begins.
    pub(crate) fn now(&self) {
        self.0.send_replace(Some(Instant::now() + EXIT_GRACE));
    }

    pub(crate) fn output<S: Source>(&self, source: S) -> Output<S> {
        Output { source, reaped: self.0.subscribe(), drain_reads: 0, buf: vec![0; DATA_CHUNK], name: "output" }
    }
}

/// One output of a process.
pub(crate) struct Output<S> {
    source: S,
    reaped: watch::Receiver<Option<Instant>>,
    drain_reads: usize,
    buf: Vec<u8>,
    name: &'static str,
}

impl<S: Source> Output<S> {
    /// Names the output in logs.
    pub(crate) fn named(mut self, name: &'static str) -> Output<S> {
        self.name = name;
        self
    }

    /// The next bytes; `None` once the output is done.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        loop {
            let grace_end = *self.reaped.borrow_and_update();
            let read = match grace_end {
                None => tokio::select! {
                    read = self.source.read(&mut self.buf) => read,
                    changed = self.reaped.changed() => {
                        if changed.is_err() {
                            // No word will come (the process's waiter is gone): read to the end.
                            return self.read_to_end_of_one().await;
                        }
                        continue;
                    }
                },
                Some(end) if Instant::now() < end => {
                    match tokio::time::timeout_at(end, self.source.read(&mut self.buf)).await {
                        Ok(read) => read,
                        Err(_) => continue,
                    }
                }
                Some(_) => {
                    self.drain_reads += 1;
                    if self.drain_reads > DRAIN_READS {
                        return None;
                    }
                    match tokio::time::timeout(DRAIN_IDLE, self.source.read(&mut self.buf)).await {
                        Ok(read) => read,
                        Err(_) => return None,
                    }
                }
            };
            match read {
                Ok(0) => return None,
                Ok(n) => return Some(Bytes::copy_from_slice(&self.buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log!("reading the {} of a process failed: {e}", self.name);
                    return None;
                }
            }
        }
    }

    async fn read_to_end_of_one(&mut self) -> Option<Bytes> {
        match self.source.read(&mut self.buf).await {
            Ok(n) if n > 0 => Some(Bytes::copy_from_slice(&self.buf[..n])),
            _ => None,
        }
    }
}
