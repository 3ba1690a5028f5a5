//! The Firecracker driver (being written).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{AgentEndpoint, VmSpec, VmmError};

/// Firecracker, optionally under its jailer.
#[derive(Debug, Clone)]
pub struct Firecracker {
    /// The firecracker binary.
    pub binary: PathBuf,
}

impl Firecracker {
    /// Starts the VM.
    pub async fn start(&self, _spec: &VmSpec) -> Result<u32, VmmError> {
        Err(VmmError::MissingBinary { binary: self.binary.display().to_string() })
    }

    /// Stops the VM.
    pub async fn stop(&self, run_dir: &Path, _timeout: Duration) -> Result<(), VmmError> {
        crate::process::kill(run_dir, &run_dir.join("vmm.pid")).await
    }
}

/// Where the guest agent is reached.
pub fn agent_endpoint(run_dir: &Path) -> AgentEndpoint {
    AgentEndpoint::FirecrackerVsock { uds: run_dir.join("vsock.sock"), port: banger_agent_proto::VSOCK_PORT }
}
