//! Firecracker's jail for one VM: the directory the jailer chroots into
//! (`<chroot base>/<exec file name>/<id>/root`) and what is put in it. The
//! kernel, initrd and disks go in under fixed names; everything Firecracker
//! writes (its API and vsock sockets, its log and metrics) is made inside
//! the jail's `/run`, owned by the jailed uid, and reached from the run
//! directory through symlinks, so the run directory may be on any
//! filesystem (a tmpfs `/run`). What goes where is pure ([`plan`]);
//! [`Jail::prepare`], [`Jail::link_run_files`] and [`Jail::release`] are the
//! host effects.
//!
//! Ownership: Firecracker runs as an unprivileged uid/gid
//! ([`JailIdentity`]). The disks it writes are hard links of the VM's own
//! copy-on-write clones, so they are chowned to that uid for the VM's run
//! and back to the daemon's uid on release, before the jail is removed.
//! Read-only files (the kernel, shared images) are never chowned: they are
//! linked when the jailed uid may read them, and copied (the copy chowned)
//! when it may not.
//!
//! Taps need nothing in the jail: Firecracker opens each of the VM's taps
//! by name through the `/dev/net/tun` the jailer makes in the chroot, and
//! the daemon creates the tap owned by the jailed uid so that open is
//! allowed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::api::{ApiPaths, RunFiles};
use super::command::{self, JailIdentity};
use crate::{VmSpec, VmmError};

/// Firecracker's API socket as it sees it in the jail.
pub const API_SOCK: &str = "/run/firecracker.socket";
/// The vsock's host-side socket as Firecracker sees it.
pub const VSOCK: &str = "/run/vsock.sock";
/// Firecracker's log as it sees it.
pub const LOG: &str = "/run/firecracker.log";
/// Firecracker's metrics as it sees them.
pub const METRICS: &str = "/run/metrics.json";
/// The directory of everything Firecracker writes besides the disks.
const RUN: &str = "/run";

/// One VM's jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// The jailer's `--chroot-base-dir`; only this VM's.
    pub chroot_base: PathBuf,
    /// The directory Firecracker sees as `/`.
    pub root: PathBuf,
}

/// A file the API names, to be put into the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailFile {
    /// The file on the host.
    pub source: PathBuf,
    /// Its path as Firecracker sees it.
    pub in_jail: PathBuf,
    /// Whether the guest writes to it. Such a file must be linked, never
    /// copied: writes to a copy are lost with the jail.
    pub writable: bool,
}

/// How a file got into the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hard link: the original's inode.
    HardLink,
    /// A copy: a read-only file on another filesystem than the jail, or
    /// one the jailed uid may not read.
    Copy,
}

impl Jail {
    /// The jail under `chroot_base` of the VM with Firecracker instance id
    /// `id`, run by the jailer with `--exec-file firecracker`.
    pub fn new(chroot_base: &Path, firecracker: &Path, id: &str) -> Self {
        let chroot_base = chroot_base.to_path_buf();
        let root = command::jail_root(&chroot_base, firecracker, id);
        Jail { chroot_base, root }
    }

    /// Where `in_jail`, a path as Firecracker sees it, is on the host.
    pub fn host_path(&self, in_jail: &Path) -> PathBuf {
        self.root.join(in_jail.strip_prefix("/").unwrap_or(in_jail))
    }

    /// Creates the jail root, its `/run` with an empty log and metrics file
    /// (all owned by `identity`), and puts `files` in it. What it made is
    /// left for the caller to remove on error, with the whole chroot base.
    pub fn prepare(&self, files: &[JailFile], identity: JailIdentity) -> Result<Vec<Placement>, VmmError> {
        let run = self.host_path(Path::new(RUN));
        std::fs::create_dir_all(&run).map_err(|e| prepare_error(&run, e))?;
        chown(&run, identity)?;
        for file in [LOG, METRICS] {
            let path = self.host_path(Path::new(file));
            std::fs::File::create(&path).map_err(|e| prepare_error(&path, e))?;
            chown(&path, identity)?;
        }
        files.iter().map(|file| self.place(file, identity)).collect()
    }

