//! The API socket: refuses to steal a live daemon's socket or to replace
//! anything that is not a socket, replaces a stale one, and is created
//! 0660, owned by group `banger` when it exists.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use crate::StartError;

/// Group whose members may use the API.
const SOCKET_GROUP: &str = "banger";

pub fn bind(path: &Path) -> Result<UnixListener, StartError> {
    let bind_err = |source| StartError::Bind { path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        crate::permissions::create_dir_with_mode(parent, crate::permissions::SOCKET_DIR_MODE).map_err(bind_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(StartError::NotASocket { path: path.to_owned(), found: kind_of(&meta.file_type()) });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(StartError::SocketInUse(path.to_owned())),
            // Nobody listens: a socket left by a daemon that died.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(bind_err)?;
            }
            Err(source) => return Err(bind_err(source)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(bind_err(source)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    if let Some(gid) = group_id(SOCKET_GROUP) {
        if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
            tracing::warn!(error = %e, "cannot give the socket to group {SOCKET_GROUP}");
        }
    }
    Ok(listener)
}

/// What a file that is not a socket is, for the error.
fn kind_of(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_file() {
        "a regular file"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

/// A group's id from /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}
