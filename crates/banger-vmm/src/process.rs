//! The VMM process: pid files, liveness, signals. VMMs run in their own
//! session, so the daemon finds them again by pid file after a restart.

#![allow(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use crate::VmmError;

/// Reads a pid file.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Waits until `pid` is gone, up to `timeout`; true if it went.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, exited(pid)).await.is_ok()
}

/// Resolves once process `pid` has exited. VMMs are not the daemon's
/// children (they run detached), so this waits on a pidfd, which becomes
/// readable when the process ends; only where pidfds are missing (Linux
/// before 5.3) does it poll.
pub async fn exited(pid: u32) {
    if let Ok(fd) = pidfd_open(pid) {
        // SAFETY: `fd` is an OwnedFd the AsyncFd takes over: it stays open,
        // and is the same descriptor, until the AsyncFd is dropped.
        let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        if let Ok(fd) = registered {
            // A pid reused between the open and now would be someone else:
            // check liveness once more after arming the wait.
            if pid_alive(pid) {
                let _ = fd.readable().await;
            }
            return;
        }
    }
    while pid_alive(pid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new file
    // descriptor or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; we own it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// SIGKILLs the VMM named by the pid file and waits for it to go.
pub async fn kill(_run_dir: &Path, pid_file: &Path) -> Result<(), VmmError> {
    let Some(pid) = read_pid(pid_file) else {
        return Ok(());
    };
    if !pid_alive(pid) {
        return Ok(());
    }
    match signal(pid, libc::SIGKILL) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(source) => return Err(VmmError::Process { action: "kill", source }),
    }
    if wait_gone(pid, Duration::from_secs(10)).await {
        Ok(())
    } else {
        Err(VmmError::Timeout(Duration::from_secs(10), "the VMM to die after SIGKILL"))
    }
}
