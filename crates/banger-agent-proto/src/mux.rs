//! Many streams over one channel, each with its own flow control, in the
//! manner of SSH channels, HTTP/2 and yamux.
//!
//! Each side grants the other a window per stream: the bytes of data frames
//! the other may send on it before credit comes back. The receiver queues
//! what arrives (never more than the window) and returns credit as its
//! reader consumes it, so a reader that stops stops only its own stream,
//! and memory per stream is bounded on both sides. Control frames are not
//! windowed but a stream may have only [`MAX_QUEUED_CONTROLS`] of them
//! waiting; a peer that exceeds either bound has the stream reset.
//!
//! [`Mux`] is transport-free: the owner feeds it every frame read from the
//! channel ([`Mux::receive`], which never waits) and writes every frame
//! [`MuxOutput::next`] yields (credit, pongs and resets first). Either side
//! opens streams (the host odd ids, the guest even ones); a stream starts
//! with its first control frame, ends when both sides closed it, or at once
//! with a reset from either side. Dropping a [`Stream`] that is still open
//! resets it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::{Frame, FrameKind, CONTROL_STREAM, HEADER_LEN};

/// The window granted per stream unless the hello says otherwise.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;

/// The largest data payload sent: the virtio-console driver takes at most
/// 32 KiB per write(2), so each frame leaves in one piece.
pub const DATA_CHUNK: usize = 32 * 1024 - HEADER_LEN;

/// Control frames a stream may have waiting for its reader.
pub const MAX_QUEUED_CONTROLS: usize = 64;

/// Frames (pongs, credit, resets) that may wait ahead of the queue before
/// pongs are no longer sent.
const MAX_QUEUED_URGENT: usize = 4 * MAX_STREAMS;

/// Streams the other side may have open at once.
pub const MAX_STREAMS: usize = 1024;

/// Frames queued for the writer across all streams: a full queue makes
/// senders wait, not memory grow.
const OUTPUT_QUEUE: usize = 64;

/// Which side of the channel this is; it decides the ids of new streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// bangerd: opens odd ids.
    Host,
    /// The agent: opens even ids.
    Guest,
}

impl Role {
    fn first_id(self) -> u32 {
        match self {
            Role::Host => 1,
            Role::Guest => 2,
        }
    }

    fn opened(self, id: u32) -> bool {
        id != CONTROL_STREAM && (id % 2 == 1) == (self == Role::Host)
    }
}

/// Why a stream or the connection cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// The stream was reset (by either side), with the reason.
    #[error("the stream was reset: {0}")]
    Reset(String),
    /// This side closed the stream already.
    #[error("the stream is closed")]
    Closed,
    /// The connection is gone, with the reason.
    #[error("the agent connection closed: {0}")]
    Gone(String),
    /// Too many streams are open.
    #[error("too many streams are open")]
    TooManyStreams,
}

/// What arrived on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A control message (JSON; see [`Event::message`]).
    Control(Bytes),
    /// Bytes of a channel; `fin` says the channel ended after them.
    Data {
        /// Stdin, stdout or stderr.
        kind: FrameKind,
        /// The bytes (may be empty with `fin`).
        bytes: Bytes,
        /// The sender sends no more on this channel.
        fin: bool,
    },
}

impl Event {
    /// Decodes a control event's message; `None` for data or bad JSON.
    pub fn message<T: for<'de> serde::Deserialize<'de>>(&self) -> Option<T> {
        match self {
            Event::Control(json) => serde_json::from_slice(json).ok(),
            Event::Data { .. } => None,
        }
    }
}

/// One side's multiplexer for one channel. Clones share it.
#[derive(Clone)]
pub struct Mux {
    inner: Arc<Inner>,
}

struct Inner {
    role: Role,
    /// What we grant each stream.
    window: u32,
    /// What the peer grants each stream.
    peer_window: u32,
    queue: mpsc::Sender<Frame>,
    state: Mutex<State>,
    /// Frames that go before the queue.
    urgent: Mutex<VecDeque<Frame>>,
    urgent_ready: Notify,
    gone: AtomicBool,
    gone_notify: Notify,
}