    /// Makes the run directory's API socket, vsock socket, log and metrics
    /// symlinks to those in the jail, so the host side (stop, the agent
    /// endpoint, the failure report) finds them from the run directory.
    pub fn link_run_files(&self, files: &RunFiles) -> Result<(), VmmError> {
        let links = [(API_SOCK, &files.api_sock), (VSOCK, &files.vsock), (LOG, &files.log), (METRICS, &files.metrics)];
        for (in_jail, link) in links {
            let target = self.host_path(Path::new(in_jail));
            // Relative when the jail is in the run directory, so the link
            // stays right if the run directory moves.
            let target = link.parent().and_then(|dir| target.strip_prefix(dir).ok()).unwrap_or(&target);
            std::os::unix::fs::symlink(target, link).map_err(|e| prepare_error(link, e))?;
        }
        Ok(())
    }

    /// Undoes what [`Jail::prepare`] changed outside the jail: the disks
    /// linked in and chowned to `identity` get the daemon's uid and gid
    /// back. Called before the jail is removed; Firecracker must be gone.
    pub fn release(&self, identity: JailIdentity) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        // SAFETY: geteuid and getegid only read the process's credentials.
        #[allow(unsafe_code)]
        let daemon = unsafe { JailIdentity { uid: libc::geteuid(), gid: libc::getegid() } };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            // A link of a file outside (nlink > 1) that was handed over.
            if meta.is_file() && meta.nlink() > 1 && meta.uid() == identity.uid && identity != daemon {
                if let Err(e) = chown(&entry.path(), daemon) {
                    tracing::warn!(error = %e, "cannot give a disk back to the daemon");
                }
            }
        }
    }

    /// Hard-links `file` into the jail, or copies it (see [`Placement`]);
    /// a writable file is handed to `identity`.
    fn place(&self, file: &JailFile, identity: JailIdentity) -> Result<Placement, VmmError> {
        let dest = self.host_path(&file.in_jail);
        let meta = std::fs::metadata(&file.source).map_err(|e| prepare_error(&file.source, e))?;
        if !file.writable && !readable_by(&meta, identity) {
            copy_in(&file.source, &dest, identity)?;
            return Ok(Placement::Copy);
        }
        match std::fs::hard_link(&file.source, &dest) {
            Ok(()) if file.writable => {
                chown(&dest, identity)?;
                Ok(Placement::HardLink)
            }
            Ok(()) => Ok(Placement::HardLink),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) && !file.writable => {
                tracing::info!(file = %file.source.display(), "copying a file into the jail: it is on another filesystem");
                copy_in(&file.source, &dest, identity)?;
                Ok(Placement::Copy)
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(VmmError::InvalidSpec(format!(
                "the disk {} is on another filesystem than the jail {}: it cannot be linked, and the guest's \
                 writes to a copy would be lost",
                file.source.display(),
                self.chroot_base.display()
            ))),
            Err(e) => Err(prepare_error(&file.source, e)),
        }
    }
}

/// Copies a read-only file into the jail, readable by `identity`.
fn copy_in(source: &Path, dest: &Path, identity: JailIdentity) -> Result<(), VmmError> {
    std::fs::copy(source, dest).map_err(|e| prepare_error(source, e))?;
    chown(dest, identity)
}

/// Whether `identity` may read a file with this owner and mode.
fn readable_by(meta: &std::fs::Metadata, identity: JailIdentity) -> bool {
    let mode = meta.mode();
    identity.uid == 0
        || mode & 0o004 != 0
        || (meta.uid() == identity.uid && mode & 0o400 != 0)
        || (meta.gid() == identity.gid && mode & 0o040 != 0)
}

fn chown(path: &Path, identity: JailIdentity) -> Result<(), VmmError> {
    std::os::unix::fs::lchown(path, Some(identity.uid), Some(identity.gid)).map_err(|e| prepare_error(path, e))
}

