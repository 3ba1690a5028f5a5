//! Watching running VMs: a supervisor per VM waits on its VMM's exit (a
//! kill from outside, a guest that powered off) and pings its agent; at
//! daemon start, every VM is reconciled with what its ledger says it holds.

use std::sync::Arc;

use banger_api::VmState;
use banger_vmm::{GuestRun, VmmProcess};

use super::health::{KEEPALIVE_INTERVAL, PING_TIMEOUT};
use super::ledger::Resource;
use super::{lifecycle, VmGuard, VmRecord};
use crate::agent::AgentConn;
use crate::error::Result;
use crate::Daemon;

/// Supervises VM `name` while `process` runs: pings its agent, and when the
/// process exits releases what the boot made and records the VM stopped.
pub fn watch(daemon: Arc<Daemon>, name: String, process: VmmProcess) {
    let tasks = daemon.tasks.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = daemon.shutting_down() => return,
            () = process.exited() => {}
            () = keepalive(&daemon, &name) => {}
        }
        let _guard = daemon.vms.lock(&name).await;
        // The VM may have been stopped, restarted or removed meanwhile:
        // only the boot that started this process is this one's to end.
        let Ok(mut record) = daemon.vm_record(&name) else { return };
        let ours = daemon.db.resources(&name).is_ok_and(|entries| {
            entries.iter().any(|(_, r)| matches!(r, Resource::Vmm { process: Some(p), .. } if *p == process))
        });
        if ours {
            tracing::info!(vm = %name, pid = process.pid, "VMM exited; marking the VM stopped");
            if let Err(e) = lifecycle::stopped(&daemon, &mut record).await {
                tracing::error!(vm = %name, error = %e, "cannot release a VM whose VMM exited");
            }
        }
    });
}

/// Pings the VM's agent for as long as the VM runs, keeping its health
/// current and telling subscribers when it changes; when the agent does
/// not answer, asks the VMM whether it paused the guest (a disk write
/// failed) and records the VM paused, or running again. Never returns.
async fn keepalive(daemon: &Arc<Daemon>, name: &str) {
    let mut answering = true;
    let mut paused = daemon.vm_record(name).is_ok_and(|r| r.state == VmState::Paused);
    let mut ticks = tokio::time::interval(KEEPALIVE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let agent = match daemon.vms.agent(name) {
            Some(agent) => Some(agent),
            None => reconnect(daemon, name).await,
        };
        let answered = match agent {
            Some(agent) => tokio::time::timeout(PING_TIMEOUT, agent.ping()).await.is_ok_and(|r| r.is_ok()),
            None => false,
        };
        if answered {
            daemon.vms.health().answered(name);
        }
        if !answered || paused {
            paused = check_paused(daemon, name, answered).await.unwrap_or(paused);
        }
        let now = daemon.vms.health().silent_for(name).is_none();
        if now != answering {
            answering = now;
            tracing::warn!(vm = %name, answering, "the guest agent's health changed");
            daemon.publish_vm_update(name);
        }
    }
}

/// Asks the VM's VMM whether it paused the guest (an agent that answers
/// means it runs) and records the answer when it changed; says whether
/// the VM is now recorded paused. `None` when nothing was learnt, or an
/// action holds the VM (it decides the state then).
async fn check_paused(daemon: &Arc<Daemon>, name: &str, answered: bool) -> Option<bool> {
    let record = daemon.vm_record(name).ok()?;
    let run = if answered {
        GuestRun::Running
    } else {
        daemon.driver(&record).ok()?.guest_run(&daemon.vm_run_dir(name)).await?
    };
    let _guard = daemon.vms.try_lock(name).ok()?;
    let mut record = daemon.vm_record(name).ok()?;
    let (state, reason) = match run {
        GuestRun::Running => (VmState::Running, None),
        GuestRun::Paused { reason } => (VmState::Paused, Some(reason)),
    };
    if !matches!(record.state, VmState::Running | VmState::Paused) {
        return None;
    }
    if record.state != state {
        match &reason {
            Some(reason) => tracing::warn!(vm = %name, reason, "the VMM paused the guest"),
            None => tracing::info!(vm = %name, "the guest runs again"),
        }
        record.state = state;
        record.pause_reason = reason;
        if let Err(e) = daemon.save_vm(&record) {
            tracing::error!(vm = %name, error = %e, "cannot record the guest's run state");
            return None;
        }
    }
    Some(state == VmState::Paused)
}

