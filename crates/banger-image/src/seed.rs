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

/// What a file in the seeds directory is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedFile {
    /// A whole seed of this size.
    Seed(u64),
    /// A seed being made (or left half-made by a crash).
    Partial,
}

/// Reads a seeds-directory file name; `None` for anything banger did not make.
pub fn seed_file(name: &str) -> Option<SeedFile> {
    if let Some(size) = name.strip_prefix("work-").and_then(|rest| rest.strip_suffix(".ext4")) {
        return size.parse().ok().filter(|_| !size.starts_with('+')).map(SeedFile::Seed);
    }
    (name.starts_with(".work-") && name.ends_with(".tmp")).then_some(SeedFile::Partial)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_names_round_trip_and_nothing_else_is_a_seed() {
        let name = seed_path(Path::new("/s"), 1 << 30).file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(seed_file(&name), Some(SeedFile::Seed(1 << 30)));
        assert_eq!(seed_file(".work-1048576.a1B2c3.tmp"), Some(SeedFile::Partial));
        for other in ["work-.ext4", "work-+5.ext4", "work-5.ext4.bak", "notes.txt", "work-x.ext4", ".work-1.tmpx"] {
            assert_eq!(seed_file(other), None, "{other}");
        }
    }
}
