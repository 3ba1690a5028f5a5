//! The session requests that hold a stream: start, attach, logs, send and
//! wait. The session goes on whatever becomes of the stream: a client
//! detaching (closing or resetting its stream) only ends its own view.

use banger_agent_proto::mux::{Stream, StreamSender};
use banger_agent_proto::{FrameKind, Reply, Request, SessionStart, TtySize};
use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};

use super::live::Session;
use super::Sessions;
use crate::exec::{next_event, Incoming};
use crate::requests::{answer, close};

pub(crate) async fn start(stream: Stream, start: SessionStart, sessions: &Sessions) {
    let reply = sessions.start(start).map(Reply::Session);
    answer(stream, reply.unwrap_or_else(|r| r.reply())).await
}

/// `session`, the screen as it is, then the live output until the process
/// ends (`exited`) or the client detaches; what the client types goes in.
pub(crate) async fn attach(
    mut stream: Stream,
    name: &str,
    size: Option<TtySize>,
    read_only: bool,
    sessions: &Sessions,
) {
    let session = match sessions.get(name) {
        Ok(session) => session,
        Err(refusal) => return answer(stream, refusal.reply()).await,
    };
    if let Some(size) = size {
        session.resize(size);
    }
    let _attached = session.attach();
    let sender = stream.sender();
    if sender.send(&Reply::Session(session.info())).await.is_err() {
        return;
    }
    let watch = async {
        let view = session.view();
        if sender.write(FrameKind::Stdout, view.screen).await.is_err() {
            return false;
        }
        if let Some(live) = view.live {
            if !forward(&session, live, &sender, true).await {
                return false;
            }
        }
        sender.send(&session.exited()).await.is_ok()
    };
    let watched = tokio::select! {
        ended = watch => Some(ended),
        // The client closed its side (a detach: true) or reset it.
        detached = type_in(&mut stream, &session, !read_only) => {
            if detached {
                let _ = stream.close().await;
            }
            None
        }
    };
    if watched == Some(true) {
        close(stream).await;
    }
}

/// Sends live output until it ends (true) or the client is gone (false).
/// A client that falls behind skips ahead: with `redraw`, to the screen as
/// it is then (an attach), else to the output at that point (logs).
async fn forward(session: &Session, mut live: broadcast::Receiver<Bytes>, sender: &StreamSender, redraw: bool) -> bool {
    loop {
        match live.recv().await {
            Ok(bytes) => {
                if sender.write(FrameKind::Stdout, bytes).await.is_err() {
                    return false;
                }
            }
            Err(RecvError::Lagged(_)) if redraw => {
                let view = session.view();
                if sender.write(FrameKind::Stdout, view.screen).await.is_err() {
                    return false;
                }
                match view.live {
                    Some(next) => live = next,
                    None => return true,
                }
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return true,
        }
    }
}

/// Takes what the client sends: stdin data (typed into the session when
/// `typing`), resizes. True when the client closed its side, false when
/// it reset the stream. Typed data is taken one chunk at a time, as the
/// session takes it, but resizes are read past waiting data.
async fn type_in(stream: &mut Stream, session: &Session, typing: bool) -> bool {
    let mut pending: Option<Bytes> = None;
    loop {
        let slot = async {
            match &pending {
                Some(_) => session.input_slot().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = next_event(stream, pending.is_none()) => match event {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(Incoming::Data { bytes, .. })) => {
                    if typing && !bytes.is_empty() {
                        pending = Some(bytes);
                    }
                }
                Ok(Some(Incoming::Control(Some(Request::Resize(size))))) => session.resize(size),
                Ok(Some(Incoming::Control(_))) => {}
            },
            slot = slot => match slot {
                Some(slot) => {
                    slot.send(pending.take().unwrap_or_default());
                }
                // The session ended: what is typed now goes nowhere.
                None => pending = None,
            },
        }
    }
}

/// The history (or its last `tail` lines) as stdout data; with `follow`,
/// the live output after it until the process ends (`exited`), else `done`.
pub(crate) async fn logs(mut stream: Stream, name: &str, follow: bool, tail: Option<u64>, sessions: &Sessions) {
    let session = match sessions.get(name) {
        Ok(session) => session,
        Err(refusal) => return answer(stream, refusal.reply()).await,
    };
    let (history, live) = session.history(tail, follow);
    let sender = stream.sender();
    let send = async {
        if sender.write(FrameKind::Stdout, history.into()).await.is_err() {
            return false;
        }
        if !follow {
            return sender.send(&Reply::Done).await.is_ok();
        }
        if let Some(live) = live {
            if !forward(&session, live, &sender, false).await {
                return false;
            }
        }
        sender.send(&session.exited()).await.is_ok()
    };
    let sent = tokio::select! {
        sent = send => sent,
        // The client left (or closed its side) before the end.
        () = drain(&mut stream) => false,
    };
    if sent {
        close(stream).await;
    }
}

/// Reads the stream until the client closes or resets it.
async fn drain(stream: &mut Stream) {
    while let Ok(Some(_)) = stream.recv().await {}
}

/// Types the stdin data that follows into the session, until its FIN; `done`.
pub(crate) async fn send(mut stream: Stream, name: &str, sessions: &Sessions) {
    let session = match sessions.get(name) {
        Ok(session) => session,
        Err(refusal) => return answer(stream, refusal.reply()).await,
    };
    loop {
        match stream.recv().await {
            Err(_) => return,
            Ok(None) => break,
            Ok(Some(event)) => {
                let banger_agent_proto::mux::Event::Data { kind: FrameKind::Stdin, bytes, fin } = event else {
                    continue;
                };
                if !bytes.is_empty() {
                    let Some(slot) = session.input_slot().await else {
                        let refusal = crate::requests::Refusal::invalid(format!("session {name} has ended"));
                        return answer(stream, refusal.reply()).await;
                    };
                    slot.send(bytes);
                }
                if fin {
                    break;
                }
            }
        }
    }
    answer(stream, Reply::Done).await
}

/// `exited` once the session's process ends (at once if it has).
pub(crate) async fn wait(mut stream: Stream, name: &str, sessions: &Sessions) {
    let session = match sessions.get(name) {
        Ok(session) => session,
        Err(refusal) => return answer(stream, refusal.reply()).await,
    };
    let ended = tokio::select! {
        () = session.wait() => true,
        () = drain(&mut stream) => false,
    };
    if ended {
        answer(stream, session.exited()).await;
    }
}
