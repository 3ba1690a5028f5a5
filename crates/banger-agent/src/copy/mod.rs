//! File copies as tar streams: `copy_in` unpacks the stdin data of its
//! stream ([`unpack`]), `copy_out` sends a path as stdout data ([`pack`]).
//! The tar work is blocking and runs on a thread of its own ([`bridge`]);
//! the stream's credit paces it.

mod bridge;
mod pack;
mod unpack;

use banger_agent_proto::mux::{Event, Stream};
use banger_agent_proto::{ErrorKind, FrameKind, Reply};

use crate::requests::{answer, Refusal};

fn lost(e: tokio::task::JoinError) -> Refusal {
    Refusal::new(ErrorKind::Internal, format!("the copy failed: {e}"))
}

/// Unpacks the stream's stdin data (until its FIN) as `dest`; `done`.
pub(crate) async fn copy_in(mut stream: Stream, dest: &str) {
    let target = match unpack::Target::resolve(dest) {
        Ok(target) => target,
        Err(refusal) => return answer(stream, refusal.reply()).await,
    };
    let (tx, reader) = bridge::reader();
    let mut unpacking = tokio::task::spawn_blocking(move || unpack::unpack(reader, &target));
    let mut feed = Some(tx);
    let result = loop {
        tokio::select! {
            result = &mut unpacking => break result.map_err(lost).and_then(|r| r),
            event = stream.recv(), if feed.is_some() => match event {
                Ok(Some(Event::Data { kind: FrameKind::Stdin, bytes, fin })) => {
                    if let Some(tx) = feed.as_ref().filter(|_| !bytes.is_empty()) {
                        // Fails once the unpacker stopped; its result tells why.
                        let _ = tx.send(Ok(bytes)).await;
                    }
                    if fin {
                        feed = None;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => feed = None,
                Err(e) => {
                    // The host is gone: the unpacker fails and removes what it wrote.
                    if let Some(tx) = feed.take() {
                        let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e.to_string()))).await;
                    }
                    let _ = (&mut unpacking).await;
                    return;
                }
            },
        }
    };
    answer(stream, result.map(|()| Reply::Done).unwrap_or_else(Refusal::reply)).await
}

/// Sends `path` as a tar stream of stdout data, then `done`.
pub(crate) async fn copy_out(stream: Stream, path: &str) {
    let source = match pack::Source::resolve(path) {
        Ok(source) => source,
        Err(refusal) => return answer(stream, refusal.reply()).await,
    };
    let (writer, mut chunks) = bridge::writer();
    let packing = tokio::task::spawn_blocking(move || pack::pack(&source, writer));
    let sender = stream.sender();
    let mut sent = true;
    while let Some(chunk) = chunks.recv().await {
        if sender.write(FrameKind::Stdout, chunk).await.is_err() {
            // The host is gone: the packer fails on its next chunk.
            sent = false;
            break;
        }
    }
    drop(chunks);
    let result = packing.await.map_err(lost).and_then(|r| r);
    if sent {
        answer(stream, result.map(|()| Reply::Done).unwrap_or_else(Refusal::reply)).await;
    }
}