struct State {
    streams: HashMap<u32, Arc<Shared>>,
    next_id: u32,
    /// The highest id the peer opened: a lower unknown id is a stream that ended.
    peer_high: u32,
    pings: HashMap<u64, oneshot::Sender<()>>,
    next_ping: u64,
    last_heard: Instant,
    gone_reason: Option<String>,
}

/// A stream's state, shared by its handle, its senders and the mux.
struct Shared {
    id: u32,
    inbox: Mutex<Inbox>,
    readable: Notify,
    outbox: Mutex<Outbox>,
    writable: Notify,
}

struct Inbox {
    events: VecDeque<Event>,
    controls: usize,
    /// Data bytes the peer may still send before more credit.
    granted: u32,
    /// Data bytes read since credit was last returned.
    consumed: u32,
    remote_closed: bool,
    reset: Option<String>,
}

struct Outbox {
    credit: u32,
    local_closed: bool,
    reset: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The frames to write to the channel, in order.
pub struct MuxOutput {
    inner: Arc<Inner>,
    queue: mpsc::Receiver<Frame>,
}

impl MuxOutput {
    /// The next frame to write; `None` once the mux is shut down.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = lock(&self.inner.urgent).pop_front() {
                return Some(frame);
            }
            if self.inner.gone.load(Ordering::SeqCst) {
                return None;
            }
            tokio::select! {
                biased;
                () = self.inner.urgent_ready.notified() => {}
                () = self.inner.gone_notify.notified() => {}
                frame = self.queue.recv() => return frame,
            }
        }
    }
}

