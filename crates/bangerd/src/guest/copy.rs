//! File copies as tar streams between a client and the guest's agent: the
//! daemon checks the guest path and opens the agent's `copy_in` (the
//! client's stream is written into the guest, at the pace the agent takes
//! it) or `copy_out` (the agent's stream goes to the client, at the pace
//! the client takes it). What the tar holds is for the agent and the
//! client to read; the daemon holds at most a window of it.

use std::sync::Arc;

use banger_agent_proto::features::COPY;
use banger_agent_proto::mux::Stream;
use banger_agent_proto::Request;
use serde::Deserialize;
use utoipa::ToSchema;

use super::agent;
use crate::agent::AgentError;
use crate::error::{Error, Result};
use crate::Daemon;

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Host to guest: the client sends a tar stream.
    In,
    /// Guest to host: the daemon sends one.
    Out,
}

/// Opens the agent stream for a copy of guest `path` in `direction`; the
/// path must be absolute, the VM running, its agent able to copy.
pub async fn open(daemon: &Arc<Daemon>, vm: &str, path: &str, direction: Direction) -> Result<Stream> {
    check_path(path)?;
    let agent = agent(daemon, vm, "vm cp", COPY).await?;
    let stream = agent.open()?;
    let request = match direction {
        Direction::In => Request::CopyIn { dest: path.to_owned() },
        Direction::Out => Request::CopyOut { path: path.to_owned() },
    };
    stream.send(&request).await.map_err(AgentError::from)?;
    Ok(stream)
}

/// Refuses a guest path the agent could only misread.
fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!("the guest path {path:?} must be absolute")));
    }
    if path.contains('\0') {
        return Err(Error::InvalidArgument("the guest path contains a NUL byte".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_must_be_absolute() {
        assert!(check_path("/work/x").is_ok());
        assert!(matches!(check_path("work/x"), Err(Error::InvalidArgument(_))));
        assert!(matches!(check_path(""), Err(Error::InvalidArgument(_))));
        assert!(matches!(check_path("/a\0b"), Err(Error::InvalidArgument(_))));
    }
}
