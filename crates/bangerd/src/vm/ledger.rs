//! The per-VM ledger: everything a VM holds (its directories, disks and
//! booted VMMs, its port forwards; next its taps, addresses, rules and DNS
//! records) is an entry in the state store, recorded before the thing is
//! made. Every release path (stop, rm, a failed create, the supervisor,
//! adoption at start) walks the ledger here, newest entry first, and an
//! entry is forgotten only once what it names is gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_vmm::VmmProcess;
use serde::{Deserialize, Serialize};

use super::record::VmRecord;
use crate::error::{Error, Result};
use crate::Daemon;

/// One thing a VM holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// A directory of the VM's, removed with everything in it.
    Dir {
        /// Where.
        path: PathBuf,
    },
    /// A disk image file.
    Disk {
        /// Where.
        path: PathBuf,
    },
    /// A VMM booted for the VM: its driver's runtime files (the driver
    /// knows them, from the run directory), and its process once started.
    Vmm {
        /// The VM's run directory.
        run_dir: PathBuf,
        /// The process, known by pid and start time; `None` until the
        /// driver has started it (its pid file may name it meanwhile).
        process: Option<VmmProcess>,
    },
    /// The VM's address on banger's bridge (and its name in DNS).
    Address {
        /// The address.
        address: std::net::Ipv4Addr,
    },
    /// A tap attached to banger's bridge for a boot.
    Tap {
        /// The tap's name.
        name: String,
    },
    /// A host loopback port forwarded to a guest port.
    Forward {
        /// The host port.
        host_port: u16,
        /// The guest port.
        guest_port: u16,
    },
}

impl Resource {
    /// How long the VM holds it.
    pub fn lifetime(&self) -> Lifetime {
        match self {
            Resource::Dir { .. } | Resource::Disk { .. } | Resource::Forward { .. } | Resource::Address { .. } => {
                Lifetime::Vm
            }
            Resource::Vmm { .. } | Resource::Tap { .. } => Lifetime::Boot,
        }
    }
}

/// How long a resource is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Until the VM stops.
    Boot,
    /// Until the VM is removed.
    Vm,
}

/// Which resources a release lets go of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What a boot made: the VM stopped.
    Boot,
    /// Everything: the VM is being removed.
    All,
}

impl Scope {
    fn covers(self, lifetime: Lifetime) -> bool {
        self == Scope::All || lifetime == Lifetime::Boot
    }
}

/// An entry's id in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryId(pub i64);

impl Daemon {
    /// Records that `vm` is about to hold `resource`: call it before making the thing.
    pub fn hold(&self, vm: &str, resource: &Resource) -> Result<EntryId> {
        self.db.record_resource(vm, resource)
    }

    /// The taps every VM's ledger holds.
    pub fn taps_in_use(&self) -> Result<std::collections::HashSet<String>> {
        let mut taps = std::collections::HashSet::new();
        for record in self.vm_records()? {
            for (_, resource) in self.db.resources(&record.name)? {
                if let Resource::Tap { name } = resource {
                    taps.insert(name);
                }
            }
        }
        Ok(taps)
    }

    /// The VMM process the VM's newest boot started, if that process still runs.
    pub fn running_vmm(&self, vm: &str) -> Result<Option<VmmProcess>> {
        Ok(self.db.resources(vm)?.into_iter().rev().find_map(|(_, r)| match r {
            Resource::Vmm { process: Some(process), .. } if process.is_running() => Some(process),
            _ => None,
        }))
    }
}

/// Releases what `record`'s VM holds within `scope`, newest first. What
/// cannot be released stays in the ledger (for the next try) and the first
/// such failure is returned once the rest has been tried.
pub async fn release(daemon: &Arc<Daemon>, record: &VmRecord, scope: Scope) -> Result<()> {
    let mut first_error = None;
    for (id, resource) in daemon.db.resources(&record.name)?.into_iter().rev() {
        if !scope.covers(resource.lifetime()) {
            continue;
        }
        let released = release_one(daemon, record, &resource).await;
        match released.and_then(|()| daemon.db.forget_resource(id)) {
            Ok(()) => tracing::debug!(vm = %record.name, ?resource, "released"),
            Err(e) => {
                tracing::warn!(vm = %record.name, ?resource, error = %e, "cannot release");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn release_one(daemon: &Arc<Daemon>, record: &VmRecord, resource: &Resource) -> Result<()> {
    match resource {
        Resource::Vmm { run_dir, process } => {
            let driver = daemon.driver(record)?;
            // Before the start was recorded the driver's pid file may
            // already name the process; the driver checks its identity.
            let process = process.filter(VmmProcess::is_running).or_else(|| driver.process(run_dir));
            if let Some(process) = process {
                driver.kill(run_dir, process).await?;
            }
            let (driver, run_dir) = (driver.clone(), run_dir.clone());
            blocking(move || driver.release(&run_dir).map_err(Error::io("cannot release the VMM files in", &run_dir)))
                .await
        }
        Resource::Address { .. } => {
            daemon.net.names.remove(&record.name);
            Ok(())
        }
        Resource::Tap { name } => daemon.net.give_back(name).await,
        Resource::Forward { host_port, .. } => {
            daemon.forwards.close(*host_port);
            Ok(())
        }
        Resource::Disk { path } => {
            let path = path.clone();
            blocking(move || remove(&path, |p| std::fs::remove_file(p))).await
        }
        Resource::Dir { path } => {
            let path = path.clone();
            blocking(move || remove(&path, |p| std::fs::remove_dir_all(p))).await
        }
    }
}

/// Removes a file or directory; one already gone is fine.
fn remove(path: &Path, how: fn(&Path) -> std::io::Result<()>) -> Result<()> {
    match how(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::Io { action: "cannot remove", path: path.into(), source: e })
        }
        _ => Ok(()),
    }
}

/// Runs file work off the async threads.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::Internal(format!("file task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_releases_only_what_a_boot_made() {
        assert!(Scope::Boot.covers(Lifetime::Boot));
        assert!(!Scope::Boot.covers(Lifetime::Vm));
        assert!(Scope::All.covers(Lifetime::Vm) && Scope::All.covers(Lifetime::Boot));
    }

    #[test]
    fn entries_round_trip_as_tagged_json() {
        let entry = Resource::Vmm { run_dir: "/run/banger/vms/a".into(), process: None };
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(json, r#"{"kind":"vmm","run_dir":"/run/banger/vms/a","process":null}"#);
        assert_eq!(serde_json::from_str::<Resource>(&json).unwrap(), entry);
    }
}
