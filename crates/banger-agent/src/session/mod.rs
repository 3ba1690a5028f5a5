//! Guest sessions: not served yet by this build (they answer `unsupported`).

pub(crate) mod serve;

use std::path::Path;

use banger_agent_proto::{ErrorKind, SessionInfo};

use crate::reaper::Reaper;
use crate::requests::Refusal;

/// Every session in the guest.
pub(crate) struct Sessions;

impl Sessions {
    pub(crate) fn load(_dir: &Path, _reaper: Reaper) -> Sessions {
        Sessions
    }

    pub(crate) fn list(&self) -> Vec<SessionInfo> {
        Vec::new()
    }

    pub(crate) fn stop(&self, _name: &str, _signal: i32) -> Result<(), Refusal> {
        Err(unsupported())
    }

    pub(crate) fn remove(&self, _name: &str) -> Result<(), Refusal> {
        Err(unsupported())
    }
}

pub(crate) fn unsupported() -> Refusal {
    Refusal::new(ErrorKind::Unsupported, "this agent does not serve sessions yet")
}