impl Mux {
    /// A multiplexer granting `window` bytes per stream to a peer that grants
    /// `peer_window` (both from the handshake).
    pub fn new(role: Role, window: u32, peer_window: u32) -> (Mux, MuxOutput) {
        let (queue, rx) = mpsc::channel(OUTPUT_QUEUE);
        let inner = Arc::new(Inner {
            role,
            window: window.max(1),
            peer_window: peer_window.max(1),
            queue,
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_id: role.first_id(),
                peer_high: 0,
                pings: HashMap::new(),
                next_ping: 1,
                last_heard: Instant::now(),
                gone_reason: None,
            }),
            urgent: Mutex::new(VecDeque::new()),
            urgent_ready: Notify::new(),
            gone: AtomicBool::new(false),
            gone_notify: Notify::new(),
        });
        (Mux { inner: inner.clone() }, MuxOutput { inner, queue: rx })
    }

    /// Opens a stream; its first frame should be the control message that says what it is for.
    pub fn open(&self) -> Result<Stream, MuxError> {
        let mut state = lock(&self.inner.state);
        if let Some(reason) = &state.gone_reason {
            return Err(MuxError::Gone(reason.clone()));
        }
        if state.streams.len() >= MAX_STREAMS {
            return Err(MuxError::TooManyStreams);
        }
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(2);
        Ok(self.insert(&mut state, id))
    }

    fn insert(&self, state: &mut State, id: u32) -> Stream {
        let shared = Arc::new(Shared {
            id,
            inbox: Mutex::new(Inbox {
                events: VecDeque::new(),
                controls: 0,
                granted: self.inner.window,
                consumed: 0,
                remote_closed: false,
                reset: None,
            }),
            readable: Notify::new(),
            outbox: Mutex::new(Outbox { credit: self.inner.peer_window, local_closed: false, reset: None }),
            writable: Notify::new(),
        });
        state.streams.insert(id, shared.clone());
        Stream { sender: StreamSender { shared, mux: self.clone() }, finished: false }
    }

    /// Takes one frame read from the channel; returns the stream it opened,
    /// if the peer opened one. Never waits.
    pub fn receive(&self, frame: Frame) -> Option<Stream> {
        let mut state = lock(&self.inner.state);
        state.last_heard = Instant::now();
        if state.gone_reason.is_some() {
            return None;
        }
        match frame.kind {
            FrameKind::Ping => {
                // A peer that pings faster than it reads gets no more
                // pongs than this queued, not a queue without end.
                if lock(&self.inner.urgent).len() < MAX_QUEUED_URGENT {
                    self.urgent(Frame::data(frame.stream, FrameKind::Pong, frame.payload));
                }
                return None;
            }
            FrameKind::Pong => {
                if let Ok(id) = <[u8; 8]>::try_from(&frame.payload[..]) {
                    if let Some(waiter) = state.pings.remove(&u64::from_be_bytes(id)) {
                        let _ = waiter.send(());
                    }
                }
                return None;
            }
            FrameKind::Unknown(_) => return None,
            _ => {}
        }
        let id = frame.stream;
        let Some(shared) = state.streams.get(&id).cloned() else {
            return self.receive_unknown(&mut state, frame);
        };
        drop(state);
        self.deliver(&shared, frame);
        None
    }

    /// A frame for a stream not in the table: a new stream, or one that ended.
    fn receive_unknown(&self, state: &mut State, frame: Frame) -> Option<Stream> {
        let id = frame.stream;
        let new = frame.kind == FrameKind::Control
            && id > state.peer_high
            && !self.inner.role.opened(id)
            && id != CONTROL_STREAM;
        if !new {
            // Late frames of a stream that ended, or stream 0's: nothing to do.
            return None;
        }
        state.peer_high = id;
        if state.streams.len() >= MAX_STREAMS {
            self.urgent(Frame::data(id, FrameKind::Reset, "too many streams are open"));
            return None;
        }
        let stream = self.insert(state, id);
        self.deliver(&stream.sender.shared, frame);
        Some(stream)
    }

    fn deliver(&self, shared: &Arc<Shared>, frame: Frame) {
        match frame.kind {
            FrameKind::Window => {
                let Ok(bytes) = <[u8; 4]>::try_from(&frame.payload[..]) else { return };
                let mut outbox = lock(&shared.outbox);
                outbox.credit = outbox.credit.saturating_add(u32::from_be_bytes(bytes));
                drop(outbox);
                shared.writable.notify_waiters();
            }
            FrameKind::Reset => {
                let reason = String::from_utf8_lossy(&frame.payload).into_owned();
                self.end(shared, if reason.is_empty() { "by the other side".into() } else { reason });
            }
            FrameKind::Close => {
                lock(&shared.inbox).remote_closed = true;
                shared.readable.notify_waiters();
                self.forget_if_done(shared);
            }
            FrameKind::Control => {
                let mut inbox = lock(&shared.inbox);
                if inbox.remote_closed || inbox.reset.is_some() {
                    return;
                }
                if inbox.controls >= MAX_QUEUED_CONTROLS {
                    drop(inbox);
                    return self.reset_both(shared, "too many control messages are waiting");
                }
                inbox.controls += 1;
                inbox.events.push_back(Event::Control(frame.payload));
                drop(inbox);
                shared.readable.notify_waiters();
            }
            kind if kind.is_data() => {
                let mut inbox = lock(&shared.inbox);
                if inbox.remote_closed || inbox.reset.is_some() {
                    return;
                }
                let len = frame.payload.len() as u32;
                if len > inbox.granted {
                    drop(inbox);
                    return self.reset_both(shared, "data beyond the stream's window");
                }
                inbox.granted -= len;
                inbox.events.push_back(Event::Data {
                    kind,
                    bytes: frame.payload,
                    fin: frame.flags & crate::FLAG_FIN != 0,
                });
                drop(inbox);
                shared.readable.notify_waiters();
            }
            _ => {}
        }
    }

    /// Resets a stream on both sides, at once (ahead of queued frames).
    fn reset_both(&self, shared: &Arc<Shared>, reason: &str) {
        self.urgent(Frame::data(shared.id, FrameKind::Reset, reason.to_string()));
        self.end(shared, reason.to_string());
    }

    /// Resets a stream on both sides after what it queued already, so a
    /// request sent just before still arrives first.
    fn reset_after_queued(&self, shared: &Arc<Shared>, reason: &str) {
        let frame = Frame::data(shared.id, FrameKind::Reset, reason.to_string());
        if let Err(e) = self.inner.queue.try_send(frame) {
            self.urgent(e.into_inner());
        }
        self.end(shared, reason.to_string());
    }

    /// Ends a stream on this side: readers and writers see `reason`.
    fn end(&self, shared: &Arc<Shared>, reason: String) {
        lock(&shared.inbox).reset.get_or_insert(reason.clone());
        lock(&shared.outbox).reset.get_or_insert(reason);
        shared.readable.notify_waiters();
        shared.writable.notify_waiters();
        self.forget(shared.id);
    }

    fn forget(&self, id: u32) {
        lock(&self.inner.state).streams.remove(&id);
    }

    fn forget_if_done(&self, shared: &Arc<Shared>) {
        let remote_closed = lock(&shared.inbox).remote_closed;
        if remote_closed && lock(&shared.outbox).local_closed {
            self.forget(shared.id);
        }
    }

    fn urgent(&self, frame: Frame) {
        lock(&self.inner.urgent).push_back(frame);
        self.inner.urgent_ready.notify_one();
    }

    /// Sends a ping and waits for its pong (the caller bounds the wait).
    pub async fn ping(&self) -> Result<Duration, MuxError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = lock(&self.inner.state);
            if let Some(reason) = &state.gone_reason {
                return Err(MuxError::Gone(reason.clone()));
            }
            let id = state.next_ping;
            state.next_ping += 1;
            state.pings.insert(id, tx);
            id
        };
        let sent = Instant::now();
        self.urgent(Frame::data(CONTROL_STREAM, FrameKind::Ping, id.to_be_bytes().to_vec()));
        rx.await.map_err(|_| self.gone_error())?;
        Ok(sent.elapsed())
    }

    /// When the last frame arrived from the peer.
    pub fn last_heard(&self) -> Instant {
        lock(&self.inner.state).last_heard
    }

    /// Ends the connection: every stream sees `reason`, the output ends.
    pub fn shut_down(&self, reason: &str) {
        let streams: Vec<Arc<Shared>> = {
            let mut state = lock(&self.inner.state);
            if state.gone_reason.is_some() {
                return;
            }
            state.gone_reason = Some(reason.to_string());
            state.pings.clear();
            state.streams.drain().map(|(_, s)| s).collect()
        };
        for shared in streams {
            lock(&shared.inbox).reset.get_or_insert(reason.to_string());
            lock(&shared.outbox).reset.get_or_insert(reason.to_string());
            shared.readable.notify_waiters();
            shared.writable.notify_waiters();
        }
        self.inner.gone.store(true, Ordering::SeqCst);
        self.inner.gone_notify.notify_waiters();
        self.inner.urgent_ready.notify_one();
    }

    /// Whether [`Mux::shut_down`] was called.
    pub fn is_gone(&self) -> bool {
        self.inner.gone.load(Ordering::SeqCst)
    }

    /// Waits until the mux is shut down.
    pub async fn gone(&self) {
        loop {
            let notified = self.inner.gone_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_gone() {
                return;
            }
            notified.await;
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        lock(&self.inner.state).streams.len()
    }

    fn gone_error(&self) -> MuxError {
        MuxError::Gone(lock(&self.inner.state).gone_reason.clone().unwrap_or_else(|| "shut down".into()))
    }
}

