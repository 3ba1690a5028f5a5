//! VMM drivers behind one interface: [`Vmm::Firecracker`] and [`Vmm::Qemu`].
//! A driver starts a VMM process detached from the daemon (its own session,
//! so VMs outlive a daemon restart), configures it, stops it gracefully
//! with a timeout and then kills it, and tells whether it still runs. All
//! of a VM's runtime files live in its run directory, so a restarted daemon
//! finds them again from the path alone.

pub mod firecracker;
mod process;
pub mod qemu;
mod vsock;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use process::{exited, pid_alive, read_pid, signal};
pub use vsock::VsockStream;

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmKind {
    /// Firecracker (needs KVM).
    Firecracker,
    /// QEMU, with KVM or TCG.
    Qemu,
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
    /// Opens a byte stream to the guest agent.
    pub async fn connect(&self) -> io::Result<AgentSocket> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        match self {
            AgentEndpoint::Unix(path) => tokio::net::UnixStream::connect(path).await.map(AgentSocket::Unix),
            AgentEndpoint::FirecrackerVsock { uds, port } => {
                let mut stream = tokio::net::UnixStream::connect(uds).await?;
                stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
                // Read the "OK <n>\n" line a byte at a time so nothing of the
                // agent's stream is consumed by a buffer.
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
                Ok(AgentSocket::Unix(stream))
            }
            AgentEndpoint::Vsock { cid, port } => VsockStream::connect(*cid, *port).await.map(AgentSocket::Vsock),
        }
    }
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

/// Whether the VMM process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmState {
    /// The process is alive.
    Running {
        /// Its pid.
        pid: u32,
    },
    /// No process.
    Stopped,
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

/// A VMM driver.
#[derive(Debug, Clone)]
pub enum Vmm {
    /// Firecracker.
    Firecracker(firecracker::Firecracker),
    /// QEMU.
    Qemu(qemu::Qemu),
}

impl Vmm {
    /// Which VMM this is.
    pub fn kind(&self) -> VmmKind {
        match self {
            Vmm::Firecracker(_) => VmmKind::Firecracker,
            Vmm::Qemu(_) => VmmKind::Qemu,
        }
    }

    /// Starts the VM: spawns the VMM detached, configures it, boots the
    /// guest. Returns once the guest is started (not once it has booted).
    /// On error nothing is left running.
    pub async fn start(&self, spec: &VmSpec) -> Result<u32, VmmError> {
        match self {
            Vmm::Firecracker(d) => d.start(spec).await,
            Vmm::Qemu(d) => d.start(spec).await,
        }
    }

    /// Asks the guest to shut down, waits up to `timeout`, then kills the VMM.
    pub async fn stop(&self, run_dir: &Path, timeout: Duration) -> Result<(), VmmError> {
        match self {
            Vmm::Firecracker(d) => d.stop(run_dir, timeout).await,
            Vmm::Qemu(d) => d.stop(run_dir, timeout).await,
        }
    }

    /// Kills the VMM at once.
    pub async fn kill(&self, run_dir: &Path) -> Result<(), VmmError> {
        match self {
            Vmm::Firecracker(d) => d.kill(run_dir).await,
            Vmm::Qemu(d) => d.kill(run_dir).await,
        }
    }

    /// Whether the VMM of the VM whose run directory this is still runs.
    pub fn state(&self, run_dir: &Path) -> VmmState {
        match read_pid(&self.pid_file(run_dir)) {
            Some(pid) if pid_alive(pid) => VmmState::Running { pid },
            _ => VmmState::Stopped,
        }
    }

    /// How to reach the guest agent of the VM whose run directory this is.
    pub fn agent_endpoint(&self, run_dir: &Path) -> AgentEndpoint {
        match self {
            Vmm::Firecracker(_) => firecracker::agent_endpoint(run_dir),
            Vmm::Qemu(d) => d.agent_endpoint(run_dir),
        }
    }

    /// The guest's console output.
    pub fn console_log(&self, run_dir: &Path) -> PathBuf {
        run_dir.join("console.log")
    }

    /// The VMM's pid file.
    pub fn pid_file(&self, run_dir: &Path) -> PathBuf {
        run_dir.join("vmm.pid")
    }
}
