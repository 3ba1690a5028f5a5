//! The image builder's host effects: the tools it runs (`mkfs.ext4`,
//! `debootstrap`, `busybox`, `cp`, `umount`), all through banger-host's
//! [`HostCommands`] seam so unit tests can check the sequence with a fake.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use banger_host::{HostCommand, HostCommands};

use crate::error::io_at;
use crate::{layout, ImageError};

/// Whether files created by this process belong to root, judged by `probe`
/// (a directory this process just made).
pub(crate) fn owned_by_root(probe: &Path) -> Result<bool, ImageError> {
    Ok(fs::metadata(probe).map_err(io_at(probe))?.uid() == 0)
}

/// Checks that `tool` is installed, or says which Debian package provides it.
pub(crate) fn require_tool(
    cmds: &dyn HostCommands,
    tool: &'static str,
    package: &'static str,
) -> Result<PathBuf, ImageError> {
    cmds.find_tool(tool).ok_or(ImageError::MissingTool { tool, package })
}

/// Makes `file` an ext4 filesystem of `size_bytes` labelled `label`, filled
/// from `root` when given, without mounting anything.
pub(crate) fn mkfs_ext4(
    cmds: &dyn HostCommands,
    label: &str,
    root: Option<&Path>,
    file: &Path,
    size_bytes: u64,
) -> Result<(), ImageError> {
    require_tool(cmds, "mkfs.ext4", "e2fsprogs")?;
    // An image holds its root's secrets (/etc/shadow, keys): owner only.
    let out = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(file).map_err(io_at(file))?;
    out.set_len(size_bytes).map_err(io_at(file))?;
    drop(out);
    cmds.run(&HostCommand::new("mkfs.ext4").args(layout::mkfs_args(label, root, file)))?;
    Ok(())
}

/// The output of `busybox --list-full`.
pub(crate) fn busybox_list(cmds: &dyn HostCommands, busybox: &Path) -> Result<String, ImageError> {
    let out = cmds.run(&HostCommand::new(busybox).arg("--list-full"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies the tree `src` into the existing directory `dst`, keeping
/// ownership, modes, links, device nodes and extended attributes, sharing
/// extents where the filesystem can.
pub(crate) fn copy_tree(cmds: &dyn HostCommands, src: &Path, dst: &Path) -> Result<(), ImageError> {
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    cmds.run(&HostCommand::new("cp").args(["-a", "--reflink=auto"]).arg(from).arg(dst))?;
    Ok(())
}

/// Runs debootstrap into `root`, passing its `I:` lines to `progress`.
pub(crate) fn debootstrap(
    cmds: &dyn HostCommands,
    suite: &str,
    root: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    require_tool(cmds, "debootstrap", "debootstrap")?;
    let cmd = HostCommand::new("debootstrap").args(layout::debootstrap_args(suite, root));
    let output = cmds.output_streaming(&cmd, &mut |line| {
        if let Some(step) = line.strip_prefix("I: ") {
            progress(&format!("debootstrap: {step}"));
        }
    })?;
    let mut output = output;
    // debootstrap reports many failures on stdout ("E: ...") and points at
    // debootstrap.log inside the target, whose end says what went wrong.
    if !cmd.succeeded(output.status) {
        if output.stderr.is_empty() {
            output.stderr = std::mem::take(&mut output.stdout);
        }
        if let Ok(detail) = fs::read(root.join("debootstrap/debootstrap.log")) {
            output.stderr.extend_from_slice(b"\n");
            output.stderr.extend_from_slice(&detail);
        }
    }
    banger_host::command::check(&cmd, output)?;
    Ok(())
}

/// Mount points at or below `root` listed in `mounts` (the format of
/// `/proc/self/mounts`), deepest first.
pub(crate) fn mounts_under(mounts: &str, root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(|field| PathBuf::from(unescape_mount_field(field)))
        .filter(|point| point.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Undoes the octal escapes (`\040` for a space) of a mounts field.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts whatever is mounted under `root` (debootstrap mounts `/proc`
/// and, in containers, binds `/dev` into its target; an interrupted run
/// can leave them). Fails if anything stays mounted: the caller must then
/// not delete the tree, or it would delete through the mounts.
pub(crate) fn unmount_under(cmds: &dyn HostCommands, root: &Path) -> Result<(), ImageError> {
    unmount_under_with(cmds, root, || {
        fs::read_to_string("/proc/self/mounts").map_err(io_at(Path::new("/proc/self/mounts")))
    })
}

/// [`unmount_under`] with the mount table read by `mounts`.
fn unmount_under_with(
    cmds: &dyn HostCommands,
    root: &Path,
    mut mounts: impl FnMut() -> Result<String, ImageError>,
) -> Result<(), ImageError> {
    let root = fs::canonicalize(root).map_err(io_at(root))?;
    let points = mounts_under(&mounts()?, &root);
    if points.is_empty() {
        return Ok(());
    }
    for point in &points {
        // A busy mount is detached lazily: it goes once its users do.
        if cmds.run(&HostCommand::new("umount").arg(point)).is_err() {
            let _ = cmds.run(&HostCommand::new("umount").arg("-l").arg(point));
        }
    }
    match mounts_under(&mounts()?, &root).first() {
        Some(left) => Err(ImageError::StillMounted(left.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_host::{FakeReply, RecordingCommands};

    #[test]
    fn mounts_below_a_root_deepest_first() {
        let mounts = "proc /proc proc rw 0 0\n\
            proc /s/build/root/proc proc rw 0 0\n\
            devpts /s/build/root/dev/pts devpts rw 0 0\n\
            udev /s/build/root/dev devtmpfs rw 0 0\n\
            tmpfs /s/build/root\\040x tmpfs rw 0 0\n\
            tmpfs /s/build/rootfs tmpfs rw 0 0\n";
        let found = mounts_under(mounts, Path::new("/s/build/root"));
        assert_eq!(
            found,
            [
                PathBuf::from("/s/build/root/dev/pts"),
                PathBuf::from("/s/build/root/proc"),
                PathBuf::from("/s/build/root/dev")
            ]
        );
        assert_eq!(mounts_under(mounts, Path::new("/s/build/root x")), [PathBuf::from("/s/build/root x")]);
    }

    #[test]
    fn leftover_mounts_are_unmounted_deepest_first_lazily_when_busy() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let r = root.display();
        let fake =
            RecordingCommands::new().reply_once(format!("umount {r}/dev"), FakeReply::exit(32, "target is busy"));
        let mut reads = 0;
        let table = format!("proc {r}/proc proc rw 0 0\nudev {r}/dev devtmpfs rw 0 0\n");
        unmount_under_with(&fake, &root, || {
            reads += 1;
            Ok(if reads == 1 { table.clone() } else { String::new() })
        })
        .unwrap();
        assert_eq!(fake.lines(), [format!("umount {r}/proc"), format!("umount {r}/dev"), format!("umount -l {r}/dev")]);
        // What stays mounted keeps the tree from being deleted.
        let err = unmount_under_with(&RecordingCommands::new(), &root, || Ok(table.clone())).unwrap_err();
        assert!(matches!(err, ImageError::StillMounted(p) if p == root.join("proc")));
    }
}
