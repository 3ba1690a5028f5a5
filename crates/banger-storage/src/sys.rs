//! The system calls std does not wrap: `FICLONE`, `lseek` with
//! `SEEK_DATA`/`SEEK_HOLE`, and `FS_IOC_FIEMAP`. Each takes an open `File`,
//! so every descriptor passed to the kernel is valid for the whole call.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Makes `dest` share all of `src`'s extents (a reflink copy).
pub(crate) fn ficlone(dest: &File, src: &File) -> io::Result<()> {
    // SAFETY: both descriptors are open for the duration of the call (they are
    // borrowed from live `File`s) and FICLONE takes the source descriptor as
    // its integer argument, not a pointer.
    let rc = unsafe { libc::ioctl(dest.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The next offset at or after `offset` holding data, or `None` past the last data.
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_DATA)
}

/// The next offset at or after `offset` in a hole (the end of file counts as one).
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    seek(file, offset, libc::SEEK_HOLE)?.ok_or_else(|| io::Error::from_raw_os_error(libc::ENXIO))
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: the descriptor is borrowed from a live `File`; lseek takes no
    // pointers. Moving the file position is harmless: callers use positioned I/O.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if rc >= 0 {
        return Ok(Some(rc as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
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
