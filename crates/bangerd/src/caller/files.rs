//! Host paths a request names, read with the caller's own rights. A thread
//! of its own takes the caller's filesystem identity (fsuid, fsgid and
//! groups), so the kernel checks every lookup and open as it would for the
//! caller; the thread ends with that identity, and what it opened is used
//! from then on. Trees are walked the same way and streamed out as a tar.
//! Root callers read as the daemon, as before.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::Caller;
use crate::error::{Error, Result};

/// Opens `path` for reading, with `caller`'s rights, whatever it is: the
/// reader checks what it got from the fd. Non-blocking, so a FIFO cannot
/// hold the open.
pub fn open(caller: &Caller, path: &Path) -> Result<File> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    as_caller(caller, || open_at(rustix::fs::CWD, path, flags)).map_err(|e| denied(path, e))
}

/// Opens the regular file `path` for reading, with `caller`'s rights.
pub fn open_file(caller: &Caller, path: &Path) -> Result<File> {
    let file = open(caller, path)?;
    let meta = file.metadata().map_err(Error::io("cannot stat", path))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!("{} is not a regular file", path.display())));
    }
    Ok(file)
}

/// Opens the directory `path`, with `caller`'s rights.
pub fn open_dir(caller: &Caller, path: &Path) -> Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    as_caller(caller, || open_at(rustix::fs::CWD, path, flags)).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTDIR) => Error::InvalidArgument(format!("{} is not a directory", path.display())),
        _ => denied(path, e),
    })
}

/// A tree streamed as a tar by a thread walking it with the caller's rights.
pub struct TreeStream {
    chunks: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    offset: usize,
    walker: std::thread::JoinHandle<std::result::Result<(), (PathBuf, io::Error)>>,
    root: PathBuf,
}

/// Streams the tree under `dir` (opened by [`open_dir`]; `path` names it
/// in errors) as a tar: directories, regular files and symbolic links with
/// their modes, owners and times; device nodes, FIFOs and sockets are left
/// out. Every entry is opened relative to its directory's fd, never
/// following a link, with `caller`'s rights.
pub fn stream_tree(caller: &Caller, dir: File, path: &Path) -> Result<TreeStream> {
    let (tx, chunks) = mpsc::sync_channel(16);
    let caller = caller.clone();
    let walker = std::thread::Builder::new()
        .name("caller-tree".into())
        .spawn(move || {
            take_identity(&caller).map_err(|e| (PathBuf::new(), e))?;
            let mut tar = tar::Builder::new(ChunkWriter { tx, buf: Vec::with_capacity(CHUNK) });
            append_dir(&mut tar, dir.into(), Path::new(""))?;
            tar.into_inner().and_then(|mut w| w.flush()).map_err(|e| (PathBuf::new(), e))
        })
        .map_err(|e| Error::Internal(format!("cannot start the tree reader: {e}")))?;
    Ok(TreeStream { chunks, pending: Vec::new(), offset: 0, walker, root: path.to_owned() })
}

impl TreeStream {
    /// Waits for the walk; its error (a file the caller may not read, say)
    /// explains a failed extraction better than the broken stream does.
    pub fn finish(self) -> Result<()> {
        drop(self.chunks);
        match self.walker.join() {
            Ok(Ok(())) => Ok(()),
            // The reading side stopped first: its own error says why.
            Ok(Err((_, e))) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            Ok(Err((relative, e))) => {
                let path = self.root.join(relative);
                match e.raw_os_error() {
                    Some(libc::EACCES | libc::EPERM) => Err(denied(&path, e)),
                    _ => Err(Error::Io { action: "cannot read", path, source: e }),
                }
            }
            Err(_) => Err(Error::Internal("the tree reader panicked".into())),
        }
    }
}

