//! What the daemon asks of a running guest's agent on a client's behalf,
//! beyond exec: sessions, file copies, stats and listening ports. Each
//! call takes the VM's agent connection (refused while the VM is not
//! running) and turns the agent's replies into the API's types.

pub mod connect;
pub mod copy;
pub mod forward;
pub mod sessions;
pub mod stats;

use std::sync::Arc;

use banger_agent_proto::{FrameKind, Reply, Request};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::agent::{next_reply, AgentConn, AgentError};
use crate::error::{Error, Result};
use crate::vm::{lifecycle, VmAction};
use crate::Daemon;

/// The connection to VM `vm`'s agent for `verb` (as a user types it,
/// `session start`), once the agent has said it can do `feature`.
async fn agent(daemon: &Arc<Daemon>, vm: &str, verb: &'static str, feature: &str) -> Result<Arc<AgentConn>> {
    let agent = lifecycle::agent_for(daemon, vm, VmAction::Guest { verb }).await?;
    if !agent.features.iter().any(|f| f == feature) {
        let version = if agent.agent_version.is_empty() { "an older one" } else { &agent.agent_version };
        return Err(Error::Unsupported(format!(
            "the guest agent of VM {vm:?} ({version}) cannot do `{verb}`: restart the VM to give it this banger's agent"
        )));
    }
    Ok(agent)
}

/// The error for a reply that does not answer the request.
fn unexpected(reply: &Reply) -> Error {
    Error::Agent(AgentError::Unexpected(format!("{reply:?}")))
}

/// Sends `request`, then `input` as its stdin as it arrives (each chunk
/// written once the agent's window has room, so the agent paces the
/// client), then the end of input, and waits for `done`. The agent may
/// refuse before the input ends; more than `limit` bytes is refused with
/// `too_large()`.
async fn upload<S, E>(
    agent: &AgentConn,
    request: &Request,
    mut input: S,
    limit: u64,
    too_large: fn() -> Error,
) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut stream = agent.open()?;
    stream.send(request).await.map_err(AgentError::from)?;
    let sender = stream.sender();
    let mut sent = 0u64;
    let feed = async {
        while let Some(chunk) = input.next().await {
            let chunk = chunk.map_err(|e| Error::InvalidArgument(format!("the input broke off: {e}")))?;
            sent += chunk.len() as u64;
            if sent > limit {
                return Err(too_large());
            }
            sender.write(FrameKind::Stdin, chunk).await.map_err(AgentError::from)?;
        }
        sender.finish(FrameKind::Stdin).await.map_err(AgentError::from)?;
        Ok(())
    };
    let early = tokio::select! {
        fed = feed => {
            // On failure the stream is dropped, which resets it: the agent
            // abandons what it was given.
            fed?;
            None
        }
        reply = next_reply(&mut stream) => Some(reply),
    };
    let reply = match early {
        Some(reply) => reply?,
        None => next_reply(&mut stream).await?,
    };
    match reply {
        Reply::Done => Ok(sent),
        other => Err(unexpected(&other)),
    }
}
