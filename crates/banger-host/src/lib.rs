//! Host capability detection: what this machine can run, and how banger
//! should run it. [`Capabilities::probe`] is the one place that touches the
//! host; [`checks`] and [`preferred_vmm`] are pure verdicts over its result,
//! shared by `banger doctor` and the daemon's choice of strategies.
//!
//! It also owns the seam every other crate goes through to touch the host
//! with a program: [`command`] (a [`HostCommand`] as data, the
//! [`HostCommands`] runner trait with its real [`SystemCommands`] and its
//! recording fake [`RecordingCommands`], one [`CommandError`], and the one
//! tool lookup [`find_tool`]). Images, storage and networking all run their
//! tools through it.

pub mod command;
mod probe;
mod reflink;
mod sys;
mod verdict;

use std::path::{Path, PathBuf};

pub use command::{find_tool, CommandError, FakeReply, HostCommand, HostCommands, RecordingCommands, SystemCommands};
pub use verdict::{checks, chosen_vmm, preferred_vmm, Vmm};

/// What this host offers banger, as found by [`Capabilities::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Whether `/dev/kvm` can run ordinary guests.
    pub kvm: Kvm,
    /// The `firecracker` binary.
    pub firecracker: Option<Tool>,
    /// Firecracker's `jailer` binary.
    pub jailer: Option<Tool>,
    /// The `qemu-system-x86_64` binary.
    pub qemu: Option<Tool>,
    /// Whether `/dev/vhost-vsock` exists, so QEMU guests can have a vsock device.
    pub vhost_vsock: bool,
    /// Whether the kernel has device-mapper (needed for dm-snapshot disks).
    pub device_mapper: bool,
    /// Whether the state root's filesystem can make reflink copies.
    pub reflink: Reflink,
    /// The `nft` binary.
    pub nftables: Option<Tool>,
    /// Whether systemd-resolved is running.
    pub resolved: bool,
    /// Space on the state root's filesystem, when it could be read.
    pub disk: Option<DiskSpace>,
    /// The state root the disk and reflink probes looked at.
    pub state_dir: PathBuf,
}

/// What `/dev/kvm` offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kvm {
    /// There is no `/dev/kvm`.
    Absent,
    /// `/dev/kvm` exists but cannot be opened read-write.
    NoAccess {
        /// The error from opening it.
        reason: String,
    },
    /// Only the paravirtualised `kvm_pvm` module is loaded: ordinary guest
    /// kernels hang under it.
    PvmOnly,
    /// Hardware KVM that ordinary guest kernels run under.
    Usable,
}

impl Kvm {
    /// Whether an ordinary guest kernel can run under KVM here.
    pub fn is_usable(&self) -> bool {
        matches!(self, Kvm::Usable)
    }
}

/// An external program banger runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// Where it was found.
    pub path: PathBuf,
    /// What it says its version is (`unknown` when it would not say).
    pub version: String,
}

/// Whether the state root's filesystem can share blocks between files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reflink {
    /// A test clone succeeded.
    Supported {
        /// Filesystem type name (`xfs`, `btrfs`, ...).
        fs: String,
    },
    /// The filesystem refused the test clone.
    Unsupported {
        /// Filesystem type name (`ext4`, `tmpfs`, ...).
        fs: String,
    },
    /// The test could not be run.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// Space on a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes available to unprivileged users.
    pub free_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
}

/// Space on the filesystem that holds `path` (or would: its nearest
/// existing ancestor is measured), when it can be read.
pub fn disk_space(path: &Path) -> Option<DiskSpace> {
    probe::disk_space(path)
}

impl Capabilities {
    /// Probes this host, using `state_dir` as the state root (it is created
    /// if missing, for the reflink test). Never fails: a probe that errors
    /// yields a degraded value.
    pub fn probe(state_dir: &Path) -> Capabilities {
        let root = Path::new("/");
        Capabilities {
            kvm: probe::kvm_at(root),
            firecracker: probe::tool("firecracker"),
            jailer: probe::tool("jailer"),
            qemu: probe::tool("qemu-system-x86_64"),
            vhost_vsock: probe::vhost_vsock_at(root),
            device_mapper: probe::device_mapper_at(root),
            reflink: reflink::probe(state_dir),
            nftables: probe::tool("nft"),
            resolved: probe::resolved_at(root),
            disk: probe::disk_space(state_dir),
            state_dir: state_dir.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let caps = Capabilities::probe(&state);
        eprintln!("{caps:#?}");
        for check in checks(&caps, None) {
            eprintln!("{:>13} {:?}: {} [{}]", check.name, check.status, check.detail, check.fix.unwrap_or_default());
        }
        assert_eq!(caps.state_dir, state);
        assert!(
            matches!(&caps.reflink, Reflink::Supported { fs } | Reflink::Unsupported { fs } if !fs.is_empty()),
            "{:?}",
            caps.reflink
        );
        assert!(caps.disk.is_some_and(|d| d.total_bytes > 0));
        assert_eq!(checks(&caps, None).len(), 11);
    }
}
