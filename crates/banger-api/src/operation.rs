//! Operations: long work with progress and an outcome.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiError;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// `kernel pull`.
    KernelPull,
    /// `kernel import`.
    KernelImport,
    /// `image build`.
    ImageBuild,
    /// `image register`.
    ImageRegister,
    /// `vm create`.
    VmCreate,
    /// `vm start`.
    VmStart,
    /// `vm stop`.
    VmStop,
    /// `vm restart`.
    VmRestart,
    /// `vm kill`.
    VmKill,
    /// `vm rm`.
    VmRemove,
}

/// Where an operation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Still working.
    Running,
    /// Finished; `result` holds what it made.
    Succeeded,
    /// Finished; `error` says why, and what it made was removed.
    Failed,
}

impl OperationState {
    /// Whether the operation has finished, well or badly.
    pub fn is_terminal(self) -> bool {
        !matches!(self, OperationState::Running)
    }
}

/// How far an operation has come.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// The step under way, in words (`download`, `extract`, ...).
    pub step: String,
    /// Steps finished so far.
    pub steps_done: u32,
    /// Steps in all.
    pub steps_total: u32,
    /// Bytes handled in the current step.
    pub bytes_done: u64,
    /// Bytes the current step will handle, when known.
    pub bytes_total: Option<u64>,
}

impl Progress {
    /// Percent done of the whole operation, 0 to 100.
    pub fn percent(&self) -> f64 {
        if self.steps_total == 0 {
            return 0.0;
        }
        let within = match self.bytes_total {
            Some(total) if total > 0 => (self.bytes_done as f64 / total as f64).min(1.0),
            _ => 0.0,
        };
        ((self.steps_done as f64 + within) / self.steps_total as f64 * 100.0).min(100.0)
    }
}

/// Long work the daemon does on a client's behalf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// Unique id.
    pub id: String,
    /// What it does.
    pub kind: OperationKind,
    /// The name of the object it works on.
    pub target: String,
    /// Where it is.
    pub state: OperationState,
    /// How far it has come.
    pub progress: Progress,
    /// Why it failed, when it did.
    pub error: Option<ApiError>,
    /// What it made, when it succeeded (for example the kernel).
    pub result: Option<serde_json::Value>,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When it finished (RFC 3339).
    pub finished_at: Option<String>,
}
