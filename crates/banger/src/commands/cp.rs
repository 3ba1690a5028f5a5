//! `banger vm cp SRC DST`: files and trees between the host and a guest,
//! one side written `VM:/path`. The CLI reads and writes the host's side
//! itself, as a tar stream it packs or unpacks as it goes; the daemon
//! relays that stream to the guest's agent. Nothing is held whole.

use std::process::ExitCode;

use anyhow::{anyhow, Context as _};
use banger_client::{ClientError, CopyDirection, StreamEvent};

use crate::copy::bridge::{self, Piece};
use crate::copy::{is_root, pack, plan, unpack, Copy, Counted};
use crate::{output, Context};

pub async fn run(ctx: &Context, src: &str, dst: &str) -> anyhow::Result<ExitCode> {
    let copy = plan(src, dst)?;
    // A copy cut short is undone on either side: the guest's agent removes
    // what it wrote, and the unpacker (which banger waits for before it
    // exits) what it staged.
    let copied = match copy_files(ctx, &copy).await {
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("error: interrupted; nothing was copied");
            return Ok(ExitCode::from(130));
        }
        copied => copied?,
    };
    let to = match &copy {
        Copy::In { vm, dest, .. } => format!("{vm}:{dest}"),
        Copy::Out { target, .. } => target.path().display().to_string(),
    };
    if ctx.json {
        output::json(&serde_json::json!({ "entries": copied.entries, "bytes": copied.bytes, "to": to }))?;
    } else {
        let entries = if copied.entries == 1 { "1 entry".to_owned() } else { format!("{} entries", copied.entries) };
        println!("copied {entries}, {} of file data, to {to}", output::size(copied.bytes));
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C cut the copy short.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

async fn copy_files(ctx: &Context, copy: &Copy) -> anyhow::Result<Counted> {
    match copy {
        // Dropping the copy in abandons its stream: the guest undoes it.
        Copy::In { .. } => tokio::select! {
            copied = copy_in(ctx, copy) => copied,
            _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
        },
        Copy::Out { .. } => copy_out(ctx, copy).await,
    }
}

async fn copy_in(ctx: &Context, copy: &Copy) -> anyhow::Result<Counted> {
    match copy {
        Copy::In { src, name, vm, dest } => {
            let (sender, mut events) = ctx.client.copy_stream(vm, dest, CopyDirection::In).await?;
            let (writer, mut chunks) = bridge::writer();
            let (src, name, keep_owners) = (src.clone(), name.clone(), is_root());
            let packing = tokio::task::spawn_blocking(move || pack::pack(&src, &name, keep_owners, writer));
            let send = async {
                while let Some(chunk) = chunks.recv().await {
                    sender.stdin(&chunk).await?;
                }
                Ok::<(), ClientError>(())
            };
            let context = || format!("cannot copy to {vm}:{dest}");
            // The guest may refuse (no such directory) while the tar is sent.
            let early = tokio::select! {
                sent = send => Ok(sent),
                end = stream_end(&mut events) => Err(end),
            };
            match early {
                Ok(Ok(())) => {}
                // The socket failed: the daemon's reason, if it gave one, says why.
                Ok(Err(failed)) => return Err(refusal_or(&mut events, failed.into()).await).with_context(context),
                Err(end) => {
                    // Dropping the stream abandons the copy: the guest undoes it.
                    end?.with_context(context)?;
                    return Err(anyhow!("the daemon ended the copy before it was sent")).with_context(context);
                }
            }
            // Only a whole tar is ended; a pack that failed just drops the
            // stream, and the guest removes what it wrote.
            let counted = packing.await.context("the copy's packer")?.with_context(context)?;
            if let Err(failed) = sender.stdin_eof().await {
                return Err(refusal_or(&mut events, failed.into()).await).with_context(context);
            }
            stream_end(&mut events).await?.with_context(context)?;
            Ok(counted)
        }
        Copy::Out { .. } => unreachable!("copy_in copies in"),
    }
}

async fn copy_out(ctx: &Context, copy: &Copy) -> anyhow::Result<Counted> {
    match copy {
        Copy::In { .. } => unreachable!("copy_out copies out"),
        Copy::Out { vm, path, target } => {
            let (_sender, mut events) = ctx.client.copy_stream(vm, path, CopyDirection::Out).await?;
            let (feed, reader) = bridge::reader();
            let (to, keep_owners) = (target.clone(), is_root());
            let unpacking = tokio::task::spawn_blocking(move || unpack::unpack(reader, &to, keep_owners));
            let relay = async {
                loop {
                    let piece = match events.next().await {
                        Ok(Some(StreamEvent::Stdout(data))) => Piece::Data(data),
                        Ok(Some(StreamEvent::Error { error, .. })) => {
                            let _ = feed.send(Piece::Failed(error.message.clone())).await;
                            return Err(anyhow::Error::new(ClientError::Api(error)));
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) => Piece::End,
                        Err(e) => {
                            let _ = feed.send(Piece::Failed(e.to_string())).await;
                            return Err(e.into());
                        }
                    };
                    let end = matches!(piece, Piece::End);
                    // The unpacker stopped (its result says why) or ends now.
                    if feed.send(piece).await.is_err() || end {
                        return Ok(());
                    }
                }
            };
            // The relay ends at the stream's end, at an error, or when the
            // unpacker stops taking pieces; the unpacker removes what it
            // wrote unless the stream was whole.
            let relayed = tokio::select! {
                relayed = relay => relayed,
                _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
            };
            // A cut-short stream (the feed gone) makes the unpacker remove
            // what it staged: wait for it, as the process must not end first.
            drop(feed);
            let unpacked = unpacking.await.context("the copy's unpacker")?;
            if relayed.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
                return relayed.map(|()| unreachable!("an interruption is an error"));
            }
            relayed.with_context(|| format!("cannot copy {vm}:{path}"))?;
            Ok(unpacked.with_context(|| format!("cannot copy {vm}:{path} to {}", target.path().display()))?)
        }
    }
}

/// The error the daemon gave before the stream ended, else `failed`.
async fn refusal_or(events: &mut banger_client::StreamEvents, failed: anyhow::Error) -> anyhow::Error {
    match stream_end(events).await {
        Ok(Err(refusal)) => refusal,
        _ => failed,
    }
}

/// Waits for the copy stream's end: `Ok(Ok(()))` when the daemon closed
/// it cleanly, `Ok(Err(..))` with the error it reported first.
async fn stream_end(events: &mut banger_client::StreamEvents) -> anyhow::Result<anyhow::Result<()>> {
    loop {
        match events.next().await? {
            None => return Ok(Ok(())),
            Some(StreamEvent::Error { error, .. }) => return Ok(Err(ClientError::Api(error).into())),
            Some(_) => continue,
        }
    }
}
