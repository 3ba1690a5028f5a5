//! The system calls std does not wrap, through rustix's safe wrappers:
//! `statfs`, `statvfs` and the `FICLONE` ioctl, each returning `io::Result`.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::DiskSpace;

/// The filesystem magic number (`statfs.f_type`) of the filesystem holding `path`.
pub(crate) fn fs_magic(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statfs(path)?;
    // f_type is a signed word; magic numbers are compared as unsigned 32-bit values.
    Ok(st.f_type as u64 & 0xffff_ffff)
}

/// Free and total bytes of the filesystem holding `path`.
pub(crate) fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    let st = rustix::fs::statvfs(path)?;
    Ok(DiskSpace {
        free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
    })
}

/// Makes `dst` share `src`'s blocks (`ioctl(dst, FICLONE, src)`).
pub(crate) fn ficlone(src: &File, dst: &File) -> io::Result<()> {
    Ok(rustix::fs::ioctl_ficlone(dst, src)?)
}
