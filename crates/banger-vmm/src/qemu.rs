//! The QEMU driver (being written).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{AgentEndpoint, VmSpec, VmmError};

/// QEMU, with KVM or TCG.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// The qemu-system-x86_64 binary.
    pub binary: PathBuf,
    /// Use KVM (else TCG emulation).
    pub kvm: bool,
}

impl Qemu {
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
    AgentEndpoint::Unix(run_dir.join("agent.sock"))
}
