//! Surviving a full state filesystem: a reserve file of a few MiB that the
//! state database gives up when a write fails for lack of space (so the
//! stop, kill or removal that frees space can commit), made again once
//! space returns; and telling a full-disk error from any other.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Daemon;

/// The reserve's file name in the state root.
pub const RESERVE_FILE: &str = "space.reserve";

/// How big the reserve is: many times what a removal's database writes need.
pub const RESERVE_BYTES: u64 = 8 << 20;

/// The reserve is made again only when this much is free beside it, so
/// making it never takes the last free space on the filesystem.
const REPLENISH_HEADROOM: u64 = 4 * RESERVE_BYTES;

/// The reserve file of one state root.
#[derive(Debug)]
pub struct SpaceReserve {
    path: PathBuf,
    /// Serialises giving up and making: the two must not cross.
    turn: Mutex<()>,
}

impl SpaceReserve {
    /// The reserve in `state_dir` (made by [`SpaceReserve::replenish`]).
    pub fn new(state_dir: &Path) -> SpaceReserve {
        SpaceReserve { path: state_dir.join(RESERVE_FILE), turn: Mutex::new(()) }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is in place.
    pub fn is_present(&self) -> bool {
        self.path.is_file()
    }

    /// Gives the reserve's space back to the filesystem; true if there was
    /// a reserve to give.
    pub fn release(&self) -> bool {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(path = %self.path.display(), "the state filesystem is full; gave up the space reserve");
                true
            }
            Err(_) => false,
        }
    }

    /// Makes the reserve if it is missing and the filesystem has room for
    /// it and its headroom; true if it is in place afterwards. The file is
    /// written in full (not sparse) under a temporary name, then renamed,
    /// so a reserve is never half there.
    pub fn replenish(&self) -> bool {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if self.path.is_file() {
            return true;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if free_bytes(dir).is_none_or(|free| free < RESERVE_BYTES + REPLENISH_HEADROOM) {
            return false;
        }
        let partial = self.path.with_extension("reserve.partial");
        match write_full(&partial, RESERVE_BYTES).and_then(|()| std::fs::rename(&partial, &self.path)) {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), "space reserve in place");
                true
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                tracing::warn!(path = %self.path.display(), error = %e, "cannot make the space reserve");
                false
            }
        }
    }
}

/// The `banger doctor` check of the reserve: there, or given up (the
/// state filesystem was full) and not yet made again.
pub fn reserve_check(reserve: &SpaceReserve) -> banger_api::Check {
    let path = reserve.path().display();
    if reserve.is_present() {
        banger_api::Check {
            name: "space_reserve".into(),
            status: banger_api::CheckStatus::Pass,
            detail: format!("{} MiB are kept at {path} for when the state filesystem fills", RESERVE_BYTES >> 20),
            fix: None,
        }
    } else {
        banger_api::Check {
            name: "space_reserve".into(),
            status: banger_api::CheckStatus::Warn,
            detail: format!(
                "the space reserve {path} is missing: the state filesystem was full, or is nearly so; \
                 bangerd makes it again once {} MiB are free",
                (RESERVE_BYTES + REPLENISH_HEADROOM) >> 20
            ),
            fix: Some("free space on the state filesystem: remove VMs, images or kernels you no longer need".into()),
        }
    }
}

/// How often a missing reserve is looked at again.
const REPLENISH_INTERVAL: Duration = Duration::from_secs(5);

/// Makes the reserve now if it can, and again whenever it has been given
/// up and space has returned, until the daemon shuts down.
pub fn keep_reserve(daemon: &Arc<Daemon>) {
    let daemon = Arc::clone(daemon);
    let tasks = daemon.tasks.clone();
    tasks.spawn(async move {
        let mut ticks = tokio::time::interval(REPLENISH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = daemon.shutting_down() => return,
                _ = ticks.tick() => {}
            }
            let reserve = Arc::clone(&daemon.reserve);
            let _ = tokio::task::spawn_blocking(move || reserve.replenish()).await;
        }
    });
}

/// Writes `len` zero bytes to a new file and syncs it, so its blocks are
/// allocated.
fn write_full(path: &Path, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::File::options().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Bytes available on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    banger_host::disk_space(path).map(|d| d.free_bytes)
}

/// The mount point of the filesystem holding `path`: its highest ancestor
/// on the same device.
pub fn mount_point(path: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::canonicalize(path)
        .or_else(|_| path.parent().map(std::fs::canonicalize).unwrap_or(Ok(path.to_path_buf())))
        .unwrap_or_else(|_| path.to_path_buf());
    let Ok(dev) = std::fs::metadata(&path).map(|m| m.dev()) else { return path };
    let mut top = path.clone();
    for ancestor in path.ancestors().skip(1) {
        match std::fs::metadata(ancestor) {
            Ok(m) if m.dev() == dev => top = ancestor.to_path_buf(),
            _ => break,
        }
    }
    top
}

/// Whether an I/O error means the filesystem is full (or the quota spent).
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        || e.raw_os_error() == Some(libc::ENOSPC)
}

/// Whether an SQLite error means the disk is full.
pub fn is_db_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = SpaceReserve::new(dir.path());
        assert!(!reserve.release(), "nothing to give yet");
        assert!(reserve.replenish());
        let meta = std::fs::metadata(reserve.path()).unwrap();
        assert_eq!(meta.len(), RESERVE_BYTES);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= RESERVE_BYTES, "the reserve's blocks are allocated, not a hole");
        assert!(reserve.release());
        assert!(!reserve.is_present());
        assert!(reserve.replenish() && reserve.is_present());
        assert!(!dir.path().join("space.reserve.partial").exists());
    }

    #[test]
    fn the_mount_point_of_a_path_is_an_ancestor_on_its_device() {
        let dir = tempfile::tempdir().unwrap();
        let mount = mount_point(dir.path());
        assert!(dir.path().canonicalize().unwrap().starts_with(&mount), "{}", mount.display());
        assert_eq!(mount_point(Path::new("/")), Path::new("/"));
        assert_eq!(mount_point(Path::new("/proc/self")), Path::new("/proc"));
    }

    #[test]
    fn enospc_is_no_space() {
        assert!(is_no_space(&std::io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(libc::EIO)));
    }
}
