//! Booting, stopping, killing, removing and changing VMs. Each action
//! takes the VM's lock, asks the state machine again under it, and waits
//! only for bounded things or for things a preempting action cuts short:
//! a boot gives way to a kill, a stop or a forced rm; a stop to a kill.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::{Vm, VmSetRequest, VmState};
use banger_vmm::{DiskSpec, VmSpec, VmmProcess};

use super::ledger::{self, Resource, Scope};
use super::state::Admitted;
use super::{VmAction, VmGuard, VmRecord};
use crate::agent::AgentConn;
use crate::db::ObjectTable;
use crate::error::{Error, Result};
use crate::operations::OperationHandle;
use crate::Daemon;

/// How long a guest gets to shut down before its VMM is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the guest's agent gets to take a power-off request.
const POWEROFF_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long reconnecting to a running guest's agent may take.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a change answered at once (`set`, a disk resize) waits for
/// another operation on the VM to let go before it answers busy.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// Takes the VM's lock the way `action` needs it: preempting whoever holds
/// it when the state machine says so.
/// The actions that cut short whatever holds the lock always preempt: the
/// state read before the lock (a VM still `created` while its create runs)
/// may be older than the boot they must end.
pub async fn lock_for(daemon: &Daemon, name: &str, action: VmAction, admitted: Admitted) -> VmGuard {
    let preempts = matches!(action, VmAction::Kill | VmAction::Stop | VmAction::Remove { force: true });
    if preempts || admitted == Admitted::Preempt {
        daemon.vms.lock_preempting(name, action).await
    } else {
        daemon.vms.lock(name).await
    }
}

/// The VM's lock for a change answered at once: a caller is told the VM
/// is busy rather than kept waiting on a boot or a long resize.
async fn lock_briefly(daemon: &Daemon, name: &str) -> Result<VmGuard> {
    tokio::time::timeout(BUSY_WAIT, daemon.vms.lock(name))
        .await
        .map_err(|_| Error::Busy { kind: "VM", name: name.to_owned() })
}

/// Re-reads the VM under its lock and asks the state machine again.
fn readmit(daemon: &Daemon, name: &str, action: VmAction) -> Result<(VmRecord, Admitted)> {
    daemon.admit(name, action)
}

/// Boots a VM from its disks and waits for its agent, until the boot
/// timeout, the VMM's exit or a preempting action. On failure the VMM is
/// killed, what the boot made is released and the VM is left stopped.
pub async fn boot(
    daemon: &Arc<Daemon>,
    record: &mut VmRecord,
    guard: &mut VmGuard,
    op: Option<&OperationHandle>,
) -> Result<()> {
    let name = record.name.clone();
    let kernel = daemon.kernels.get(&record.kernel)?;
    let driver = daemon.driver(record)?;
    let run_dir = daemon.vm_run_dir(&name);
    std::fs::create_dir_all(&run_dir).map_err(Error::io("cannot create", &run_dir))?;
    let spec = spec(daemon, record, kernel.vmlinux_path.into(), kernel.initrd_path.map(Into::into));

    // Before anything is held or the state changes: a disk the agent
    // cannot go into fails the boot with nothing to release.
    if let Some(op) = op {
        op.step("install agent");
    }
    super::agent_inject::install(daemon, record, spec.disks[0].path.clone()).await?;
    if let Some(op) = op {
        op.step("boot");
    }
    let mut spec = spec;
    let networking = Instant::now();
    if record.network.is_some() && daemon.config.network.enabled && !daemon.net.is_up().await {
        // Brought up by the first networked VM's boot (a failure here
        // holds nothing yet).
        daemon.net.ensure_up(&daemon.taps_in_use()?).await?;
    }
    let host_network_ms = networking.elapsed().as_secs_f64() * 1e3;
    record.state = VmState::Starting;
    daemon.save_vm(record)?;
    if let Some(network) = record.network.filter(|_| daemon.config.network.enabled) {
        // A tap taken but not yet entered is reclaimed by the next start.
        let tap = match daemon.net.take_tap().await {
            Ok(tap) => tap,
            Err(e) => {
                let _ = stopped(daemon, record).await;
                return Err(e);
            }
        };
        daemon.hold(&name, &Resource::Tap { name: tap.clone() })?;
        let tap_ms = networking.elapsed().as_secs_f64() * 1e3 - host_network_ms;
        tracing::debug!(vm = %name, %tap, host_network_ms, tap_ms, "network ready");
        spec.nics.push(banger_vmm::NicSpec { tap, mac: network.mac() });
        spec.cmdline.push(' ');
        spec.cmdline.push_str(&network.kernel_arg());
    }
    let entry = daemon.hold(&name, &Resource::Vmm { run_dir: run_dir.clone(), process: None })?;
    // Starting is short and bounded (the drivers time out their own
    // waits), so it is not cut short: its process must be known to be released.
    let started = driver.start(&spec).await;
    let result = match started {
        Ok(process) => {
            daemon.db.update_resource(entry, &Resource::Vmm { run_dir: run_dir.clone(), process: Some(process) })?;
            tracing::info!(vm = %name, pid = process.pid, vmm = ?record.vmm, "VMM started");
            if let Some(op) = op {
                op.step("wait for agent");
            }
            wait_for_agent(daemon, record, guard, &driver, process).await
        }
        Err(e) => Err(e.into()),
    };
    match result {
        Ok((agent, process)) => {
            record.state = VmState::Running;
            record.agent_version = Some(agent.agent_version.clone());
            daemon.vms.set_agent(&name, agent);
            daemon.save_vm(record)?;
            super::supervise::watch(Arc::clone(daemon), name.clone(), process);
            tracing::info!(vm = %name, "VM running");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(vm = %name, error = %e, "boot failed");
            // The boot's own error is what the user needs; a release that
            // fails keeps its ledger entries for the next try.
            if let Err(undo) = stopped(daemon, record).await {
                tracing::error!(vm = %name, error = %undo, "cannot release a failed boot");
            }
            Err(e)
        }
    }
}

