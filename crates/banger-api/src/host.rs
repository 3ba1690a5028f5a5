//! Host checks, as `banger doctor` reports them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The verdict of one host check. A closed set: every check ends in one of
/// these three, so a new kind of check never needs a new verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Works.
    Pass,
    /// Works in a degraded way, or is optional and missing.
    Warn,
    /// Does not work.
    Fail,
}

/// One host check, as `banger doctor` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Check {
    /// Short stable name (`kvm`, `qemu`, ...).
    pub name: String,
    /// The verdict.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// One line saying how to fix it, when it is not a pass.
    pub fix: Option<String>,
}

/// What `GET /v1/doctor` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DoctorReport {
    /// Every check, in a stable order.
    pub checks: Vec<Check>,
}
