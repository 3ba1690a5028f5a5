//! The write side of a channel: one task owns it, everything else queues
//! frames to that task. Each frame carries the generation of the host
//! connection it was made for; after a new host says hello, frames meant for
//! the previous one are dropped instead of confusing the new one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use banger_agent_proto::{Frame, FrameCodec};
use futures_util::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

use crate::log::log;

/// Frames waiting for the writer; a full queue makes output pumps wait,
/// which in turn makes the processes wait on their pipes.
const QUEUE_DEPTH: usize = 64;

struct Outgoing {
    generation: u64,
    frame: Frame,
}

/// A handle for queueing frames to the host connection of one generation.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    generation: u64,
}

impl Outbox {
    /// Queues a frame; false when the writer is gone (the host disconnected).
    pub(crate) async fn send(&self, frame: Frame) -> bool {
        self.tx.send(Outgoing { generation: self.generation, frame }).await.is_ok()
    }
}

/// The writer task of one channel and the current host generation.
pub(crate) struct Writer {
    tx: mpsc::Sender<Outgoing>,
    current: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the task that owns `sink`. With `persistent` (a virtio-serial
    /// port, which outlives host connections) a write error is logged and the
    /// frame dropped; otherwise it ends the task.
    pub(crate) fn start<W>(sink: W, persistent: bool) -> Writer
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Outgoing>(QUEUE_DEPTH);
        let current = Arc::new(AtomicU64::new(0));
        let generation = current.clone();
        let mut sink = FramedWrite::new(sink, FrameCodec::new());
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                if out.generation != generation.load(Ordering::Relaxed) {
                    continue;
                }
                // `send` flushes, so each frame leaves as soon as it is queued.
                if let Err(e) = sink.send(out.frame).await {
                    if !persistent {
                        return;
                    }
                    log!("writing to the host failed: {e}");
                    // The frame is dropped whole: a next host must not get its tail.
                    sink.write_buffer_mut().clear();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Writer { tx, current }
    }

    /// An outbox for the current host connection.
    pub(crate) fn outbox(&self) -> Outbox {
        Outbox { tx: self.tx.clone(), generation: self.current.load(Ordering::Relaxed) }
    }

    /// A new host connection begins: frames queued for older ones are dropped.
    pub(crate) fn next_generation(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}
