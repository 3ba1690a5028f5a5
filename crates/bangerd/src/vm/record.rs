//! What the state store keeps for a VM: its own type, apart from the wire
//! type [`banger_api::Vm`] that clients see, so either can change without
//! the other. What a VM holds is in its ledger, not here.

use banger_api::{Vm, VmState, VmmChoice};
use serde::{Deserialize, Serialize};

/// A VM's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Its name (a DNS label).
    pub name: String,
    /// Where it is in its life.
    pub state: VmState,
    /// The image its root disk was cloned from.
    pub image: String,
    /// The kernel it boots.
    pub kernel: String,
    /// The `init=` to boot (from the image, kept in case the image goes).
    pub init: String,
    /// The VMM that runs it.
    pub vmm: VmmChoice,
    /// Whether the VMM uses KVM.
    pub kvm: bool,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Root disk size in bytes.
    pub disk_size_bytes: u64,
    /// Work disk size in bytes, if it has one.
    pub work_disk_bytes: Option<u64>,
    /// How the root disk was cloned.
    pub disk_strategy: String,
    /// The agent's version, once it answered.
    pub agent_version: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Set while its create operation runs: a daemon that finds this at
    /// start knows the create was cut short and removes the VM.
    #[serde(default)]
    pub creating: bool,
    /// The guest's vsock context id, given at create when the host has
    /// vhost-vsock and the VM runs under QEMU; else its agent is reached
    /// over virtio-serial.
    #[serde(default)]
    pub vsock_cid: Option<u32>,
    /// Whether what the VM holds is in the ledger; rows written before the
    /// ledger existed are given entries at start.
    #[serde(default)]
    pub in_ledger: bool,
    /// Why the VMM paused the guest, while the VM is paused.
    #[serde(default)]
    pub pause_reason: Option<String>,
    /// Where its root disk carries the guest agent, which every boot
    /// replaces with the daemon's own; `None` until known (a registered
    /// image's, or a row older than this field: found at the next boot).
    #[serde(default)]
    pub agent_path: Option<String>,
    /// Its address on banger's bridge; `None` for a VM without networking.
    #[serde(default)]
    pub network: Option<RecordNetwork>,
}

/// A VM's place on banger's bridge, allocated at create and kept until rm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordNetwork {
    /// Its address.
    pub address: std::net::Ipv4Addr,
    /// The subnet's prefix length when it was allocated.
    pub prefix: u8,
    /// The bridge's address: its gateway and DNS server.
    pub gateway: std::net::Ipv4Addr,
}

impl RecordNetwork {
    /// Its MAC address, which follows from its address.
    pub fn mac(&self) -> [u8; 6] {
        banger_net::subnet::mac_for(self.address)
    }

    /// The kernel command line's `banger.net=` value the guest's agent reads.
    pub fn kernel_arg(&self) -> String {
        format!("banger.net={}/{},{},{}", self.address, self.prefix, self.gateway, self.gateway)
    }
}

/// What the daemon knows of a VM beyond its row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    /// The VMM's pid while it runs.
    pub pid: Option<u32>,
    /// Whether its agent answers, while it runs.
    pub agent: Option<banger_api::AgentStatus>,
}

impl VmRecord {
    /// The record as clients see it.
    pub fn to_api(&self, live: Live) -> Vm {
        Vm {
            name: self.name.clone(),
            state: self.state,
            image: self.image.clone(),
            kernel: self.kernel.clone(),
            vmm: self.vmm,
            kvm: self.kvm,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disk_size_bytes: self.disk_size_bytes,
            work_disk_bytes: self.work_disk_bytes,
            disk_strategy: banger_api::DiskStrategy::from_wire(&self.disk_strategy),
            pid: live.pid,
            agent: live.agent.filter(|_| self.state == VmState::Running),
            agent_version: self.agent_version.clone(),
            pause_reason: self.pause_reason.clone().filter(|_| self.state == VmState::Paused),
            network: self.network.map(|n| banger_api::VmNetwork {
                address: n.address.to_string(),
                prefix: n.prefix,
                gateway: n.gateway.to_string(),
                mac: banger_net::subnet::format_mac(&n.mac()),
                dns_name: format!("{}.vm", self.name),
            }),
            // Written by `now_rfc3339`; only a hand-edited row fails, and
            // it shows as the epoch rather than hiding the VM.
            created_at: self.created_at.parse().unwrap_or(std::time::UNIX_EPOCH.into()),
        }
    }
}

/// Moves rows written before the record had its own type (the wire type
/// under `vm`, beside `init`, `creating` and `vsock_cid`) to the flat form.
pub const FLATTEN_LEGACY_ROWS: &str = "UPDATE vms
    SET body = json_patch(json_remove(body, '$.vm'), json_remove(json_extract(body, '$.vm'), '$.pid'))
    WHERE json_type(body, '$.vm') = 'object';";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_rows_are_flattened() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE vms (name TEXT PRIMARY KEY, body TEXT NOT NULL)").unwrap();
        let legacy = r#"{"vm":{"name":"dev","state":"running","image":"tiny","kernel":"k","vmm":"qemu","kvm":false,
            "cpus":1,"memory_mib":256,"disk_size_bytes":4096,"work_disk_bytes":null,"disk_strategy":"sparse_copy",
            "pid":42,"agent_version":"0.1.0","created_at":"2026-01-01T00:00:00Z"},
            "init":"/sbin/banger-agent","creating":false,"vsock_cid":null}"#;
        conn.execute("INSERT INTO vms VALUES ('dev', ?1)", [legacy]).unwrap();
        conn.execute_batch(FLATTEN_LEGACY_ROWS).unwrap();
        let body: String = conn.query_row("SELECT body FROM vms", [], |r| r.get(0)).unwrap();
        let record: VmRecord = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (record.name.as_str(), record.state, record.init.as_str()),
            ("dev", VmState::Running, "/sbin/banger-agent")
        );
        assert!(!record.in_ledger, "a legacy row gets its ledger entries at start");
        assert!(!body.contains("\"pid\""), "{body}");
    }
}
