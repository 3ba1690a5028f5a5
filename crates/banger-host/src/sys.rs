//! The crate's only unsafe code: thin wrappers over `statfs`, `statvfs` and
//! the `FICLONE` ioctl, each returning `io::Result`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::DiskSpace;

/// `_IOW(0x94, 9, int)`: share `src`'s blocks into `dst`.
const FICLONE: libc::c_ulong = 0x4004_9409;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The filesystem magic number (`statfs.f_type`) of the filesystem holding `path`.
pub(crate) fn fs_magic(path: &Path) -> io::Result<u64> {
    let c = c_path(path)?;
    let mut buf = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a NUL-terminated string that outlives the call, and
    // `buf` is a properly sized, writable statfs the kernel fills on success.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it initialised `buf`.
    let st = unsafe { buf.assume_init() };
    // f_type is a signed word; magic numbers are compared as unsigned 32-bit values.
    Ok(st.f_type as u64 & 0xffff_ffff)
}

/// Free and total bytes of the filesystem holding `path`.
pub(crate) fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    let c = c_path(path)?;
    let mut buf = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: as in `fs_magic`: a valid C string and a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `buf`.
    let st = unsafe { buf.assume_init() };
    Ok(disk_space_of(&st))
}

// The statvfs field types differ between targets (32-bit on some), hence the casts.
#[allow(clippy::unnecessary_cast)]
fn disk_space_of(st: &libc::statvfs) -> DiskSpace {
    let frsize = st.f_frsize as u64;
    DiskSpace {
        free_bytes: (st.f_bavail as u64).saturating_mul(frsize),
        total_bytes: (st.f_blocks as u64).saturating_mul(frsize),
    }
}

/// Makes `dst` share `src`'s blocks (`ioctl(dst, FICLONE, src)`).
pub(crate) fn ficlone(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: both descriptors are open for the duration of the call (the
    // `File`s are borrowed), and FICLONE takes the source fd as a plain int
    // argument, so no memory is passed to the kernel.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
