//! `banger session attach|logs`: a guest session's terminal, live, and its output.

use banger_client::{ClientError, StreamEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::exec::forward_resizes;
use crate::terminal::{self, DetachKeys, RawMode};
use crate::Context;

/// `session logs`: what the session kept, then (`follow`) what comes.
pub async fn logs(ctx: &Context, name: &str, session: &str, follow: bool, tail: Option<u64>) -> anyhow::Result<()> {
    let mut events = ctx.client.session_logs(name, session, follow, tail).await?;
    let mut stdout = tokio::io::stdout();
    while let Some(event) = events.next().await? {
        match event {
            StreamEvent::Stdout(data) | StreamEvent::Stderr(data) => {
                stdout.write_all(&data).await?;
                stdout.flush().await?;
            }
            StreamEvent::Error { error, .. } => return Err(ClientError::Api(error).into()),
            StreamEvent::Started { .. } | StreamEvent::Exited { .. } | StreamEvent::StdoutEof => {}
        }
    }
    Ok(())
}

/// `session attach`: returns the session's exit status when its process
/// ended, 0 after a detach.
pub async fn attach(
    ctx: &Context,
    name: &str,
    session: &str,
    read_only: bool,
    mut keys: DetachKeys,
) -> anyhow::Result<i32> {
    let local_tty = terminal::stdin_is_terminal();
    let size = terminal::size();
    let (sender, mut events) = ctx.client.attach(name, session, size, read_only).await?;
    match events.next().await? {
        Some(StreamEvent::Started { .. }) => {}
        Some(StreamEvent::Error { error, .. }) => return Err(ClientError::Api(error).into()),
        Some(StreamEvent::Exited { exit_status, .. }) => {
            eprintln!("session {session} has ended (exit status {exit_status})");
            return Ok(exit_status);
        }
        _ => anyhow::bail!("bangerd closed the attach stream before it began"),
    }
    let raw = if local_tty { Some(RawMode::enable()?) } else { None };
    let resizes = tokio::spawn(forward_resizes(sender.clone()));
    // Typing, minus the detach keys: resolves when they are typed.
    let typing = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return std::future::pending().await,
                Ok(n) => n,
            };
            let (typed, detach) = keys.feed(&buf[..n]);
            if !read_only && !typed.is_empty() && sender.stdin(&typed).await.is_err() {
                return std::future::pending().await;
            }
            if detach {
                return;
            }
        }
    };
    let output = async {
        let mut stdout = tokio::io::stdout();
        loop {
            match events.next().await? {
                Some(StreamEvent::Stdout(data) | StreamEvent::Stderr(data)) => {
                    stdout.write_all(&data).await?;
                    stdout.flush().await?;
                }
                Some(StreamEvent::Exited { exit_status, .. }) => return anyhow::Ok(Some(exit_status)),
                Some(StreamEvent::Error { error, .. }) => eprint!("banger: {}\r\n", error.message),
                Some(StreamEvent::Started { .. } | StreamEvent::StdoutEof) => {}
                None => return Ok(None),
            }
        }
    };
    let ended = tokio::select! {
        ended = output => ended,
        () = typing => {
            let _ = sender.close().await;
            resizes.abort();
            drop(raw);
            println!("\ndetached from session {session} of VM {name}; reattach with `banger session attach {name} {session}`");
            return Ok(0);
        }
    };
    resizes.abort();
    drop(raw);
    match ended? {
        Some(status) => Ok(status.clamp(0, 255)),
        None => anyhow::bail!("the attach stream closed before the session ended"),
    }
}
