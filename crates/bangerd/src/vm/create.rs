//! `vm create`: record the VM, resolve its kernel, clone its disks, boot it
//! and wait for its agent. Everything is entered in the VM's ledger before
//! it is made, so a failure at any point is undone by releasing the ledger,
//! and a daemon that dies midway finds the same entries at start.

use std::path::PathBuf;
use std::sync::Arc;

use banger_api::{Vm, VmCreateRequest, VmState};

use super::ledger::{self, Resource};
use super::{lifecycle, VmGuard, VmRecord};
use crate::db::ObjectTable;
use crate::error::{Error, Result};
use crate::limits::{self, HostLimits};
use crate::operations::{now_rfc3339, OperationHandle};
use crate::Daemon;

/// Default vCPUs.
const DEFAULT_CPUS: u32 = 1;
/// Default memory, MiB.
const DEFAULT_MEMORY_MIB: u32 = 512;

/// The steps of a create after which a test can make it fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateStep {
    /// The record is saved.
    Record,
    /// The kernel is resolved (pulled if needed).
    Kernel,
    /// The disks are cloned.
    Disks,
    /// The guest booted and its agent answered.
    Boot,
}

/// Checks a create request before its operation starts: names, ranges,
/// duplicates and the image, so plain mistakes are answered at once and
/// nothing is made. Disk sizes are rounded up to whole MiB in `request`,
/// so the record keeps the sizes the files get.
pub fn validate(daemon: &Daemon, request: &mut VmCreateRequest) -> Result<()> {
    super::validate_name(&request.name)?;
    if daemon.db.object::<VmRecord>(ObjectTable::Vms, &request.name)?.is_some() {
        daemon.admit(&request.name, super::VmAction::Create)?;
    }
    let host = HostLimits::probe();
    request.cpus.map(|n| host.check_cpus(n)).transpose()?;
    request.memory_mib.map(|n| host.check_memory(n)).transpose()?;
    request.work_disk_bytes =
        request.work_disk_bytes.map(|size| limits::disk_size("work_disk_bytes", size, 1 << 20)).transpose()?;
    let image = daemon.images.get(&request.image)?;
    request.disk_size_bytes = request
        .disk_size_bytes
        .map(|size| limits::disk_size("disk_size_bytes (at least the image's size)", size, image.size_bytes))
        .transpose()?;
    daemon.driver(&new_record(daemon, request, &image))?;
    Ok(())
}

fn new_record(daemon: &Daemon, request: &VmCreateRequest, image: &banger_api::Image) -> VmRecord {
    let (vmm, kvm) = daemon.choose_vmm(request.vmm);
    VmRecord {
        name: request.name.clone(),
        state: VmState::Created,
        image: request.image.clone(),
        kernel: request.kernel.clone().unwrap_or_else(|| image.kernel.clone()),
        init: image.init.clone(),
        vmm,
        kvm,
        cpus: request.cpus.unwrap_or(DEFAULT_CPUS),
        memory_mib: request.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
        disk_size_bytes: request.disk_size_bytes.unwrap_or(image.size_bytes),
        work_disk_bytes: request.work_disk_bytes,
        disk_strategy: strategy_name(daemon.cow_strategy()).to_owned(),
        agent_version: None,
        created_at: now_rfc3339(),
        creating: true,
        vsock_cid: None,
        in_ledger: true,
        pause_reason: None,
        agent_path: super::agent_inject::image_agent_path(image),
        network: None,
    }
}

/// Creates (and, unless `no_start`, boots) a VM: an operation's work.
/// `guard` is the VM's lock, held throughout.
pub async fn create(
    daemon: Arc<Daemon>,
    op: &OperationHandle,
    request: VmCreateRequest,
    mut guard: VmGuard,
) -> Result<Vm> {
    let image = daemon.images.get(&request.image)?;
    let mut record = new_record(&daemon, &request, &image);
    daemon.save_new_vm(&mut record)?;
    let result = create_steps(&daemon, op, &request, &mut record, &mut guard).await;
    match result {
        Ok(()) => daemon.vm_view(&record),
        // Cut short by the user (`vm stop`, `vm kill`): the VM stays, stopped.
        // Cut short by the daemon stopping, it is undone like a failure,
        // before the daemon exits.
        Err(e @ Error::Preempted { .. }) => {
            record.creating = false;
            daemon.save_vm(&record)?;
            Err(e)
        }
        Err(e) => {
            if let Err(undo) = lifecycle::forget(&daemon, record).await {
                tracing::error!(vm = %request.name, error = %undo, "rollback of a failed create is incomplete");
            }
            Err(e)
        }
    }
}

