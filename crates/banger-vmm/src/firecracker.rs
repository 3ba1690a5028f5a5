//! The Firecracker driver: spawns `firecracker` (directly, or under its
//! jailer as an unprivileged uid in a chroot beside the VM's disks)
//! detached in its own session, configures and boots the guest over the
//! REST API on its unix socket, and stops it with Ctrl+Alt+Del, then
//! SIGKILL. Its stdout is the guest's serial console and nothing else
//! (Firecracker's own log is configured at start), so a failure report
//! tells the two apart. Request building ([`api`]), command lines
//! ([`command`]) and the jail's layout ([`jail`]) are pure; this file holds
//! the host effects.

pub mod api;
pub mod command;
mod http;
pub mod jail;
mod report;
pub mod socket;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Child;

pub use api::{boot_args, requests, requests_with_paths, ActionType, ApiPaths, ApiRequest, NetworkInterface, RunFiles};
pub use command::JailIdentity;

use crate::process::{detach, remove_if_present, write_pid_file, VmmProcess, KILL_TIMEOUT};
use crate::{AgentEndpoint, VmSpec, VmmError};

/// How long Firecracker has to open its API socket after it is spawned.
const API_SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// The uid and gid the jailer runs Firecracker as unless configured: in
/// the range systemd leaves unused (1879048192-2147483647), so no account,
/// dynamic user or container range has it. No account needs to exist.
pub const DEFAULT_JAIL_IDENTITY: JailIdentity = JailIdentity { uid: 2_000_000_000, gid: 2_000_000_000 };

/// Firecracker, optionally under its jailer.
#[derive(Debug, Clone)]
pub struct Firecracker {
    /// The firecracker binary (a path, or a name looked up in `PATH`).
    pub binary: PathBuf,
    /// The jailer, to run Firecracker chrooted in
    /// `<jail dir>/<binary's file name>/<id>/root` (see [`jail`]).
    /// Firecracker must then be a path whose file name contains
    /// `firecracker`, as the jailer requires.
    pub jailer: Option<Jailer>,
    /// Where the jail goes instead of `<run_dir>/jail`: it must be on the
    /// disks' filesystem, since they are hard-linked into it (the run dir
    /// is often a tmpfs). One per VM: the whole directory is removed at stop.
    pub jail_dir: Option<PathBuf>,
}

/// Firecracker's jailer and who it runs Firecracker as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jailer {
    /// The jailer binary.
    pub binary: PathBuf,
    /// The uid and gid Firecracker runs with.
    pub identity: JailIdentity,
}

impl Jailer {
    /// The jailer at `binary`, running Firecracker as [`DEFAULT_JAIL_IDENTITY`].
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Jailer { binary: binary.into(), identity: DEFAULT_JAIL_IDENTITY }
    }
}

/// A spawned Firecracker and the requests that configure and boot it,
/// with the paths Firecracker sees.
struct Launched {
    child: Child,
    requests: Vec<api::ApiRequest>,
}

