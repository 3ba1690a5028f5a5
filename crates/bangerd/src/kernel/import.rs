//! `kernel import`: a kernel from files on the host, built in a staging
//! directory by `banger_kernel::import` and installed like a pull. The
//! sources are opened and checked when the request arrives, before the
//! operation starts, with the caller's own rights, and only those open
//! files are read afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::{Kernel, KernelImportKind, KernelImportRequest};
use banger_kernel::import::{self, ImportError, ImportOptions, ModulesDir, SourceFile, SourceKind};
use tempfile::TempDir;

use super::store::KernelLock;
use crate::caller::{files, Caller};
use crate::error::{Error, Result};
use crate::operations::OperationHandle;
use crate::Daemon;

/// The opened, checked files of an import request.
#[derive(Debug)]
pub struct ImportSources {
    kernel: SourceFile,
    modules: Option<Modules>,
}

/// A modules directory, as the importer will read it.
#[derive(Debug)]
enum Modules {
    /// Root's: read where it is.
    InPlace(ModulesDir),
    /// Another caller's: copied with the caller's rights first.
    Caller { dir: std::fs::File, path: PathBuf, caller: Caller },
}

/// Opens and checks the files an import request names, so plain mistakes
/// (a missing file, a relative path, a device, a file past its kind's size
/// limit, a file that is no kernel at all, a file the caller may not read)
/// are answered at once.
pub fn open_sources(caller: &Caller, request: &KernelImportRequest) -> Result<ImportSources> {
    let kernel_file = open_source(caller, &request.path)?;
    let kernel = SourceFile::new(kernel_file, Path::new(&request.path), request.kind.map(source_kind))?;
    let modules = match &request.modules_dir {
        Some(dir) if caller.is_root() => {
            Some(Modules::InPlace(ModulesDir::new(open_source(caller, dir)?, Path::new(dir))?))
        }
        Some(dir) => {
            let opened = open_source(caller, dir)?;
            let checked = opened.try_clone().map_err(Error::io("cannot open", dir))?;
            ModulesDir::new(checked, Path::new(dir))?;
            Some(Modules::Caller { dir: opened, path: PathBuf::from(dir), caller: caller.clone() })
        }
        None => None,
    };
    Ok(ImportSources { kernel, modules })
}

/// Opens one host path a request names, for reading, with the caller's
/// rights: every file or directory an import reads is this one, or found
/// inside this one.
fn open_source(caller: &Caller, path: &str) -> Result<std::fs::File> {
    if !Path::new(path).is_absolute() {
        return Err(Error::InvalidArgument(format!("path {path:?} must be absolute")));
    }
    if !caller.is_root() {
        return files::open(caller, Path::new(path));
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

/// Copies a caller's modules directory, read with the caller's rights, into
/// a scratch directory beside the staging one (keeping its name, which is
/// the kernel release). Links are left out: the importer reads the copy
/// as root, and a caller's link may point anywhere.
fn stage_modules(dir: std::fs::File, path: &Path, caller: &Caller, beside: &Path) -> Result<(TempDir, ModulesDir)> {
    let name = path.file_name().ok_or_else(|| Error::InvalidArgument(format!("{} has no name", path.display())))?;
    let parent = beside.parent().unwrap_or(beside);
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{}caller-modules-", crate::staging::TEMP_PREFIX))
        .tempdir_in(parent)
        .map_err(Error::io("cannot create a directory in", parent))?;
    let copy = scratch.path().join(name);
    std::fs::create_dir(&copy).map_err(Error::io("cannot create", &copy))?;
    let mut tree = files::stream_tree(caller, dir, path)?;
    let unpacked = unpack_without_links(&mut tree, &copy);
    tree.finish()?;
    unpacked.map_err(Error::io("cannot copy the modules of", path))?;
    let opened = import::open_source(&copy)?;
    Ok((scratch, ModulesDir::new(opened, &copy)?))
}

fn unpack_without_links(tree: &mut dyn std::io::Read, dest: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(tree);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if matches!(entry.header().entry_type(), tar::EntryType::Symlink | tar::EntryType::Link) {
            continue;
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
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
    let busybox = daemon.config.busybox.clone();
    let dest = staging.path().to_path_buf();
    let progress_op = op.progress_reporter();
    let imported = tokio::task::spawn_blocking(move || {
        let (_scratch, modules) = match sources.modules {
            Some(Modules::InPlace(modules)) => (None, Some(modules)),
            Some(Modules::Caller { dir, path, caller }) => {
                let (scratch, modules) = stage_modules(dir, &path, &caller, &dest)?;
                (Some(scratch), Some(modules))
            }
            None => (None, None),
        };
        let options = ImportOptions { modules, busybox };
        Ok::<_, Error>(import::import(sources.kernel, &options, &dest, &mut |step: &str| progress_op.step(step))?)
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
