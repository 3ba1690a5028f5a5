//! VMs: their records, the per-VM locks that actions preempt, the live
//! agent connections and their health, and the choice of VMM. The state
//! machine, creation, the lifecycle, the ledger and supervision live in
//! their own modules.

pub mod agent_inject;
pub mod create;
pub mod health;
pub mod ledger;
pub mod lifecycle;
pub mod record;
pub mod state;
pub mod supervise;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use banger_api::VmmChoice;
use banger_vmm::firecracker::{Firecracker, Jailer};
use banger_vmm::{qemu::Qemu, Vmm};
use tokio::sync::{watch, OwnedMutexGuard};

use crate::agent::AgentConn;
use crate::db::ObjectTable;
use crate::error::{Error, Result};
use crate::Daemon;
pub use record::VmRecord;
pub use state::VmAction;

/// One VM's lock, and the channel through which an action asks its holder
/// to give it up. The request stands while any preempting action waits for
/// the lock, so every holder before it (one queued earlier included) gives way.
struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    preempt: watch::Sender<Option<VmAction>>,
    /// The preempting actions waiting for the lock, oldest first.
    waiting: Mutex<Vec<VmAction>>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot { lock: Arc::default(), preempt: watch::channel(None).0, waiting: Mutex::default() }
    }
}

impl Slot {
    /// Publishes the newest request still waiting, or none.
    fn publish(&self, waiting: &[VmAction]) {
        self.preempt.send_replace(waiting.last().copied());
    }
}

/// The slots of the VMs someone holds or waits for, by name.
type Slots = Arc<Mutex<HashMap<String, Arc<Slot>>>>;

/// A claim on one VM's slot. The slot leaves the map with its last claim,
/// so the map holds only VMs that are being worked on: a request naming a
/// VM that does not exist leaves nothing behind, and a waiter still queued
/// on a removed VM's lock keeps it, excluding a new VM of the same name.
struct SlotRef {
    slots: Slots,
    name: String,
    slot: Option<Arc<Slot>>,
}

impl SlotRef {
    fn slot(&self) -> &Slot {
        self.slot.as_ref().expect("a slot claim holds its slot until dropped")
    }
}

impl Drop for SlotRef {
    fn drop(&mut self) {
        let mut slots = locked(&self.slots);
        // Let go of this claim under the map's lock, so two claims dropped
        // at once cannot each see the other and both keep the slot.
        let slot = self.slot.take().expect("dropped once");
        let only_the_map_left = Arc::strong_count(&slot) == 2;
        drop(slot);
        if only_the_map_left {
            slots.remove(&self.name);
        }
    }
}

/// A preempting action's place in the queue; leaving it (with the lock, or
/// cut short itself) withdraws its request.
struct Waiting<'a> {
    slot: &'a Slot,
    by: VmAction,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = locked(&self.slot.waiting);
        if let Some(at) = waiting.iter().position(|a| *a == self.by) {
            waiting.remove(at);
        }
        self.slot.publish(&waiting);
    }
}

/// Holds a VM's lock. Work that waits (a boot, a stop) also waits on
/// [`VmGuard::preempted`], so a kill, a stop or a forced rm can cut it short.
pub struct VmGuard {
    // The lock goes before the claim on its slot (fields drop in order).
    _lock: OwnedMutexGuard<()>,
    _slot: SlotRef,
    preempted: watch::Receiver<Option<VmAction>>,
}

impl VmGuard {
    /// Resolves when another action asks for the VM; says which.
    pub async fn preempted(&mut self) -> VmAction {
        let by = self.preempted.wait_for(Option::is_some).await.ok().and_then(|by| *by);
        match by {
            Some(by) => by,
            // The channel closed: nothing will ask.
            None => std::future::pending().await,
        }
    }
}

