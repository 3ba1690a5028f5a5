//! Port forwards: a listener on the host's loopback per forward, each
//! accepted connection carried to the guest's port over the agent channel
//! ([`super::connect`]). A forward is an entry in its VM's ledger, made
//! before its listener; it lasts until removed or until the VM is (a VM
//! that is stopped refuses its forwards' connections), and a daemon that
//! restarts listens again on every forward its ledgers hold.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use banger_api::Forward;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use super::connect;
use crate::error::{Error, Result};
use crate::vm::ledger::Resource;
use crate::Daemon;

/// The address forwards listen on.
pub const LISTEN_ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The listeners of every forward, by host port.
#[derive(Default)]
pub struct Forwards {
    listening: Mutex<HashMap<u16, AbortHandle>>,
}

impl Forwards {
    /// Stops listening on `host_port`; connections already carried go on
    /// until they end (or their VM stops).
    pub fn close(&self, host_port: u16) {
        if let Some(task) = self.listening.lock().unwrap_or_else(|e| e.into_inner()).remove(&host_port) {
            task.abort();
        }
    }

    fn listen(&self, host_port: u16, task: AbortHandle) {
        if let Some(old) = self.listening.lock().unwrap_or_else(|e| e.into_inner()).insert(host_port, task) {
            old.abort();
        }
    }
}

/// The forwards of VM `vm`, as its ledger holds them.
pub fn list(daemon: &Daemon, vm: &str) -> Result<Vec<Forward>> {
    daemon.vm_record(vm)?;
    Ok(entries(daemon, vm)?.into_iter().map(|(_, host_port, guest_port)| view(vm, host_port, guest_port)).collect())
}

/// Forwards `host_port` (default: `guest_port`) on the host's loopback to
/// `guest_port` in VM `vm`.
pub async fn add(daemon: &Arc<Daemon>, vm: &str, guest_port: u16, host_port: Option<u16>) -> Result<Forward> {
    let host_port = host_port.unwrap_or(guest_port);
    if guest_port == 0 || host_port == 0 {
        return Err(Error::InvalidArgument("ports are 1 to 65535".into()));
    }
    daemon.vm_record(vm)?;
    let _guard = daemon.vms.lock(vm).await;
    for record in daemon.vm_records()? {
        if let Some((_, _, to)) = entries(daemon, &record.name)?.into_iter().find(|(_, port, _)| *port == host_port) {
            return Err(Error::Conflict(format!(
                "host port {host_port} already forwards to port {to} of VM {:?}",
                record.name
            )));
        }
    }
    let id = daemon.hold(vm, &Resource::Forward { host_port, guest_port })?;
    match bind(host_port).await {
        Ok(listener) => {
            serve(daemon, vm, listener, host_port, guest_port);
            tracing::info!(vm, host_port, guest_port, "port forwarded");
            Ok(view(vm, host_port, guest_port))
        }
        Err(e) => {
            daemon.db.forget_resource(id)?;
            Err(e)
        }
    }
}

/// Removes VM `vm`'s forward of `host_port`.
pub async fn remove(daemon: &Arc<Daemon>, vm: &str, host_port: u16) -> Result<()> {
    daemon.vm_record(vm)?;
    let _guard = daemon.vms.lock(vm).await;
    let Some((id, _, _)) = entries(daemon, vm)?.into_iter().find(|(_, port, _)| *port == host_port) else {
        return Err(Error::NotFound { kind: "forward on host port", name: host_port.to_string() });
    };
    daemon.forwards.close(host_port);
    daemon.db.forget_resource(id)
}

/// At start: listens again on every forward VM `vm`'s ledger holds. A
/// port another program took meanwhile is reported and kept in the ledger.
pub async fn resume(daemon: &Arc<Daemon>, vm: &str) -> Result<()> {
    for (_, host_port, guest_port) in entries(daemon, vm)? {
        match bind(host_port).await {
            Ok(listener) => serve(daemon, vm, listener, host_port, guest_port),
            Err(e) => tracing::warn!(vm, host_port, guest_port, error = %e, "cannot listen again on a forward"),
        }
    }
    Ok(())
}

/// (ledger id, host port, guest port) of each of the VM's forwards.
fn entries(daemon: &Daemon, vm: &str) -> Result<Vec<(crate::vm::ledger::EntryId, u16, u16)>> {
    Ok(daemon
        .db
        .resources(vm)?
        .into_iter()
        .filter_map(|(id, resource)| match resource {
            Resource::Forward { host_port, guest_port } => Some((id, host_port, guest_port)),
            _ => None,
        })
        .collect())
}

fn view(vm: &str, host_port: u16, guest_port: u16) -> Forward {
    Forward { vm: vm.to_owned(), host_address: LISTEN_ADDRESS.to_string(), host_port, guest_port }
}

async fn bind(host_port: u16) -> Result<TcpListener> {
    let address = SocketAddr::from((LISTEN_ADDRESS, host_port));
    TcpListener::bind(address).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            Error::Conflict(format!("{address} is in use on the host: choose another host port"))
        }
        _ => Error::Internal(format!("cannot listen on {address}: {e}")),
    })
}

/// Accepts connections on `listener` until the forward is closed, each
/// carried to the guest on its own task.
fn serve(daemon: &Arc<Daemon>, vm: &str, listener: TcpListener, host_port: u16, guest_port: u16) {
    let (d, vm) = (Arc::clone(daemon), vm.to_owned());
    let task = daemon.tasks.spawn(async move {
        loop {
            let socket = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        tracing::warn!(vm = %vm, host_port, error = %e, "a forward cannot accept");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = d.shutting_down() => return,
            };
            let (d, vm) = (Arc::clone(&d), vm.clone());
            d.tasks.clone().spawn(async move {
                match connect::open(&d, &vm, guest_port).await {
                    // The daemon stopping ends it (its stream is reset).
                    Ok(stream) => tokio::select! {
                        () = connect::pipe(socket, stream) => {}
                        () = d.shutting_down() => {}
                    },
                    // The client sees its connection closed, as with no listener.
                    Err(e) => tracing::debug!(vm = %vm, host_port, guest_port, error = %e, "a forwarded connection is refused"),
                }
            });
        }
    });
    daemon.forwards.listen(host_port, task.abort_handle());
}
