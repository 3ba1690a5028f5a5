//! The system calls std does not wrap: `FICLONE` and `lseek` with
//! `SEEK_DATA`/`SEEK_HOLE` through rustix's safe wrappers, and
//! `FS_IOC_FIEMAP`, which rustix has no wrapper for and so stays the one
//! unsafe call here. Each takes an open `File`, so every descriptor passed
//! to the kernel is valid for the whole call.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// Makes `dest` share all of `src`'s extents (a reflink copy).
pub(crate) fn ficlone(dest: &File, src: &File) -> io::Result<()> {
    Ok(rustix::fs::ioctl_ficlone(dest, src)?)
}

/// The next offset at or after `offset` holding data, or `None` past the last data.
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, SeekFrom::Data(offset))
}

/// The next offset at or after `offset` in a hole (the end of file counts as one).
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    seek(file, SeekFrom::Hole(offset))?.ok_or_else(|| io::Error::from_raw_os_error(libc::ENXIO))
}

/// Moving the file position is harmless: callers use positioned I/O.
fn seek(file: &File, to: SeekFrom) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, to) {
        Ok(offset) => Ok(Some(offset)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
const EXTENTS_PER_CALL: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// Bytes of `file` in extents the filesystem marks as shared with another file.
pub(crate) fn shared_bytes(file: &File) -> io::Result<u64> {
    let mut shared = 0;
    let mut start = 0u64;
    loop {
        let mut map = Fiemap {
            start,
            length: u64::MAX - start,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: EXTENTS_PER_CALL as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        };
        // SAFETY: `map` is a properly laid out `struct fiemap` followed by room
        // for `extent_count` extents, and it outlives the call; the descriptor
        // is borrowed from a live `File`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Fiemap) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mapped = &map.extents[..(map.mapped_extents as usize).min(EXTENTS_PER_CALL)];
        let Some(last) = mapped.last() else {
            return Ok(shared);
        };
        shared += mapped.iter().filter(|e| e.flags & FIEMAP_EXTENT_SHARED != 0).map(|e| e.length).sum::<u64>();
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            return Ok(shared);
        }
        start = last.logical + last.length;
    }
}