impl Firecracker {
    /// Firecracker at `binary`, without the jailer.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Firecracker { binary: binary.into(), jailer: None, jail_dir: None }
    }

    /// The VM's runtime files, with the jail where this driver puts it.
    fn files(&self, run_dir: &Path) -> RunFiles {
        let mut files = RunFiles::new(run_dir);
        if let Some(jail_dir) = &self.jail_dir {
            files.chroot_base = jail_dir.clone();
        }
        files
    }

    /// Starts the VM: spawns Firecracker detached (its stdout, the serial
    /// console, to `console.log`; its stderr to `vmm.log`), writes
    /// `vmm.pid`, configures the VM over the API and boots it. Under the
    /// jailer, first links the kernel, initrd and disks into the jail.
    /// Returns the process; on error nothing is left running and the
    /// runtime files and the jail are gone.
    pub async fn start(&self, spec: &VmSpec) -> Result<VmmProcess, VmmError> {
        check_kernel(&spec.kernel)?;
        // Refuse a spec Firecracker cannot take before anything is made.
        requests(spec)?;
        let files = self.files(&spec.run_dir);
        if let Some(running) = crate::process::read_pid_file(&files.pid).filter(VmmProcess::is_running) {
            return Err(VmmError::InvalidSpec(format!(
                "a VMM already runs in {} (pid {})",
                spec.run_dir.display(),
                running.pid
            )));
        }
        self.remove_runtime_files(&files);
        let launched = match &self.jailer {
            None => self.spawn_direct(spec, &files),
            Some(jailer) => self.spawn_jailed(jailer, spec, &files),
        };
        let Launched { mut child, requests } = match launched {
            Ok(launched) => launched,
            Err(e) => {
                self.remove_runtime_files(&files);
                return Err(e);
            }
        };
        let Some(process) = child.id().and_then(|pid| VmmProcess::of(pid).ok()) else {
            let log_tail = report::failure_report(&files);
            self.remove_runtime_files(&files);
            return Err(VmmError::ExitedEarly { log_tail });
        };
        let pid = process.pid;
        let started = async {
            write_pid_file(&files.pid, process)
                .map_err(|source| VmmError::Process { action: "record the pid of", source })?;
            wait_for_api(&mut child, &files).await?;
            send_all(&spec.name, &files.api_sock, &requests).await
        };
        match started.await {
            Ok(()) => {
                tracing::info!(vm = %spec.name, pid, jailed = self.jailer.is_some(), "firecracker started");
                Ok(process)
            }
            Err(e) => {
                tracing::debug!(vm = %spec.name, pid, error = %e, "firecracker start failed, killing it");
                if let Err(e) = process.kill_and_wait(KILL_TIMEOUT).await {
                    tracing::warn!(pid, error = %e, "cannot kill firecracker");
                }
                self.remove_runtime_files(&files);
                Err(e)
            }
        }
    }

    /// Configures and boots the VM of `spec` through the Firecracker API at
    /// `api_sock`: the requests of [`requests`] (host paths), in order,
    /// stopping at the first refused one. Creates the metrics file
    /// Firecracker needs to exist.
    pub async fn configure(&self, api_sock: &Path, spec: &VmSpec) -> Result<(), VmmError> {
        let requests = requests(spec)?;
        create_log_files(&self.files(&spec.run_dir))?;
        send_all(&spec.name, api_sock, &requests).await
    }

    /// Stops the VM: sends Ctrl+Alt+Del (with `reboot=k` the guest's
    /// reboot ends Firecracker), waits up to `timeout`, then SIGKILLs it.
    /// Leaves the runtime files to [`Firecracker::release`].
    pub async fn stop(&self, run_dir: &Path, process: VmmProcess, timeout: Duration) -> Result<(), VmmError> {
        let files = self.files(run_dir);
        let pid = process.pid;
        let graceful = async {
            match http::send(&files.api_sock, &ApiRequest::action(ActionType::SendCtrlAltDel)).await {
                Ok(()) => process.wait_gone(timeout).await,
                Err(e) => {
                    tracing::debug!(pid, error = %e, "cannot ask the guest to shut down");
                    false
                }
            }
        };
        let exited = tokio::time::timeout(timeout, graceful).await.unwrap_or(false);
        if !exited {
            tracing::info!(pid, ?timeout, "firecracker did not stop in time, killing it");
            process.kill_and_wait(KILL_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Kills the VM's Firecracker at once and waits for it to go.
    pub async fn kill(&self, _run_dir: &Path, process: VmmProcess) -> Result<(), VmmError> {
        process.kill_and_wait(KILL_TIMEOUT).await
    }

    /// Removes the runtime files of a VM whose Firecracker is gone, all but
    /// the console: the sockets and links, the pid file, Firecracker's log,
    /// metrics and stderr, and the jail (its disks given back to the
    /// daemon's uid first). The failure report must be made before.
    pub fn release(&self, run_dir: &Path) -> std::io::Result<()> {
        self.release_files(&self.files(run_dir))
    }

    /// Why the VM failed, for a user: the errors of Firecracker's log (its
    /// exit reason), its stderr, and the tail of the guest's console.
    pub fn failure_report(&self, run_dir: &Path) -> String {
        report::failure_report(&self.files(run_dir))
    }

    /// Spawns `firecracker --api-sock <run_dir>/firecracker.sock ...`.
    fn spawn_direct(&self, spec: &VmSpec, files: &RunFiles) -> Result<Launched, VmmError> {
        create_log_files(files)?;
        let line = command::firecracker(&self.binary, &files.api_sock, &files.log, &command::instance_id(&spec.name));
        let child = self.spawn(&line, files)?;
        Ok(Launched { child, requests: requests(spec)? })
    }

    /// Builds the jail and spawns the jailer, which execs Firecracker in
    /// place (no `--daemonize`), so the child's pid is Firecracker's, and
    /// its stdout and stderr are the files opened here, wherever they are.
    fn spawn_jailed(&self, jailer: &Jailer, spec: &VmSpec, files: &RunFiles) -> Result<Launched, VmmError> {
        let id = command::instance_id(&spec.name);
        let jail = jail::Jail::new(&files.chroot_base, &self.binary, &id);
        let (jail_files, paths) = jail::plan(spec);
        let requests = requests_with_paths(spec, &paths)?;
        let placed = jail.prepare(&jail_files, jailer.identity)?;
        tracing::debug!(vm = %spec.name, root = %jail.root.display(), ?placed, "jail prepared");
        jail.link_run_files(files)?;
        let in_jail = (Path::new(jail::API_SOCK), Path::new(jail::LOG));
        let line = command::jailer(&jailer.binary, &self.binary, &id, jailer.identity, &jail.chroot_base, in_jail);
        let child = self.spawn(&line, files).map_err(|e| match e {
            VmmError::MissingBinary { .. } => VmmError::MissingBinary { binary: jailer.binary.display().to_string() },
            e => e,
        })?;
        Ok(Launched { child, requests })
    }

    /// Spawns `line` in its own session, so it outlives the daemon.
    fn spawn(&self, line: &command::CommandLine, files: &RunFiles) -> Result<Child, VmmError> {
        let log_error = |source| VmmError::Process { action: "create the log files of", source };
        let console = std::fs::File::create(&files.console).map_err(log_error)?;
        let vmm_log = std::fs::File::create(&files.vmm_log).map_err(log_error)?;
        let mut cmd = tokio::process::Command::new(&line.program);
        cmd.args(&line.args).stdin(Stdio::null()).stdout(console).stderr(vmm_log).kill_on_drop(false);
        detach(&mut cmd);
        cmd.spawn().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => VmmError::MissingBinary { binary: line.program.display().to_string() },
            _ => VmmError::Process { action: "spawn", source },
        })
    }

    /// Removes stale runtime files before a start (Firecracker cannot bind
    /// over old sockets), or what a failed start made.
    fn remove_runtime_files(&self, files: &RunFiles) {
        if let Err(e) = self.release_files(files) {
            tracing::warn!(error = %e, "cannot remove a firecracker file");
        }
    }

    /// Gives the jail's disks back, then removes every runtime file but the
    /// console; the first failure is the error, with its path. The jail
    /// holds only links and copies: removing it never touches the kernel
    /// or disks it names, and symlinks are not followed.
    fn release_files(&self, files: &RunFiles) -> std::io::Result<()> {
        if let Some(jailer) = &self.jailer {
            // Every VM's chroot base holds its one jail: <base>/<exec>/<id>/root.
            for root in jail_roots(&files.chroot_base) {
                jail::Jail { chroot_base: files.chroot_base.clone(), root }.release(jailer.identity);
            }
        }
        let with_path =
            |path: &Path, e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let partial = files.pid.with_extension("pid.partial");
        for path in [&files.api_sock, &files.vsock, &files.pid, &partial, &files.log, &files.metrics, &files.vmm_log] {
            remove_if_present(path).map_err(|e| with_path(path, e))?;
        }
        match std::fs::remove_dir_all(&files.chroot_base) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(with_path(&files.chroot_base, e)),
            _ => Ok(()),
        }
    }
}

