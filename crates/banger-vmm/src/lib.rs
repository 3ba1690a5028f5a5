//! VMM drivers behind one interface: [`Vmm::Firecracker`], [`Vmm::Qemu`],
//! and [`Vmm::Local`], which boots nothing and runs the guest agent on the
//! host so the daemon's lifecycle can be tested in milliseconds. A driver
//! starts a VMM process detached from the daemon (its own session, so VMs
//! outlive a daemon restart), configures it, stops it gracefully with a
//! timeout and then kills it, and releases the files it made. A VMM is
//! known by pid and start time ([`VmmProcess`]), recorded in its pid file;
//! all of a VM's runtime files live in its run directory, so a restarted
//! daemon finds them again from the path alone.

pub mod firecracker;
pub mod local;
mod process;
pub mod qemu;
pub mod report;
mod vsock;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use process::VmmProcess;
pub use tokio_vsock::VsockStream;

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmKind {
    /// Firecracker (needs KVM).
    Firecracker,
    /// QEMU, with KVM or TCG.
    Qemu,
    /// No VMM: the guest agent as a host process ([`local::Local`]), for tests.
    Local,
}

/// A disk attached to the guest, in order: the first is the root disk
/// (`/dev/vda`), the next `/dev/vdb`, and so on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Raw disk image file.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

/// Everything needed to boot one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The VM's name (for logs and the VMM's own id).
    pub name: String,
    /// Per-VM directory for sockets, logs and the pid file; must exist.
    pub run_dir: PathBuf,
    /// ELF vmlinux.
    pub kernel: PathBuf,
    /// Initramfs, if the kernel needs one.
    pub initrd: Option<PathBuf>,
    /// Kernel command line, without console settings (the driver adds its own).
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Disks, root first.
    pub disks: Vec<DiskSpec>,
    /// Network interfaces, in order (the guest's `eth0` first); none for
    /// a VM without networking.
    pub nics: Vec<NicSpec>,
}

/// A guest network interface backed by a host TAP device the daemon made
/// (and attached to its bridge) before the boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The host TAP device's name.
    pub tap: String,
    /// The guest interface's MAC address.
    pub mac: [u8; 6],
}

impl NicSpec {
    /// The MAC as `02:00:00:00:00:01`, the form QEMU's `mac=` and
    /// Firecracker's `guest_mac` take.
    pub fn mac_address(&self) -> String {
        self.mac.map(|b| format!("{b:02x}")).join(":")
    }

    /// Rejects what would fail later inside the VMM, less clearly: a name
    /// the kernel cannot give an interface (1 to 15 bytes, no `/`, `:` or
    /// whitespace), and a multicast MAC.
    fn check(&self) -> Result<(), VmmError> {
        let tap = &self.tap;
        let bad_char = |c: char| c == '/' || c == ':' || c.is_whitespace();
        if tap.is_empty() || tap.len() > 15 || tap.chars().any(bad_char) || tap == "." || tap == ".." {
            return Err(VmmError::InvalidSpec(format!("{tap:?} is not a network interface name")));
        }
        if self.mac[0] & 1 == 1 {
            return Err(VmmError::InvalidSpec(format!("{} is a multicast MAC address", self.mac_address())));
        }
        Ok(())
    }
}

/// Checks every NIC of `spec` ([`NicSpec::check`]), and that no tap is
/// given twice.
pub(crate) fn check_nics(spec: &VmSpec) -> Result<(), VmmError> {
    for (i, nic) in spec.nics.iter().enumerate() {
        nic.check()?;
        if spec.nics[..i].iter().any(|other| other.tap == nic.tap) {
            return Err(VmmError::InvalidSpec(format!("tap {} is given twice", nic.tap)));
        }
    }
    Ok(())
}

/// How the host reaches the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// A unix socket that is directly the agent's byte stream (QEMU's
    /// chardev behind a virtio-serial port).
    Unix(PathBuf),
    /// Firecracker's vsock: connect to the unix socket, send
    /// `CONNECT <port>\n`, read `OK <n>\n`, then the stream is the agent's.
    FirecrackerVsock {
        /// Firecracker's host-side vsock socket.
        uds: PathBuf,
        /// The guest port.
        port: u32,
    },
    /// An AF_VSOCK port of a guest with a vhost-vsock device (QEMU).
    Vsock {
        /// The guest's context id.
        cid: u32,
        /// The guest port.
        port: u32,
    },
}