/// A new connection to a running VM's agent, when the last one broke.
async fn reconnect(daemon: &Arc<Daemon>, name: &str) -> Option<Arc<AgentConn>> {
    let record = daemon.vm_record(name).ok()?;
    let endpoint = daemon.driver(&record).ok()?.agent_endpoint(&daemon.vm_run_dir(name));
    let _connecting = daemon.vms.connect_lock(name).await;
    let agent = tokio::time::timeout(PING_TIMEOUT, AgentConn::connect(&endpoint, PING_TIMEOUT)).await.ok()?.ok()?;
    daemon.vms.set_agent(name, Arc::clone(&agent));
    Some(agent)
}

/// At daemon start: each VM is reconciled with its ledger. A create cut
/// short is undone; a VM whose VMM still runs (the same process: pid and
/// start time) is adopted; what a dead VMM held is released. Each VM is
/// locked before the daemon serves, so no request sees it half-reconciled.
pub async fn adopt_all(daemon: &Arc<Daemon>) -> Result<()> {
    let mut adoptions = Vec::new();
    for record in daemon.vm_records()? {
        let guard = daemon.vms.try_lock(&record.name)?;
        adoptions.push((record, guard));
    }
    remove_orphans(daemon)?;
    for (record, _) in &adoptions {
        if let Some(network) = record.network {
            daemon.net.names.set(&record.name, network.address);
        }
    }
    for (record, guard) in adoptions {
        let name = record.name.clone();
        // One VM that cannot be reconciled must not keep the daemon from
        // starting: its ledger keeps what is left for the next try.
        if let Err(e) = reconcile(daemon, record, guard).await {
            tracing::error!(vm = %name, error = %e, "cannot reconcile the VM at start");
        }
    }
    reconcile_network(daemon).await;
    Ok(())
}

/// The host network after the VMs are reconciled: taps no ledger holds are
/// deleted, and what networked VMs that run need is rebuilt (or a crash's
/// leftovers removed when none runs).
async fn reconcile_network(daemon: &Arc<Daemon>) {
    if !daemon.config.network.enabled {
        return;
    }
    let in_use = daemon.taps_in_use().unwrap_or_default();
    let running = lifecycle::networked_vm_runs(daemon).unwrap_or(true);
    if let Err(e) = daemon.net.reconcile(&in_use, running).await {
        tracing::error!(error = %e, "cannot reconcile the host network at start");
    }
}

async fn reconcile(daemon: &Arc<Daemon>, mut record: VmRecord, guard: VmGuard) -> Result<()> {
    if !record.in_ledger {
        enter_legacy(daemon, &mut record)?;
    }
    if record.creating {
        tracing::warn!(vm = %record.name, "removing a VM whose create was cut short");
        return lifecycle::forget(daemon, record).await;
    }
    let name = record.name.clone();
    adopt(daemon, record, guard).await?;
    crate::guest::forward::resume(daemon, &name).await
}

