//! VMs: their records, per-VM locks, the live agent connections, and the
//! choice of VMM. Creation, the lifecycle and supervision live in their own
//! modules.

pub mod create;
pub mod lifecycle;
pub mod supervise;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use banger_api::{Vm, VmmChoice};
use banger_vmm::{firecracker::Firecracker, qemu::Qemu, Vmm};
use serde::{Deserialize, Serialize};

use crate::agent::AgentConn;
use crate::db::ObjectTable;
use crate::error::{Error, Result};
use crate::Daemon;

/// What the database keeps for a VM: what clients see, and what a boot needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRow {
    /// The client-visible record.
    pub vm: Vm,
    /// The `init=` to boot (from the image, kept in case the image goes).
    pub init: String,
    /// Set while its create operation runs: a daemon that finds this at
    /// start knows the create was cut short and removes the VM.
    #[serde(default)]
    pub creating: bool,
    /// The guest's vsock context id, given at create when the host has
    /// vhost-vsock and the VM runs under QEMU; else its agent is reached
    /// over virtio-serial.
    #[serde(default)]
    pub vsock_cid: Option<u32>,
}

/// Per-VM serialization and live connections.
#[derive(Default)]
pub struct VmManager {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    agents: Mutex<HashMap<String, Arc<AgentConn>>>,
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held from choosing a new VM's vsock context id to saving its record,
    /// so two creates cannot take the same one.
    cids: Mutex<()>,
}

impl VmManager {
    /// Serializes operations on one VM: the guard is held for the whole operation.
    pub async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = Arc::clone(self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_owned()).or_default());
        lock.lock_owned().await
    }

    /// Takes a VM's lock if no operation holds it, else says it is busy.
    pub fn try_lock(&self, name: &str) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        let lock = Arc::clone(self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_owned()).or_default());
        lock.try_lock_owned().map_err(|_| Error::Busy { kind: "VM", name: name.to_owned() })
    }

    /// Forgets a removed VM's lock and connection.
    pub fn forget(&self, name: &str) {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.connecting.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.drop_agent(name);
    }

    /// Serializes (re)connecting to one VM's agent: its channel takes one client.
    pub async fn connect_lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock =
            Arc::clone(self.connecting.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_owned()).or_default());
        lock.lock_owned().await
    }

    /// The cached agent connection, if it is still open.
    pub fn agent(&self, name: &str) -> Option<Arc<AgentConn>> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.get(name).filter(|a| !a.is_closed()).cloned()
    }

    /// Remembers a VM's agent connection.
    pub fn set_agent(&self, name: &str, agent: Arc<AgentConn>) {
        self.agents.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), agent);
    }

    /// Closes every agent connection (the daemon is stopping).
    pub fn drop_all_agents(&self) {
        self.agents.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Forgets a VM's agent connection (it stopped).
    pub fn drop_agent(&self, name: &str) {
        self.agents.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
}

/// Checks a VM (or image) name is a DNS label: 1 to 63 lowercase letters,
/// digits and hyphens, not starting or ending with a hyphen.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid name {name:?}: use 1 to 63 lowercase letters, digits and hyphens, not starting or ending with a hyphen"
        )))
    }
}

impl Daemon {
    /// A VM's record.
    pub fn vm_row(&self, name: &str) -> Result<VmRow> {
        self.db.object(ObjectTable::Vms, name)?.ok_or_else(|| Error::NotFound { kind: "VM", name: name.to_owned() })
    }

    /// Every VM's record.
    pub fn vm_rows(&self) -> Result<Vec<VmRow>> {
        self.db.objects(ObjectTable::Vms)
    }

    /// Saves a new VM's record, first giving it a vsock context id when its
    /// guest will have a vsock device (QEMU on a host with vhost-vsock).
    pub fn save_new_vm(&self, row: &mut VmRow) -> Result<()> {
        let _cids = self.vms.cids.lock().unwrap_or_else(|e| e.into_inner());
        if row.vm.vmm == VmmChoice::Qemu && self.caps.vhost_vsock {
            let taken: Vec<u32> = self.vm_rows()?.iter().filter_map(|r| r.vsock_cid).collect();
            row.vsock_cid = Some(free_vsock_cid(&taken));
        }
        self.save_vm(row)
    }

