//! Per-VM copy-on-write root disks. [`choose`] picks a [`CowStrategy`] from
//! what the host can do; [`clone_disk`] makes a VM's disk from a base image
//! with it (reflink, dm-snapshot or a sparse copy) and grows it on request;
//! [`grow_disk`] grows an existing disk. Nothing here knows about the daemon.

mod command;
mod dm;
mod error;
mod grow;
mod sparse;
mod sys;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use command::PlannedCommand;
pub use dm::{dm_name, dm_snapshot_plan, dm_snapshot_teardown_plan, DmSnapshotDevice, COW_LOOP, ORIGIN_LOOP};
pub use error::StorageError;
pub use grow::grow_disk;

use banger_host::{HostCommands, SystemCommands};
use command::require_tool;
use error::io_at;
use grow::Growth;

/// How a VM's root disk shares blocks with its base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CowStrategy {
    /// A reflink copy (`FICLONE`) on XFS or btrfs: instant, shares every extent.
    Reflink,
    /// A device-mapper snapshot over loop devices: the disk is `/dev/mapper/<name>`.
    DmSnapshot,
    /// A copy of the data extents only: works anywhere, shares nothing.
    SparseCopy,
}

/// Picks the cheapest strategy the host supports: reflink, then
/// dm-snapshot, then a sparse copy.
pub fn choose(reflink_supported: bool, device_mapper: bool) -> CowStrategy {
    match (reflink_supported, device_mapper) {
        (true, _) => CowStrategy::Reflink,
        (false, true) => CowStrategy::DmSnapshot,
        (false, false) => CowStrategy::SparseCopy,
    }
}

/// What [`clone_disk`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneInfo {
    /// The strategy used.
    pub strategy: CowStrategy,
    /// What the VM opens as its disk: the clone, or the dm-snapshot device.
    pub disk: PathBuf,
    /// The disk's size in bytes.
    pub size_bytes: u64,
    /// The device-mapper pieces, for [`CowStrategy::DmSnapshot`].
    pub dm: Option<DmSnapshotDevice>,
}

/// Whether the kernel offers device-mapper.
pub fn device_mapper_available() -> bool {
    Path::new("/dev/mapper/control").exists() || Path::new("/sys/class/misc/device-mapper").exists()
}

/// Whether the filesystem holding the directory `dir` can make reflink
/// copies, found by trying one between two scratch files.
pub fn probe_reflink(dir: &Path) -> Result<bool, StorageError> {
    let src_path = dir.join(format!(".banger-reflink-probe-{}", std::process::id()));
    let dest_path = dir.join(format!(".banger-reflink-probe-{}.clone", std::process::id()));
    let result = (|| {
        fs::write(&src_path, [1u8; 4096]).map_err(io_at(&src_path))?;
        let src = File::open(&src_path).map_err(io_at(&src_path))?;
        let dest = File::create(&dest_path).map_err(io_at(&dest_path))?;
        Ok(sys::ficlone(&dest, &src).is_ok())
    })();
    let _ = fs::remove_file(&src_path);
    let _ = fs::remove_file(&dest_path);
    result
}

/// Makes `dest`, a VM's disk, from the base image `src` with `strategy`,
/// then grows it (and its ext4) to `size_bytes` if that is larger.
///
/// `dest` must not exist. On any error `dest` is removed. A strategy the
/// host cannot do is an error, never a silent fallback: capability
/// detection happens before, with [`choose`].
pub fn clone_disk(
    strategy: CowStrategy,
    src: &Path,
    dest: &Path,
    size_bytes: Option<u64>,
) -> Result<CloneInfo, StorageError> {
    clone_disk_with(&SystemCommands, strategy, src, dest, size_bytes)
}

/// [`clone_disk`] from a file already open for reading (one a caller
/// opened with its own rights); `src` names it in messages. A dm-snapshot
/// needs the file's path, so this strategy makes a sparse copy instead.
pub fn clone_open_disk(
    strategy: CowStrategy,
    source: &File,
    src: &Path,
    dest: &Path,
    size_bytes: Option<u64>,
) -> Result<CloneInfo, StorageError> {
    let strategy = if strategy == CowStrategy::DmSnapshot { CowStrategy::SparseCopy } else { strategy };
    copy_disk(&SystemCommands, strategy, source, src, dest, size_bytes)
}

/// [`clone_disk`], running host tools through `cmds`.
pub(crate) fn clone_disk_with(
    cmds: &dyn HostCommands,
    strategy: CowStrategy,
    src: &Path,
    dest: &Path,
    size_bytes: Option<u64>,
) -> Result<CloneInfo, StorageError> {
    if strategy == CowStrategy::DmSnapshot {
        let src_len = fs::metadata(src).map_err(io_at(src))?.len();
        let growth = grow::plan_growth(src_len, size_bytes)?;
        return dm_snapshot(cmds, src, dest, src_len, growth);
    }
    let source = File::open(src).map_err(io_at(src))?;
    copy_disk(cmds, strategy, &source, src, dest, size_bytes)
}

/// Reflinks or sparse-copies the open `source` (named `src`) to the new file `dest`, then grows it.
fn copy_disk(
    cmds: &dyn HostCommands,
    strategy: CowStrategy,
    source: &File,
    src: &Path,
    dest: &Path,
    size_bytes: Option<u64>,
) -> Result<CloneInfo, StorageError> {
    let src_len = source.metadata().map_err(io_at(src))?.len();
    let growth = grow::plan_growth(src_len, size_bytes)?;
    let (out, guard) = create_new(dest)?;
    match strategy {
        CowStrategy::Reflink => sys::ficlone(&out, source).map_err(|e| reflink_error(e, src, dest))?,
        _ => sparse::copy(source, &out, src_len).map_err(io_at(dest))?,
    }
    out.sync_all().map_err(io_at(dest))?;
    drop(out);
    let size_bytes = match growth {
        Growth::Keep => src_len,
        Growth::To(size) => {
            grow::grow_ext4(cmds, dest, size)?;
            size
        }
    };
    guard.keep();
    Ok(CloneInfo { strategy, disk: dest.to_owned(), size_bytes, dm: None })
}

