//! The Firecracker driver: spawns `firecracker` (directly, or under its
//! jailer in a chroot of the run directory) detached in its own session,
//! configures and boots the guest over the REST API on its unix socket, and
//! stops it with Ctrl+Alt+Del, then SIGKILL. Request building ([`api`]),
//! command lines ([`command`]) and the jail's layout ([`jail`]) are pure;
//! this file holds the host effects.

pub mod api;
pub mod command;
mod http;
pub mod jail;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::process::Child;

pub use api::{requests, requests_with_paths, ActionType, ApiPaths, ApiRequest, RunFiles};

use crate::process::{detach, remove_if_present, write_pid_file, VmmProcess, KILL_TIMEOUT};
use crate::{report, AgentEndpoint, VmSpec, VmmError};

/// How long Firecracker has to open its API socket after it is spawned.
const API_SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// Firecracker, optionally under its jailer.
#[derive(Debug, Clone)]
pub struct Firecracker {
    /// The firecracker binary (a path, or a name looked up in `PATH`).
    pub binary: PathBuf,
    /// The jailer binary, to run Firecracker chrooted in
    /// `<run_dir>/jail/<binary's file name>/<id>/root` (see [`jail`]), as
    /// uid and gid 0. Firecracker must then be a path whose file name
    /// contains `firecracker`, as the jailer requires.
    pub jailer: Option<PathBuf>,
    /// Where the jail goes instead of `<run_dir>/jail`: it must be on the
    /// disks' filesystem, since they are hard-linked into it (the run dir
    /// is often a tmpfs). One per VM: the whole directory is removed at stop.
    pub jail_dir: Option<PathBuf>,
}

/// A spawned Firecracker and what start needs to talk to it.
struct Launched {
    child: Child,
    /// The API socket on the host.
    api_sock: PathBuf,
    /// The requests that configure and boot the guest, with the paths
    /// Firecracker sees.
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
        remove_runtime_files(&files);
        let launched = match self.jailer.as_deref() {
            None => self.spawn_direct(spec, &files),
            Some(jailer) => self.spawn_jailed(jailer, spec, &files),
        };
        let Launched { mut child, api_sock, requests } = match launched {
            Ok(launched) => launched,
            Err(e) => {
                remove_runtime_files(&files);
                return Err(e);
            }
        };
        let Some(process) = child.id().and_then(|pid| VmmProcess::of(pid).ok()) else {
            let log_tail = log_tail(&files);
            remove_runtime_files(&files);
            return Err(VmmError::ExitedEarly { log_tail });
        };
        let pid = process.pid;
        let started = async {
            write_pid_file(&files.pid, process)
                .map_err(|source| VmmError::Process { action: "record the pid of", source })?;
            wait_for_api(&mut child, &api_sock, &files).await?;
            send_all(&spec.name, &api_sock, &requests).await
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
                remove_runtime_files(&files);
                Err(e)
            }
        }
    }

    /// Configures and boots the VM of `spec` through the Firecracker API at
    /// `api_sock`: the requests of [`requests`] (host paths), in order,
    /// stopping at the first refused one. Creates the log and metrics files
    /// Firecracker needs to exist.
    pub async fn configure(&self, api_sock: &Path, spec: &VmSpec) -> Result<(), VmmError> {
        let requests = requests(spec)?;
        create_log_files(&self.files(&spec.run_dir))?;
        send_all(&spec.name, api_sock, &requests).await
    }

    /// Stops the VM: sends Ctrl+Alt+Del (with `reboot=k` the guest's
    /// reboot ends Firecracker), waits up to `timeout`, then SIGKILLs it.
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

    /// Removes the sockets, the pid file, Firecracker's logs and metrics,
    /// and the jail; the console log stays.
    pub fn release(&self, run_dir: &Path) -> std::io::Result<()> {
        release_files(&self.files(run_dir))
    }

    /// The tails of the guest console and of Firecracker's stderr and log.
    pub fn failure_report(&self, run_dir: &Path) -> String {
        let files = self.files(run_dir);
        report::failure_report(&[
            ("console", &files.console),
            ("firecracker stderr", &files.vmm_log),
            ("firecracker log", &files.log),
        ])
    }

    /// Spawns `firecracker --api-sock <run_dir>/firecracker.sock`.
    fn spawn_direct(&self, spec: &VmSpec, files: &RunFiles) -> Result<Launched, VmmError> {
        create_log_files(files)?;
        let line = command::firecracker(&self.binary, &files.api_sock, &command::instance_id(&spec.name));
        let child = self.spawn(&line, files)?;
        Ok(Launched { child, api_sock: files.api_sock.clone(), requests: requests(spec)? })
    }

    /// Builds the jail and spawns the jailer, which execs Firecracker in
    /// place (no `--daemonize`), so the child's pid is Firecracker's.
    fn spawn_jailed(&self, jailer: &Path, spec: &VmSpec, files: &RunFiles) -> Result<Launched, VmmError> {
        let id = command::instance_id(&spec.name);
        let jail = jail::Jail::new(&files.chroot_base, &self.binary, &id);
        let (jail_files, paths) = jail::plan(spec);
        let requests = requests_with_paths(spec, &paths)?;
        create_log_files(files)?;
        let placed = jail.prepare(&jail_files)?;
        tracing::debug!(vm = %spec.name, root = %jail.root.display(), ?placed, "jail prepared");
        jail.link_sockets(files)?;
        let api_sock_in_jail = Path::new(jail::API_SOCK);
        let line = command::jailer(jailer, &self.binary, &id, &jail.chroot_base, api_sock_in_jail);
        let child = self.spawn(&line, files).map_err(|e| match e {
            VmmError::MissingBinary { .. } => VmmError::MissingBinary { binary: jailer.display().to_string() },
            e => e,
        })?;
        Ok(Launched { child, api_sock: jail.host_path(api_sock_in_jail), requests })
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
}