    /// Saves a VM's record and tells subscribers.
    pub fn save_vm(&self, row: &VmRow) -> Result<()> {
        self.db.put_object(ObjectTable::Vms, &row.vm.name, row)?;
        self.events.publish(banger_api::Event::Updated { kind: banger_api::ObjectKind::Vm, name: row.vm.name.clone() });
        Ok(())
    }

    /// The directory holding a VM's disks.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.config.state_dir.join("vms").join(name)
    }

    /// The directory holding a VM's sockets, pid file and console log.
    pub fn vm_run_dir(&self, name: &str) -> PathBuf {
        self.config.run_dir.join("vms").join(name)
    }

    /// The VMM to use for a new VM: the request's, the config's, or the host's best.
    pub fn choose_vmm(&self, requested: Option<VmmChoice>) -> (VmmChoice, bool) {
        let kvm = self.caps.kvm.is_usable();
        match requested.or(self.config.vmm) {
            Some(choice) => (choice, kvm),
            None => match banger_host::preferred_vmm(&self.caps).0 {
                banger_host::Vmm::Firecracker => (VmmChoice::Firecracker, true),
                banger_host::Vmm::Qemu { kvm } => (VmmChoice::Qemu, kvm),
            },
        }
    }

    /// The driver for a VM.
    pub fn driver(&self, row: &VmRow) -> Result<Vmm> {
        let vm = &row.vm;
        match vm.vmm {
            VmmChoice::Firecracker => {
                let binary =
                    self.caps.firecracker.as_ref().map(|t| t.path.clone()).ok_or_else(|| {
                        Error::Unsupported("firecracker is not installed (see `banger doctor`)".into())
                    })?;
                // The jail goes beside the VM's disks, which are hard-linked into it.
                let jail_dir = Some(self.vm_dir(&row.vm.name).join("jail"));
                Ok(Vmm::Firecracker(Firecracker { binary, jailer: self.config.jailer.clone(), jail_dir }))
            }
            VmmChoice::Qemu => {
                let binary = self.caps.qemu.as_ref().map(|t| t.path.clone()).ok_or_else(|| {
                    Error::Unsupported("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86".into())
                })?;
                // A record moved from a host with vhost-vsock boots with
                // virtio-serial here: the agent picks whichever it finds.
                let vsock_cid = row.vsock_cid.filter(|_| self.caps.vhost_vsock);
                Ok(Vmm::Qemu(Qemu { binary, kvm: vm.kvm, vsock_cid }))
            }
        }
    }
}

/// The smallest vsock context id a guest can have (0 to 2 are the
/// hypervisor, loopback and the host) that is not in `taken`.
pub fn free_vsock_cid(taken: &[u32]) -> u32 {
    (3..u32::MAX).find(|cid| !taken.contains(cid)).unwrap_or(u32::MAX - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_cids_fill_the_lowest_gap_from_three() {
        assert_eq!(free_vsock_cid(&[]), 3);
        assert_eq!(free_vsock_cid(&[3, 4, 5]), 6);
        assert_eq!(free_vsock_cid(&[5, 3, 7]), 4);
        assert_eq!(free_vsock_cid(&[4]), 3);
        assert_eq!(free_vsock_cid(&[0, 1, 2]), 3);
    }

    #[test]
    fn records_without_a_cid_still_load() {
        let row = VmRow {
            vm: Vm {
                name: "dev".into(),
                state: banger_api::VmState::Stopped,
                image: "debian".into(),
                kernel: "k".into(),
                vmm: VmmChoice::Qemu,
                kvm: false,
                cpus: 1,
                memory_mib: 512,
                disk_size_bytes: 0,
                work_disk_bytes: None,
                disk_strategy: "sparse_copy".into(),
                pid: None,
                agent_version: None,
                created_at: "2025-01-01T00:00:00Z".into(),
            },
            init: "/sbin/init".into(),
            creating: false,
            vsock_cid: None,
        };
        let mut json = serde_json::to_value(&row).unwrap();
        json.as_object_mut().unwrap().remove("vsock_cid");
        assert_eq!(serde_json::from_value::<VmRow>(json).unwrap(), row);
    }
}