/// The sending half of a stream; clones send on the same stream.
#[derive(Clone)]
pub struct StreamSender {
    shared: Arc<Shared>,
    mux: Mux,
}

impl StreamSender {
    /// The stream's id.
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    fn check(&self) -> Result<(), MuxError> {
        let outbox = lock(&self.shared.outbox);
        if let Some(reason) = &outbox.reset {
            return Err(if self.mux.is_gone() { self.mux.gone_error() } else { MuxError::Reset(reason.clone()) });
        }
        if outbox.local_closed {
            return Err(MuxError::Closed);
        }
        Ok(())
    }

    async fn enqueue(&self, frame: Frame) -> Result<(), MuxError> {
        self.mux.inner.queue.send(frame).await.map_err(|_| self.mux.gone_error())
    }

    /// Sends a control message.
    pub async fn send<T: Serialize>(&self, message: &T) -> Result<(), MuxError> {
        self.check()?;
        self.enqueue(Frame::control(self.shared.id, message)).await
    }

    /// Sends `bytes` on a data channel, waiting for credit as needed.
    pub async fn write(&self, kind: FrameKind, mut bytes: Bytes) -> Result<(), MuxError> {
        debug_assert!(kind.is_data());
        while !bytes.is_empty() {
            let n = self.take_credit(bytes.len().min(DATA_CHUNK)).await?;
            self.enqueue(Frame::data(self.shared.id, kind, bytes.split_to(n))).await?;
        }
        Ok(())
    }

