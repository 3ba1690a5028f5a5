//! VMs: their record, create and change requests, and the exec upgrade token.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which VMM runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmmChoice {
    /// Firecracker (needs KVM for ordinary guests).
    Firecracker,
    /// QEMU (KVM when usable, else TCG emulation).
    Qemu,
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Made, never started (`--no-start`), or being made.
    Created,
    /// Booting; not yet answering.
    Starting,
    /// Booted: its agent answers.
    Running,
    /// Shutting down.
    Stopping,
    /// Not running.
    Stopped,
}

/// Whether a running VM's agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// It answered the last keepalive.
    Answering,
    /// It missed its keepalives: the guest hangs, is overloaded, or its
    /// agent died. Commands are refused until it answers again.
    NotAnswering,
}

/// A VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Its name (a DNS label).
    pub name: String,
    /// Where it is in its life.
    pub state: VmState,
    /// The image its root disk was cloned from.
    pub image: String,
    /// The kernel it boots.
    pub kernel: String,
    /// The VMM that runs it.
    pub vmm: VmmChoice,
    /// Whether the VMM uses KVM (false: TCG emulation).
    pub kvm: bool,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Root disk size in bytes.
    pub disk_size_bytes: u64,
    /// Work disk size in bytes, if it has one (mounted at /work).
    pub work_disk_bytes: Option<u64>,
    /// How the root disk was cloned: `reflink`, `dm_snapshot` or `sparse_copy`.
    pub disk_strategy: String,
    /// The VMM's pid while it runs.
    pub pid: Option<u32>,
    /// Whether its agent answers the daemon's keepalive, while it runs.
    #[serde(default)]
    pub agent: Option<AgentStatus>,
    /// The agent's version, once it answered.
    pub agent_version: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// Body of `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreateRequest {
    /// Name: 1 to 63 lowercase letters, digits and hyphens, not starting or ending with a hyphen.
    pub name: String,
    /// The image to clone the root disk from.
    pub image: String,
    /// A kernel other than the image's.
    #[serde(default)]
    pub kernel: Option<String>,
    /// vCPUs (default 1).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default 512).
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Root disk size in bytes (default: the image's size; never smaller).
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    /// A writable work disk of this size, mounted at /work.
    #[serde(default)]
    pub work_disk_bytes: Option<u64>,
    /// Force a VMM (default: chosen from what the host can do).
    #[serde(default)]
    pub vmm: Option<VmmChoice>,
    /// Make the VM but do not boot it.
    #[serde(default)]
    pub no_start: bool,
}

/// Body of `PATCH /v1/vms/{name}` (stopped VMs only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSetRequest {
    /// New vCPU count.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// New memory in MiB.
    #[serde(default)]
    pub memory_mib: Option<u32>,
}

/// Body of `POST /v1/vms/{name}/disk/resize` (stopped VMs; grow only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskResizeRequest {
    /// New root disk size in bytes.
    pub size_bytes: u64,
}

/// The upgraded `GET /v1/vms/{name}/exec` connection speaks the agent's
/// frame protocol (`banger-agent-proto`): the client sends one `exec`
/// control frame, then stdin frames; the daemon relays output frames and
/// the final `exited` (or `error`) frame. This is the `Upgrade` token.
pub const EXEC_UPGRADE: &str = "banger-exec/1";
