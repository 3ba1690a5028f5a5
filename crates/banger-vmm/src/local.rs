//! The test driver: it boots no guest, but runs the real static guest
//! agent as a host process, detached like a VMM (its own session, a pid
//! file with its identity), serving `<run_dir>/agent.sock`, its output in
//! `<run_dir>/console.log`. The daemon's whole lifecycle (start, agent
//! handshake, stop, kill, adoption after a restart) runs against it in
//! milliseconds. Faults set per VM name ([`LocalFaults`]) make it boot the
//! ways a real guest fails. It touches nothing of the host but the run dir:
//! the spec's `nics` are ignored (the agent shares the host's network, and
//! it configures a network only from a guest's kernel command line, never
//! as a host process on a unix socket), so a VM with networking runs here
//! too, without a network of its own.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::process::Signal;

use crate::process::{
    detach, read_pid_file, remove_if_present, session_members, write_pid_file, VmmProcess, KILL_TIMEOUT,
};
use crate::{report, AgentEndpoint, VmSpec, VmmError, CONSOLE_LOG, PID_FILE};

/// `sun_path` holds 108 bytes, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// How long a process that stands for a guest that never comes up sleeps:
/// for good, as far as a test can tell (about 68 years).
const FOREVER_SECONDS: &str = "2147483647";

/// How many times a kill looks for the agent's commands (and the children
/// they forked before they died).
const SWEEP_ROUNDS: usize = 20;

/// What [`BootFault::DiesAtBoot`] prints before it exits.
pub const DIES_AT_BOOT_LINE: &str = "banger local driver: the guest died at boot (BootFault::DiesAtBoot)";

/// The test driver: the guest agent at `agent`, run on the host.
#[derive(Debug, Clone)]
pub struct Local {
    /// The static `banger-agent` binary.
    pub agent: PathBuf,
    /// Faults to inject, by VM name, set at run time.
    pub faults: LocalFaults,
}

/// Boot faults by VM name, shared by every clone: a test sets one on the
/// driver the daemon holds, and the VM's next start shows it.
#[derive(Debug, Clone, Default)]
pub struct LocalFaults(Arc<Mutex<HashMap<String, BootFault>>>);

/// How a [`Local`] "guest" fails to boot or to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFault {
    /// A process runs (`sleep`), no socket ever appears: an init that never
    /// starts the agent.
    NeverListens,
    /// The socket exists and accepts connections, but nothing ever reads
    /// or writes: the driver binds it and hands the listening socket to a
    /// long-sleeping `sleep`.
    SilentListener,
    /// The process prints [`DIES_AT_BOOT_LINE`] to the console and exits 1
    /// at once.
    DiesAtBoot,
    /// The agent runs normally but ignores SIGTERM, so stop must fall back
    /// to kill.
    IgnoresStop,
    /// The agent speaks only protocol version 1, as one of an older banger
    /// would in a VM it started.
    SpeaksVersion1,
}

impl LocalFaults {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, BootFault>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the VM named `vm` boot with `fault` from its next start on.
    pub fn set(&self, vm: &str, fault: BootFault) {
        self.lock().insert(vm.to_owned(), fault);
    }

    /// Lets the VM named `vm` boot normally again.
    pub fn clear(&self, vm: &str) {
        self.lock().remove(vm);
    }

    /// The fault set for the VM named `vm`.
    pub fn get(&self, vm: &str) -> Option<BootFault> {
        self.lock().get(vm).copied()
    }
}

/// The files of one "VM" in its run directory.
struct RunFiles {
    socket: PathBuf,
    pid: PathBuf,
    console: PathBuf,
}

impl RunFiles {
    fn new(run_dir: &Path) -> Self {
        RunFiles { socket: run_dir.join("agent.sock"), pid: run_dir.join(PID_FILE), console: run_dir.join(CONSOLE_LOG) }
    }