/// Per-VM serialization and live connections.
#[derive(Default)]
pub struct VmManager {
    slots: Slots,
    agents: Mutex<HashMap<String, Arc<AgentConn>>>,
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    health: health::Health,
    /// Held from choosing a new VM's vsock context id to saving its record,
    /// so two creates cannot take the same one.
    cids: Mutex<()>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmManager {
    fn claim(&self, name: &str) -> SlotRef {
        let slot = Arc::clone(locked(&self.slots).entry(name.to_owned()).or_default());
        SlotRef { slots: Arc::clone(&self.slots), name: name.to_owned(), slot: Some(slot) }
    }

    fn guard(claim: SlotRef, lock: OwnedMutexGuard<()>) -> VmGuard {
        let preempted = claim.slot().preempt.subscribe();
        VmGuard { _lock: lock, _slot: claim, preempted }
    }

    /// Waits for a VM's lock. Its holder only ever waits for bounded or
    /// preemptible things, so this returns.
    pub async fn lock(&self, name: &str) -> VmGuard {
        let claim = self.claim(name);
        let lock = Arc::clone(&claim.slot().lock).lock_owned().await;
        Self::guard(claim, lock)
    }

    /// Takes a VM's lock, asking every holder before it to give it up (a
    /// boot to be cancelled, a stop to be cut short).
    pub async fn lock_preempting(&self, name: &str, by: VmAction) -> VmGuard {
        let claim = self.claim(name);
        let lock = {
            let slot = claim.slot();
            let waiting = Waiting { slot, by };
            {
                let mut queue = locked(&slot.waiting);
                queue.push(by);
                slot.publish(&queue);
            }
            let lock = Arc::clone(&slot.lock).lock_owned().await;
            drop(waiting);
            lock
        };
        Self::guard(claim, lock)
    }

    /// Takes a VM's lock if no operation holds it, else says it is busy.
    pub fn try_lock(&self, name: &str) -> Result<VmGuard> {
        let claim = self.claim(name);
        let lock = Arc::clone(&claim.slot().lock)
            .try_lock_owned()
            .map_err(|_| Error::Busy { kind: "VM", name: name.to_owned() })?;
        Ok(Self::guard(claim, lock))
    }

    /// How many VMs have a lock held or waited for (each has a slot).
    pub fn slots_in_use(&self) -> usize {
        locked(&self.slots).len()
    }

    /// Asks whoever holds the VM's lock to give it up, without waiting (the
    /// action then takes the lock with [`VmManager::lock_preempting`], which
    /// withdraws the request once it has the lock).
    pub fn preempt(&self, name: &str, by: VmAction) {
        if let Some(slot) = locked(&self.slots).get(name) {
            slot.preempt.send_replace(Some(by));
        }
    }

    /// Forgets a removed VM's connection and health. Its lock goes with its
    /// last holder or waiter.
    pub fn forget(&self, name: &str) {
        locked(&self.connecting).remove(name);
        self.drop_agent(name);
    }

    /// Serializes (re)connecting to one VM's agent: its channel takes one client.
    pub async fn connect_lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = Arc::clone(locked(&self.connecting).entry(name.to_owned()).or_default());
        lock.lock_owned().await
    }

    /// The cached agent connection, if it is still open.
    pub fn agent(&self, name: &str) -> Option<Arc<AgentConn>> {
        locked(&self.agents).get(name).filter(|a| !a.is_closed()).cloned()
    }

    /// Remembers a VM's agent connection; it answers, having just handshaken.
    pub fn set_agent(&self, name: &str, agent: Arc<AgentConn>) {
        self.health.answered(name);
        locked(&self.agents).insert(name.to_owned(), agent);
    }

    /// Closes every agent connection (the daemon is stopping).
    pub fn drop_all_agents(&self) {
        locked(&self.agents).clear();
    }

    /// Forgets a VM's agent connection and health (it stopped).
    pub fn drop_agent(&self, name: &str) {
        locked(&self.agents).remove(name);
        self.health.forget(name);
    }