/// Sends `requests` in order, stopping at the first refused one.
async fn send_all(vm: &str, api_sock: &Path, requests: &[ApiRequest]) -> Result<(), VmmError> {
    for request in requests {
        tracing::debug!(vm = %vm, request = %request.describe(), "firecracker API");
        http::send(api_sock, request).await?;
    }
    Ok(())
}

/// Creates the log and metrics files, which Firecracker needs to exist.
fn create_log_files(files: &RunFiles) -> Result<(), VmmError> {
    for path in [&files.log, &files.metrics] {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
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

/// Waits until the API socket accepts a connection, the process exits, or
/// [`API_SOCKET_TIMEOUT`] passes.
async fn wait_for_api(child: &mut Child, api_sock: &Path, files: &RunFiles) -> Result<(), VmmError> {
    let deadline = tokio::time::Instant::now() + API_SOCKET_TIMEOUT;
    loop {
        let exited = child.try_wait().map_err(|source| VmmError::Process { action: "wait for", source })?;
        if let Some(status) = exited {
            return Err(VmmError::ExitedEarly { log_tail: format!("{status}: {}", log_tail(files)) });
        }
        if UnixStream::connect(api_sock).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(VmmError::Timeout(API_SOCKET_TIMEOUT, "Firecracker's API socket"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes the sockets, the pid file and the jail of a VM that does not
/// run (or stale ones before a start: Firecracker cannot bind over them).
/// The jail holds only links and copies: removing it never touches the
/// kernel or disks it names, and symlinks in it are not followed.
fn remove_runtime_files(files: &RunFiles) {
    if let Err(e) = release_files(files) {
        tracing::warn!(error = %e, "cannot remove a firecracker file");
    }
}

/// Removes every runtime file but the console log; the first failure is
/// the error, with its path.
fn release_files(files: &RunFiles) -> std::io::Result<()> {
    let with_path = |path: &Path, e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let partial = files.pid.with_extension("pid.partial");
    for path in [&files.api_sock, &files.vsock, &files.pid, &partial, &files.log, &files.metrics, &files.vmm_log] {
        remove_if_present(path).map_err(|e| with_path(path, e))?;
    }
    match std::fs::remove_dir_all(&files.chroot_base) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(with_path(&files.chroot_base, e)),
        _ => Ok(()),
    }
}

/// The last lines of Firecracker's stderr and stdout, which is where it
/// says why it exited before its logger is configured.
fn log_tail(files: &RunFiles) -> String {
    report::failure_report(&[("firecracker stderr", &files.vmm_log), ("console", &files.console)])
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn agent_endpoint_is_the_vsock_socket_sent_to_firecracker() {
        let run_dir = Path::new("/run/banger/vms/a");
        let AgentEndpoint::FirecrackerVsock { uds, .. } = agent_endpoint(run_dir) else { panic!("not vsock") };
        assert_eq!(uds, RunFiles::new(run_dir).vsock);
    }
}