impl Read for TreeStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.offset == self.pending.len() {
            match self.chunks.recv() {
                Ok(chunk) => (self.pending, self.offset) = (chunk, 0),
                // The walker finished, or failed: `finish` says which.
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.offset);
        buf[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// How much of the tar is sent at once.
const CHUNK: usize = 256 * 1024;

struct ChunkWriter {
    tx: mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the extraction stopped"))
    }
}

type Walk = std::result::Result<(), (PathBuf, io::Error)>;

/// Appends the entries of the open directory `dir` (at `relative` in the
/// tar), depth first.
fn append_dir(tar: &mut tar::Builder<ChunkWriter>, dir: OwnedFd, relative: &Path) -> Walk {
    let at = |name: &Path, e: io::Error| (relative.join(name), e);
    let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| at(Path::new(""), e.into()))?;
    for entry in entries {
        let entry = entry.map_err(|e| at(Path::new(""), e.into()))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let name_path = Path::new(OsStr::from_bytes(name.to_bytes()));
        let member = relative.join(name_path);
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| at(name_path, e.into()))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let child = open_at(&dir, name, flags).map_err(|e| at(name_path, e))?;
                let mut header = header_of(&child, &member)?;
                header.set_size(0);
                tar.append_data(&mut header, &member, io::empty()).map_err(|e| at(name_path, e))?;
                append_dir(tar, child.into(), &member)?;
            }
            FileType::RegularFile => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
                let file = open_at(&dir, name, flags).map_err(|e| at(name_path, e))?;
                let mut header = header_of(&file, &member)?;
                if header.entry_type() != tar::EntryType::Regular {
                    continue; // replaced by something else since the stat
                }
                let len = header.size().unwrap_or(0);
                tar.append_data(&mut header, &member, file.take(len)).map_err(|e| at(name_path, e))?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&dir, name, Vec::new()).map_err(|e| at(name_path, e.into()))?;
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(stat.st_mode & 0o7777);
                header.set_uid(stat.st_uid.into());
                header.set_gid(stat.st_gid.into());
                header.set_mtime(stat.st_mtime.try_into().unwrap_or(0));
                header.set_size(0);
                let target = Path::new(OsStr::from_bytes(target.to_bytes()));
                tar.append_link(&mut header, &member, target).map_err(|e| at(name_path, e))?;
            }
            // Devices, FIFOs and sockets: a guest's /dev is a devtmpfs.
            _ => {}
        }
    }
    Ok(())
}

/// A tar header from an open file's own metadata.
fn header_of(file: &File, member: &Path) -> std::result::Result<tar::Header, (PathBuf, io::Error)> {
    let meta = file.metadata().map_err(|e| (member.to_owned(), e))?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    // Permission bits only: the entry type says what it is.
    header.set_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777);
    Ok(header)
}

fn open_at<P: rustix::path::Arg>(dir: impl AsFd, path: P, flags: OFlags) -> io::Result<File> {
    Ok(rustix::fs::openat(dir, path, flags, Mode::empty())?.into())
}

/// Runs `work` on a thread of its own that has taken `caller`'s filesystem
/// identity; for root, on this thread as the daemon.
fn as_caller<T: Send>(caller: &Caller, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    if caller.is_root() {
        return work();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                take_identity(caller)?;
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the reading thread panicked")))
    })
}

/// Gives this thread `caller`'s filesystem identity: lookups, opens and
/// reads are checked against the caller's uid, gid and groups. Only for a
/// thread that ends after its work: nothing restores the daemon's identity.
fn take_identity(caller: &Caller) -> io::Result<()> {
    if caller.is_root() {
        return Ok(());
    }
    #[allow(unsafe_code)]
    // SAFETY: the raw syscall changes this thread's groups only (glibc's
    // setgroups() would change every thread's); the pointer and length
    // describe the caller's gid_t vector, which outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, caller.groups.len(), caller.groups.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: setfsgid and setfsuid change this thread's filesystem ids
    // only; an id of -1 is never taken and just reports the current one.
    let (fsgid, fsuid) = unsafe {
        libc::setfsgid(caller.gid);
        libc::setfsuid(caller.uid);
        (libc::setfsgid(u32::MAX) as u32, libc::setfsuid(u32::MAX) as u32)
    };
    if (fsuid, fsgid) != (caller.uid, caller.gid) {
        return Err(io::Error::other(format!("cannot take the identity of uid {} gid {}", caller.uid, caller.gid)));
    }
    Ok(())
}

