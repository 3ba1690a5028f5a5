//! Growing a disk and the ext4 inside it, without mounting: `e2fsck`,
//! lengthen the file, `resize2fs`. Disks never shrink.

use std::fs::OpenOptions;
use std::path::Path;

use banger_host::{HostCommand, HostCommands, SystemCommands};

use crate::command::require_tool;
use crate::error::io_at;
use crate::StorageError;

/// What a size request means for a disk of `current` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Growth {
    /// Leave it as it is.
    Keep,
    /// Grow it to this many bytes.
    To(u64),
}

/// Decides what to do with a disk of `current` bytes asked to be `requested`.
pub(crate) fn plan_growth(current: u64, requested: Option<u64>) -> Result<Growth, StorageError> {
    match requested {
        None => Ok(Growth::Keep),
        Some(r) if r < current => Err(StorageError::Shrink { current, requested: r }),
        Some(r) if r == current => Ok(Growth::Keep),
        Some(r) => Ok(Growth::To(r)),
    }
}

/// Grows the disk at `path` (an ext4 image file) to `new_size` bytes and
/// its filesystem with it. Asking for the current size does nothing;
/// asking for less is an error.
pub fn grow_disk(path: &Path, new_size: u64) -> Result<(), StorageError> {
    grow_disk_with(&SystemCommands, path, new_size)
}

/// [`grow_disk`], running the e2fsprogs tools through `cmds`.
pub(crate) fn grow_disk_with(cmds: &dyn HostCommands, path: &Path, new_size: u64) -> Result<(), StorageError> {
    let current = std::fs::metadata(path).map_err(io_at(path))?.len();
    match plan_growth(current, Some(new_size))? {
        Growth::Keep => Ok(()),
        Growth::To(size) => grow_ext4(cmds, path, size),
    }
}

/// Checks the filesystem, lengthens the file and grows the filesystem to
/// fill it. When resize2fs refuses (a size past what this filesystem's
/// layout can address), the file gets its old length back and is checked
/// again, so the disk is as it was.
pub(crate) fn grow_ext4(cmds: &dyn HostCommands, path: &Path, size: u64) -> Result<(), StorageError> {
    require_tool(cmds, "e2fsck", "e2fsprogs")?;
    require_tool(cmds, "resize2fs", "e2fsprogs")?;
    let check = || {
        // resize2fs insists on a freshly checked filesystem. `-y` (not `-p`, which
        // e2fsck refuses to combine with `-y`) answers every question itself.
        // Exit 1 means errors were corrected, which is fine.
        cmds.run(&HostCommand::new("e2fsck").args(["-f", "-y"]).arg(path).ok_exit_code(1))
    };
    check()?;
    let original = std::fs::metadata(path).map_err(io_at(path))?.len();
    set_len(path, size)?;
    if let Err(source) = cmds.run(&HostCommand::new("resize2fs").arg(path)) {
        set_len(path, original)?;
        check()?;
        return Err(StorageError::CannotGrow { path: path.to_owned(), size, source });
    }
    Ok(())
}

fn set_len(path: &Path, size: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_at(path))?;
    file.set_len(size).map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_host::{FakeReply, RecordingCommands};

    #[test]
    fn growth_decisions() {
        assert_eq!(plan_growth(100, None).unwrap(), Growth::Keep);
        assert_eq!(plan_growth(100, Some(100)).unwrap(), Growth::Keep);
        assert_eq!(plan_growth(100, Some(200)).unwrap(), Growth::To(200));
        assert!(matches!(plan_growth(100, Some(99)), Err(StorageError::Shrink { current: 100, requested: 99 })));
    }

    #[test]
    fn growing_checks_lengthens_then_resizes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.ext4");
        std::fs::write(&disk, [0u8; 4096]).unwrap();
        // e2fsck's exit 1 means it corrected errors: growing goes on.
        let fake = RecordingCommands::new().reply_always("e2fsck", FakeReply::exit(1, "fixed"));
        grow_disk_with(&fake, &disk, 1 << 20).unwrap();
        let d = disk.display();
        assert_eq!(fake.lines(), [format!("e2fsck -f -y {d}"), format!("resize2fs {d}")]);
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 20);
        // The same size again runs nothing; less is refused.
        grow_disk_with(&fake, &disk, 1 << 20).unwrap();
        assert!(matches!(grow_disk_with(&fake, &disk, 4096), Err(StorageError::Shrink { .. })));
        assert_eq!(fake.lines().len(), 2);
    }

    #[test]
    fn a_size_resize2fs_refuses_leaves_the_disk_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.ext4");
        std::fs::write(&disk, [0u8; 4096]).unwrap();
        let fake = RecordingCommands::new()
            .reply_always("e2fsck", FakeReply::exit(0, ""))
            .reply_always("resize2fs", FakeReply::exit(1, "New size results in too many block group descriptors."));
        let err = grow_disk_with(&fake, &disk, 1 << 40).unwrap_err();
        assert!(matches!(err, StorageError::CannotGrow { size, .. } if size == 1 << 40), "{err}");
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4096, "the file has its old length");
        let d = disk.display();
        assert_eq!(fake.lines(), [format!("e2fsck -f -y {d}"), format!("resize2fs {d}"), format!("e2fsck -f -y {d}")]);
    }

    #[test]
    fn a_filesystem_e2fsck_cannot_fix_is_not_grown() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.ext4");
        std::fs::write(&disk, [0u8; 4096]).unwrap();
        let fake = RecordingCommands::new().reply_always("e2fsck", FakeReply::exit(4, "UNEXPECTED INCONSISTENCY"));
        let err = grow_disk_with(&fake, &disk, 1 << 20).unwrap_err();
        assert!(err.to_string().ends_with("failed (exit status: 4): UNEXPECTED INCONSISTENCY"), "{err}");
        assert_eq!(fake.lines().len(), 1, "no resize2fs");
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4096, "the file is left as it was");
        let missing = RecordingCommands::new().without_tool("resize2fs");
        let err = grow_disk_with(&missing, &disk, 1 << 20).unwrap_err();
        assert!(matches!(err, StorageError::MissingTool { tool: "resize2fs", .. }), "{err}");
    }
}