/// The files the API names for `spec`, each under a fixed name in the
/// jail, and the paths the requests then carry.
pub fn plan(spec: &VmSpec) -> (Vec<JailFile>, ApiPaths) {
    let host = ApiPaths::on_host(spec);
    let inside = ApiPaths {
        kernel: "/vmlinux".into(),
        initrd: host.initrd.as_ref().map(|_| "/initrd.img".into()),
        disks: (0..spec.disks.len()).map(|i| format!("/disk{i}.ext4").into()).collect(),
        log: LOG.into(),
        metrics: METRICS.into(),
        vsock: VSOCK.into(),
    };
    let file = |source: &Path, in_jail: &Path, writable| JailFile {
        source: source.to_path_buf(),
        in_jail: in_jail.to_path_buf(),
        writable,
    };
    let mut files = vec![file(&host.kernel, &inside.kernel, false)];
    if let (Some(source), Some(in_jail)) = (&host.initrd, &inside.initrd) {
        files.push(file(source, in_jail, false));
    }
    for ((disk, source), in_jail) in spec.disks.iter().zip(&host.disks).zip(&inside.disks) {
        files.push(file(source, in_jail, !disk.read_only));
    }
    (files, inside)
}

fn prepare_error(path: &Path, e: std::io::Error) -> VmmError {
    let source = std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    VmmError::Process { action: "prepare the jail of", source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskSpec;

    fn spec() -> VmSpec {
        VmSpec {
            name: "t".into(),
            run_dir: "/run/vm".into(),
            kernel: "/k/vmlinux-6.1".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: String::new(),
            cpus: 1,
            memory_mib: 256,
            disks: vec![
                DiskSpec { path: "/d/root.ext4".into(), read_only: false },
                DiskSpec { path: "/d/tools.img".into(), read_only: true },
            ],
            nics: Vec::new(),
        }
    }

    #[test]
    fn files_get_fixed_names_in_the_jail() {
        let (files, inside) = plan(&spec());
        let placed: Vec<(&str, &str, bool)> =
            files.iter().map(|f| (f.source.to_str().unwrap(), f.in_jail.to_str().unwrap(), f.writable)).collect();
        assert_eq!(
            placed,
            [
                ("/k/vmlinux-6.1", "/vmlinux", false),
                ("/k/initrd", "/initrd.img", false),
                ("/d/root.ext4", "/disk0.ext4", true),
                ("/d/tools.img", "/disk1.ext4", false),
            ]
        );
        assert_eq!(
            (inside.vsock.as_path(), inside.log.as_path(), inside.metrics.as_path()),
            (Path::new(VSOCK), Path::new(LOG), Path::new(METRICS))
        );
        let (files, inside) = plan(&VmSpec { initrd: None, ..spec() });
        assert_eq!(inside.initrd, None);
        assert!(files.iter().all(|f| f.in_jail != Path::new("/initrd.img")));
    }

    #[test]
    fn jail_paths_are_under_the_chroot_base() {
        let jail = Jail::new(Path::new("/run/vm/jail"), Path::new("/usr/bin/firecracker"), "web-1");
        assert_eq!(jail.chroot_base, Path::new("/run/vm/jail"));
        assert_eq!(jail.root, Path::new("/run/vm/jail/firecracker/web-1/root"));
        assert_eq!(
            jail.host_path(Path::new(API_SOCK)),
            Path::new("/run/vm/jail/firecracker/web-1/root/run/firecracker.socket")
        );
    }

    #[test]
    fn readable_by_follows_the_mode_bits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let with_mode = |mode| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::metadata(&path).unwrap()
        };
        let stranger = JailIdentity { uid: 64_123, gid: 64_123 };
        assert!(readable_by(&with_mode(0o644), stranger));
        assert!(!readable_by(&with_mode(0o640), stranger));
        assert!(readable_by(&with_mode(0o600), JailIdentity { uid: 0, gid: 0 }));
    }
}