/// The jail roots under a chroot base (`<base>/<exec>/<id>/root`).
fn jail_roots(chroot_base: &Path) -> Vec<PathBuf> {
    let children = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()
    };
    children(chroot_base).iter().flat_map(|exec| children(exec)).map(|id| id.join("root")).collect()
}

/// Sends `requests` in order, stopping at the first refused one.
async fn send_all(vm: &str, api_sock: &Path, requests: &[ApiRequest]) -> Result<(), VmmError> {
    for request in requests {
        tracing::debug!(vm = %vm, request = %request.describe(), "firecracker API");
        http::send(api_sock, request).await?;
    }
    Ok(())
}

/// Creates empty log and metrics files in the run directory, which
/// Firecracker needs to exist (an old log is replaced: Firecracker writes
/// it from the start, over what was there).
fn create_log_files(files: &RunFiles) -> Result<(), VmmError> {
    for path in [&files.log, &files.metrics] {
        std::fs::File::create(path)
            .map_err(|source| VmmError::Process { action: "create the log files of", source })?;
    }
    Ok(())
}

/// Where the guest agent is reached.
pub fn agent_endpoint(run_dir: &Path) -> AgentEndpoint {
    AgentEndpoint::FirecrackerVsock { uds: RunFiles::new(run_dir).vsock, port: banger_agent_proto::VSOCK_PORT }
}