/// What the VMM is asked to boot.
fn spec(daemon: &Daemon, record: &VmRecord, kernel: std::path::PathBuf, initrd: Option<std::path::PathBuf>) -> VmSpec {
    let name = &record.name;
    let dir = daemon.vm_dir(name);
    let mut disks = vec![DiskSpec { path: dir.join("root.ext4"), read_only: false }];
    let mut cmdline =
        format!("root=/dev/vda rw init={} banger.hostname={name} systemd.hostname={name} panic=-1", record.init);
    if record.work_disk_bytes.is_some() {
        disks.push(DiskSpec { path: dir.join("work.ext4"), read_only: false });
        cmdline.push_str(" banger.work=/dev/vdb");
    }
    VmSpec {
        name: name.clone(),
        run_dir: daemon.vm_run_dir(name),
        kernel,
        initrd,
        cmdline,
        cpus: record.cpus,
        memory_mib: record.memory_mib,
        disks,
        nics: Vec::new(),
    }
}

/// Waits for a booting guest's agent to answer. Always ends: at the boot
/// timeout (whatever the guest does), when the VMM exits, when another
/// action preempts the boot, or when the daemon begins shutting down.
async fn wait_for_agent(
    daemon: &Arc<Daemon>,
    record: &VmRecord,
    guard: &mut VmGuard,
    driver: &banger_vmm::Vmm,
    process: VmmProcess,
) -> Result<(Arc<AgentConn>, VmmProcess)> {
    let run_dir = daemon.vm_run_dir(&record.name);
    let endpoint = driver.agent_endpoint(&run_dir);
    let timeout = daemon.config.boot_timeout;
    let name = record.name.clone();
    tokio::select! {
        answered = tokio::time::timeout(timeout, AgentConn::connect(&endpoint, timeout)) => match answered {
            Ok(Ok(agent)) => Ok((agent, process)),
            Ok(Err(crate::agent::AgentError::Timeout(_))) | Err(_) => {
                Err(Error::AgentNeverAnswered { name, after: timeout, report: driver.failure_report(&run_dir) })
            }
            Ok(Err(e)) => Err(e.into()),
        },
        // A guest that panics makes the VMM exit (it runs with no reboot):
        // say so at once, with what the console showed.
        () = process.exited() => Err(Error::VmmExited { name, report: driver.failure_report(&run_dir) }),
        by = guard.preempted() => Err(Error::Preempted { name, what: "boot", by }),
        // The daemon is stopping: it must not leave a boot it cannot
        // finish, so the boot fails and is released like any other.
        () = daemon.shutting_down() => Err(Error::ShuttingDown { name, what: "boot" }),
    }
}

/// Releases what the VM's boots made (its VMM, killed if it still runs,
/// and the driver's runtime files) and records it stopped. A VMM that
/// cannot be killed keeps its ledger entry and the VM its state.
pub async fn stopped(daemon: &Arc<Daemon>, record: &mut VmRecord) -> Result<()> {
    daemon.vms.drop_agent(&record.name);
    ledger::release(daemon, record, Scope::Boot).await?;
    record.state = VmState::Stopped;
    record.pause_reason = None;
    daemon.save_vm(record)?;
    if record.network.is_some() {
        daemon.net.settle(networked_vm_runs(daemon)?).await;
    }
    Ok(())
}

