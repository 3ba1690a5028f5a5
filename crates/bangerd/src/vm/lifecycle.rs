//! Booting, stopping, killing, removing and changing VMs. Every function
//! that changes a VM holds its lock for the whole change.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use banger_api::{Vm, VmSetRequest, VmState};
use banger_vmm::{DiskSpec, VmSpec, Vmm, VmmError};

use super::VmRow;
use crate::agent::AgentConn;
use crate::db::ObjectTable;
use crate::error::{Error, Result};
use crate::operations::OperationHandle;
use crate::Daemon;

/// How long a guest gets to shut down before its VMM is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Boots a VM from its disks and waits for its agent. The caller holds the
/// VM's lock. On failure the VMM is killed and the VM is left stopped.
pub async fn boot(daemon: &Arc<Daemon>, row: &mut VmRow, op: Option<&OperationHandle>) -> Result<()> {
    let name = row.vm.name.clone();
    let kernel = daemon.kernels.get(&row.vm.kernel)?;
    let driver = daemon.driver(row)?;
    let run_dir = daemon.vm_run_dir(&name);
    std::fs::create_dir_all(&run_dir).map_err(Error::io("cannot create", &run_dir))?;
    let dir = daemon.vm_dir(&name);
    let mut disks = vec![DiskSpec { path: dir.join("root.ext4"), read_only: false }];
    let mut cmdline =
        format!("root=/dev/vda rw init={} banger.hostname={name} systemd.hostname={name} panic=-1", row.init);
    if row.vm.work_disk_bytes.is_some() {
        disks.push(DiskSpec { path: dir.join("work.ext4"), read_only: false });
        cmdline.push_str(" banger.work=/dev/vdb");
    }
    let spec = VmSpec {
        name: name.clone(),
        run_dir: run_dir.clone(),
        kernel: kernel.vmlinux_path.into(),
        initrd: kernel.initrd_path.map(Into::into),
        cmdline,
        cpus: row.vm.cpus,
        memory_mib: row.vm.memory_mib,
        disks,
    };

    if let Some(op) = op {
        op.step("boot");
    }
    row.vm.state = VmState::Starting;
    daemon.save_vm(row)?;
    let process = match driver.start(&spec).await {
        Ok(process) => process,
        Err(e) => {
            mark_stopped(daemon, row)?;
            return Err(e.into());
        }
    };
    let pid = process.pid;
    row.vm.pid = Some(pid);
    daemon.save_vm(row)?;
    tracing::info!(vm = %name, pid, vmm = ?row.vm.vmm, "VMM started");

    if let Some(op) = op {
        op.step("wait for agent");
    }
    let endpoint = driver.agent_endpoint(&run_dir);
    let answered = tokio::select! {
        answered = AgentConn::connect(&endpoint, daemon.config.boot_timeout) => answered.map_err(Error::Agent),
        // A guest that panics makes the VMM exit (it runs with no reboot):
        // say so at once, with what the console showed, instead of waiting
        // out the boot timeout.
        () = process.exited() => Err(Error::Vmm(VmmError::ExitedEarly { log_tail: driver.failure_report(&run_dir) })),
    };
    match answered {
        Ok(agent) => {
            row.vm.state = VmState::Running;
            row.vm.agent_version = Some(agent.agent_version.clone());
            daemon.save_vm(row)?;
            daemon.vms.set_agent(&name, agent);
            super::supervise::watch(Arc::clone(daemon), name.clone(), process);
            tracing::info!(vm = %name, "VM running");
            Ok(())
        }
        Err(e) => {
            if let Err(kill) = driver.kill(&run_dir, process).await {
                tracing::warn!(vm = %name, error = %kill, "cannot kill the VMM after a failed boot");
            }
            settle(daemon, &driver, row)?;
            Err(e)
        }
    }
}

/// Kills the VMM the run directory's pid file names, if it runs.
pub(super) async fn kill_recorded(driver: &Vmm, run_dir: &Path) -> std::result::Result<(), VmmError> {
    match driver.process(run_dir) {
        Some(process) => driver.kill(run_dir, process).await,
        None => Ok(()),
    }
}

