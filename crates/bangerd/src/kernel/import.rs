//! `kernel import`: a kernel from files on the host, built in a staging
//! directory by `banger_kernel::import` and installed like a pull.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::{Kernel, KernelImportKind, KernelImportRequest};
use banger_kernel::import::{self, ImportOptions, SourceKind};

use super::store::KernelLock;
use crate::error::{Error, Result};
use crate::operations::OperationHandle;
use crate::Daemon;

/// Checks an import request before an operation starts, so plain mistakes
/// (a missing file, a relative path) are answered at once.
pub fn validate(request: &KernelImportRequest) -> Result<()> {
    for path in std::iter::once(&request.path).chain(&request.modules_dir) {
        if !Path::new(path).is_absolute() {
            return Err(Error::InvalidArgument(format!("path {path:?} must be absolute")));
        }
        if !Path::new(path).exists() {
            return Err(Error::InvalidArgument(format!("{path} does not exist")));
        }
    }
    Ok(())
}

/// Runs the import; blocking work happens off the async runtime.
pub async fn import(
    daemon: Arc<Daemon>,
    op: &OperationHandle,
    request: KernelImportRequest,
    lock: KernelLock,
) -> Result<Kernel> {
    let staging = daemon.kernels.staging(&request.name, op.id())?;
    let path = PathBuf::from(&request.path);
    let options = ImportOptions {
        modules_dir: request.modules_dir.as_ref().map(PathBuf::from),
        busybox: daemon.config.busybox.clone(),
    };
    let kind = request.kind;
    let dest = staging.path().to_path_buf();
    let progress_op = op.progress_reporter();
    let imported = tokio::task::spawn_blocking(move || {
        let kind = match kind {
            Some(kind) => source_kind(kind),
            None => import::detect_kind(&path)?,
        };
        import::import(&path, kind, &options, &dest, &mut |step: &str| progress_op.step(step))
    })
    .await
    .map_err(|e| Error::Internal(format!("import task: {e}")))??;

    op.step("install");
    let source = banger_api::KernelSource::Import(request.path.clone());
    tokio::task::spawn_blocking(move || {
        daemon.kernels.install(&lock, &request.name, staging, imported.kernel_version, source)
    })
    .await
    .map_err(|e| Error::Internal(format!("install task: {e}")))?
}

fn source_kind(kind: KernelImportKind) -> SourceKind {
    match kind {
        KernelImportKind::Vmlinux => SourceKind::Vmlinux,
        KernelImportKind::Bzimage => SourceKind::BzImage,
        KernelImportKind::Deb => SourceKind::Deb,
    }
}
