//! The reflink probe: can the state root's filesystem clone a file's blocks?
//! Answered by trying it on two scratch files, which are always removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{sys, Reflink};

/// Tries a `FICLONE` between two scratch files in `state_dir`, creating the
/// directory first if it is missing.
pub(crate) fn probe(state_dir: &Path) -> Reflink {
    if let Err(e) = fs::create_dir_all(state_dir) {
        return Reflink::Unknown { reason: format!("cannot create {}: {e}", state_dir.display()) };
    }
    let fs = match sys::fs_magic(state_dir) {
        Ok(magic) => fs_type_name(magic),
        Err(e) => return Reflink::Unknown { reason: format!("cannot statfs {}: {e}", state_dir.display()) },
    };
    let scratch = Scratch::new(state_dir);
    match try_clone(&scratch) {
        Ok(result) => classify(result, fs),
        Err(e) => Reflink::Unknown { reason: format!("cannot write scratch files in {}: {e}", state_dir.display()) },
    }
}

/// Writes the source file and attempts the clone. The outer error is a
/// failure to set up the test; the inner result is the clone itself.
fn try_clone(scratch: &Scratch) -> io::Result<io::Result<()>> {
    let mut src = create_new(&scratch.src)?;
    src.write_all(&[0x5a; 16 * 1024])?;
    src.sync_all()?;
    let src = File::open(&scratch.src)?;
    let dst = create_new(&scratch.dst)?;
    Ok(sys::ficlone(&src, &dst))
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create_new(true).open(path)
}

/// Turns the outcome of the test clone into a verdict: the errors a
/// filesystem gives for "no reflink here" mean Unsupported, anything else
/// means the test itself went wrong.
fn classify(result: io::Result<()>, fs: String) -> Reflink {
    match result {
        Ok(()) => Reflink::Supported { fs },
        Err(e) => match e.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::EXDEV | libc::ENOSYS) => {
                Reflink::Unsupported { fs }
            }
            _ => Reflink::Unknown { reason: format!("test clone on {fs} failed: {e}") },
        },
    }
}

/// Names a filesystem from its `statfs` magic number; unknown ones as hex.
pub(crate) fn fs_type_name(magic: u64) -> String {
    let name = match magic {
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0xef53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x794c_7630 => "overlayfs",
        0x2fc1_2fc1 => "zfs",
        0x6573_5546 => "fuse",
        0x6969 => "nfs",
        0xf15f => "ecryptfs",
        _ => return format!("{magic:#x}"),
    };
    name.to_string()
}

/// The two scratch files of one probe; removed when dropped, whatever happened.
struct Scratch {
    src: PathBuf,
    dst: PathBuf,
}

impl Scratch {
    fn new(dir: &Path) -> Scratch {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let stem = format!(".banger-reflink-probe-{}-{nanos}", std::process::id());
        Scratch { src: dir.join(format!("{stem}.src")), dst: dir.join(format!("{stem}.dst")) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.src);
        let _ = fs::remove_file(&self.dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_filesystems() {
        assert_eq!(fs_type_name(0x5846_5342), "xfs");
        assert_eq!(fs_type_name(0x9123_683e), "btrfs");
        assert_eq!(fs_type_name(0xef53), "ext4");
        assert_eq!(fs_type_name(0x0102_1994), "tmpfs");
        assert_eq!(fs_type_name(0x794c_7630), "overlayfs");
    }

    #[test]
    fn names_unknown_filesystems_in_hex() {
        assert_eq!(fs_type_name(0x1234_abcd), "0x1234abcd");
    }

    #[test]
    fn classifies_clone_errors() {
        let fs = || "ext4".to_string();
        assert_eq!(classify(Ok(()), fs()), Reflink::Supported { fs: fs() });
        for errno in [libc::EOPNOTSUPP, libc::ENOTTY, libc::EINVAL, libc::EXDEV] {
            let r = classify(Err(io::Error::from_raw_os_error(errno)), fs());
            assert_eq!(r, Reflink::Unsupported { fs: fs() }, "errno {errno}");
        }
        let r = classify(Err(io::Error::from_raw_os_error(libc::EIO)), fs());
        assert!(matches!(r, Reflink::Unknown { .. }), "{r:?}");
    }

    #[test]
    fn probe_on_a_temp_dir_names_its_filesystem_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = probe(dir.path());
        match &r {
            Reflink::Supported { fs } | Reflink::Unsupported { fs } => assert!(!fs.is_empty()),
            Reflink::Unknown { reason } => panic!("reflink probe could not run: {reason}"),
        }
        eprintln!("reflink on {}: {r:?}", dir.path().display());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "scratch files left behind");
    }

    #[test]
    fn probe_creates_a_missing_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        let r = probe(&state);
        assert!(!matches!(r, Reflink::Unknown { .. }), "{r:?}");
        assert!(state.is_dir());
    }

    #[test]
    fn probe_reports_unknown_when_the_dir_cannot_be_made() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let r = probe(&file.join("state"));
        assert!(matches!(r, Reflink::Unknown { .. }), "{r:?}");
    }

    /// Loop-mounts a fresh XFS image; unmounts on drop, even when the test fails.
    struct XfsMount {
        /// Holds the image file; removed after the unmount in `drop`.
        _dir: tempfile::TempDir,
        mountpoint: PathBuf,
        mounted: bool,
    }

    impl XfsMount {
        fn new() -> XfsMount {
            use std::process::Command;
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("xfs.img");
            let mountpoint = dir.path().join("mnt");
            fs::create_dir(&mountpoint).unwrap();
            File::create(&image).unwrap().set_len(300 << 20).unwrap();
            let mut guard = XfsMount { _dir: dir, mountpoint, mounted: false };
            let mkfs = Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image)
                .status()
                .expect("mkfs.xfs not found: apt-get install -y xfsprogs");
            assert!(mkfs.success(), "mkfs.xfs failed: {mkfs}");
            let mount = Command::new("mount")
                .args(["-o", "loop", "-t", "xfs"])
                .arg(&image)
                .arg(&guard.mountpoint)
                .status()
                .expect("cannot run mount");
            assert!(mount.success(), "mount -o loop failed: {mount}");
            guard.mounted = true;
            guard
        }
    }

    impl Drop for XfsMount {
        fn drop(&mut self) {
            if !self.mounted {
                return;
            }
            let ok = std::process::Command::new("umount").arg(&self.mountpoint).status().is_ok_and(|s| s.success());
            if !ok {
                // Detach lazily so the loop device is freed once the last user lets go.
                let _ = std::process::Command::new("umount").arg("-l").arg(&self.mountpoint).status();
            }
        }
    }

    #[test]
    fn reflink_is_supported_on_a_loop_mounted_xfs() {
        if !is_root() {
            eprintln!("\n*** SKIPPED reflink_is_supported_on_a_loop_mounted_xfs: needs root for mount -o loop ***\n");
            return;
        }
        let mount = XfsMount::new();
        let state = mount.mountpoint.join("state");
        assert_eq!(probe(&state), Reflink::Supported { fs: "xfs".to_string() });
        assert_eq!(fs::read_dir(&state).unwrap().count(), 0, "scratch files left behind");
    }

    fn is_root() -> bool {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
                line.split_whitespace().nth(2).map(|euid| euid == "0")
            })
            .unwrap_or(false)
    }
}