/// The error for a path the caller could not open: a 403 when its rights
/// do not reach it, else the caller's 400.
fn denied(path: &Path, source: io::Error) -> Error {
    match source.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => Error::PermissionDenied { path: path.to_owned(), source },
        Some(libc::ENOENT) => Error::InvalidArgument(format!("{} does not exist", path.display())),
        // Anything else that stops the open is about the path the caller gave.
        _ => Error::InvalidArgument(format!("cannot open {}: {source}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    //! These take another identity, so they need root; as another user
    //! they check nothing (a test that could not fail is not run).

    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A temporary directory anyone may search.
    fn open_tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        dir
    }

    fn members(mut stream: TreeStream) -> Result<Vec<(String, tar::EntryType, u32)>> {
        // A walk that failed ends the stream early; `finish` says why.
        let mut found: Vec<_> = tar::Archive::new(&mut stream)
            .entries()
            .unwrap()
            .map_while(|e| e.ok())
            .map(|e| {
                let h = e.header();
                (e.path().unwrap().display().to_string(), h.entry_type(), h.mode().unwrap())
            })
            .collect();
        stream.finish()?;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    #[test]
    fn a_caller_opens_only_what_it_may_read() {
        if !root() {
            return;
        }
        let dir = open_tempdir();
        let mine = dir.path().join("readable");
        let secret = dir.path().join("secret");
        std::fs::write(&mine, b"hello").unwrap();
        std::fs::write(&secret, b"root only").unwrap();
        chmod(&mine, 0o644);
        chmod(&secret, 0o600);

        let mut text = String::new();
        open_file(&Caller::NOBODY, &mine).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        let err = open_file(&Caller::NOBODY, &secret).unwrap_err();
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
        assert_eq!(err.code(), banger_api::ErrorCode::PermissionDenied);
        assert!(open_file(&Caller::DAEMON, &secret).is_ok(), "root keeps its rights");

        // A group the caller is in counts; its groups are its own, not the daemon's.
        chmod(&secret, 0o640);
        std::os::unix::fs::chown(&secret, Some(0), Some(4242)).unwrap();
        let member = Caller { groups: vec![4242], ..Caller::NOBODY };
        assert!(open_file(&member, &secret).is_ok());
        assert!(open_file(&Caller::NOBODY, &secret).is_err());

        let missing = open_file(&Caller::NOBODY, &dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, Error::InvalidArgument(_)), "{missing}");
        let a_dir = open_file(&Caller::NOBODY, dir.path()).unwrap_err();
        assert!(a_dir.to_string().contains("not a regular file"), "{a_dir}");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o666), 0).unwrap();
        assert!(open_file(&Caller::NOBODY, &fifo).unwrap_err().to_string().contains("not a regular file"));

        // The daemon's own threads kept their identity.
        assert!(std::fs::read(&secret).is_ok());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        assert!(!groups.contains("4242"), "{groups}");
    }

    #[test]
    fn a_directory_behind_a_closed_one_is_refused() {
        if !root() {
            return;
        }
        let dir = open_tempdir();
        let closed = dir.path().join("closed");
        std::fs::create_dir_all(closed.join("inner")).unwrap();
        chmod(&closed, 0o700);
        let err = open_dir(&Caller::NOBODY, &closed.join("inner")).unwrap_err();
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
        assert!(open_dir(&Caller::DAEMON, &closed.join("inner")).is_ok());
    }

    #[test]
    fn a_readable_tree_streams_with_its_links_and_modes() {
        if !root() {
            return;
        }
        let dir = open_tempdir();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), b"guest\n").unwrap();
        symlink("/etc/shadow", tree.join("etc/shadow")).unwrap();
        symlink("etc", tree.join("link")).unwrap();
        chmod(&tree, 0o755);
        chmod(&tree.join("etc"), 0o750);
        chmod(&tree.join("etc/hostname"), 0o644);
        std::os::unix::fs::chown(tree.join("etc"), Some(65534), Some(65534)).unwrap();

        let opened = open_dir(&Caller::NOBODY, &tree).unwrap();
        let found = members(stream_tree(&Caller::NOBODY, opened, &tree).unwrap()).unwrap();
        assert_eq!(
            found,
            [
                ("etc".to_owned(), tar::EntryType::Directory, 0o750),
                ("etc/hostname".to_owned(), tar::EntryType::Regular, 0o644),
                ("etc/shadow".to_owned(), tar::EntryType::Symlink, 0o777),
                ("link".to_owned(), tar::EntryType::Symlink, 0o777),
            ]
        );
    }

    #[test]
    fn a_file_in_the_tree_the_caller_cannot_read_fails_the_stream_naming_it() {
        if !root() {
            return;
        }
        let dir = open_tempdir();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/shadow"), b"root:secret\n").unwrap();
        chmod(&tree, 0o755);
        chmod(&tree.join("etc"), 0o755);
        chmod(&tree.join("etc/shadow"), 0o600);

        let opened = open_dir(&Caller::NOBODY, &tree).unwrap();
        let err = members(stream_tree(&Caller::NOBODY, opened, &tree).unwrap()).unwrap_err();
        match &err {
            Error::PermissionDenied { path, .. } => assert_eq!(path, &tree.join("etc/shadow")),
            other => panic!("expected PermissionDenied, got {other}"),
        }
        let opened = open_dir(&Caller::DAEMON, &tree).unwrap();
        assert_eq!(members(stream_tree(&Caller::DAEMON, opened, &tree).unwrap()).unwrap().len(), 2);
    }
}