    /// Whether a running VM's agent answers its keepalives.
    pub fn health(&self) -> &health::Health {
        &self.health
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
    pub fn vm_record(&self, name: &str) -> Result<VmRecord> {
        self.db.object(ObjectTable::Vms, name)?.ok_or_else(|| Error::NotFound { kind: "VM", name: name.to_owned() })
    }

    /// Every VM's record.
    pub fn vm_records(&self) -> Result<Vec<VmRecord>> {
        self.db.objects(ObjectTable::Vms)
    }

    /// A VM as clients see it: its record and what is live about it.
    pub fn vm_view(&self, record: &VmRecord) -> Result<banger_api::Vm> {
        let live = record::Live {
            pid: self.running_vmm(&record.name)?.map(|p| p.pid),
            agent: self.vms.health.status(&record.name),
        };
        Ok(record.to_api(live))
    }

    /// Admits `action` on VM `name` (see [`state::admit`]), or says why not.
    pub fn admit(&self, name: &str, action: VmAction) -> Result<(VmRecord, state::Admitted)> {
        let record = self.vm_record(name)?;
        match state::admit(record.state, action) {
            Ok(admitted) => Ok((record, admitted)),
            Err(state::Refused::Exists) => Err(Error::AlreadyExists { kind: "VM", name: name.to_owned(), hint: "" }),
            Err(state::Refused::WrongState { wanted }) => {
                Err(Error::InvalidState { name: name.to_owned(), state: record.state, action, wanted })
            }
        }
    }

    /// Saves a new VM's record, first giving it a vsock context id when its
    /// guest will have a vsock device (QEMU on a host with vhost-vsock).
    pub fn save_new_vm(&self, record: &mut VmRecord) -> Result<()> {
        let _cids = locked(&self.vms.cids);
        if record.vmm == VmmChoice::Qemu && self.caps.vhost_vsock {
            let taken: Vec<u32> = self.vm_records()?.iter().filter_map(|r| r.vsock_cid).collect();
            record.vsock_cid = Some(free_vsock_cid(&taken));
        }
        self.save_vm(record)
    }

    /// Saves a VM's record and tells subscribers.
    pub fn save_vm(&self, record: &VmRecord) -> Result<()> {
        self.db.put_object(ObjectTable::Vms, &record.name, record)?;
        self.publish_vm_update(&record.name);
        Ok(())
    }

    /// Tells subscribers a VM changed.
    pub fn publish_vm_update(&self, name: &str) {
        self.events.publish(banger_api::Event::Updated { kind: banger_api::ObjectKind::Vm, name: name.to_owned() });
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

    /// The driver for a VM: the test driver when the config sets one,
    /// else the VM's VMM.
    pub fn driver(&self, record: &VmRecord) -> Result<Vmm> {
        if let Some(local) = &self.config.test_driver {
            return Ok(Vmm::Local(local.clone()));
        }
        match record.vmm {
            VmmChoice::Firecracker => {
                let binary =
                    self.caps.firecracker.as_ref().map(|t| t.path.clone()).ok_or_else(|| {
                        Error::Unsupported("firecracker is not installed (see `banger doctor`)".into())
                    })?;
                // The jail goes beside the VM's disks, which are hard-linked into it.
                let jail_dir = Some(self.vm_dir(&record.name).join("jail"));
                let jailer =
                    self.config.jailer.clone().map(|binary| Jailer { binary, identity: self.config.jail_identity });
                Ok(Vmm::Firecracker(Firecracker { binary, jailer, jail_dir }))
            }
            VmmChoice::Qemu => {
                let binary = self.caps.qemu.as_ref().map(|t| t.path.clone()).ok_or_else(|| {
                    Error::Unsupported("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86".into())
                })?;
                // A record moved from a host with vhost-vsock boots with
                // virtio-serial here: the agent picks whichever it finds.
                let vsock_cid = record.vsock_cid.filter(|_| self.caps.vhost_vsock);
                Ok(Vmm::Qemu(Qemu { binary, kvm: record.kvm, vsock_cid }))
            }
            // A record written by a newer daemon, with a VMM this one lacks.
            VmmChoice::Unknown => {
                Err(Error::Unsupported(format!("VM {} uses a VMM this bangerd does not know", record.name)))
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn vsock_cids_fill_the_lowest_gap_from_three() {
        assert_eq!(free_vsock_cid(&[]), 3);
        assert_eq!(free_vsock_cid(&[3, 4, 5]), 6);
        assert_eq!(free_vsock_cid(&[5, 3, 7]), 4);
        assert_eq!(free_vsock_cid(&[4]), 3);
        assert_eq!(free_vsock_cid(&[0, 1, 2]), 3);
    }

    #[tokio::test]
    async fn a_preempting_lock_cuts_the_holder_short() {
        let vms = Arc::new(VmManager::default());
        let mut holder = vms.lock("a").await;
        let waiter = {
            let vms = Arc::clone(&vms);
            tokio::spawn(async move { vms.lock_preempting("a", VmAction::Kill).await })
        };
        let by = tokio::time::timeout(Duration::from_secs(2), holder.preempted()).await.expect("asked to yield");
        assert_eq!(by, VmAction::Kill);
        drop(holder);
        let mut next = tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap();
        // The new holder is not asked to yield by the request meant for the old one.
        assert!(tokio::time::timeout(Duration::from_millis(300), next.preempted()).await.is_err());
    }

    #[tokio::test]
    async fn a_holder_queued_before_a_preempting_action_gives_way_too() {
        let vms = Arc::new(VmManager::default());
        let mut first = vms.lock("a").await;
        let queued = tokio::spawn({
            let vms = Arc::clone(&vms);
            async move { vms.lock("a").await }
        });
        tokio::task::yield_now().await;
        let killer = tokio::spawn({
            let vms = Arc::clone(&vms);
            async move { vms.lock_preempting("a", VmAction::Kill).await }
        });
        assert_eq!(tokio::time::timeout(Duration::from_secs(2), first.preempted()).await.unwrap(), VmAction::Kill);
        drop(first);
        let mut second = tokio::time::timeout(Duration::from_secs(2), queued).await.unwrap().unwrap();
        let by = tokio::time::timeout(Duration::from_secs(2), second.preempted()).await.expect("the kill still waits");
        assert_eq!(by, VmAction::Kill);
        drop(second);
        let mut killing = tokio::time::timeout(Duration::from_secs(2), killer).await.unwrap().unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), killing.preempted()).await.is_err());
    }

    #[tokio::test]
    async fn a_slot_lives_only_while_its_lock_is_held_or_waited_for() {
        let vms = Arc::new(VmManager::default());
        drop(vms.lock("gone").await);
        drop(vms.try_lock("gone").unwrap());
        assert_eq!(vms.slots_in_use(), 0);

        let held = vms.lock("a").await;
        let waiter = tokio::spawn({
            let vms = Arc::clone(&vms);
            async move { drop(vms.lock_preempting("a", VmAction::Kill).await) }
        });
        tokio::task::yield_now().await;
        assert_eq!(vms.slots_in_use(), 1);
        drop(held);
        waiter.await.unwrap();
        assert_eq!(vms.slots_in_use(), 0, "the last claim takes the slot with it");

        let many: Vec<_> = (0..64)
            .map(|_| {
                let vms = Arc::clone(&vms);
                tokio::spawn(async move { drop(vms.lock("b").await) })
            })
            .collect();
        for task in many {
            task.await.unwrap();
        }
        assert_eq!(vms.slots_in_use(), 0);
    }
}
