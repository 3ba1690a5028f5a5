//! The system calls std does not offer: mount, sethostname, reboot, waiting
//! for any child, signals and vsock sockets. rustix's safe wrappers do most
//! of them; the unsafe code left is what rustix has no wrapper for
//! (signalling every process, binding a vsock address) and handing an fd to
//! tokio's reactor. Each function returns `io::Result` and has no other
//! precondition.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::mount::MountFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::system::RebootCommand;

fn c_str(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

fn signal_of(signal: i32) -> io::Result<Signal> {
    Signal::from_named_raw(signal).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

fn pid_of(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

/// Sends `signal` to the process `pid`.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<()> {
    Ok(rustix::process::kill_process(pid_of(pid)?, signal_of(signal)?)?)
}

/// Sends `signal` to every process of the group `pgid`.
pub(crate) fn kill_group(pgid: u32, signal: i32) -> io::Result<()> {
    Ok(rustix::process::kill_process_group(pid_of(pgid)?, signal_of(signal)?)?)
}

/// Sends `signal` to every process but init (`kill(-1, signal)`).
pub(crate) fn kill_all(signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(-1, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reaps one exited child without blocking: `Some((pid, raw status))`, or
/// `None` when no child has exited (or there are no children at all).
pub(crate) fn reap_one() -> io::Result<Option<(u32, i32)>> {
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => return Ok(Some((pid.as_raw_pid() as u32, status.as_raw()))),
            Ok(None) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::CHILD) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// mount(2); empty `data` passes no options.
pub(crate) fn mount(source: &str, target: &Path, fstype: &str, flags: MountFlags, data: &str) -> io::Result<()> {
    let data = if data.is_empty() { None } else { Some(c_str(data)?) };
    Ok(rustix::mount::mount(source, target, fstype, flags, data.as_deref())?)
}

/// sethostname(2).
pub(crate) fn sethostname(name: &str) -> io::Result<()> {
    Ok(rustix::system::sethostname(name.as_bytes())?)
}

/// sync(2): flushes every filesystem.
pub(crate) fn sync() {
    rustix::fs::sync()
}

/// reboot(2) with `cmd`; returns only on failure.
pub(crate) fn reboot(cmd: RebootCommand) -> io::Error {
    match rustix::system::reboot(cmd) {
        Err(e) => e.into(),
        Ok(()) => io::Error::other("reboot returned"),
    }
}

/// A non-blocking AF_VSOCK stream socket listening on `port` of any CID.
pub(crate) fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    let socket = rustix::net::socket_with(
        AddressFamily::VSOCK,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // SAFETY: sockaddr_vm is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // rustix has no vsock address type, so bind goes through libc.
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes for the call, and
    // the descriptor is borrowed from the live `socket`.
    if unsafe { libc::bind(socket.as_raw_fd(), (&addr as *const libc::sockaddr_vm).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    rustix::net::listen(&socket, 16)?;
    Ok(socket)
}

/// accept4(2) on a listening socket: a new non-blocking connection.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)?)
}

/// Registers an fd with tokio's reactor, wrapped as `T` (`OwnedFd`, `File`).
pub(crate) fn async_fd<T: AsRawFd + From<OwnedFd>>(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T` is built from the OwnedFd, so it owns the fd, and the AsyncFd
    // owns `T`: nothing can close or replace the fd while it is registered.
    Ok(unsafe { tokio::io::unix::AsyncFd::register(T::from(fd)) }?)
}