/// After a stop or kill: records the VM stopped only if its VMM is really
/// gone, so a VMM that survived keeps its pid file and record (and no
/// second VMM can be booted on the same disk).
fn settle(daemon: &Daemon, driver: &Vmm, row: &mut VmRow) -> Result<()> {
    match driver.process(&daemon.vm_run_dir(&row.vm.name)) {
        None => mark_stopped(daemon, row),
        Some(banger_vmm::VmmProcess { pid, .. }) => {
            tracing::error!(vm = %row.vm.name, pid, "the VMM is still running after a stop");
            row.vm.pid = Some(pid);
            daemon.save_vm(row)
        }
    }
}

/// Records a VM as stopped and releases what it held while running.
pub fn mark_stopped(daemon: &Daemon, row: &mut VmRow) -> Result<()> {
    daemon.vms.drop_agent(&row.vm.name);
    release_runtime(daemon, row);
    row.vm.state = VmState::Stopped;
    row.vm.pid = None;
    daemon.save_vm(row)
}

/// Removes a stopped VM's runtime files; the console log stays for `vm logs`.
fn release_runtime(daemon: &Daemon, row: &VmRow) {
    let Ok(driver) = daemon.driver(row) else { return };
    if let Err(e) = driver.release(&daemon.vm_run_dir(&row.vm.name)) {
        tracing::warn!(vm = %row.vm.name, error = %e, "cannot release the VM's runtime files");
    }
}

/// Starts a stopped VM (an operation's work).
pub async fn start(daemon: Arc<Daemon>, op: &OperationHandle, name: String) -> Result<Vm> {
    let _guard = daemon.vms.lock(&name).await;
    let mut row = daemon.vm_row(&name)?;
    match row.vm.state {
        VmState::Stopped | VmState::Created => {}
        VmState::Running => return Ok(row.vm),
        state => return Err(Error::InvalidState { name, state, wanted: "stopped" }),
    }
    boot(&daemon, &mut row, Some(op)).await?;
    Ok(row.vm)
}

/// Stops a VM if it runs, then boots it, holding its lock throughout so
/// nothing (an `rm`, say) comes between (an operation's work).
pub async fn restart(daemon: Arc<Daemon>, op: &OperationHandle, name: String) -> Result<Vm> {
    let _guard = daemon.vms.lock(&name).await;
    stop_locked(&daemon, &name).await?;
    let mut row = daemon.vm_row(&name)?;
    boot(&daemon, &mut row, Some(op)).await?;
    Ok(row.vm)
}

/// Stops a VM: asks the guest to power off, then the VMM, then kills it.
pub async fn stop(daemon: &Arc<Daemon>, name: &str) -> Result<Vm> {
    let _guard = daemon.vms.lock(name).await;
    stop_locked(daemon, name).await
}

async fn stop_locked(daemon: &Arc<Daemon>, name: &str) -> Result<Vm> {
    let mut row = daemon.vm_row(name)?;
    let driver = daemon.driver(&row)?;
    let run_dir = daemon.vm_run_dir(name);
    let Some(process) = driver.process(&run_dir) else {
        if row.vm.state != VmState::Created {
            mark_stopped(daemon, &mut row)?;
        }
        return Ok(row.vm);
    };
    row.vm.state = VmState::Stopping;
    daemon.save_vm(&row)?;
    if let Some(agent) = daemon.vms.agent(name) {
        let _ = tokio::time::timeout(Duration::from_secs(2), agent.poweroff()).await;
    }
    let result = driver.stop(&run_dir, process, STOP_TIMEOUT).await;
    settle(daemon, &driver, &mut row)?;
    result?;
    tracing::info!(vm = %name, "VM stopped");
    Ok(row.vm)
}

/// Kills a VM's VMM at once.
pub async fn kill(daemon: &Arc<Daemon>, name: &str) -> Result<Vm> {
    let _guard = daemon.vms.lock(name).await;
    let mut row = daemon.vm_row(name)?;
    let driver = daemon.driver(&row)?;
    let killed = kill_recorded(&driver, &daemon.vm_run_dir(name)).await;
    if row.vm.state != VmState::Created {
        settle(daemon, &driver, &mut row)?;
    }
    killed?;
    Ok(row.vm)
}