async fn adopt(daemon: &Arc<Daemon>, mut record: VmRecord, guard: VmGuard) -> Result<()> {
    let name = record.name.clone();
    let process = match record.state {
        VmState::Running | VmState::Paused | VmState::Starting => daemon.running_vmm(&name)?,
        // Unknown: a newer daemon's record; treated as not running.
        VmState::Created | VmState::Stopped | VmState::Stopping | VmState::Unknown => None,
    };
    match (record.state, process) {
        (VmState::Running | VmState::Paused, Some(process)) => {
            tracing::info!(vm = %name, pid = process.pid, "adopting running VM");
            watch(Arc::clone(daemon), name, process);
        }
        (VmState::Starting, Some(process)) => {
            tracing::info!(vm = %name, pid = process.pid, "adopting a VM that was booting; waiting for its agent");
            finish_boot(Arc::clone(daemon), record, guard, process);
        }
        _ => {
            // Stopped, or its VMM is gone: nothing of a boot may remain.
            if record.state != VmState::Created {
                tracing::info!(vm = %name, "VM is not running; releasing what its boots held");
            }
            let created = record.state == VmState::Created;
            lifecycle::stopped(daemon, &mut record).await?;
            if created {
                record.state = VmState::Created;
                daemon.save_vm(&record)?;
            }
        }
    }
    Ok(())
}

/// Gives a VM recorded before the ledger existed the entries of what it
/// holds by the old layout, so every release path finds them.
fn enter_legacy(daemon: &Daemon, record: &mut VmRecord) -> Result<()> {
    let name = record.name.clone();
    let (dir, run_dir) = (daemon.vm_dir(&name), daemon.vm_run_dir(&name));
    daemon.hold(&name, &Resource::Dir { path: dir.clone() })?;
    daemon.hold(&name, &Resource::Dir { path: run_dir.clone() })?;
    for disk in ["root.ext4", "work.ext4"] {
        if dir.join(disk).exists() {
            daemon.hold(&name, &Resource::Disk { path: dir.join(disk) })?;
        }
    }
    let process = daemon.driver(record).ok().and_then(|d| d.process(&run_dir));
    daemon.hold(&name, &Resource::Vmm { run_dir, process })?;
    record.in_ledger = true;
    daemon.save_vm(record)
}

/// Removes VM directories that no VM record owns (left by a daemon from
/// before the ledger). Nothing in them is signalled: without a record,
/// no process there is known to be banger's.
fn remove_orphans(daemon: &Daemon) -> Result<()> {
    let known: std::collections::HashSet<String> = daemon.vm_records()?.into_iter().map(|r| r.name).collect();
    for root in [daemon.config.state_dir.join("vms"), daemon.config.run_dir.join("vms")] {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing files of a VM that does not exist");
            std::fs::remove_dir_all(&path).map_err(crate::error::Error::io("cannot remove", &path))?;
        }
    }
    Ok(())
}

/// A VM that was booting when the daemon stopped: wait for its agent as
/// the boot would have (bounded, and preemptible by a kill, a stop or a
/// forced rm); if it never answers, release what the boot made.
fn finish_boot(daemon: Arc<Daemon>, mut record: VmRecord, mut guard: VmGuard, process: VmmProcess) {
    let tasks = daemon.tasks.clone();
    tasks.spawn(async move {
        let name = record.name.clone();
        let Ok(driver) = daemon.driver(&record) else { return };
        let endpoint = driver.agent_endpoint(&daemon.vm_run_dir(&name));
        let timeout = daemon.config.boot_timeout;
        let answered = tokio::select! {
            answered = tokio::time::timeout(timeout, AgentConn::connect(&endpoint, timeout)) => answered.ok().and_then(Result::ok),
            () = process.exited() => None,
            _ = guard.preempted() => None,
            () = daemon.shutting_down() => return,
        };
        let saved = match answered {
            Some(agent) => {
                record.state = VmState::Running;
                record.agent_version = Some(agent.agent_version.clone());
                daemon.vms.set_agent(&name, agent);
                let saved = daemon.save_vm(&record);
                watch(Arc::clone(&daemon), name.clone(), process);
                saved
            }
            None => {
                tracing::warn!(vm = %name, "an adopted VM never answered; stopping it");
                lifecycle::stopped(&daemon, &mut record).await
            }
        };
        drop(guard);
        if let Err(e) = saved {
            tracing::error!(vm = %name, error = %e, "cannot record the adopted VM");
        }
    });
}
