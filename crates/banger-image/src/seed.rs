//! Work-disk seeds: one pre-formatted, empty ext4 file (label `work`) per
//! size, made once and cloned per VM by banger-storage.

use std::fs;
use std::path::{Path, PathBuf};

use banger_host::{HostCommands, SystemCommands};

use crate::error::io_at;
use crate::{host, ImageError};

/// The seed file for `size_bytes` in `seeds_dir`.
pub fn seed_path(seeds_dir: &Path, size_bytes: u64) -> PathBuf {
    seeds_dir.join(format!("work-{size_bytes}.ext4"))
}

/// Returns the seed for `size_bytes`, making it first if there is none.
///
/// The seed is written under a temporary name and renamed into place, so a
/// seed that exists is always whole; two callers racing both succeed and
/// share the first one renamed.
pub fn ensure_seed(seeds_dir: &Path, size_bytes: u64) -> Result<PathBuf, ImageError> {
    ensure_seed_with(&SystemCommands, seeds_dir, size_bytes)
}

/// [`ensure_seed`], running `mkfs.ext4` through `cmds`.
pub(crate) fn ensure_seed_with(
    cmds: &dyn HostCommands,
    seeds_dir: &Path,
    size_bytes: u64,
) -> Result<PathBuf, ImageError> {
    if size_bytes < 1 << 20 || size_bytes & 4095 != 0 {
        return Err(ImageError::InvalidSeedSize { size: size_bytes });
    }
    let path = seed_path(seeds_dir, size_bytes);
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(seeds_dir).map_err(io_at(seeds_dir))?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".work-{size_bytes}."))
        .suffix(".tmp")
        .tempfile_in(seeds_dir)
        .map_err(io_at(seeds_dir))?;
    host::mkfs_ext4(cmds, "work", None, temp.path(), size_bytes)?;
    temp.as_file().sync_all().map_err(io_at(temp.path()))?;
    match temp.persist_noclobber(&path) {
        Ok(_) => Ok(path),
        Err(e) if path.is_file() => {
            drop(e.file);
            Ok(path)
        }
        Err(e) => Err(ImageError::Io { path, source: e.error }),
    }
}