/// Whether a VM with networking is running, booting or paused (so the
/// host network must stay).
pub fn networked_vm_runs(daemon: &Daemon) -> Result<bool> {
    Ok(daemon
        .vm_records()?
        .iter()
        .any(|r| r.network.is_some() && matches!(r.state, VmState::Running | VmState::Starting | VmState::Paused)))
}

/// Starts a stopped VM (an operation's work).
pub async fn start(daemon: Arc<Daemon>, op: &OperationHandle, name: String) -> Result<Vm> {
    let mut guard = daemon.vms.lock(&name).await;
    let (mut record, admitted) = readmit(&daemon, &name, VmAction::Start)?;
    if admitted != Admitted::AlreadyDone {
        boot(&daemon, &mut record, &mut guard, Some(op)).await?;
    }
    daemon.vm_view(&record)
}

/// Stops a VM if it runs, then boots it, holding its lock throughout so
/// nothing (an `rm`, say) comes between (an operation's work).
pub async fn restart(daemon: Arc<Daemon>, op: &OperationHandle, name: String, admitted: Admitted) -> Result<Vm> {
    let mut guard = lock_for(&daemon, &name, VmAction::Restart, admitted).await;
    let (mut record, _) = readmit(&daemon, &name, VmAction::Restart)?;
    stop_locked(&daemon, &mut record, &mut guard).await?;
    op.step("boot");
    boot(&daemon, &mut record, &mut guard, Some(op)).await?;
    daemon.vm_view(&record)
}

/// Stops a VM: asks the guest to power off, then the VMM, then kills it
/// (an operation's work). A booting VM's boot is cut short.
pub async fn stop(daemon: Arc<Daemon>, name: String, admitted: Admitted) -> Result<Vm> {
    let mut guard = lock_for(&daemon, &name, VmAction::Stop, admitted).await;
    let (mut record, admitted) = readmit(&daemon, &name, VmAction::Stop)?;
    if admitted != Admitted::AlreadyDone {
        stop_locked(&daemon, &mut record, &mut guard).await?;
        tracing::info!(vm = %name, "VM stopped");
    }
    daemon.vm_view(&record)
}

/// Stops the VM whose lock the caller holds. A kill that preempts the
/// stop ends it at once; the VM is stopped either way.
async fn stop_locked(daemon: &Arc<Daemon>, record: &mut VmRecord, guard: &mut VmGuard) -> Result<()> {
    let Some(process) = daemon.running_vmm(&record.name)? else {
        return stopped(daemon, record).await;
    };
    if record.state == VmState::Paused {
        // A paused guest cannot shut down, and QEMU's quit could wait on
        // the very disk that failed: its VMM is killed.
        tracing::info!(vm = %record.name, reason = ?record.pause_reason, "the guest is paused; killing its VMM");
        return stopped(daemon, record).await;
    }
    record.state = VmState::Stopping;
    daemon.save_vm(record)?;
    if let Some(agent) = daemon.vms.agent(&record.name) {
        let _ = tokio::time::timeout(POWEROFF_REQUEST_TIMEOUT, agent.poweroff()).await;
    }
    let driver = daemon.driver(record)?;
    let run_dir = daemon.vm_run_dir(&record.name);
    tokio::select! {
        graceful = driver.stop(&run_dir, process, STOP_TIMEOUT) => {
            if let Err(e) = graceful {
                tracing::warn!(vm = %record.name, error = %e, "graceful stop failed; killing");
            }
        }
        by = guard.preempted() => tracing::info!(vm = %record.name, by = by.verb(), "stop cut short"),
    }
    stopped(daemon, record).await
}

/// Kills a VM's VMM at once, cutting short a boot or a stop (an operation's work).
pub async fn kill(daemon: Arc<Daemon>, name: String, admitted: Admitted) -> Result<Vm> {
    let _guard = lock_for(&daemon, &name, VmAction::Kill, admitted).await;
    let (mut record, admitted) = readmit(&daemon, &name, VmAction::Kill)?;
    if admitted != Admitted::AlreadyDone {
        stopped(&daemon, &mut record).await?;
        tracing::info!(vm = %name, "VM killed");
    }
    daemon.vm_view(&record)
}