    /// Everything but the console log.
    /// What a stopped VM leaves no more: as a guest's `/run` goes with its
    /// reboot, so do the sessions the agent kept beside its socket.
    fn remove_runtime_files(&self) -> io::Result<()> {
        for path in [&self.socket, &self.pid, &self.pid.with_extension("pid.partial")] {
            remove_if_present(path)?;
        }
        match std::fs::remove_dir_all(self.sessions()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Where the agent keeps its sessions when it serves a socket.
    fn sessions(&self) -> PathBuf {
        let mut dir = self.socket.clone().into_os_string();
        dir.push(".sessions");
        dir.into()
    }
}

/// Where the agent of the VM in `run_dir` listens.
pub fn agent_endpoint(run_dir: &Path) -> AgentEndpoint {
    AgentEndpoint::Unix(RunFiles::new(run_dir).socket)
}

impl Local {
    /// The driver for the agent at `agent`, with no faults set.
    pub fn new(agent: impl Into<PathBuf>) -> Self {
        Local { agent: agent.into(), faults: LocalFaults::default() }
    }

    /// Starts the agent (or the fault set for `spec.name`) detached and
    /// records it in the pid file. Returns once the process runs, before it
    /// listens, as a VMM returns before the guest has booted. On error
    /// nothing runs and the runtime files are gone.
    pub async fn start(&self, spec: &VmSpec) -> Result<VmmProcess, VmmError> {
        let files = RunFiles::new(&spec.run_dir);
        check_run_dir(&spec.run_dir, &files)?;
        if let Some(running) = read_pid_file(&files.pid).filter(VmmProcess::is_running) {
            return Err(VmmError::InvalidSpec(format!(
                "a VMM already runs in {} (pid {})",
                spec.run_dir.display(),
                running.pid
            )));
        }
        let release_error = |source| VmmError::Process { action: "remove the runtime files of", source };
        files.remove_runtime_files().map_err(release_error)?;
        let fault = self.faults.get(&spec.name);
        let spawned = match self.spawn(fault, &files) {
            // The shell sets the signal ignored before it execs the agent: a
            // stop in between would find a SIGTERM that still kills.
            Ok(process) if fault == Some(BootFault::IgnoresStop) => match wait_until_term_ignored(process).await {
                Ok(()) => Ok(process),
                Err(e) => {
                    let _ = process.kill_and_wait(KILL_TIMEOUT).await;
                    Err(e)
                }
            },
            spawned => spawned,
        };
        match spawned {
            Ok(process) => {
                tracing::info!(vm = %spec.name, pid = process.pid, ?fault, "local agent started");
                Ok(process)
            }
            Err(e) => {
                if let Err(e) = files.remove_runtime_files() {
                    tracing::warn!(vm = %spec.name, error = %e, "cannot remove the files of a failed start");
                }
                Err(e)
            }
        }
    }

    /// Spawns the process for `fault` and writes its pid file; kills it if
    /// the pid file cannot be written.
    fn spawn(&self, fault: Option<BootFault>, files: &RunFiles) -> Result<VmmProcess, VmmError> {
        let log_error = |source| VmmError::Process { action: "create the console log of", source };
        let console = std::fs::File::create(&files.console).map_err(log_error)?;
        let stderr = console.try_clone().map_err(log_error)?;
        let (mut command, stdin) = self.command(fault, files)?;
        command.stdin(stdin).stdout(console).stderr(stderr).kill_on_drop(false);
        detach(&mut command);
        // Dropped at once: tokio reaps it if it exits while the daemon runs.
        let mut child = command.spawn().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => VmmError::MissingBinary { binary: self.agent.display().to_string() },
            _ => VmmError::Process { action: "spawn", source },
        })?;
        let recorded = child
            .id()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the process was reaped at once"))
            .and_then(VmmProcess::of)
            .and_then(|process| write_pid_file(&files.pid, process).map(|()| process));
        if recorded.is_err() {
            // Not recorded, it could never be found again: it must not run.
            // Still our unreaped child, so its pid cannot have been reused.
            let _ = child.start_kill();
        }
        recorded.map_err(|source| VmmError::Process { action: "record the pid of", source })
    }

    /// The command for `fault` and its stdin.
    fn command(
        &self,
        fault: Option<BootFault>,
        files: &RunFiles,
    ) -> Result<(tokio::process::Command, Stdio), VmmError> {
        let sh = |script: &str| {
            let mut command = tokio::process::Command::new("/bin/sh");
            command.arg("-c").arg(script);
            command
        };
        Ok(match fault {
            None => {
                let mut command = tokio::process::Command::new(&self.agent);
                command.arg("--listen-unix").arg(&files.socket);
                (command, Stdio::null())
            }
            // An ignored signal stays ignored across exec.
            Some(BootFault::IgnoresStop) => {
                let mut command = sh("trap '' TERM; exec \"$0\" --listen-unix \"$1\"");
                command.arg(&self.agent).arg(&files.socket);
                (command, Stdio::null())
            }
            Some(BootFault::SpeaksVersion1) => {
                let mut command = tokio::process::Command::new(&self.agent);
                command.arg("--listen-unix").arg(&files.socket).args(["--protocol", "1"]);
                (command, Stdio::null())
            }
            Some(BootFault::NeverListens) => {
                let mut command = tokio::process::Command::new("sleep");
                command.arg(FOREVER_SECONDS);
                (command, Stdio::null())
            }
            // The listening socket is the sleeper's stdin: inherited by
            // exec (as a standard stream it is not close-on-exec), never read.
            Some(BootFault::SilentListener) => {
                let listener = std::os::unix::net::UnixListener::bind(&files.socket)
                    .map_err(|source| VmmError::Process { action: "bind the agent socket of", source })?;
                let mut command = tokio::process::Command::new("sleep");
                command.arg(FOREVER_SECONDS);
                (command, Stdio::from(OwnedFd::from(listener)))
            }
            Some(BootFault::DiesAtBoot) => (sh(&format!("echo '{DIES_AT_BOOT_LINE}'; exit 1")), Stdio::null()),
        })
    }