impl AgentEndpoint {
    /// Opens a byte stream to the guest agent, or fails within about
    /// [`CONNECT_ATTEMPT_TIMEOUT`]: never waits without a bound, so a
    /// caller's retry loop makes progress. (Firecracker keeps a vsock
    /// connection in its listen queue until the guest activates the device,
    /// so an unbounded read of its `CONNECT` reply could wait for ever.)
    pub async fn connect(&self) -> io::Result<AgentSocket> {
        let attempt = async {
            match self {
                AgentEndpoint::Unix(path) => tokio::net::UnixStream::connect(path).await.map(AgentSocket::Unix),
                AgentEndpoint::FirecrackerVsock { uds, port } => {
                    firecracker_vsock_connect(uds, *port).await.map(AgentSocket::Unix)
                }
                AgentEndpoint::Vsock { cid, port } => vsock::connect(*cid, *port).await.map(AgentSocket::Vsock),
            }
        };
        tokio::time::timeout(CONNECT_ATTEMPT_TIMEOUT, attempt).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection to the guest agent within {CONNECT_ATTEMPT_TIMEOUT:?}"),
            ))
        })
    }
}

/// How long one attempt of [`AgentEndpoint::connect`] may take.
pub const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Firecracker's vsock handshake: connect to its unix socket, send
/// `CONNECT <port>\n`, read `OK <n>\n`; the stream is then the agent's.
async fn firecracker_vsock_connect(uds: &Path, port: u32) -> io::Result<tokio::net::UnixStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Through its directory when the path is too long for a socket address.
    let mut stream = firecracker::socket::connect(uds).await?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read the "OK <n>\n" line a byte at a time so nothing of the agent's
    // stream is consumed by a buffer.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).await?;
        if n == 0 || byte[0] == b'\n' || line.len() > 64 {
            break;
        }
        line.push(byte[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("vsock CONNECT refused: {:?}", String::from_utf8_lossy(&line)),
        ));
    }
    Ok(stream)
}

/// An open byte stream to a guest agent, whichever way it was reached.
#[derive(Debug)]
pub enum AgentSocket {
    /// A unix socket (a virtio-serial chardev, or Firecracker's vsock proxy).
    Unix(tokio::net::UnixStream),
    /// An AF_VSOCK stream.
    Vsock(VsockStream),
}