    /// Ends a data channel (the other side sees `fin`).
    pub async fn finish(&self, kind: FrameKind) -> Result<(), MuxError> {
        self.check()?;
        self.enqueue(Frame::empty(self.shared.id, kind).fin()).await
    }

    /// Waits for credit and takes up to `want` bytes of it.
    async fn take_credit(&self, want: usize) -> Result<usize, MuxError> {
        loop {
            let notified = self.shared.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.check()?;
            {
                let mut outbox = lock(&self.shared.outbox);
                if outbox.credit > 0 {
                    let n = want.min(outbox.credit as usize);
                    outbox.credit -= n as u32;
                    return Ok(n);
                }
            }
            notified.await;
        }
    }

    /// Says this side sends nothing more; the stream ends once the other
    /// side closes too.
    pub async fn close(&self) -> Result<(), MuxError> {
        self.check()?;
        lock(&self.shared.outbox).local_closed = true;
        self.enqueue(Frame::empty(self.shared.id, FrameKind::Close)).await?;
        self.mux.forget_if_done(&self.shared);
        Ok(())
    }

    /// Abandons the stream on both sides (after what was sent on it already).
    pub fn reset(&self, reason: &str) {
        if lock(&self.shared.outbox).reset.is_some() {
            return;
        }
        self.mux.reset_after_queued(&self.shared, reason);
    }

    /// Waits until the stream is reset or the connection ends; returns the reason.
    pub async fn reset_seen(&self) -> String {
        loop {
            let notified = self.shared.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = &lock(&self.shared.outbox).reset {
                return reason.clone();
            }
            notified.await;
        }
    }
}

/// One stream: what arrives on it, and (through [`Stream::sender`]) what
/// goes out. Dropping it before both sides closed it resets it.
pub struct Stream {
    sender: StreamSender,
    finished: bool,
}

impl Stream {
    /// The stream's id.
    pub fn id(&self) -> u32 {
        self.sender.shared.id
    }

    /// A handle that sends on this stream.
    pub fn sender(&self) -> StreamSender {
        self.sender.clone()
    }

    /// The next event; `Ok(None)` once the other side closed the stream and
    /// everything it sent was read; an error once it was reset.
    pub async fn recv(&mut self) -> Result<Option<Event>, MuxError> {
        let (mux, id) = (self.sender.mux.clone(), self.id());
        self.next_with(|inbox| {
            let event = inbox.events.pop_front()?;
            match &event {
                Event::Control(_) => inbox.controls -= 1,
                Event::Data { bytes, .. } => {
                    inbox.consumed += bytes.len() as u32;
                    // Credit goes back in quarters of the window, not per frame.
                    if inbox.consumed >= mux.inner.window / 4 {
                        let credit = std::mem::take(&mut inbox.consumed);
                        inbox.granted += credit;
                        mux.urgent(Frame::data(id, FrameKind::Window, credit.to_be_bytes().to_vec()));
                    }
                }
            }
            Some(event)
        })
        .await
    }

