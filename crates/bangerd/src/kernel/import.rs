//! `kernel import`: a kernel from files on the host, built in a staging
//! directory by `banger_kernel::import` and installed like a pull. The
//! sources are opened and checked when the request arrives, before the
//! operation starts, and only those open files are read afterwards.

use std::path::Path;
use std::sync::Arc;

use banger_api::{Kernel, KernelImportKind, KernelImportRequest};
use banger_kernel::import::{self, ImportError, ImportOptions, ModulesDir, SourceFile, SourceKind};

use super::store::KernelLock;
use crate::error::{Error, Result};
use crate::operations::OperationHandle;
use crate::Daemon;

/// The opened, checked files of an import request.
#[derive(Debug)]
pub struct ImportSources {
    kernel: SourceFile,
    modules: Option<ModulesDir>,
}

/// Opens and checks the files an import request names, so plain mistakes
/// (a missing file, a relative path, a device, a file past its kind's size
/// limit, a file that is no kernel at all) are answered at once.
pub fn open_sources(request: &KernelImportRequest) -> Result<ImportSources> {
    let kernel_file = open_source(&request.path)?;
    let kernel = SourceFile::new(kernel_file, Path::new(&request.path), request.kind.map(source_kind))?;
    let modules = match &request.modules_dir {
        Some(dir) => Some(ModulesDir::new(open_source(dir)?, Path::new(dir))?),
        None => None,
    };
    Ok(ImportSources { kernel, modules })
}

/// Opens one host path a request names, for reading: every file or
/// directory an import reads is this one, or found inside this one.
fn open_source(path: &str) -> Result<std::fs::File> {
    if !Path::new(path).is_absolute() {
        return Err(Error::InvalidArgument(format!("path {path:?} must be absolute")));
    }
    // Whatever stops the open (no such file, a dangling link, a path
    // through a file) is about the path the caller gave.
    import::open_source(Path::new(path)).map_err(|e| match e {
        ImportError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::InvalidArgument(format!("{path} does not exist"))
        }
        ImportError::Io { source, .. } => Error::InvalidArgument(format!("cannot open {path}: {source}")),
        other => other.into(),
    })
}

/// Runs the import; blocking work happens off the async runtime.
pub async fn import(
    daemon: Arc<Daemon>,
    op: &OperationHandle,
    request: KernelImportRequest,
    sources: ImportSources,
    lock: KernelLock,
) -> Result<Kernel> {
    let staging = daemon.kernels.staging(&request.name, op.id())?;
    let options = ImportOptions { modules: sources.modules, busybox: daemon.config.busybox.clone() };
    let dest = staging.path().to_path_buf();
    let progress_op = op.progress_reporter();
    let imported = tokio::task::spawn_blocking(move || {
        import::import(sources.kernel, &options, &dest, &mut |step: &str| progress_op.step(step))
    })
    .await
    .map_err(|e| Error::Internal(format!("import task: {e}")))??;

    op.step("install");
    let source = banger_api::KernelSource::Import(request.path.clone());
    tokio::task::spawn_blocking(move || {
        let digest = Some(imported.vmlinux_sha256);
        daemon.kernels.install(&lock, &request.name, staging, imported.kernel_version, digest, source)
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
