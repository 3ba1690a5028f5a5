//! Resolving a kernel reference: a kernel in the store, else a catalog
//! entry of that name, pulled as part of the calling operation.

use std::sync::Arc;

use banger_api::Kernel;

use crate::error::{Error, Result};
use crate::operations::OperationHandle;
use crate::Daemon;

/// The kernel named `name`, pulling it from the catalog if it is not stored.
pub async fn resolve(daemon: &Arc<Daemon>, name: &str, op: &OperationHandle) -> Result<Kernel> {
    match daemon.kernels.get(name) {
        Ok(kernel) => return Ok(kernel),
        Err(Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    // Another operation may be pulling the same kernel: wait for it rather
    // than fail, then look again.
    let lock = daemon.kernels.lock_wait(name).await;
    if let Ok(kernel) = daemon.kernels.get(name) {
        return Ok(kernel);
    }
    let entries = super::catalog::load(&daemon.http, &daemon.config.catalogs).await?;
    let entry = banger_kernel::catalog::lookup(&entries, name)
        .map_err(|_| Error::NotFound { kind: "kernel (locally or in the catalog)", name: name.to_owned() })?
        .clone();
    op.step("pull kernel");
    let kernel = super::fetch::pull(Arc::clone(daemon), op, entry, lock).await?;
    daemon.events.publish(banger_api::Event::Created { kind: banger_api::ObjectKind::Kernel, name: name.to_owned() });
    Ok(kernel)
}

/// Refuses, before any work starts, a kernel name that is empty or names
/// neither a stored kernel nor a catalog entry.
pub async fn check_known(daemon: &Daemon, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("kernel must name a kernel (see `banger kernel list`)".into()));
    }
    match daemon.kernels.get(name) {
        Ok(_) => return Ok(()),
        Err(Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let entries = super::catalog::load(&daemon.http, &daemon.config.catalogs).await?;
    match banger_kernel::catalog::lookup(&entries, name) {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::NotFound { kind: "kernel (locally or in the catalog)", name: name.to_owned() }),
    }
}
