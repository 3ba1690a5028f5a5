//! Port forwards (`/v1/vms/{name}/forwards`): a guest TCP port answering
//! on the host's loopback, carried over the agent channel (as Lima does),
//! so it needs no guest network.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A guest port answering on the host's loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Forward {
    /// The VM.
    pub vm: String,
    /// The host address it listens on (`127.0.0.1`).
    pub host_address: String,
    /// The host port.
    pub host_port: u16,
    /// The guest port connections go to (on the guest's loopback).
    pub guest_port: u16,
}

/// `POST /v1/vms/{name}/forwards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    /// The guest port.
    #[schema(minimum = 1)]
    pub guest_port: u16,
    /// The host port (default: the guest port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub host_port: Option<u16>,
}
