//! The agent's only unsafe code: thin wrappers over the libc calls std does
//! not offer (mount, sethostname, reboot, waiting for any child, signals and
//! vsock sockets). Each returns `io::Result` and has no other precondition.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn c_str(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Sends `signal` to `pid` (with -pgid, to a process group; with -1, to every process but init).
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Reaps one exited child without blocking: `Some((pid, raw status))`, or
/// `None` when no child has exited (or there are no children at all).
pub(crate) fn reap_one() -> io::Result<Option<(u32, i32)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int for the whole call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            return Ok(Some((pid as u32, status)));
        }
        if pid == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// mount(2).
pub(crate) fn mount(source: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let (source, target, fstype, data) = (c_str(source)?, c_path(target)?, c_str(fstype)?, c_str(data)?);
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    check(unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) })
        .map(drop)
}

/// sethostname(2).
pub(crate) fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// sync(2): flushes every filesystem.
pub(crate) fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// reboot(2) with `cmd` (`RB_POWER_OFF`, `RB_AUTOBOOT`); returns only on failure.
pub(crate) fn reboot(cmd: libc::c_int) -> io::Error {
    // SAFETY: reboot takes a plain integer; on success it does not return.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// A non-blocking AF_VSOCK stream socket listening on `port` of any CID.
pub(crate) fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers; a non-negative result is a new fd we own.
    let fd = check(unsafe {
        libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0)
    })?;
    // SAFETY: `fd` was just returned by socket and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes for the call.
    check(unsafe { libc::bind(socket.as_raw_fd(), (&addr as *const libc::sockaddr_vm).cast(), len) })?;
    // SAFETY: listen takes a valid fd and an integer.
    check(unsafe { libc::listen(socket.as_raw_fd(), 16) })?;
    Ok(socket)
}

/// accept4(2) on a listening socket: a new non-blocking connection.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; the fd is a valid socket.
    let fd = check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    })?;
    // SAFETY: `fd` was just returned by accept4 and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers an fd with tokio's reactor, wrapped as `T` (`OwnedFd`, `File`).
pub(crate) fn async_fd<T: AsRawFd + From<OwnedFd>>(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T` is built from the OwnedFd, so it owns the fd, and the AsyncFd
    // owns `T`: nothing can close or replace the fd while it is registered.
    Ok(unsafe { tokio::io::unix::AsyncFd::register(T::from(fd)) }?)
}
