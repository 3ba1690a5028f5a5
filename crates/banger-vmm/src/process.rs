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
    let deadline = tokio::time::Instant::now() + timeout;
    while pid_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
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
