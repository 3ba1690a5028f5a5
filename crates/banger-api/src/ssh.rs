//! SSH with no prompt (`/v1/ssh`): what a client writes for its ssh to
//! reach every VM through banger, with the VMs' host keys pinned.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// banger's key pair and the VMs' host keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshInfo {
    /// banger's private key, in OpenSSH's format: every VM lets it in as
    /// any account.
    pub private_key: String,
    /// Its public half, one OpenSSH line.
    pub public_key: String,
    /// A known_hosts line per VM (`NAME.vm ssh-ed25519 ...`).
    pub known_hosts: Vec<SshKnownHost>,
}

/// One VM's host key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshKnownHost {
    /// The VM.
    pub vm: String,
    /// Its known_hosts line.
    pub line: String,
}

/// `POST /v1/ssh/authorized-keys`: a user's own public key, let into the
/// VMs from their next boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshKeyRequest {
    /// One OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    pub public_key: String,
}
