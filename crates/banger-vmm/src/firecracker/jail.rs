//! Firecracker's jail for one VM: the directory the jailer chroots into
//! (`<run_dir>/jail/<exec file name>/<id>/root`) and the files put in it
//! under fixed names. What goes where is pure ([`plan`]); [`Jail::prepare`]
//! and [`Jail::link_sockets`] are the host effects.

use std::path::{Path, PathBuf};

use super::api::{ApiPaths, RunFiles};
use super::command;
use crate::{VmSpec, VmmError};

/// Firecracker's API socket as it sees it in the jail (its default path).
pub const API_SOCK: &str = "/run/firecracker.socket";

/// One VM's jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// The jailer's `--chroot-base-dir`, `<run_dir>/jail`; only this VM's.
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
    /// Whether Firecracker or the guest writes to it. Such a file must be
    /// linked, never copied: writes to a copy are lost with the jail.
    pub writable: bool,
}

/// How a file got into the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hard link: the original's inode.
    HardLink,
    /// A copy, for a read-only file on another filesystem than the jail.
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

    /// Creates the jail root with its `/run` (for the API socket) and puts
    /// `files` in it. What it made is left for the caller to remove on
    /// error, with the whole chroot base.
    pub fn prepare(&self, files: &[JailFile]) -> Result<Vec<Placement>, VmmError> {
        let run = self.host_path(Path::new(API_SOCK)).parent().map(Path::to_path_buf).unwrap_or(self.root.clone());
        std::fs::create_dir_all(&run).map_err(|e| prepare_error(&run, e))?;
        files.iter().map(|file| self.place(file)).collect()
    }

    /// Makes the run directory's `firecracker.sock` and `vsock.sock`
    /// symlinks to the sockets Firecracker binds in the jail, so the host
    /// side (stop, the agent endpoint) finds them from the run directory.
    pub fn link_sockets(&self, files: &RunFiles) -> Result<(), VmmError> {
        let in_jail = RunFiles::new(Path::new("/"));
        for (socket, link) in [(Path::new(API_SOCK), &files.api_sock), (&in_jail.vsock, &files.vsock)] {
            let target = self.host_path(socket);
            // Relative, so the link stays right if the run directory moves.
            let target = link.parent().and_then(|dir| target.strip_prefix(dir).ok()).unwrap_or(&target);
            std::os::unix::fs::symlink(target, link).map_err(|e| prepare_error(link, e))?;
        }
        Ok(())
    }

    /// Hard-links `file` into the jail; across filesystems, where no link
    /// (and no reflink) can be made, copies it if it is read-only and
    /// refuses it otherwise.
    fn place(&self, file: &JailFile) -> Result<Placement, VmmError> {
        let dest = self.host_path(&file.in_jail);
        match std::fs::hard_link(&file.source, &dest) {
            Ok(()) => Ok(Placement::HardLink),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) && !file.writable => {
                tracing::info!(file = %file.source.display(), "copying a file into the jail: it is on another filesystem");
                std::fs::copy(&file.source, &dest).map_err(|e| prepare_error(&file.source, e))?;
                Ok(Placement::Copy)
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(VmmError::InvalidSpec(format!(
                "{} is writable and on another filesystem than the jail {}: it cannot be linked, and the guest's \
                 writes to a copy would be lost",
                file.source.display(),
                self.chroot_base.display()
            ))),
            Err(e) => Err(prepare_error(&file.source, e)),
        }
    }
}

/// The files the API names for `spec`, each under a fixed name in the
/// jail (the run directory's log and metrics files too, so they outlive
/// it), and the paths the requests then carry.
pub fn plan(spec: &VmSpec) -> (Vec<JailFile>, ApiPaths) {
    let host = ApiPaths::on_host(spec);
    let run_files = RunFiles::new(Path::new("/"));
    let inside = ApiPaths {
        kernel: "/vmlinux".into(),
        initrd: host.initrd.as_ref().map(|_| "/initrd.img".into()),
        disks: (0..spec.disks.len()).map(|i| format!("/disk{i}.ext4").into()).collect(),
        log: run_files.log,
        metrics: run_files.metrics,
        vsock: run_files.vsock,
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
    files.push(file(&host.log, &inside.log, true));
    files.push(file(&host.metrics, &inside.metrics, true));
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
                ("/run/vm/firecracker.log", "/firecracker.log", true),
                ("/run/vm/metrics.json", "/metrics.json", true),
            ]
        );
        assert_eq!(inside.vsock, Path::new("/vsock.sock"));
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
}