async fn create_steps(
    daemon: &Arc<Daemon>,
    op: &OperationHandle,
    request: &VmCreateRequest,
    record: &mut VmRecord,
    guard: &mut VmGuard,
) -> Result<()> {
    failpoint(daemon, CreateStep::Record)?;
    // A pull may take long: the daemon stopping cuts it short (its staging
    // directory goes with it). The other steps are bounded, and the boot
    // watches for the shutdown itself.
    let kernel = tokio::select! {
        kernel = crate::kernel::resolve::resolve(daemon, &record.kernel, op) => kernel?,
        () = daemon.shutting_down() => {
            return Err(Error::ShuttingDown { name: record.name.clone(), what: "create" });
        }
    };
    record.kernel = kernel.name;
    failpoint(daemon, CreateStep::Kernel)?;

    if daemon.config.network.enabled && request.network != Some(banger_api::NetworkMode::None) {
        give_address(daemon, record)?;
    }
    op.step("clone disk");
    let (dir, run_dir) = (daemon.vm_dir(&record.name), daemon.vm_run_dir(&record.name));
    daemon.hold(&record.name, &Resource::Dir { path: dir.clone() })?;
    daemon.hold(&record.name, &Resource::Dir { path: run_dir.clone() })?;
    let root = dir.join("root.ext4");
    daemon.hold(&record.name, &Resource::Disk { path: root.clone() })?;
    let work = record.work_disk_bytes.map(|size| (size, dir.join("work.ext4")));
    if let Some((_, path)) = &work {
        daemon.hold(&record.name, &Resource::Disk { path: path.clone() })?;
    }
    let strategy = daemon.cow_strategy();
    let (source, disk_size) = (PathBuf::from(&daemon.images.get(&request.image)?.rootfs_path), record.disk_size_bytes);
    let d = Arc::clone(daemon);
    ledger::blocking(move || {
        for made in [&dir, &run_dir] {
            std::fs::create_dir_all(made).map_err(Error::io("cannot create", made))?;
        }
        banger_storage::clone_disk(strategy, &source, &root, Some(disk_size))?;
        if let Some((size, path)) = work {
            d.images.seeds.clone_to(size, strategy, &path)?;
        }
        Ok(())
    })
    .await?;
    failpoint(daemon, CreateStep::Disks)?;

    op.step("prepare");
    if request.no_start {
        record.creating = false;
        daemon.save_vm(record)?;
        return Ok(());
    }
    lifecycle::boot(daemon, record, guard, Some(op)).await?;
    failpoint(daemon, CreateStep::Boot)?;
    record.creating = false;
    daemon.save_vm(record)
}

/// Gives the VM its address on the bridge, in its ledger and its record,
/// and its name in the DNS server.
fn give_address(daemon: &Daemon, record: &mut VmRecord) -> Result<()> {
    let _allocating = daemon.net.lock_allocation();
    let taken = daemon.vm_records()?.iter().filter_map(|r| r.network.map(|n| n.address)).collect();
    let network = daemon.net.allocate(&taken)?;
    daemon.hold(&record.name, &Resource::Address { address: network.address })?;
    record.network = Some(network);
    daemon.save_vm(record)?;
    daemon.net.names.set(&record.name, network.address);
    Ok(())
}

/// Fails the create here if a test asked for it.
fn failpoint(daemon: &Daemon, step: CreateStep) -> Result<()> {
    if daemon.config.fail_create_after == Some(step) {
        return Err(Error::Internal(format!("failing the create after {step:?}, as the test asked")));
    }
    Ok(())
}

fn strategy_name(strategy: banger_storage::CowStrategy) -> &'static str {
    match strategy {
        banger_storage::CowStrategy::Reflink => "reflink",
        banger_storage::CowStrategy::DmSnapshot => "dm_snapshot",
        banger_storage::CowStrategy::SparseCopy => "sparse_copy",
    }
}
