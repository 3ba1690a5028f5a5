//! Watching VMM processes: a VM whose VMM dies (killed from outside, or a
//! guest that powered off) is marked stopped and its runtime files are
//! released; at daemon start, VMs still running are adopted and the rest
//! marked stopped.

use std::sync::Arc;

use banger_api::VmState;
use banger_vmm::VmmProcess;

use crate::error::Result;
use crate::Daemon;

/// Watches the VMM `process` of VM `name` until it exits or the daemon stops.
pub fn watch(daemon: Arc<Daemon>, name: String, process: VmmProcess) {
    let pid = process.pid;
    let tasks = daemon.tasks.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = daemon.shutting_down() => return,
            () = process.exited() => {}
        }
        let _guard = daemon.vms.lock(&name).await;
        // The VM may have been stopped, restarted or removed meanwhile.
        let Ok(mut row) = daemon.vm_row(&name) else {
            return;
        };
        if row.vm.pid == Some(pid) {
            tracing::info!(vm = %name, pid, "VMM exited; marking the VM stopped");
            if let Err(e) = super::lifecycle::mark_stopped(&daemon, &mut row) {
                tracing::error!(vm = %name, error = %e, "cannot record the VM as stopped");
            }
        }
    });
}

/// At daemon start: VMs whose VMM still runs are adopted (watched again,
/// their agent reconnected on first use); the others are marked stopped.
pub fn adopt_all(daemon: &Arc<Daemon>) -> Result<()> {
    for row in daemon.vm_rows()?.into_iter().filter(|r| r.creating) {
        remove_half_made(daemon, row)?;
    }
    remove_orphans(daemon)?;
    for mut row in daemon.vm_rows()? {
        if matches!(row.vm.state, VmState::Stopped | VmState::Created) {
            continue;
        }
        let name = row.vm.name.clone();
        let running = daemon.driver(&row).ok().and_then(|d| d.process(&daemon.vm_run_dir(&name)));
        match running {
            Some(process) if row.vm.state == VmState::Starting => {
                tracing::info!(vm = %name, pid = process.pid, "adopting a VM that was booting; waiting for its agent");
                row.vm.pid = Some(process.pid);
                daemon.save_vm(&row)?;
                finish_boot(Arc::clone(daemon), name, process);
            }
            Some(process) => {
                tracing::info!(vm = %name, pid = process.pid, "adopting running VM");
                row.vm.state = VmState::Running;
                row.vm.pid = Some(process.pid);
                daemon.save_vm(&row)?;
                watch(Arc::clone(daemon), name, process);
            }
            _ => {
                tracing::info!(vm = %name, "VM is no longer running; marking it stopped");
                super::lifecycle::mark_stopped(daemon, &mut row)?;
            }
        }
    }
    Ok(())
}

/// Removes VM directories (disks, runtime files) that no VM record owns:
/// what a create left behind when the daemon died in the middle of it.
fn remove_orphans(daemon: &Daemon) -> Result<()> {
    let known: std::collections::HashSet<String> = daemon.vm_rows()?.into_iter().map(|r| r.vm.name).collect();
    for root in [daemon.config.state_dir.join("vms"), daemon.config.run_dir.join("vms")] {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            let path = entry.path();
            // A VMM still running from such a create is killed first.
            if let Some(process) = VmmProcess::recorded_in(&path) {
                tracing::warn!(vm = %name, pid = process.pid, "killing the VMM of a half-made VM");
                let _ = process.signal(libc::SIGKILL);
            }
            tracing::info!(path = %path.display(), "removing files of a VM that does not exist");
            std::fs::remove_dir_all(&path).map_err(crate::error::Error::io("cannot remove", &path))?;
        }
    }
    Ok(())
}

/// A VM whose create was cut short by the daemon stopping: its VMM is
/// killed, its record and its files removed, as the create's rollback would have.
fn remove_half_made(daemon: &Daemon, row: super::VmRow) -> Result<()> {
    let name = row.vm.name;
    tracing::warn!(vm = %name, "removing a VM whose create was cut short");
    let run_dir = daemon.vm_run_dir(&name);
    if let Some(process) = VmmProcess::recorded_in(&run_dir) {
        let _ = process.signal(libc::SIGKILL);
    }
    daemon.db.delete_object(crate::db::ObjectTable::Vms, &name)?;
    for dir in [daemon.vm_dir(&name), run_dir] {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(crate::error::Error::Io { action: "cannot remove", path: dir, source: e });
            }
        }
    }
    Ok(())
}

/// A VM that was booting when the daemon stopped: wait for its agent as
/// the boot would have; if it never answers, stop it.
fn finish_boot(daemon: Arc<Daemon>, name: String, process: VmmProcess) {
    let tasks = daemon.tasks.clone();
    tasks.spawn(async move {
        let _guard = daemon.vms.lock(&name).await;
        let Ok(mut row) = daemon.vm_row(&name) else { return };
        let Ok(driver) = daemon.driver(&row) else { return };
        let endpoint = driver.agent_endpoint(&daemon.vm_run_dir(&name));
        let answered = tokio::select! {
            answered = crate::agent::AgentConn::connect(&endpoint, daemon.config.boot_timeout) => answered,
            () = daemon.shutting_down() => return,
        };
        let saved = match answered {
            Ok(agent) => {
                row.vm.state = VmState::Running;
                row.vm.agent_version = Some(agent.agent_version.clone());
                daemon.vms.set_agent(&name, agent);
                let saved = daemon.save_vm(&row);
                watch(Arc::clone(&daemon), name.clone(), process);
                saved
            }
            Err(e) => {
                tracing::warn!(vm = %name, error = %e, "an adopted VM never answered; killing it");
                let _ = driver.kill(&daemon.vm_run_dir(&name), process).await;
                super::lifecycle::mark_stopped(&daemon, &mut row)
            }
        };
        if let Err(e) = saved {
            tracing::error!(vm = %name, error = %e, "cannot record the adopted VM");
        }
    });
}
