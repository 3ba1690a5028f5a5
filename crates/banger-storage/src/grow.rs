//! Growing a disk and the ext4 inside it, without mounting: `e2fsck`,
//! lengthen the file, `resize2fs`. Disks never shrink.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::command::{failure, require_tool};
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
    let current = std::fs::metadata(path).map_err(io_at(path))?.len();
    match plan_growth(current, Some(new_size))? {
        Growth::Keep => Ok(()),
        Growth::To(size) => grow_ext4(path, size),
    }
}

/// Checks the filesystem, lengthens the file and grows the filesystem to fill it.
pub(crate) fn grow_ext4(path: &Path, size: u64) -> Result<(), StorageError> {
    let e2fsck = require_tool("e2fsck", "e2fsprogs")?;
    let resize2fs = require_tool("resize2fs", "e2fsprogs")?;
    // resize2fs insists on a freshly checked filesystem. `-y` (not `-p`, which
    // e2fsck refuses to combine with `-y`) answers every question itself.
    // Exit 1 means errors were corrected, which is fine.
    run(Command::new(e2fsck).args(["-f", "-y"]).arg(path), "e2fsck -f -y", &[0, 1])?;
    let file = OpenOptions::new().write(true).open(path).map_err(io_at(path))?;
    file.set_len(size).map_err(io_at(path))?;
    drop(file);
    run(Command::new(resize2fs).arg(path), "resize2fs", &[0])
}

fn run(cmd: &mut Command, program: &str, ok_codes: &[i32]) -> Result<(), StorageError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| StorageError::Spawn { program: program.to_owned(), source })?;
    if output.status.code().is_some_and(|c| ok_codes.contains(&c)) {
        return Ok(());
    }
    let mut detail = output.stderr;
    detail.extend_from_slice(&output.stdout);
    Err(failure(program, &output.status.to_string(), &detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_decisions() {
        assert_eq!(plan_growth(100, None).unwrap(), Growth::Keep);
        assert_eq!(plan_growth(100, Some(100)).unwrap(), Growth::Keep);
        assert_eq!(plan_growth(100, Some(200)).unwrap(), Growth::To(200));
        assert!(matches!(plan_growth(100, Some(99)), Err(StorageError::Shrink { current: 100, requested: 99 })));
    }
}
