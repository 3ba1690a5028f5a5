//! VMs: their record, create and change requests, and the exec upgrade token.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::Timestamp;

crate::open_enum::open_enum! {
    /// Which VMM runs a VM.
    ///
    /// A VM record names it, and a later daemon may run VMs under a VMM this
    /// crate does not know: that decodes as `Unknown`. Where a VMM is asked
    /// for (a request, the config file) it must be a known one.
    pub enum VmmChoice {
        /// Firecracker (needs KVM for ordinary guests).
        Firecracker = "firecracker",
        /// QEMU (KVM when usable, else TCG emulation).
        Qemu = "qemu",
    }
}

impl VmmChoice {
    /// Decodes an optional VMM where one is asked for (a request, the
    /// config file), refusing the fallback a response may decode to: what
    /// is asked for must be a VMM the daemon has. For
    /// `#[serde(default, deserialize_with = "VmmChoice::deserialize_requested")]`.
    pub fn deserialize_requested<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<VmmChoice>, D::Error> {
        match Option::<VmmChoice>::deserialize(deserializer)? {
            Some(VmmChoice::Unknown) => Err(serde::de::Error::custom("unknown vmm: expected `firecracker` or `qemu`")),
            choice => Ok(choice),
        }
    }
}

crate::open_enum::open_enum! {
    /// Where a VM is in its life.
    ///
    /// The set may grow (paused, snapshotting): a state this crate does not
    /// know decodes as `Unknown`, so an old client still lists VMs.
    pub enum VmState {
        /// Made, never started (`--no-start`), or being made.
        Created = "created",
        /// Booting; not yet answering.
        Starting = "starting",
        /// Booted: its agent answers.
        Running = "running",
        /// Shutting down.
        Stopping = "stopping",
        /// Its VMM runs but has paused the guest (on a disk I/O error, say,
        /// when the filesystem under its disk is full): it cannot run
        /// commands; `vm stop` or `vm kill` ends it. `pause_reason` says why.
        Paused = "paused",
        /// Not running.
        Stopped = "stopped",
    }
}

crate::open_enum::open_enum! {
    /// How a VM's root disk was cloned from its image.
    ///
    /// The set grows with the hosts banger learns to use: a strategy this
    /// crate does not know decodes as `Unknown`.
    pub enum DiskStrategy {
        /// A reflink (shared extents) on XFS or btrfs.
        Reflink = "reflink",
        /// A device-mapper snapshot over the image.
        DmSnapshot = "dm_snapshot",
        /// A copy that skips the image's holes.
        SparseCopy = "sparse_copy",
    }
}

crate::open_enum::open_enum! {
    /// Whether a running VM's agent answers.
    ///
    /// The set may grow (an agent that answers but is too old, say): a
    /// status this crate does not know decodes as `Unknown`.
    pub enum AgentStatus {
        /// It answered the last keepalive.
        Answering = "answering",
        /// It missed its keepalives: the guest hangs, is overloaded, or its
        /// agent died. Commands are refused until it answers again.
        NotAnswering = "not_answering",
    }
}

/// A VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    /// How the root disk was cloned.
    pub disk_strategy: DiskStrategy,
    /// The VMM's pid while it runs.
    pub pid: Option<u32>,
    /// Whether its agent answers the daemon's keepalive, while it runs.
    #[serde(default)]
    pub agent: Option<AgentStatus>,
    /// The agent's version, once it answered.
    pub agent_version: Option<String>,
    /// Why the VMM paused the guest, while it is `paused` (QEMU's run
    /// state: `io-error` when a disk write failed).
    #[serde(default)]
    pub pause_reason: Option<String>,
    /// Its network interface; absent for a VM made with `network: none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<VmNetwork>,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A VM's network interface on banger's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmNetwork {
    /// Its IPv4 address.
    pub address: String,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// Its gateway and DNS server (the bridge's address).
    pub gateway: String,
    /// Its MAC address.
    pub mac: String,
    /// Its name in banger's DNS (`NAME.vm`).
    pub dns_name: String,
}

/// How a new VM is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A NIC on banger's bridge, with an address, NAT to the outside and a
    /// `NAME.vm` name (unless the daemon's networking is off).
    #[default]
    Nat,
    /// No NIC: only the agent channel (exec, ssh and forwards through banger).
    None,
}

/// Body of `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreateRequest {
    /// Name: 1 to 63 lowercase letters, digits and hyphens, not starting or ending with a hyphen.
    #[schema(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// The image to clone the root disk from.
    pub image: String,
    /// A kernel other than the image's.
    #[serde(default)]
    pub kernel: Option<String>,
    /// vCPUs (default 1; at most the host's CPUs).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default 512; at most the host's memory).
    #[serde(default)]
    #[schema(minimum = 64)]
    pub memory_mib: Option<u32>,
    /// Root disk size in bytes (default: the image's size; never smaller),
    /// rounded up to whole MiB.
    #[serde(default)]
    #[schema(maximum = 17592184995840.0)]
    pub disk_size_bytes: Option<u64>,
    /// A writable work disk of this size, mounted at /work, rounded up to whole MiB.
    #[serde(default)]
    #[schema(minimum = 1048576, maximum = 17592184995840.0)]
    pub work_disk_bytes: Option<u64>,
    /// Force a VMM (default: chosen from what the host can do). A VMM this
    /// crate does not know is refused.
    #[serde(default, deserialize_with = "VmmChoice::deserialize_requested")]
    pub vmm: Option<VmmChoice>,
    /// Make the VM but do not boot it.
    #[serde(default)]
    pub no_start: bool,
    /// `nat` (the default) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
}

/// Body of `PATCH /v1/vms/{name}` (stopped VMs only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSetRequest {
    /// New vCPU count (at most the host's CPUs).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub cpus: Option<u32>,
    /// New memory in MiB (at most the host's memory).
    #[serde(default)]
    #[schema(minimum = 64)]
    pub memory_mib: Option<u32>,
}

/// Body of `POST /v1/vms/{name}/disk/resize` (stopped VMs; grow only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskResizeRequest {
    /// New root disk size in bytes, rounded up to whole MiB.
    #[schema(maximum = 17592184995840.0)]
    pub size_bytes: u64,
}