/// Removes a VM and everything it holds (an operation's work). One that is
/// not stopped is refused unless `force`, which kills it first.
pub async fn remove(daemon: Arc<Daemon>, name: String, force: bool, admitted: Admitted) -> Result<()> {
    let action = VmAction::Remove { force };
    let _guard = lock_for(&daemon, &name, action, admitted).await;
    let (record, _) = readmit(&daemon, &name, action)?;
    forget(&daemon, record).await?;
    tracing::info!(vm = %name, "VM removed");
    Ok(())
}

/// Releases everything a VM holds, then its record. The caller holds its lock.
pub async fn forget(daemon: &Arc<Daemon>, record: VmRecord) -> Result<()> {
    daemon.vms.drop_agent(&record.name);
    ledger::release(daemon, &record, Scope::All).await?;
    daemon.db.delete_object(ObjectTable::Vms, &record.name)?;
    daemon.vms.forget(&record.name);
    if record.network.is_some() {
        daemon.net.settle(networked_vm_runs(daemon)?).await;
    }
    daemon.events.publish(banger_api::Event::Deleted { kind: banger_api::ObjectKind::Vm, name: record.name });
    if record.work_disk_bytes.is_some() {
        // Its seed may have no other user now; a seed that cannot go is
        // only disk space, which the next prune retries.
        if let Err(e) = crate::image::prune_seeds(daemon).await {
            tracing::warn!(error = %e, "cannot remove unused work-disk seeds");
        }
    }
    Ok(())
}

/// Changes a stopped VM's vCPUs or memory.
pub async fn set(daemon: &Arc<Daemon>, name: &str, request: VmSetRequest) -> Result<Vm> {
    let _guard = lock_briefly(daemon, name).await?;
    let (mut record, _) = readmit(daemon, name, VmAction::Set)?;
    let host = crate::limits::HostLimits::probe();
    if let Some(cpus) = request.cpus {
        record.cpus = host.check_cpus(cpus)?;
    }
    if let Some(memory) = request.memory_mib {
        record.memory_mib = host.check_memory(memory)?;
    }
    daemon.save_vm(&record)?;
    daemon.vm_view(&record)
}

/// Grows a stopped VM's root disk (and its filesystem).
pub async fn resize_disk(daemon: &Arc<Daemon>, name: &str, size_bytes: u64) -> Result<Vm> {
    let _guard = lock_briefly(daemon, name).await?;
    let (mut record, _) = readmit(daemon, name, VmAction::ResizeDisk)?;
    let size_bytes = crate::limits::disk_size("size_bytes", size_bytes, 0)?;
    if size_bytes < record.disk_size_bytes {
        return Err(Error::InvalidArgument(format!(
            "disks only grow: {name} has {} bytes, asked for {size_bytes}",
            record.disk_size_bytes
        )));
    }
    let path = daemon.vm_dir(name).join("root.ext4");
    ledger::blocking(move || Ok(banger_storage::grow_disk(&path, size_bytes)?)).await?;
    record.disk_size_bytes = size_bytes;
    daemon.save_vm(&record)?;
    daemon.vm_view(&record)
}

/// The VM's agent connection for a command, reconnecting if the cached one
/// broke (after a daemon restart, say). A VM whose agent has stopped
/// answering is refused at once rather than waited on.
pub async fn agent(daemon: &Arc<Daemon>, name: &str) -> Result<Arc<AgentConn>> {
    agent_for(daemon, name, VmAction::Exec).await
}

/// [`agent`] for another `action` on the guest, which a refusal names.
pub async fn agent_for(daemon: &Arc<Daemon>, name: &str, action: VmAction) -> Result<Arc<AgentConn>> {
    daemon.admit(name, action)?;
    if let Some(silent) = daemon.vms.health().silent_for(name) {
        return Err(Error::AgentNotAnswering { name: name.to_owned(), silent });
    }
    if let Some(agent) = daemon.vms.agent(name) {
        return Ok(agent);
    }
    let _connecting = daemon.vms.connect_lock(name).await;
    if let Some(agent) = daemon.vms.agent(name) {
        return Ok(agent);
    }
    let (record, _) = daemon.admit(name, action)?;
    let endpoint = daemon.driver(&record)?.agent_endpoint(&daemon.vm_run_dir(name));
    let agent = tokio::time::timeout(RECONNECT_TIMEOUT, AgentConn::connect(&endpoint, RECONNECT_TIMEOUT))
        .await
        .map_err(|_| crate::agent::AgentError::Timeout(RECONNECT_TIMEOUT))??;
    daemon.vms.set_agent(name, Arc::clone(&agent));
    Ok(agent)
}