    /// Asks the agent to end (SIGTERM), waits up to `timeout`, then kills
    /// it. The commands it started end with it, as a guest's end with the
    /// VM.
    pub async fn stop(&self, run_dir: &Path, process: VmmProcess, timeout: Duration) -> Result<(), VmmError> {
        // Known as the agent's only while it is: listed before it is asked to go.
        let commands = agent_commands(process);
        process.signal(Signal::TERM.as_raw()).map_err(|source| VmmError::Process { action: "signal", source })?;
        if process.wait_gone(timeout).await {
            for command in commands {
                let _ = command.signal(Signal::KILL.as_raw());
            }
            return Ok(());
        }
        tracing::info!(pid = process.pid, ?timeout, "the local agent ignored SIGTERM; killing it");
        self.kill(run_dir, process).await
    }

    /// Kills the agent and the commands it started at once (SIGKILL) and
    /// waits for the agent to go. The agent is stopped (SIGSTOP) first so
    /// it starts nothing more while its commands are killed.
    pub async fn kill(&self, _run_dir: &Path, process: VmmProcess) -> Result<(), VmmError> {
        let signal_error = |source| VmmError::Process { action: "kill", source };
        process.signal(Signal::STOP.as_raw()).map_err(signal_error)?;
        for _ in 0..SWEEP_ROUNDS {
            let commands = agent_commands(process);
            if commands.is_empty() {
                break;
            }
            for command in commands {
                command.signal(Signal::KILL.as_raw()).map_err(signal_error)?;
            }
            // Their children, forked before they died, are found next round.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        process.kill_and_wait(KILL_TIMEOUT).await
    }

    /// Removes the socket and the pid file; the console log stays.
    pub fn release(&self, run_dir: &Path) -> io::Result<()> {
        RunFiles::new(run_dir).remove_runtime_files()
    }

    /// The tail of the console log (the agent's own output).
    pub fn failure_report(&self, run_dir: &Path) -> String {
        self.report(&RunFiles::new(run_dir))
    }

    fn report(&self, files: &RunFiles) -> String {
        report::failure_report(&[("console", &files.console)])
    }
}

/// The processes of the agent's session but the agent: what it started,
/// and their children. Empty unless the agent is still ours once they are
/// listed (then the session, whose id is its pid, is its own).
fn agent_commands(agent: VmmProcess) -> Vec<VmmProcess> {
    let members = session_members(agent.pid);
    if agent.is_ours() {
        members
    } else {
        Vec::new()
    }
}

/// How long [`BootFault::IgnoresStop`]'s shell may take to ignore SIGTERM.
const TRAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until `process` ignores SIGTERM (`SigIgn` in /proc/PID/status).
async fn wait_until_term_ignored(process: VmmProcess) -> Result<(), VmmError> {
    let term_bit = 1u64 << (Signal::TERM.as_raw() - 1);
    let deadline = tokio::time::Instant::now() + TRAP_TIMEOUT;
    loop {
        let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid)).unwrap_or_default();
        let ignored = status
            .lines()
            .find_map(|line| line.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
        if ignored.is_some_and(|mask| mask & term_bit != 0) {
            return Ok(());
        }
        if !process.is_running() {
            return Err(VmmError::ExitedEarly { log_tail: "the shell before the agent exited".into() });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(VmmError::Timeout(TRAP_TIMEOUT, "the shell to ignore SIGTERM"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Refuses a run directory that is missing or too long for the socket.
fn check_run_dir(run_dir: &Path, files: &RunFiles) -> Result<(), VmmError> {
    if !run_dir.is_dir() {
        return Err(VmmError::InvalidSpec(format!("run directory {} does not exist", run_dir.display())));
    }
    if files.socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(VmmError::InvalidSpec(format!(
            "run directory {} is too long for a unix socket path",
            run_dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_per_vm_and_shared_by_clones() {
        let driver = Local::new("/bin/banger-agent");
        let clone = driver.clone();
        driver.faults.set("a", BootFault::DiesAtBoot);
        assert_eq!(clone.faults.get("a"), Some(BootFault::DiesAtBoot));
        assert_eq!(clone.faults.get("b"), None);
        clone.faults.clear("a");
        assert_eq!(driver.faults.get("a"), None);
    }
}