    /// The next control message, passing over data queued before it (which
    /// stays queued, and keeps counting against the window): a reader that
    /// cannot take more data now (a command not reading its stdin) still
    /// sees a signal or a resize sent after it. `Ok(None)` once the other
    /// side closed the stream and no control message is left; an error
    /// once it was reset.
    pub async fn recv_control(&mut self) -> Result<Option<Bytes>, MuxError> {
        self.next_with(|inbox| {
            let at = inbox.events.iter().position(|e| matches!(e, Event::Control(_)))?;
            let Some(Event::Control(json)) = inbox.events.remove(at) else { unreachable!("a control event was found") };
            inbox.controls -= 1;
            Some(json)
        })
        .await
    }

    /// Waits until `take` finds what it wants in the inbox; `Ok(None)` once
    /// the other side closed the stream and `take` finds nothing, an error
    /// once the stream was reset.
    async fn next_with<T>(&mut self, mut take: impl FnMut(&mut Inbox) -> Option<T>) -> Result<Option<T>, MuxError> {
        let shared = self.sender.shared.clone();
        loop {
            let notified = shared.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inbox = lock(&shared.inbox);
                if let Some(reason) = inbox.reset.clone() {
                    drop(inbox);
                    self.finished = true;
                    let mux = &self.sender.mux;
                    return Err(if mux.is_gone() { mux.gone_error() } else { MuxError::Reset(reason) });
                }
                if let Some(found) = take(&mut inbox) {
                    return Ok(Some(found));
                }
                if inbox.remote_closed {
                    drop(inbox);
                    self.finished = lock(&shared.outbox).local_closed;
                    return Ok(None);
                }
            }
            notified.await;
        }
    }

    /// Sends a control message.
    pub async fn send<T: Serialize>(&self, message: &T) -> Result<(), MuxError> {
        self.sender.send(message).await
    }

    /// Sends bytes on a data channel, waiting for credit.
    pub async fn write(&self, kind: FrameKind, bytes: Bytes) -> Result<(), MuxError> {
        self.sender.write(kind, bytes).await
    }

    /// Ends a data channel.
    pub async fn finish(&self, kind: FrameKind) -> Result<(), MuxError> {
        self.sender.finish(kind).await
    }

    /// Closes this side; the stream ends when the other side closes too.
    pub async fn close(&mut self) -> Result<(), MuxError> {
        self.sender.close().await?;
        self.finished = lock(&self.sender.shared.inbox).remote_closed;
        Ok(())
    }

    /// Abandons the stream on both sides.
    pub fn reset(&mut self, reason: &str) {
        self.sender.reset(reason);
        self.finished = true;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let closed = lock(&self.sender.shared.inbox).remote_closed && lock(&self.sender.shared.outbox).local_closed;
        if !closed {
            self.sender.reset("abandoned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reply, Request};

    /// Two muxes joined back to back, frames carried by tasks; with the
    /// streams each side accepted (the guest's first).
    fn pair(window: u32) -> (Mux, Mux, mpsc::UnboundedReceiver<Stream>, mpsc::UnboundedReceiver<Stream>) {
        let (host, host_out) = Mux::new(Role::Host, window, window);
        let (guest, guest_out) = Mux::new(Role::Guest, window, window);
        let accepted_by_guest = carry(host_out, guest.clone());
        let accepted_by_host = carry(guest_out, host.clone());
        (host, guest, accepted_by_guest, accepted_by_host)
    }

    /// Moves frames from one side's output into the other's receive; the
    /// streams the receiver's peer opened come out of the channel returned.
    fn carry(mut from: MuxOutput, to: Mux) -> mpsc::UnboundedReceiver<Stream> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(frame) = from.next().await {
                if let Some(stream) = to.receive(frame) {
                    let _ = tx.send(stream);
                }
            }
            to.shut_down("the other side went away");
        });
        rx
    }

    async fn data(stream: &mut Stream) -> Vec<u8> {
        match stream.recv().await.unwrap().unwrap() {
            Event::Data { bytes, .. } => bytes.to_vec(),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stream_carries_messages_and_data_both_ways_and_closes() {
        let (host, _guest, mut accepted, _) = pair(DEFAULT_WINDOW);
        let mut a = host.open().unwrap();
        a.send(&Request::Stats).await.unwrap();
        a.write(FrameKind::Stdin, Bytes::from_static(b"in")).await.unwrap();
        a.finish(FrameKind::Stdin).await.unwrap();
        let mut b = accepted.recv().await.unwrap();
        assert_eq!(b.recv().await.unwrap().unwrap().message::<Request>(), Some(Request::Stats));
        assert_eq!(data(&mut b).await, b"in");
        assert_eq!(
            b.recv().await.unwrap(),
            Some(Event::Data { kind: FrameKind::Stdin, bytes: Bytes::new(), fin: true })
        );
        b.write(FrameKind::Stdout, Bytes::from_static(b"out")).await.unwrap();
        b.send(&Reply::Done).await.unwrap();
        b.close().await.unwrap();
        assert_eq!(data(&mut a).await, b"out");
        assert_eq!(a.recv().await.unwrap().unwrap().message::<Reply>(), Some(Reply::Done));
        assert_eq!(a.recv().await.unwrap(), None);
        a.close().await.unwrap();
        drop((a, b));
        tokio::task::yield_now().await;
        assert_eq!(host.open_streams(), 0);
    }

    #[tokio::test]
    async fn a_reader_that_stops_holds_up_only_its_own_stream() {
        let window = 64 * 1024;
        let (host, _guest, mut accepted, _) = pair(window);
        let (slow, fast) = (host.open().unwrap(), host.open().unwrap());
        slow.send(&Request::Stats).await.unwrap();
        fast.send(&Request::Stats).await.unwrap();
        let (mut slow_in, mut fast_in) = (accepted.recv().await.unwrap(), accepted.recv().await.unwrap());
        slow_in.recv().await.unwrap();
        fast_in.recv().await.unwrap();
        // The slow stream's writer gets one window through and then waits.
        let blocked = tokio::spawn(async move {
            slow.write(FrameKind::Stdin, Bytes::from(vec![1u8; 4 * window as usize])).await.unwrap();
            slow
        });
        // Meanwhile the other stream moves 16 windows' worth.
        let total = 16 * window as usize;
        let writer = tokio::spawn(async move {
            fast.write(FrameKind::Stdin, Bytes::from(vec![2u8; total])).await.unwrap();
            fast
        });
        let mut got = 0;
        while got < total {
            got += data(&mut fast_in).await.len();
        }
        writer.await.unwrap();
        assert!(!blocked.is_finished(), "the slow stream's writer must wait for its reader");
        let queued: usize = lock(&slow_in.sender.shared.inbox)
            .events
            .iter()
            .map(|e| match e {
                Event::Data { bytes, .. } => bytes.len(),
                _ => 0,
            })
            .sum();
        assert!(queued <= window as usize, "at most one window is buffered ({queued} bytes)");
        // Reading the slow stream lets its writer finish.
        let mut got = 0;
        while got < 4 * window as usize {
            got += data(&mut slow_in).await.len();
        }
        blocked.await.unwrap();
    }

    #[tokio::test]
    async fn data_beyond_the_window_resets_the_stream() {
        let (host, _) = Mux::new(Role::Host, 16, 16);
        let (guest, _out) = Mux::new(Role::Guest, 16, 16);
        let mut opened = guest.receive(Frame::control(1, &Request::Stats)).unwrap();
        opened.recv().await.unwrap();
        assert!(guest.receive(Frame::data(1, FrameKind::Stdin, vec![0; 17])).is_none());
        assert!(matches!(opened.recv().await, Err(MuxError::Reset(r)) if r.contains("window")));
        drop(host);
    }

    #[tokio::test]
    async fn reset_reaches_the_other_side_and_drop_resets() {
        let (host, _guest, mut accepted, _) = pair(DEFAULT_WINDOW);
        let mut a = host.open().unwrap();
        a.send(&Request::Stats).await.unwrap();
        let mut b = accepted.recv().await.unwrap();
        b.recv().await.unwrap();
        a.reset("the client left");
        assert_eq!(b.recv().await, Err(MuxError::Reset("the client left".into())));
        let c = host.open().unwrap();
        c.send(&Request::Stats).await.unwrap();
        let mut d = accepted.recv().await.unwrap();
        d.recv().await.unwrap();
        drop(c);
        assert_eq!(d.recv().await, Err(MuxError::Reset("abandoned".into())));
        assert!(d.write(FrameKind::Stdout, Bytes::from_static(b"x")).await.is_err());
    }

    #[tokio::test]
    async fn pings_are_answered_and_unknown_frames_skipped() {
        let (host, guest, _, _) = pair(DEFAULT_WINDOW);
        assert!(guest.receive(Frame::data(0, FrameKind::Unknown(77), b"future".to_vec())).is_none());
        assert!(guest.receive(Frame::data(99, FrameKind::Stdout, b"stray".to_vec())).is_none());
        let rtt = tokio::time::timeout(Duration::from_secs(5), host.ping()).await.unwrap().unwrap();
        assert!(rtt < Duration::from_secs(5));
        assert!(host.last_heard().elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_ping_flood_queues_a_bounded_number_of_pongs() {
        let (guest, _out) = Mux::new(Role::Guest, 1024, 1024);
        for _ in 0..10 * MAX_QUEUED_URGENT {
            guest.receive(Frame::data(0, FrameKind::Ping, 1u64.to_be_bytes().to_vec()));
        }
        assert_eq!(lock(&guest.inner.urgent).len(), MAX_QUEUED_URGENT);
    }

    #[tokio::test]
    async fn shutting_down_ends_every_stream_and_the_output() {
        let (host, mut out) = Mux::new(Role::Host, 1024, 1024);
        let mut a = host.open().unwrap();
        host.shut_down("the guest stopped answering");
        assert_eq!(a.recv().await, Err(MuxError::Gone("the guest stopped answering".into())));
        assert!(a.send(&Request::Stats).await.is_err());
        assert!(host.open().is_err());
        assert!(matches!(host.ping().await, Err(MuxError::Gone(_))));
        // The output yields what was queued before (the reset of nothing) and then ends.
        while out.next().await.is_some() {}
        host.gone().await;
    }

    #[tokio::test]
    async fn controls_can_be_read_past_queued_data() {
        let (guest, _out) = Mux::new(Role::Guest, 1024, 1024);
        let mut s = guest.receive(Frame::control(1, &Request::Stats)).unwrap();
        s.recv().await.unwrap();
        guest.receive(Frame::data(1, FrameKind::Stdin, b"unread".to_vec()));
        guest.receive(Frame::control(1, &Request::Signal { signal: 2 }));
        let control = s.recv_control().await.unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<Request>(&control).unwrap(), Request::Signal { signal: 2 });
        // The data is still there, in order, and no control is left.
        assert_eq!(data(&mut s).await, b"unread");
        guest.receive(Frame::empty(1, FrameKind::Close));
        assert_eq!(s.recv_control().await.unwrap(), None);
        guest.receive(Frame::data(1, FrameKind::Reset, b"gone".to_vec()));
        assert_eq!(s.recv_control().await, Err(MuxError::Reset("gone".into())));
    }

    #[tokio::test]
    async fn control_floods_are_bounded() {
        let (guest, _out) = Mux::new(Role::Guest, 1024, 1024);
        let mut s = guest.receive(Frame::control(1, &Request::Stats)).unwrap();
        for _ in 0..MAX_QUEUED_CONTROLS {
            guest.receive(Frame::control(1, &Request::Stats));
        }
        let mut seen = 0;
        loop {
            match s.recv().await {
                Ok(Some(_)) => seen += 1,
                Err(MuxError::Reset(reason)) => {
                    assert!(reason.contains("control"), "{reason}");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(seen <= MAX_QUEUED_CONTROLS);
    }
}