/// Refuses a kernel Firecracker cannot boot: it takes an ELF vmlinux only.
fn check_kernel(kernel: &Path) -> Result<(), VmmError> {
    let mut header = Vec::with_capacity(command::KERNEL_HEADER_LEN);
    std::fs::File::open(kernel)
        .and_then(|f| f.take(command::KERNEL_HEADER_LEN as u64).read_to_end(&mut header))
        .map_err(|e| VmmError::InvalidSpec(format!("cannot read the kernel {}: {e}", kernel.display())))?;
    let what = match command::kernel_format(&header) {
        command::KernelFormat::Elf => return Ok(()),
        command::KernelFormat::BzImage => "a bzImage",
        command::KernelFormat::Unknown => "not an ELF image",
    };
    Err(VmmError::InvalidSpec(format!(
        "the kernel {} is {what}; Firecracker boots an uncompressed ELF vmlinux only",
        kernel.display()
    )))
}

/// Waits until the API socket (reached from the run directory) accepts a
/// connection, the process exits, or [`API_SOCKET_TIMEOUT`] passes.
async fn wait_for_api(child: &mut Child, files: &RunFiles) -> Result<(), VmmError> {
    let deadline = tokio::time::Instant::now() + API_SOCKET_TIMEOUT;
    loop {
        let exited = child.try_wait().map_err(|source| VmmError::Process { action: "wait for", source })?;
        if let Some(status) = exited {
            return Err(VmmError::ExitedEarly { log_tail: format!("{status}\n{}", report::failure_report(files)) });
        }
        if socket::connect(&files.api_sock).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(VmmError::Timeout(API_SOCKET_TIMEOUT, "Firecracker's API socket"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_endpoint_is_the_vsock_socket_sent_to_firecracker() {
        let run_dir = Path::new("/run/banger/vms/a");
        let AgentEndpoint::FirecrackerVsock { uds, .. } = agent_endpoint(run_dir) else { panic!("not vsock") };
        assert_eq!(uds, RunFiles::new(run_dir).vsock);
    }

    #[test]
    fn release_removes_every_runtime_file_but_the_console() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path();
        let files = RunFiles::new(run_dir);
        for path in
            [&files.api_sock, &files.vsock, &files.pid, &files.log, &files.metrics, &files.vmm_log, &files.console]
        {
            std::fs::write(path, "x").unwrap();
        }
        std::fs::create_dir_all(files.chroot_base.join("firecracker/vm/root")).unwrap();
        let driver = Firecracker::new("firecracker");
        driver.release(run_dir).unwrap();
        let left: Vec<String> =
            std::fs::read_dir(run_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left, ["console.log"]);
        driver.release(run_dir).expect("idempotent");
    }

    #[test]
    fn jail_roots_are_found_under_the_chroot_base() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("firecracker/web-1/root");
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(jail_roots(dir.path()), [root]);
        assert!(jail_roots(&dir.path().join("none")).is_empty());
    }
}