/// Removes a dm-snapshot disk's device and loop devices (not its COW file).
pub fn release_dm_snapshot(device: &DmSnapshotDevice) -> Result<(), StorageError> {
    let plan = dm_snapshot_teardown_plan(&device.name, &device.origin_loop, &device.cow_loop);
    dm::run_all(&plan, &SystemCommands)
}

fn dm_snapshot(
    cmds: &dyn HostCommands,
    src: &Path,
    dest: &Path,
    src_len: u64,
    growth: Growth,
) -> Result<CloneInfo, StorageError> {
    if !device_mapper_available() {
        return Err(StorageError::DeviceMapperUnavailable);
    }
    if growth != Growth::Keep {
        return Err(StorageError::DmCannotGrow { origin: src_len });
    }
    require_tool(cmds, "losetup", "mount")?;
    require_tool(cmds, "dmsetup", "dmsetup")?;
    let (out, guard) = create_new(dest)?;
    // The exception store can need as much room as the origin; sparse until written.
    out.set_len(src_len).map_err(io_at(dest))?;
    drop(out);
    let name = dm_name(dest);
    let plan = dm_snapshot_plan(&name, src, dest, src_len / 512);
    let bound = dm::run_plan(&plan, cmds)?;
    let loop_of = |key| bound.iter().find(|(k, _)| *k == key).map(|(_, v)| PathBuf::from(v)).unwrap_or_default();
    guard.keep();
    let device = DmSnapshotDevice {
        device: PathBuf::from("/dev/mapper").join(&name),
        origin_loop: loop_of(ORIGIN_LOOP),
        cow_loop: loop_of(COW_LOOP),
        name,
    };
    Ok(CloneInfo {
        strategy: CowStrategy::DmSnapshot,
        disk: device.device.clone(),
        size_bytes: src_len,
        dm: Some(device),
    })
}

/// Creates `dest`, which must not exist, and a guard that removes it unless kept.
fn create_new(dest: &Path) -> Result<(File, RemoveUnlessKept<'_>), StorageError> {
    // A disk is a guest's (or an image's) whole filesystem: owner only,
    // whatever the source's mode.
    let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(dest).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            StorageError::DestExists(dest.to_owned())
        } else {
            StorageError::Io { path: dest.to_owned(), source: e }
        }
    })?;
    Ok((file, RemoveUnlessKept(Some(dest))))
}

/// Removes a file this crate created when the operation making it fails.
struct RemoveUnlessKept<'a>(Option<&'a Path>);

impl RemoveUnlessKept<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveUnlessKept<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

fn reflink_error(e: io::Error, src: &Path, dest: &Path) -> StorageError {
    match e.raw_os_error() {
        Some(libc::EXDEV) => StorageError::CrossDevice { src: src.to_owned(), dest: dest.to_owned() },
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::ENOSYS) => {
            StorageError::ReflinkUnsupported { dest: dest.to_owned(), source: e }
        }
        _ => StorageError::Io { path: dest.to_owned(), source: e },
    }
}

/// Bytes the file at `path` occupies on disk (`st_blocks * 512`): less than
/// its length when it has holes.
pub fn disk_usage(path: &Path) -> Result<u64, StorageError> {
    Ok(fs::metadata(path).map_err(io_at(path))?.blocks() * 512)
}

/// Bytes of the file at `path` in extents shared with another file (by
/// reflink), according to the filesystem's extent map (FIEMAP).
pub fn shared_bytes(path: &Path) -> Result<u64, StorageError> {
    let file = File::open(path).map_err(io_at(path))?;
    sys::shared_bytes(&file).map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_order() {
        assert_eq!(choose(true, true), CowStrategy::Reflink);
        assert_eq!(choose(true, false), CowStrategy::Reflink);
        assert_eq!(choose(false, true), CowStrategy::DmSnapshot);
        assert_eq!(choose(false, false), CowStrategy::SparseCopy);
    }

    #[test]
    fn a_grown_clone_is_checked_then_resized_and_a_failure_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.ext4");
        fs::write(&base, vec![7u8; 8192]).unwrap();
        let clone = dir.path().join("vm.ext4");
        let fake = banger_host::RecordingCommands::new();
        let info = clone_disk_with(&fake, CowStrategy::SparseCopy, &base, &clone, Some(1 << 20)).unwrap();
        assert_eq!(info.size_bytes, 1 << 20);
        let c = clone.display();
        assert_eq!(fake.lines(), [format!("e2fsck -f -y {c}"), format!("resize2fs {c}")]);
        assert_eq!(fs::read(&clone).unwrap()[..8192], [7u8; 8192]);

        let other = dir.path().join("vm2.ext4");
        let failing = banger_host::RecordingCommands::new()
            .reply_always("resize2fs", banger_host::FakeReply::exit(1, "resize2fs: No space left on device"));
        let err = clone_disk_with(&failing, CowStrategy::SparseCopy, &base, &other, Some(1 << 20)).unwrap_err();
        let cause = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
        assert!(
            matches!(err, StorageError::CannotGrow { .. }) && cause.contains("No space left on device"),
            "{err}: {cause}"
        );
        assert!(!other.exists(), "a failed clone leaves nothing behind");
    }
}