impl AsyncRead for AgentSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentSocket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            AgentSocket::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AgentSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AgentSocket::Unix(s) => Pin::new(s).poll_write(cx, data),
            AgentSocket::Vsock(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentSocket::Unix(s) => Pin::new(s).poll_flush(cx),
            AgentSocket::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentSocket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            AgentSocket::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a driver failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM binary is missing.
    #[error("{binary} is not installed")]
    MissingBinary {
        /// Which binary.
        binary: String,
    },
    /// The spec cannot be run by this driver.
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    /// Spawning or signalling the process failed.
    #[error("cannot {action} the VMM process")]
    Process {
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The VMM exited during start; its log tail says why.
    #[error("the VMM exited during start: {log_tail}")]
    ExitedEarly {
        /// The last lines of its log.
        log_tail: String,
    },
    /// The VMM's control API refused a request or did not answer.
    #[error("VMM API request {request} failed: {reason}")]
    Api {
        /// The request (method and path, or QMP command).
        request: String,
        /// Why.
        reason: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

/// Whether a VMM runs its guest's vCPUs, as the VMM says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestRun {
    /// The guest runs.
    Running,
    /// The VMM has stopped the guest and keeps it: on a disk I/O error
    /// (`io-error`), a guest panic, an internal error, or a request.
    Paused {
        /// The VMM's word for why (QEMU's run state: `io-error`, ...).
        reason: String,
    },
}

/// A VMM driver.
#[derive(Debug, Clone)]
pub enum Vmm {
    /// Firecracker.
    Firecracker(firecracker::Firecracker),
    /// QEMU.
    Qemu(qemu::Qemu),
    /// No VMM: the guest agent as a host process, to test the daemon.
    Local(local::Local),
}

impl Vmm {
    /// Which VMM this is.
    pub fn kind(&self) -> VmmKind {
        match self {
            Vmm::Firecracker(_) => VmmKind::Firecracker,
            Vmm::Qemu(_) => VmmKind::Qemu,
            Vmm::Local(_) => VmmKind::Local,
        }
    }

    /// Starts the VM: spawns the VMM detached, configures it, boots the
    /// guest. Returns once the guest is started (not once it has booted).
    /// On error nothing runs and the VM's runtime files are released.
    pub async fn start(&self, spec: &VmSpec) -> Result<VmmProcess, VmmError> {
        match self {
            Vmm::Firecracker(d) => d.start(spec).await,
            Vmm::Qemu(d) => d.start(spec).await,
            Vmm::Local(d) => d.start(spec).await,
        }
    }

    /// The VMM of the VM whose run directory this is, from its pid file,
    /// only if that very process still runs.
    pub fn process(&self, run_dir: &Path) -> Option<VmmProcess> {
        let from_file = match self {
            Vmm::Qemu(d) => d.recorded_process(run_dir),
            Vmm::Firecracker(_) | Vmm::Local(_) => process::read_pid_file(&run_dir.join(PID_FILE)),
        };
        from_file.filter(VmmProcess::is_running)
    }

    /// Asks the guest to shut down, waits up to `timeout` for `process` to
    /// exit, then kills it. `Ok(())` once it is gone (at once if it already
    /// was). Leaves the runtime files: [`Vmm::release`] removes them.
    pub async fn stop(&self, run_dir: &Path, process: VmmProcess, timeout: Duration) -> Result<(), VmmError> {
        if !process.is_running() {
            return Ok(());
        }
        match self {
            Vmm::Firecracker(d) => d.stop(run_dir, process, timeout).await,
            Vmm::Qemu(d) => d.stop(run_dir, process, timeout).await,
            Vmm::Local(d) => d.stop(run_dir, process, timeout).await,
        }
    }

    /// Whether the VMM runs the guest or has paused it; `None` when the
    /// driver cannot tell (Firecracker and the test driver never pause a
    /// guest by themselves) or the VMM does not answer.
    pub async fn guest_run(&self, run_dir: &Path) -> Option<GuestRun> {
        match self {
            Vmm::Qemu(d) => d.guest_run(run_dir).await,
            Vmm::Firecracker(_) | Vmm::Local(_) => None,
        }
    }

    /// Kills `process` at once (SIGKILL) and waits for it to go. Leaves
    /// the runtime files: [`Vmm::release`] removes them.
    pub async fn kill(&self, run_dir: &Path, process: VmmProcess) -> Result<(), VmmError> {
        match self {
            Vmm::Local(d) => d.kill(run_dir, process).await,
            Vmm::Firecracker(_) | Vmm::Qemu(_) => process.kill_and_wait(process::KILL_TIMEOUT).await,
        }
    }

    /// Removes every runtime file this driver made for the VM (sockets,
    /// pid file, logs, the jail...) but the console log. Idempotent: files
    /// already gone are fine, so the daemon keeps no list of file names.
    /// Refuses (`ResourceBusy`) while the VMM its pid file names still
    /// runs: its sockets are in use, and its pid file is how it is found.
    pub fn release(&self, run_dir: &Path) -> io::Result<()> {
        if let Some(process) = self.process(run_dir) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("the VMM (pid {}) of {} still runs", process.pid, run_dir.display()),
            ));
        }
        match self {
            Vmm::Firecracker(d) => d.release(run_dir),
            Vmm::Qemu(d) => d.release(run_dir),
            Vmm::Local(d) => d.release(run_dir),
        }
    }

    /// A few lines for an error message when a boot fails: the guest
    /// console's tail, and the VMM's own log lines where the driver has
    /// them. Reads only the ends of the files: never blocks long, and the
    /// report is bounded ([`report::MAX_REPORT_BYTES`]).
    pub fn failure_report(&self, run_dir: &Path) -> String {
        match self {
            Vmm::Firecracker(d) => d.failure_report(run_dir),
            Vmm::Qemu(d) => d.failure_report(run_dir),
            Vmm::Local(d) => d.failure_report(run_dir),
        }
    }

    /// How to reach the guest agent of the VM whose run directory this is.
    pub fn agent_endpoint(&self, run_dir: &Path) -> AgentEndpoint {
        match self {
            Vmm::Firecracker(_) => firecracker::agent_endpoint(run_dir),
            Vmm::Qemu(d) => d.agent_endpoint(run_dir),
            Vmm::Local(_) => local::agent_endpoint(run_dir),
        }
    }

    /// The guest's console output.
    pub fn console_log(&self, run_dir: &Path) -> PathBuf {
        run_dir.join(CONSOLE_LOG)
    }
}

/// The guest console's file in a run directory, kept by [`Vmm::release`].
pub(crate) const CONSOLE_LOG: &str = "console.log";

/// The pid file, `PID STARTTIME`, of every driver.
pub(crate) const PID_FILE: &str = "vmm.pid";
