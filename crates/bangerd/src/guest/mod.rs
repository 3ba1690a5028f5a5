//! What the daemon asks of a running guest's agent on a client's behalf,
//! beyond exec: sessions, stats and listening ports. Each call takes the
//! VM's agent connection (refused while the VM is not running) and turns
//! the agent's replies into the API's types.

pub mod sessions;
pub mod stats;

use std::sync::Arc;

use banger_agent_proto::Reply;

use crate::agent::{AgentConn, AgentError};
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
