//! The one place that waits for child processes. As init every orphan in the
//! guest becomes our child, so a single reaper collects every exit on
//! SIGCHLD, hands the status of the processes it started to whoever waits
//! for them, and discards the rest.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::log::log;
use crate::sys;

type Waiting = HashMap<u32, oneshot::Sender<ExitStatus>>;

/// Starts processes and reports how they ended.
///
/// The lock is held around each `waitpid` and around each spawn, so a pid is
/// always registered before it can be reaped, and std's own wait for a child
/// whose exec failed never races the reaper.
#[derive(Clone)]
pub(crate) struct Reaper {
    waiting: Arc<Mutex<Waiting>>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts reaping; call inside the runtime.
    pub(crate) fn start() -> io::Result<Reaper> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper { waiting: Arc::default() };
        let this = reaper.clone();
        tokio::spawn(async move {
            loop {
                this.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `command`; the receiver gets its exit status once it is reaped.
    pub(crate) fn spawn(&self, command: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let mut waiting = self.lock();
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(child.id(), tx);
        Ok((child, rx))
    }

    /// Signals a process this reaper started, unless it is already reaped
    /// (its pid may then belong to someone else).
    pub(crate) fn signal(&self, pid: u32, signal: i32) -> io::Result<()> {
        let waiting = self.lock();
        if !waiting.contains_key(&pid) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        sys::kill(pid, signal)
    }

    /// Signals the process group a started process leads. It may outlive its
    /// leader: a group id is not handed out again while the group has members.
    pub(crate) fn signal_group(&self, pgid: u32, signal: i32) -> io::Result<()> {
        // Never 0 or 1: kill(0) and kill(-1) would reach the agent's own group or everyone.
        if pgid <= 1 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        sys::kill_group(pgid, signal)
    }

    /// Signals the process group of every process it started that still
    /// runs (each command leads its own group): how a power-off ends the
    /// commands of an agent that is not init, as a guest's power-off would.
    pub(crate) fn signal_all_groups(&self, signal: i32) {
        let waiting = self.lock();
        for &pid in waiting.keys() {
            if let Err(e) = self.signal_group(pid, signal) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    log!("cannot signal process group {pid}: {e}");
                }
            }
        }
    }

    /// Collects every exited child; signals coalesce, so one SIGCHLD may stand for many.
    fn reap_all(&self) {
        loop {
            let mut waiting = self.lock();
            match sys::reap_one() {
                Ok(Some((pid, status))) => {
                    if let Some(tx) = waiting.remove(&pid) {
                        let _ = tx.send(ExitStatus::from_raw(status));
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    log!("waitpid failed: {e}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[tokio::test]
    async fn exit_statuses_reach_their_waiters() {
        let reaper = Reaper::start().unwrap();
        let mut receivers = Vec::new();
        for code in 0..5 {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", &format!("exit {code}")]).stdin(Stdio::null());
            receivers.push((code, reaper.spawn(&mut cmd).unwrap().1));
        }
        for (code, rx) in receivers {
            assert_eq!(rx.await.unwrap().code(), Some(code));
        }
        let (child, rx) = reaper.spawn(Command::new("sleep").arg("30")).unwrap();
        reaper.signal(child.id(), libc::SIGKILL).unwrap();
        assert_eq!(rx.await.unwrap().signal(), Some(libc::SIGKILL));
        let err = reaper.signal(child.id(), libc::SIGKILL).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }
}
