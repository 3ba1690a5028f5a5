//! Building store objects safely: per-name locks that refuse a second
//! writer, staging directories that vanish unless installed, and atomic
//! install and removal by rename. Kernels and images share this.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Prefix of staging and retired directories; never a valid object name.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Names currently being written, of one kind of object.
pub struct NameLocks {
    kind: &'static str,
    busy: Arc<Mutex<HashSet<String>>>,
    released: Arc<tokio::sync::Notify>,
}

/// Holds one name; released when dropped.
pub struct NameLock {
    name: String,
    busy: Arc<Mutex<HashSet<String>>>,
    released: Arc<tokio::sync::Notify>,
}

impl NameLocks {
    /// Locks for objects of `kind` ("kernel", "image").
    pub fn new(kind: &'static str) -> NameLocks {
        NameLocks { kind, busy: Arc::default(), released: Arc::default() }
    }

    /// Takes `name`, or says it is busy.
    pub fn try_lock(&self, name: &str) -> Result<NameLock> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(name.to_owned()) {
            return Err(Error::Busy { kind: self.kind, name: name.to_owned() });
        }
        Ok(NameLock { name: name.to_owned(), busy: Arc::clone(&self.busy), released: Arc::clone(&self.released) })
    }

    /// Takes `name`, waiting while another holder has it.
    pub async fn lock(&self, name: &str) -> NameLock {
        loop {
            // Armed before trying, so a release in between is not missed.
            let released = self.released.notified();
            if let Ok(lock) = self.try_lock(name) {
                return lock;
            }
            released.await;
        }
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.name);
        self.released.notify_waiters();
    }
}

/// A directory that is removed when dropped unless it was installed.
pub struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Staging {
    /// A fresh, empty staging directory under `root` for object `name`.
    pub fn create(root: &Path, name: &str, op_id: &str) -> Result<Staging> {
        let path = root.join(format!("{TEMP_PREFIX}{name}-{op_id}"));
        fs::create_dir(&path).map_err(Error::io("cannot create", &path))?;
        Ok(Staging { path, keep: false })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the staging directory to `dest`, replacing what is there, and
    /// runs `record` (the database write) once it is in place. If `record`
    /// fails, the previous object is put back.
    pub fn install(mut self, dest: &Path, record: impl FnOnce() -> Result<()>) -> Result<()> {
        let retired = retired_path(dest, "old");
        let replacing = dest.exists();
        if replacing {
            fs::rename(dest, &retired).map_err(Error::io("cannot move aside", dest))?;
        }
        let restore = |dest: &Path| {
            if replacing {
                let _ = fs::rename(&retired, dest);
            }
        };
        if let Err(source) = fs::rename(&self.path, dest) {
            restore(dest);
            return Err(Error::Io { action: "cannot install", path: dest.to_owned(), source });
        }
        if let Err(e) = record() {
            let _ = fs::rename(dest, &self.path);
            restore(dest);
            return Err(e);
        }
        self.keep = true;
        if replacing {
            if let Err(e) = fs::remove_dir_all(&retired) {
                tracing::warn!(path = %retired.display(), error = %e, "cannot remove replaced object");
            }
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove staging directory");
                }
            }
        }
    }
}

/// Removes an object directory: renamed aside first (so a crash leaves a
/// staging leftover, cleaned at start, not a half-deleted object), then
/// `forget` (the database delete), then the files. When the filesystem is
/// too full even for the delete, the files go first, to free the space it
/// needs; should it fail still, the record names a directory that is gone,
/// which the store drops at its next start.
pub fn remove_dir(dir: &Path, forget: impl Fn() -> Result<()>) -> Result<()> {
    let retired = retired_path(dir, "rm");
    fs::rename(dir, &retired).map_err(Error::io("cannot remove", dir))?;
    match forget() {
        Ok(()) => {}
        Err(e) if e.is_no_space() => {
            fs::remove_dir_all(&retired).map_err(Error::io("cannot remove", &retired))?;
            return forget();
        }
        Err(e) => {
            let _ = fs::rename(&retired, dir);
            return Err(e);
        }
    }
    fs::remove_dir_all(&retired).map_err(Error::io("cannot remove", &retired))
}

fn retired_path(dir: &Path, what: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!("{TEMP_PREFIX}{name}-{what}-{}", uuid::Uuid::new_v4().simple()))
}

/// Removes leftover staging directories under `root`.
pub fn sweep(root: &Path) -> Result<()> {
    for entry in fs::read_dir(root).map_err(Error::io("cannot read", root))? {
        let entry = entry.map_err(Error::io("cannot read", root))?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing leftover staging directory");
            fs::remove_dir_all(&path).map_err(Error::io("cannot remove", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiting_lock_is_granted_when_the_holder_lets_go() {
        let locks = Arc::new(NameLocks::new("kernel"));
        let held = locks.try_lock("k").unwrap();
        assert!(matches!(locks.try_lock("k"), Err(Error::Busy { .. })));
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { locks.lock("k").await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the waiter waits while the name is held");
        drop(held);
        let granted = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(matches!(locks.try_lock("k"), Err(Error::Busy { .. })), "the waiter now holds it");
        drop(granted);
        assert!(locks.try_lock("k").is_ok());
    }
}
