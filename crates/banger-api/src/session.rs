//! Guest sessions: processes under a terminal that outlive every client,
//! started, listed, typed into, signalled, waited for and removed through
//! the JSON routes under `/v1/vms/{name}/sessions`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Signal, Timestamp};

crate::open_enum::open_enum! {
    /// What a session is doing.
    ///
    /// The set may grow: a state this crate does not know decodes as `Unknown`.
    pub enum SessionState {
        /// Its process runs.
        Running = "running",
        /// Its process ended; its exit status and output are kept until it is removed.
        Exited = "exited",
        /// The guest's agent restarted and the process is gone without an exit status.
        Lost = "lost",
    }
}

/// Body of `POST /v1/vms/{name}/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SessionStartRequest {
    /// Its name, unique in the VM: 1 to 63 letters, digits, `.`, `_` and
    /// `-`, starting with a letter or digit (default: the smallest number
    /// no session of the VM has, as tmux names windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    pub name: Option<String>,
    /// The program and its arguments; the program is looked up on the guest's `PATH`.
    #[schema(min_items = 1)]
    pub argv: Vec<String>,
    /// Environment variables, over the guest agent's defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory, an absolute guest path (default: the user's home, else `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run as this user, a name or a uid (default root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// Its name, unique in the VM.
    pub name: String,
    /// Its command: the program and its arguments.
    pub command: Vec<String>,
    /// Running, exited or lost.
    pub state: SessionState,
    /// Its process id in the guest, while it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// When it started (the guest's clock).
    pub started_at: Timestamp,
    /// When it ended (the guest's clock).
    #[serde(default)]
    pub ended_at: Option<Timestamp>,
    /// Its exit code, when its process exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed its process, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// As a shell reports it, once it ended: the code, or 128 + the signal.
    #[serde(default)]
    pub exit_status: Option<i32>,
    /// Clients attached now.
    #[serde(default)]
    pub attached: u32,
}

/// Body of `POST /v1/vms/{name}/sessions/{session}/stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SessionStopRequest {
    /// The signal for the session's process group (default `TERM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
}

/// How a session ended: the answer of `POST /v1/vms/{name}/sessions/{session}/wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionExit {
    /// Its exit code, when its process exited.
    pub exit_code: Option<i32>,
    /// The signal that killed its process, when one did.
    pub signal: Option<i32>,
    /// As a shell reports it: the code, or 128 + the signal (255 when the
    /// process was lost without either).
    pub exit_status: i32,
}
