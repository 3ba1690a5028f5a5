//! Work-disk seeds: one empty, formatted ext4 file per size, cached so
//! that a create clones a work disk rather than formats one. A seed is kept
//! while some VM has a work disk of its size and removed after the last
//! one (and by `image prune`), so a size tried once does not stay on disk.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use banger_image::{seed_file, SeedFile};
use banger_storage::CowStrategy;

use crate::error::{Error, Result};

/// The seeds directory, and the lock that keeps a prune from removing a
/// seed between a create finding it and cloning it.
pub struct Seeds {
    dir: PathBuf,
    lock: Mutex<()>,
}

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The files removed, by name.
    pub files: Vec<String>,
    /// The disk space they held, in bytes.
    pub freed_bytes: u64,
}

impl Seeds {
    /// The seeds under `dir` (made when the first seed is).
    pub fn new(dir: PathBuf) -> Seeds {
        Seeds { dir, lock: Mutex::new(()) }
    }

    /// Where seeds live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Clones the seed of `size_bytes` to `dest`, making the seed first if
    /// there is none. Blocking.
    pub fn clone_to(&self, size_bytes: u64, strategy: CowStrategy, dest: &Path) -> Result<()> {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let seed = banger_image::ensure_seed(&self.dir, size_bytes)?;
        banger_storage::clone_disk(strategy, &seed, dest, None)?;
        Ok(())
    }

    /// Removes every seed whose size is not in `in_use`, and what a crash
    /// left half-made (no seed is being made while the lock is held).
    /// Blocking.
    pub fn prune(&self, in_use: &BTreeSet<u64>) -> Result<Pruned> {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut pruned = Pruned::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pruned),
            Err(e) => return Err(Error::io("cannot list", &self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io("cannot list", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let unused = match seed_file(&name) {
                Some(SeedFile::Seed(size)) => !in_use.contains(&size),
                Some(SeedFile::Partial) => true,
                None => false,
            };
            if !unused {
                continue;
            }
            let path = entry.path();
            let held = std::fs::symlink_metadata(&path).map(|m| m.blocks() * 512).unwrap_or(0);
            std::fs::remove_file(&path).map_err(Error::io("cannot remove", &path))?;
            tracing::info!(seed = %name, freed_bytes = held, "removed an unused work-disk seed");
            pruned.files.push(name);
            pruned.freed_bytes += held;
        }
        Ok(pruned)
    }
}
