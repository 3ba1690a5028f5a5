//! What a running VM uses, as the guest sees it and as the host sees its
//! VMM process (`GET /v1/vms/{name}/stats`), and the guest's listening
//! sockets (`GET /v1/vms/{name}/ports`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A running VM's figures. Rates (CPU, network) come from two samples the
/// daemon takes `interval_ms` apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStats {
    /// Milliseconds between the two samples the rates come from.
    pub interval_ms: u64,
    /// What the guest reports.
    pub guest: GuestStats,
    /// The VMM process on the host.
    pub vmm: VmmStats,
}

/// The guest's own view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GuestStats {
    /// Seconds since the guest booted.
    pub uptime_secs: f64,
    /// CPUs online.
    pub cpus: u32,
    /// Share of all the guest's CPU time spent busy (user and system)
    /// between the samples, 0 to 100.
    pub cpu_percent: f64,
    /// The 1, 5 and 15 minute load averages.
    pub load: Vec<f64>,
    /// Memory.
    pub memory: GuestMemory,
    /// Mounted filesystems backed by a block device.
    pub disks: Vec<GuestDisk>,
    /// Network interfaces other than loopback.
    pub net: Vec<GuestNet>,
}

/// The guest's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestMemory {
    /// All the memory the guest has.
    pub total_bytes: u64,
    /// What new programs could get without swapping.
    pub available_bytes: u64,
    /// In use: total less available.
    pub used_bytes: u64,
}

/// One guest filesystem, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestDisk {
    /// Where it is mounted.
    pub mount: String,
    /// Its device.
    pub device: String,
    /// Its size.
    pub total_bytes: u64,
    /// Used.
    pub used_bytes: u64,
    /// Available to unprivileged users.
    pub available_bytes: u64,
}

/// One guest network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GuestNet {
    /// Its name.
    pub interface: String,
    /// Bytes received since boot.
    pub rx_bytes: u64,
    /// Bytes sent since boot.
    pub tx_bytes: u64,
    /// Bytes received per second between the samples.
    pub rx_bytes_per_sec: f64,
    /// Bytes sent per second between the samples.
    pub tx_bytes_per_sec: f64,
}

/// The VMM process, as the host's `/proc` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmmStats {
    /// Its pid.
    pub pid: u32,
    /// Host CPU it used between the samples, in percent of one host CPU
    /// (as `top` shows it: above 100 when it keeps several busy).
    pub cpu_percent: f64,
    /// Its resident memory, in bytes.
    pub rss_bytes: u64,
}

/// A listening socket in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestPort {
    /// `tcp` or `udp`, as the guest agent reports it.
    pub protocol: String,
    /// The local address (`0.0.0.0`, `::`, `127.0.0.1`, ...).
    pub address: String,
    /// The local port.
    pub port: u16,
    /// The owning process, when the guest agent can tell.
    #[serde(default)]
    pub pid: Option<u32>,
    /// That process's name.
    #[serde(default)]
    pub process: Option<String>,
}
