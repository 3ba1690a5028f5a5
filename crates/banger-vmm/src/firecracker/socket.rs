//! Connecting to a unix socket whatever the length of its path. A socket
//! address holds at most 107 bytes of path (`sun_path`), and a jailed
//! Firecracker's sockets sit deep in its jail, below the VM's directory:
//! a long VM name under a long state root passes the limit. The limit is
//! on the path given to connect(2), not on where it leads, so a long path
//! is reached through `/proc/self/fd/<dir>/<name>`, with `<dir>` an
//! `O_PATH` descriptor of the socket's directory.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

/// The longest path a unix socket address holds (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Connects to the unix socket at `path`, through its directory's
/// descriptor when the path is too long for a socket address. Symlinks on
/// the way (the run directory's links into the jail) are followed.
pub async fn connect(path: &Path) -> io::Result<UnixStream> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return UnixStream::connect(path).await;
    }
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir, name),
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "a socket path needs a directory and a name")),
    };
    // O_PATH: the descriptor only names the directory, so a directory we
    // may search but not read still works.
    let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(dir)?;
    let short = via_descriptor(dir.as_raw_fd(), name.as_ref());
    if short.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the socket's file name is too long"));
    }
    // `dir` stays open until the connect is done.
    let stream = UnixStream::connect(&short).await;
    drop(dir);
    stream
}

/// `/proc/self/fd/<fd>/<name>`.
fn via_descriptor(fd: i32, name: &Path) -> PathBuf {
    Path::new("/proc/self/fd").join(fd.to_string()).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket at a path longer than a socket address holds is reached,
    /// also through a symlink, and a missing one is still an error.
    #[tokio::test]
    async fn connects_past_the_socket_path_limit() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let short = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&short).unwrap();
        let link = deep.join("link.sock");
        std::os::unix::fs::symlink(&short, &link).unwrap();
        assert!(link.as_os_str().len() > MAX_SOCKET_PATH);
        assert!(UnixStream::connect(&link).await.is_err(), "the kernel refuses the long path itself");
        let accepted = tokio::spawn(async move { listener.accept().await.map(drop) });
        connect(&link).await.expect("connect through the directory's descriptor");
        accepted.await.unwrap().unwrap();
        let missing = connect(&deep.join("missing.sock")).await.unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
    }

    #[test]
    fn the_short_path_names_the_descriptor() {
        assert_eq!(via_descriptor(7, Path::new("a.sock")), Path::new("/proc/self/fd/7/a.sock"));
    }
}
