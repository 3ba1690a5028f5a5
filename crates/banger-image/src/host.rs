//! The thin layer that runs host tools (`mkfs.ext4`, `debootstrap`,
//! `busybox`, `cp`) and reports their failures as [`ImageError`]s.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::error::io_at;
use crate::{layout, ImageError};

/// Where tools are looked for besides `$PATH`: the daemon may run with a
/// `PATH` that lacks the sbin directories.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
/// How much of a failing tool's stderr an error carries.
const STDERR_TAIL: usize = 2000;

/// Whether files created by this process belong to root, judged by `probe`
/// (a directory this process just made).
pub(crate) fn owned_by_root(probe: &Path) -> Result<bool, ImageError> {
    Ok(fs::metadata(probe).map_err(io_at(probe))?.uid() == 0)
}

/// Finds `tool` on `$PATH` or in the usual system directories.
pub(crate) fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Finds `tool`, or says which Debian package provides it.
pub(crate) fn require_tool(tool: &'static str, package: &'static str) -> Result<PathBuf, ImageError> {
    find_tool(tool).ok_or(ImageError::MissingTool { tool, package })
}

/// Runs `cmd` to completion and returns its stdout; a failure carries stderr.
fn run(program: &str, cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Spawn { program: program.to_owned(), source })?;
    check(program, output.status, &output.stderr)?;
    Ok(output.stdout)
}

fn check(program: &str, status: ExitStatus, stderr: &[u8]) -> Result<(), ImageError> {
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(STDERR_TAIL);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    Err(ImageError::Command {
        program: program.to_owned(),
        status: status.to_string(),
        stderr: text[start..].to_owned(),
    })
}

/// Makes `file` an ext4 filesystem of `size_bytes` labelled `label`, filled
/// from `root` when given, without mounting anything.
pub(crate) fn mkfs_ext4(label: &str, root: Option<&Path>, file: &Path, size_bytes: u64) -> Result<(), ImageError> {
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs")?;
    let out = OpenOptions::new().write(true).create(true).truncate(true).open(file).map_err(io_at(file))?;
    out.set_len(size_bytes).map_err(io_at(file))?;
    drop(out);
    run("mkfs.ext4", Command::new(mkfs).args(layout::mkfs_args(label, root, file)))?;
    Ok(())
}

/// The output of `busybox --list-full`.
pub(crate) fn busybox_list(busybox: &Path) -> Result<String, ImageError> {
    let out = run("busybox --list-full", Command::new(busybox).arg("--list-full"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Copies the tree `src` into the existing directory `dst`, keeping
/// ownership, modes, links, device nodes and extended attributes, sharing
/// extents where the filesystem can.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<(), ImageError> {
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    run("cp", Command::new("cp").args([OsStr::new("-a"), OsStr::new("--reflink=auto"), &from, dst.as_os_str()]))?;
    Ok(())
}

/// Runs debootstrap into `root`, passing its `I:` lines to `progress`.
pub(crate) fn debootstrap(suite: &str, root: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), ImageError> {
    let tool = require_tool("debootstrap", "debootstrap")?;
    let mut child = Command::new(tool)
        .args(layout::debootstrap_args(suite, root))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn { program: "debootstrap".into(), source })?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut log = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(step) = line.strip_prefix("I: ") {
            progress(&format!("debootstrap: {step}"));
        }
        log.extend_from_slice(line.as_bytes());
        log.push(b'\n');
    }
    let status = child.wait().map_err(|source| ImageError::Spawn { program: "debootstrap".into(), source })?;
    let mut stderr = stderr_reader.join().unwrap_or_default();
    // debootstrap reports many failures on stdout ("E: ...") and points at
    // debootstrap.log inside the target.
    if stderr.is_empty() {
        stderr = log;
    }
    if let Ok(detail) = fs::read(root.join("debootstrap/debootstrap.log")) {
        stderr.extend_from_slice(b"\n");
        stderr.extend_from_slice(&detail);
    }
    check("debootstrap", status, &stderr)
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
pub(crate) fn unmount_under(root: &Path) -> Result<(), ImageError> {
    let root = fs::canonicalize(root).map_err(io_at(root))?;
    let read = || fs::read_to_string("/proc/self/mounts").map_err(io_at(Path::new("/proc/self/mounts")));
    let points = mounts_under(&read()?, &root);
    if points.is_empty() {
        return Ok(());
    }
    for point in &points {
        let plain = Command::new("umount").arg(point).stderr(Stdio::null()).status();
        if !plain.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(point).stderr(Stdio::null()).status();
        }
    }
    match mounts_under(&read()?, &root).first() {
        Some(left) => Err(ImageError::StillMounted(left.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
