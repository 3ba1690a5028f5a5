//! Who may read the state root: root alone. The daemon's umask makes every
//! file it creates 0600 and every directory 0700; a state root an older
//! banger made is tightened at start. The API socket and its directory keep
//! the modes group `banger` needs.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// The bits nobody but the owner may have under the state root.
const GROUP_AND_OTHERS: u32 = 0o077;

/// Mode of the API socket's directory when the daemon makes it: anyone may
/// reach the socket, whose own mode (0660, group `banger`) decides who may
/// connect.
pub const SOCKET_DIR_MODE: u32 = 0o755;

/// Sets the process umask to 077, so nothing the daemon or its tools
/// (mkfs, cp, SQLite) create is readable by group or others.
pub fn restrict_umask() {
    #[allow(unsafe_code)]
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `dir` (and missing parents) and makes it 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(Error::io("cannot create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(Error::io("cannot restrict", dir))
}

/// Creates `dir` (and missing parents) with `mode`; an existing directory
/// is left as it is.
pub fn create_dir_with_mode(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_with_mode(parent, mode)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// What [`tighten`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tightened {
    /// Files and directories whose group and other bits were removed.
    pub changed: usize,
}

/// Removes the group and other bits of every file and directory under
/// `root` (and of `root`), never following symbolic links. Sockets, FIFOs
/// and devices are left alone (the API socket may live here), and so is
/// every `jail` directory under `vms/`: a jailed VMM runs as its own uid
/// and reads what its jail was given.
pub fn tighten(root: &Path) -> Result<Tightened> {
    let mut tightened = Tightened::default();
    tighten_entry(root, &mut tightened)?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(Error::io("cannot read", &dir))? {
            let entry = entry.map_err(Error::io("cannot read", &dir))?;
            let path = entry.path();
            if is_jail(root, &path) {
                continue;
            }
            if tighten_entry(&path, &mut tightened)? {
                stack.push(path);
            }
        }
    }
    if tightened.changed > 0 {
        tracing::info!(root = %root.display(), changed = tightened.changed, "state root made readable by root only");
    }
    Ok(tightened)
}

/// Tightens one entry; true when it is a directory to descend into.
fn tighten_entry(path: &Path, tightened: &mut Tightened) -> Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(Error::Io { action: "cannot stat", path: path.to_owned(), source }),
    };
    let kind = meta.file_type();
    if !kind.is_dir() && !kind.is_file() {
        return Ok(false);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_AND_OTHERS != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & !GROUP_AND_OTHERS))
            .map_err(Error::io("cannot restrict", path))?;
        tightened.changed += 1;
    }
    Ok(kind.is_dir())
}

/// Whether `path` is `<root>/vms/<name>/jail`.
fn is_jail(root: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(root) else {
        return false;
    };
    let parts: Vec<_> = relative.components().collect();
    parts.len() == 3 && parts[0].as_os_str() == "vms" && parts[2].as_os_str() == "jail"
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn set(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn tighten_removes_group_and_other_bits_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        fs::create_dir_all(root.join("images/tiny")).unwrap();
        fs::create_dir_all(root.join("vms/v1/jail/root")).unwrap();
        fs::write(root.join("images/tiny/rootfs.ext4"), b"disk").unwrap();
        fs::write(outside.path().join("host-file"), b"x").unwrap();
        symlink(outside.path().join("host-file"), root.join("images/link")).unwrap();
        symlink(outside.path(), root.join("images/dir-link")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(root.join("api.sock")).unwrap();
        for path in [&root, &root.join("images"), &root.join("images/tiny"), &root.join("vms/v1/jail/root")] {
            set(path, 0o755);
        }
        set(&root.join("images/tiny/rootfs.ext4"), 0o644);
        set(&outside.path().join("host-file"), 0o644);
        set(&root.join("api.sock"), 0o660);

        let tightened = tighten(&root).unwrap();

        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("images")), 0o700);
        assert_eq!(mode(&root.join("images/tiny")), 0o700);
        assert_eq!(mode(&root.join("images/tiny/rootfs.ext4")), 0o600);
        assert_eq!(tightened.changed, 6, "root, images, tiny, the disk, vms and vms/v1");
        assert_eq!(mode(&outside.path().join("host-file")), 0o644, "a link is never followed");
        assert_eq!(mode(&root.join("api.sock")), 0o660, "sockets keep their mode");
        assert_eq!(mode(&root.join("vms/v1/jail/root")), 0o755, "a jail keeps what its VMM needs");
        assert_eq!(tighten(&root).unwrap().changed, 0, "a second walk changes nothing");
    }

    #[test]
    fn a_socket_directory_is_made_with_its_mode_and_an_existing_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        create_dir_with_mode(&deep, SOCKET_DIR_MODE).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o755);
        assert_eq!(mode(&deep), 0o755);
        set(&deep, 0o750);
        create_dir_with_mode(&deep, SOCKET_DIR_MODE).unwrap();
        assert_eq!(mode(&deep), 0o750);
    }
}
