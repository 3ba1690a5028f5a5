//! The VMM process, known by pid and start time, never by pid alone: its
//! identity, the pid file that records it (so a restarted daemon finds the
//! VMM again), liveness, and signals sent through a pidfd so that a reused
//! pid is never signalled. VMMs run in their own session, detached from the
//! daemon ([`detach`]).

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::process::{Pid, PidfdFlags, Signal};

use crate::VmmError;

/// How long a SIGKILLed process has to disappear.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often liveness is polled where pidfds are missing (Linux before 5.3).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How much later than its pid file was written a process found by a bare
/// pid (a pid file of an older banger) may seem to have started: the boot
/// time the kernel gives is in whole seconds.
const LEGACY_START_SLACK: Duration = Duration::from_secs(2);

/// A VMM process known by pid AND start time (field 22 of /proc/PID/stat,
/// clock ticks since boot), never by pid alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmmProcess {
    /// The process id.
    pub pid: u32,
    /// When it started, in clock ticks since boot.
    pub start_time: u64,
}

/// What /proc/PID/stat says of a process.
struct Stat {
    state: char,
    session: u32,
    start_time: u64,
}

impl VmmProcess {
    /// The process that has `pid` now, with its start time.
    pub fn of(pid: u32) -> io::Result<VmmProcess> {
        Ok(VmmProcess { pid, start_time: stat(pid)?.start_time })
    }

    /// The running VMM that a pid file in `run_dir` names, whichever driver
    /// wrote it: for a run directory whose VM record (which would say the
    /// driver) is gone, as after a create cut short.
    pub fn recorded_in(run_dir: &Path) -> Option<VmmProcess> {
        [crate::PID_FILE, crate::qemu::QEMU_PID_FILE]
            .into_iter()
            .filter_map(|file| read_pid_file(&run_dir.join(file)))
            .find(VmmProcess::is_running)
    }

    /// Whether this very process still runs: the same pid, the same start
    /// time, and not a zombie.
    pub fn is_running(&self) -> bool {
        matches!(stat(self.pid), Ok(stat) if stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X'))
    }

    /// Whether the process that has this pid now is this one (a zombie
    /// counts: its pid is not free yet).
    pub(crate) fn is_ours(&self) -> bool {
        matches!(stat(self.pid), Ok(stat) if stat.start_time == self.start_time)
    }

    /// Signals through a pidfd: `pidfd_open`, then re-check the start time
    /// (so a reused pid is never signalled), then `pidfd_send_signal`.
    /// `Ok(())` if the process is already gone or is not ours.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let signal = Signal::from_named_raw(signal)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{signal} is not a signal")))?;
        let Some(pidfd) = self.pidfd()? else {
            return Ok(());
        };
        match rustix::process::pidfd_send_signal(&pidfd, signal) {
            Err(rustix::io::Errno::SRCH) => Ok(()),
            result => result.map_err(io::Error::from),
        }
    }

    /// A pidfd of this process, or `None` if it is gone. The start time is
    /// read after the pidfd is open: the pidfd then names the process that
    /// had the pid when it was checked, which stays the one signalled even
    /// if it dies and the pid is reused afterwards.
    fn pidfd(&self) -> io::Result<Option<OwnedFd>> {
        let Some(pid) = Pid::from_raw(self.pid as i32) else {
            return Ok(None);
        };
        match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) if self.is_ours() => Ok(Some(fd)),
            Ok(_) | Err(rustix::io::Errno::SRCH) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves when the process is gone (its pidfd turns readable); at
    /// once if it is not ours. VMMs are not the daemon's children once it
    /// restarted, so this cannot wait for them with `waitpid`.
    #[allow(unsafe_code)]
    pub async fn exited(&self) {
        match self.pidfd() {
            Ok(None) => return,
            // SAFETY: the AsyncFd takes the OwnedFd over: it stays open, and
            // the same descriptor, until the AsyncFd is dropped.
            Ok(Some(fd)) => {
                match unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
                    Ok(fd) => {
                        let _ = fd.readable().await;
                        return;
                    }
                    Err(e) => tracing::debug!(pid = self.pid, error = %e, "cannot watch a pidfd; polling"),
                }
            }
            Err(e) => tracing::debug!(pid = self.pid, error = %e, "no pidfd; polling"),
        }
        while self.is_running() {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits up to `timeout` for the process to go; true if it went.
    pub(crate) async fn wait_gone(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.exited()).await.is_ok()
    }

    /// SIGKILLs the process and waits up to `timeout` for it to go.
    pub async fn kill_and_wait(&self, timeout: Duration) -> Result<(), VmmError> {
        self.signal(rustix::process::Signal::KILL.as_raw())
            .map_err(|source| VmmError::Process { action: "kill", source })?;
        if self.wait_gone(timeout).await {
            Ok(())
        } else {
            Err(VmmError::Timeout(timeout, "the VMM to die after SIGKILL"))
        }
    }
}

