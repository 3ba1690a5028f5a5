//! `vm create`: resolve the image and kernel, clone the disks, record the
//! VM, boot it and wait for its agent. Everything a step makes is
//! registered for rollback before the next step runs, so a failure at any
//! point leaves nothing behind.

use std::path::PathBuf;
use std::sync::Arc;

use banger_api::{Vm, VmCreateRequest, VmState};

use super::{lifecycle, VmRow};
use crate::db::ObjectTable;
use crate::error::{Error, Result};
use crate::operations::{now_rfc3339, OperationHandle};
use crate::Daemon;

/// Default vCPUs.
const DEFAULT_CPUS: u32 = 1;
/// Default memory, MiB.
const DEFAULT_MEMORY_MIB: u32 = 512;

/// Checks a create request before its operation starts: names, sizes,
/// duplicates and the image, so plain mistakes are answered at once and
/// nothing is made.
pub fn validate(daemon: &Daemon, request: &VmCreateRequest) -> Result<()> {
    super::validate_name(&request.name)?;
    if daemon.db.object::<VmRow>(ObjectTable::Vms, &request.name)?.is_some() {
        return Err(Error::AlreadyExists { kind: "VM", name: request.name.clone(), hint: "" });
    }
    if request.cpus.is_some_and(|c| c == 0 || c > 64) {
        return Err(Error::InvalidArgument("--cpus must be between 1 and 64".into()));
    }
    if request.memory_mib.is_some_and(|m| m < 64) {
        return Err(Error::InvalidArgument("--memory must be at least 64 MiB".into()));
    }
    if request.work_disk_bytes.is_some_and(|size| size < 1 << 20) {
        return Err(Error::InvalidArgument("--work-disk must be at least 1 MiB".into()));
    }
    let image = daemon.images.get(&request.image)?;
    if request.disk_size_bytes.is_some_and(|size| size < image.size_bytes) {
        return Err(Error::InvalidArgument(format!(
            "--disk-size must be at least the image's size ({} bytes)",
            image.size_bytes
        )));
    }
    let vm = placeholder_vm(daemon, request);
    daemon.driver(&VmRow { vm, init: String::new(), creating: true, vsock_cid: None })?;
    Ok(())
}

fn placeholder_vm(daemon: &Daemon, request: &VmCreateRequest) -> Vm {
    let (vmm, kvm) = daemon.choose_vmm(request.vmm);
    Vm {
        name: request.name.clone(),
        state: VmState::Created,
        image: request.image.clone(),
        kernel: String::new(),
        vmm,
        kvm,
        cpus: request.cpus.unwrap_or(DEFAULT_CPUS),
        memory_mib: request.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
        disk_size_bytes: 0,
        work_disk_bytes: request.work_disk_bytes.map(|size| size.next_multiple_of(4096)),
        disk_strategy: String::new(),
        pid: None,
        agent_version: None,
        created_at: now_rfc3339(),
    }
}

/// What a failed create must undo, newest first.
enum Undo {
    RemoveDir(PathBuf),
    ForgetVm(String),
    StopVm,
}

/// Creates (and, unless `no_start`, boots) a VM: an operation's work.
/// `_guard` is the VM's lock, held throughout.
pub async fn create(
    daemon: Arc<Daemon>,
    op: &OperationHandle,
    request: VmCreateRequest,
    _guard: tokio::sync::OwnedMutexGuard<()>,
) -> Result<Vm> {
    let mut undo = Vec::new();
    let result = create_steps(&daemon, op, &request, &mut undo).await;
    if result.is_err() {
        rollback(&daemon, &request.name, undo).await;
    }
    result
}

async fn create_steps(
    daemon: &Arc<Daemon>,
    op: &OperationHandle,
    request: &VmCreateRequest,
    undo: &mut Vec<Undo>,
) -> Result<Vm> {
    let image = daemon.images.get(&request.image)?;
    let kernel =
        crate::kernel::resolve::resolve(daemon, request.kernel.as_deref().unwrap_or(&image.kernel), op).await?;

    op.step("clone disk");
    let dir = daemon.vm_dir(&request.name);
    std::fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
    undo.push(Undo::RemoveDir(dir.clone()));
    let run_dir = daemon.vm_run_dir(&request.name);
    undo.push(Undo::RemoveDir(run_dir));
    let strategy = daemon.cow_strategy();
    let disk_size = request.disk_size_bytes.unwrap_or(image.size_bytes);
    let source = PathBuf::from(&image.rootfs_path);
    let root = dir.join("root.ext4");
    let work = request.work_disk_bytes.map(|size| (size.next_multiple_of(4096), dir.join("work.ext4")));
    let seeds = daemon.images.seeds_dir();
    tokio::task::spawn_blocking(move || -> Result<()> {
        banger_storage::clone_disk(strategy, &source, &root, Some(disk_size))?;
        if let Some((size, path)) = work {
            let seed = banger_image::ensure_seed(&seeds, size)?;
            banger_storage::clone_disk(strategy, &seed, &path, None)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Internal(format!("disk task: {e}")))??;

    op.step("prepare");
    let mut vm = placeholder_vm(daemon, request);
    vm.kernel = kernel.name;
    vm.disk_size_bytes = disk_size;
    vm.disk_strategy = strategy_name(strategy).to_owned();
    let mut row = VmRow { vm, init: image.init.clone(), creating: true, vsock_cid: None };
    undo.push(Undo::ForgetVm(request.name.clone()));
    daemon.save_new_vm(&mut row)?;
    if !request.no_start {
        undo.push(Undo::StopVm);
        lifecycle::boot(daemon, &mut row, Some(op)).await?;
    }
    row.creating = false;
    daemon.save_vm(&row)?;
    Ok(row.vm)
}

async fn rollback(daemon: &Arc<Daemon>, name: &str, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        match step {
            Undo::StopVm => {
                if let Ok(row) = daemon.vm_row(name) {
                    if let Ok(driver) = daemon.driver(&row) {
                        if let Err(e) = super::lifecycle::kill_recorded(&driver, &daemon.vm_run_dir(name)).await {
                            tracing::warn!(vm = %name, error = %e, "rollback: cannot kill the VMM");
                        }
                    }
                }
                daemon.vms.drop_agent(name);
            }
            Undo::ForgetVm(name) => {
                if let Err(e) = daemon.db.delete_object(ObjectTable::Vms, &name) {
                    tracing::warn!(vm = %name, error = %e, "rollback: cannot delete the VM record");
                }
                daemon.vms.drop_agent(&name);
                daemon.events.publish(banger_api::Event::Deleted { kind: banger_api::ObjectKind::Vm, name });
            }
            Undo::RemoveDir(path) => {
                let removed = tokio::task::spawn_blocking(move || (std::fs::remove_dir_all(&path), path)).await;
                if let Ok((Err(e), path)) = removed {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "rollback: cannot remove");
                    }
                }
            }
        }
    }
}

fn strategy_name(strategy: banger_storage::CowStrategy) -> &'static str {
    match strategy {
        banger_storage::CowStrategy::Reflink => "reflink",
        banger_storage::CowStrategy::DmSnapshot => "dm_snapshot",
        banger_storage::CowStrategy::SparseCopy => "sparse_copy",
    }
}