/// Removes a VM and its disks. A running VM is refused unless `force`,
/// which stops it first.
pub async fn remove(daemon: &Arc<Daemon>, name: &str, force: bool) -> Result<()> {
    let _guard = daemon.vms.lock(name).await;
    let row = daemon.vm_row(name)?;
    if !matches!(row.vm.state, VmState::Stopped | VmState::Created) {
        if !force {
            return Err(Error::InvalidState {
                name: name.to_owned(),
                state: row.vm.state,
                wanted: "stopped (or use --force)",
            });
        }
        stop_locked(daemon, name).await?;
    }
    // Make sure nothing runs even if the record was stale.
    if let Ok(driver) = daemon.driver(&row) {
        kill_recorded(&driver, &daemon.vm_run_dir(name)).await?;
    }
    let (disks, run_dir) = (daemon.vm_dir(name), daemon.vm_run_dir(name));
    let d = Arc::clone(daemon);
    let n = name.to_owned();
    tokio::task::spawn_blocking(move || -> Result<()> {
        if disks.exists() {
            crate::staging::remove_dir(&disks, || d.db.delete_object(ObjectTable::Vms, &n).map(drop))?;
        } else {
            d.db.delete_object(ObjectTable::Vms, &n)?;
        }
        match std::fs::remove_dir_all(&run_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Io { action: "cannot remove", path: run_dir, source: e })
            }
            _ => Ok(()),
        }
    })
    .await
    .map_err(|e| Error::Internal(format!("remove task: {e}")))??;
    daemon.vms.forget(name);
    daemon.events.publish(banger_api::Event::Deleted { kind: banger_api::ObjectKind::Vm, name: name.to_owned() });
    tracing::info!(vm = %name, "VM removed");
    Ok(())
}

/// Changes a stopped VM's vCPUs or memory.
pub async fn set(daemon: &Arc<Daemon>, name: &str, request: VmSetRequest) -> Result<Vm> {
    let _guard = daemon.vms.lock(name).await;
    let mut row = daemon.vm_row(name)?;
    if !matches!(row.vm.state, VmState::Stopped | VmState::Created) {
        return Err(Error::InvalidState { name: name.to_owned(), state: row.vm.state, wanted: "stopped" });
    }
    if let Some(cpus) = request.cpus {
        if cpus == 0 || cpus > 64 {
            return Err(Error::InvalidArgument("--cpus must be between 1 and 64".into()));
        }
        row.vm.cpus = cpus;
    }
    if let Some(memory) = request.memory_mib {
        if memory < 64 {
            return Err(Error::InvalidArgument("--memory must be at least 64 MiB".into()));
        }
        row.vm.memory_mib = memory;
    }
    daemon.save_vm(&row)?;
    Ok(row.vm)
}

/// Grows a stopped VM's root disk (and its filesystem).
pub async fn resize_disk(daemon: &Arc<Daemon>, name: &str, size_bytes: u64) -> Result<Vm> {
    let _guard = daemon.vms.lock(name).await;
    let mut row = daemon.vm_row(name)?;
    if !matches!(row.vm.state, VmState::Stopped | VmState::Created) {
        return Err(Error::InvalidState { name: name.to_owned(), state: row.vm.state, wanted: "stopped" });
    }
    if size_bytes < row.vm.disk_size_bytes {
        return Err(Error::InvalidArgument(format!(
            "disks only grow: {name} has {} bytes, asked for {size_bytes}",
            row.vm.disk_size_bytes
        )));
    }
    let path = daemon.vm_dir(name).join("root.ext4");
    tokio::task::spawn_blocking(move || banger_storage::grow_disk(&path, size_bytes))
        .await
        .map_err(|e| Error::Internal(format!("resize task: {e}")))??;
    row.vm.disk_size_bytes = size_bytes;
    daemon.save_vm(&row)?;
    Ok(row.vm)
}

/// The VM's agent connection, reconnecting if the cached one broke (after
/// a daemon restart, say).
pub async fn agent(daemon: &Arc<Daemon>, name: &str) -> Result<Arc<AgentConn>> {
    if let Some(agent) = daemon.vms.agent(name) {
        return Ok(agent);
    }
    let _connecting = daemon.vms.connect_lock(name).await;
    if let Some(agent) = daemon.vms.agent(name) {
        return Ok(agent);
    }
    let row = daemon.vm_row(name)?;
    if row.vm.state != VmState::Running {
        return Err(Error::InvalidState { name: name.to_owned(), state: row.vm.state, wanted: "running" });
    }
    let driver = daemon.driver(&row)?;
    let agent = AgentConn::connect(&driver.agent_endpoint(&daemon.vm_run_dir(name)), Duration::from_secs(10)).await?;
    daemon.vms.set_agent(name, Arc::clone(&agent));
    Ok(agent)
}