/// Reads /proc/PID/stat.
fn stat(pid: u32) -> io::Result<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse /proc/{pid}/stat")))
}

/// The state (field 3), session (field 6) and start time (field 22) of a
/// stat line. The command name (field 2) is in parentheses and may hold
/// anything, spaces and parentheses too: the fields after it start after
/// its last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let (_, rest) = line.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let state = field(3)?.chars().next()?;
    let session = field(6)?.parse().ok()?;
    let start_time = field(22)?.parse().ok()?;
    Some(Stat { state, session, start_time })
}

/// The live processes (zombies left out) of session `sid` but its leader.
/// Who they are is only known while the leader is known to be ours: a
/// session id is the leader's pid, free for reuse once the leader and
/// every member are gone.
pub(crate) fn session_members(sid: u32) -> Vec<VmmProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != sid)
        .filter_map(|pid| {
            let stat = stat(pid).ok()?;
            (stat.session == sid && !matches!(stat.state, 'Z' | 'X'))
                .then_some(VmmProcess { pid, start_time: stat.start_time })
        })
        .collect()
}

/// Writes `process` to a pid file as `PID STARTTIME`, replacing it at once
/// (write then rename), so a reader never sees half a file.
pub(crate) fn write_pid_file(path: &Path, process: VmmProcess) -> io::Result<()> {
    let partial = path.with_extension("pid.partial");
    std::fs::write(&partial, format!("{} {}\n", process.pid, process.start_time))?;
    std::fs::rename(&partial, path)
}

/// The process a pid file names, whether or not it still runs.
///
/// `PID STARTTIME` is what banger writes. A bare `PID` (QEMU's own pid file,
/// or one written by an older banger) is taken as the process that has the
/// pid now only if that process started before the file was last written
/// (within [`LEGACY_START_SLACK`]): a process that started later has a
/// reused pid.
pub(crate) fn read_pid_file(path: &Path) -> Option<VmmProcess> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    let pid: u32 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some(start_time) => Some(VmmProcess { pid, start_time: start_time.parse().ok()? }),
        None => {
            let process = VmmProcess::of(pid).ok()?;
            let written = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
            let started = started_at(process.start_time)?;
            (started <= written + LEGACY_START_SLACK).then_some(process)
        }
    }
}

/// The wall-clock time of a start time in clock ticks since boot.
fn started_at(start_time: u64) -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let since_boot = Duration::from_secs(start_time / ticks) + Duration::from_secs(start_time % ticks) / ticks as u32;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

/// Removes `path` if it exists.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes `command` start its process in a new session, so the VMM outlives
/// the daemon and no signal sent to the daemon's process group reaches it.
#[allow(unsafe_code)]
pub(crate) fn detach(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls setsid(2), a single system call that is async-signal-safe and
    // allocates nothing.
    unsafe {
        command.pre_exec(|| rustix::process::setsid().map(drop).map_err(io::Error::from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real stat line, with a command name holding spaces and a `)`.
    const LINE: &str = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 95 0 0 0 0 0 0 0 20 0 1 0 987654 5689344 240 \
                        18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_come_after_the_last_parenthesis() {
        let stat = parse_stat(LINE).unwrap();
        assert_eq!((stat.state, stat.session, stat.start_time), ('S', 4242, 987654));
        assert!(parse_stat("12 (x) Z 1").is_none());
    }

    #[test]
    fn this_process_is_running_and_a_forged_start_time_is_not() {
        let me = VmmProcess::of(std::process::id()).unwrap();
        assert!(me.is_running());
        assert!(!VmmProcess { start_time: me.start_time + 1, ..me }.is_running());
        assert!(!VmmProcess { pid: u32::MAX, ..me }.is_running());
    }

    #[test]
    fn pid_files_record_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.pid");
        let me = VmmProcess::of(std::process::id()).unwrap();
        write_pid_file(&path, me).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{} {}\n", me.pid, me.start_time));
        assert_eq!(read_pid_file(&path), Some(me));
        // A bare pid written after the process started is that process.
        std::fs::write(&path, format!("{}\n", me.pid)).unwrap();
        assert_eq!(read_pid_file(&path), Some(me));
        // One written before it started names a reused pid.
        let long_ago = SystemTime::now() - Duration::from_secs(3600 * 24 * 365);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(long_ago).unwrap();
        assert_eq!(read_pid_file(&path), None);
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(read_pid_file(&path), None);
        assert_eq!(read_pid_file(&dir.path().join("missing.pid")), None);
    }

    #[test]
    fn a_start_time_maps_to_when_the_process_started() {
        let me = VmmProcess::of(std::process::id()).unwrap();
        let started = started_at(me.start_time).unwrap();
        let now = SystemTime::now();
        assert!(started <= now + LEGACY_START_SLACK, "{started:?} after {now:?}");
        assert!(now.duration_since(started).unwrap_or_default() < Duration::from_secs(3600), "{started:?}");
    }
}
