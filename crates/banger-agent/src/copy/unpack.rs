//! `copy_in`: a tar stream of one top entry written as a destination path
//! (a new name) or into it (an existing directory). Modes, numeric owners
//! (when the agent is root), symlinks and mtimes are kept. Entries with an
//! absolute path or `..`, entries that would reach outside the destination
//! through a symlink, and a second top entry are refused; a failed copy
//! removes what it created, and a file is only ever replaced whole.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use banger_agent_proto::ErrorKind;
use rustix::fs::{AtFlags, Mode, Timespec, Timestamps, CWD};
use tar::{Archive, EntryType};

use crate::log::log;
use crate::requests::Refusal;

/// Where a copy goes: entries land in `root`, the top one named `rename`
/// when the destination is a new name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    root: PathBuf,
    rename: Option<OsString>,
}

impl Target {
    /// Reads `dest`: an existing directory (the entry goes into it) or a
    /// new name in one.
    pub(crate) fn resolve(dest: &str) -> Result<Target, Refusal> {
        let path = Path::new(dest);
        if !path.is_absolute() {
            return Err(Refusal::invalid(format!("the destination {dest} is not an absolute path")));
        }
        if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Ok(Target { root: path.to_owned(), rename: None });
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Refusal::invalid(format!("the destination {dest} names no file")));
        };
        match fs::metadata(parent) {
            Ok(m) if m.is_dir() => Ok(Target { root: parent.to_owned(), rename: Some(name.to_owned()) }),
            Ok(_) => Err(Refusal::invalid(format!("{} is not a directory", parent.display()))),
            Err(e) => Err(Refusal::of_io(&e, format!("there is no directory {} in the guest", parent.display()))),
        }
    }
}

/// The components of an entry's path, or why it is refused.
pub(crate) fn entry_components(path: &Path) -> Result<Vec<OsString>, String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("the entry {} is an absolute path", path.display()))
            }
            Component::ParentDir => return Err(format!("the entry {} goes up with '..'", path.display())),
        }
    }
    if parts.is_empty() {
        return Err(format!("an entry ({:?}) has no name", path.display()));
    }
    Ok(parts)
}

/// What was created, removed again if the copy fails.
#[derive(Default)]
struct Undo(Vec<PathBuf>);

impl Undo {
    fn run(self) {
        for path in self.0.into_iter().rev() {
            let removed = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(_) => continue,
            };
            if let Err(e) = removed {
                log!("cannot remove {} after a failed copy: {e}", path.display());
            }
        }
    }
}

/// A directory's metadata, applied once what goes inside it is written.
struct DirMeta {
    path: PathBuf,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    mtime: Option<u64>,
}

fn stream_error(e: io::Error) -> Refusal {
    Refusal::invalid(format!("the tar stream is not valid: {}", chain(&e)))
}

/// An I/O error with its causes (tar wraps them).
fn chain(e: &io::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.get_ref().and_then(|inner| inner.source());
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn io_refusal(e: io::Error, what: &str, path: &Path) -> Refusal {
    let message = format!("cannot {what} {}: {}", path.display(), chain(&e));
    Refusal::of_io(&e, message)
}

/// A reader that remembers reaching its end, so a write that failed for
/// want of data is told apart from a failing disk.
struct Watched<R> {
    inner: R,
    ended: Arc<AtomicBool>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.store(true, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Unpacks `stream` as `target` says; on failure what it created is gone.
pub(crate) fn unpack(stream: impl Read, target: &Target) -> Result<(), Refusal> {
    let root = fs::canonicalize(&target.root).map_err(|e| io_refusal(e, "open", &target.root))?;
    let ended = Arc::new(AtomicBool::new(false));
    let stream = Watched { inner: stream, ended: ended.clone() };
    let mut undo = Undo::default();
    let unpacker = Unpacker { root: &root, target, undo: &mut undo, dirs: Vec::new(), top: None, serial: 0 };
    match unpacker.run(stream) {
        Ok(()) => Ok(()),
        Err(refusal) => {
            undo.run();
            if ended.load(Ordering::Relaxed) && refusal.kind != ErrorKind::InvalidArgument {
                return Err(Refusal::invalid(format!("the tar stream ended too soon: {}", refusal.message)));
            }
            Err(refusal)
        }
    }
}

struct Unpacker<'a> {
    root: &'a Path,
    target: &'a Target,
    undo: &'a mut Undo,
    dirs: Vec<DirMeta>,
    top: Option<OsString>,
    serial: u64,
}

impl Unpacker<'_> {
    fn run(mut self, stream: impl Read) -> Result<(), Refusal> {
        let as_root = rustix::process::geteuid().is_root();
        let mut archive = Archive::new(stream);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        // Owners are set here (`owner`), so an entry without numeric ids still unpacks.
        archive.set_preserve_ownerships(false);
        archive.set_overwrite(true);
        archive.set_unpack_xattrs(false);
        for entry in archive.entries().map_err(stream_error)? {
            let mut entry = entry.map_err(stream_error)?;
            let path = entry.path().map_err(stream_error)?.into_owned();
            let parts = entry_components(&path).map_err(Refusal::invalid)?;
            let relative = self.place(parts)?;
            let (last, parents) = relative.split_last().expect("an entry has a name");
            let dir = self.directory(parents)?;
            let dest = dir.join(last);
            let kind = entry.header().entry_type();
            match kind {
                EntryType::Directory => self.make_dir(&dest, &entry, as_root)?,
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    self.write_file(&mut entry, &dir, &dest, as_root)?
                }
                EntryType::Symlink => {
                    self.clear_for(&dest, "a symlink")?;
                    let existed = fs::symlink_metadata(&dest).is_ok();
                    entry.unpack(&dest).map_err(|e| io_refusal(e, "make the symlink", &dest))?;
                    if !existed {
                        self.undo.0.push(dest.clone());
                    }
                    if let Some(ids) = owner(entry.header(), as_root) {
                        set_owner(&dest, ids)?;
                    }
                }
                EntryType::Link => self.hard_link(&entry, &dest)?,
                other => log!("copy: skipping {} ({other:?} entries are not copied)", path.display()),
            }
        }
        if self.top.is_none() {
            return Err(Refusal::invalid("the tar stream holds no entry"));
        }
        for dir in self.dirs.iter().rev() {
            apply_dir_meta(dir)?;
        }
        Ok(())
    }

    /// Checks the entry is under the one top entry, and renames the top.
    fn place(&mut self, mut parts: Vec<OsString>) -> Result<Vec<OsString>, Refusal> {
        match &self.top {
            None => self.top = Some(parts[0].clone()),
            Some(top) if *top == parts[0] => {}
            Some(top) => {
                return Err(Refusal::invalid(format!(
                    "the tar stream holds more than one top entry ({} and {})",
                    top.to_string_lossy(),
                    parts[0].to_string_lossy()
                )))
            }
        }
        if let Some(name) = &self.target.rename {
            parts[0] = name.clone();
        }
        Ok(parts)
    }

    /// The directory `parents` names under the root, made where missing;
    /// refused if it is (or passes through) a symlink leading outside the root.
    fn directory(&mut self, parents: &[OsString]) -> Result<PathBuf, Refusal> {
        let mut at = self.root.to_path_buf();
        for part in parents {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {}
                Ok(_) => {
                    return Err(Refusal::invalid(format!("{} is in the way: it is not a directory", at.display())))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&at).map_err(|e| io_refusal(e, "create", &at))?;
                    self.undo.0.push(at.clone());
                }
                Err(e) => return Err(io_refusal(e, "look at", &at)),
            }
            let real = fs::canonicalize(&at).map_err(|e| io_refusal(e, "resolve", &at))?;
            if !real.starts_with(self.root) || !real.is_dir() {
                return Err(Refusal::invalid(format!(
                    "{} leads outside the destination (to {}) or is not a directory",
                    at.display(),
                    real.display()
                )));
            }
        }
        Ok(at)
    }

    /// A directory in the way of a file or symlink is not replaced.
    fn clear_for(&self, dest: &Path, what: &str) -> Result<(), Refusal> {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => {
                Err(Refusal::invalid(format!("{} is a directory: it is not replaced by {what}", dest.display())))
            }
            _ => Ok(()),
        }
    }

    fn make_dir<R: Read>(&mut self, dest: &Path, entry: &tar::Entry<'_, R>, as_root: bool) -> Result<(), Refusal> {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                // A file or symlink of that name is replaced (never followed).
                fs::remove_file(dest).map_err(|e| io_refusal(e, "replace", dest))?;
                fs::create_dir(dest).map_err(|e| io_refusal(e, "create", dest))?;
            }
            Err(_) => {
                fs::create_dir(dest).map_err(|e| io_refusal(e, "create", dest))?;
                self.undo.0.push(dest.to_owned());
            }
        }
        let header = entry.header();
        let owner = owner(header, as_root);
        self.dirs.push(DirMeta { path: dest.to_owned(), mode: header.mode().ok(), owner, mtime: header.mtime().ok() });
        Ok(())
    }

    /// Writes a file beside its destination and renames it into place.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dir: &Path,
        dest: &Path,
        as_root: bool,
    ) -> Result<(), Refusal> {
        self.clear_for(dest, "a file")?;
        self.serial += 1;
        let name = dest.file_name().unwrap_or(OsStr::new("file")).to_string_lossy();
        let partial = dir.join(format!(".{name}.banger-copy-{}-{}", std::process::id(), self.serial));
        let written = entry.unpack(&partial).map_err(|e| io_refusal(e, "write", dest)).and_then(|_| {
            if let Some(ids) = owner(entry.header(), as_root) {
                set_owner(&partial, ids)?;
                // A change of owner clears set-id bits: the mode goes on again.
                if let Ok(mode) = entry.header().mode() {
                    set_mode(&partial, mode)?;
                }
            }
            let existed = fs::symlink_metadata(dest).is_ok();
            fs::rename(&partial, dest).map_err(|e| io_refusal(e, "write", dest))?;
            if !existed {
                self.undo.0.push(dest.to_owned());
            }
            Ok(())
        });
        if written.is_err() {
            let _ = fs::remove_file(&partial);
        }
        written
    }

    /// A hard link to an entry copied before it, inside the destination.
    fn hard_link<R: Read>(&mut self, entry: &tar::Entry<'_, R>, dest: &Path) -> Result<(), Refusal> {
        let link =
            entry.link_name().map_err(stream_error)?.ok_or_else(|| Refusal::invalid("a hard link names no file"))?;
        let parts = entry_components(&link).map_err(Refusal::invalid)?;
        let relative = self.place(parts)?;
        let source: PathBuf = relative.iter().fold(self.root.to_path_buf(), |p, part| p.join(part));
        let real = fs::canonicalize(&source).map_err(|e| io_refusal(e, "find the link target", &source))?;
        if !real.starts_with(self.root) || real.is_dir() {
            return Err(Refusal::invalid(format!("the hard link {} leads outside the destination", dest.display())));
        }
        self.clear_for(dest, "a hard link")?;
        let existed = fs::symlink_metadata(dest).is_ok();
        if existed {
            fs::remove_file(dest).map_err(|e| io_refusal(e, "replace", dest))?;
        }
        fs::hard_link(&real, dest).map_err(|e| io_refusal(e, "link", dest))?;
        if !existed {
            self.undo.0.push(dest.to_owned());
        }
        Ok(())
    }
}

/// The numeric owner an entry asks for, when the agent can give it (as root).
fn owner(header: &tar::Header, as_root: bool) -> Option<(u32, u32)> {
    match (header.uid(), header.gid()) {
        (Ok(uid), Ok(gid)) if as_root => Some((u32::try_from(uid).ok()?, u32::try_from(gid).ok()?)),
        _ => None,
    }
}

fn set_owner(path: &Path, (uid, gid): (u32, u32)) -> Result<(), Refusal> {
    let ids = (Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)));
    rustix::fs::chownat(CWD, path, ids.0, ids.1, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_refusal(e.into(), "set the owner of", path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Refusal> {
    rustix::fs::chmod(path, Mode::from_raw_mode(mode & 0o7777))
        .map_err(|e| io_refusal(e.into(), "set the mode of", path))
}

fn apply_dir_meta(dir: &DirMeta) -> Result<(), Refusal> {
    if let Some(ids) = dir.owner {
        set_owner(&dir.path, ids)?;
    }
    if let Some(mode) = dir.mode {
        set_mode(&dir.path, mode)?;
    }
    if let Some(mtime) = dir.mtime {
        let time = Timespec { tv_sec: mtime as i64, tv_nsec: 0 };
        let times = Timestamps { last_access: time, last_modification: time };
        rustix::fs::utimensat(CWD, &dir.path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_refusal(e.into(), "set the time of", &dir.path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A tar entry whose name is written raw (tar's builder refuses `..`).
    fn raw_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, kind: EntryType, link: Option<&str>, data: &[u8]) {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
        header.set_size(data.len() as u64);
        header.set_mtime(1_600_000_000);
        header.set_uid(u64::from(rustix::process::geteuid().as_raw()));
        header.set_gid(u64::from(rustix::process::getegid().as_raw()));
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    fn archive(entries: &[(&str, EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            raw_entry(&mut builder, name, *kind, *link, data);
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn entry_paths_must_stay_below_the_destination() {
        assert_eq!(entry_components(Path::new("./a/b")).unwrap(), ["a", "b"]);
        assert!(entry_components(Path::new("/etc/passwd")).unwrap_err().contains("absolute"));
        assert!(entry_components(Path::new("a/../../b")).unwrap_err().contains(".."));
        assert!(entry_components(Path::new("./")).unwrap_err().contains("no name"));
    }

    #[test]
    fn a_tree_lands_as_a_new_name_or_inside_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let tar = archive(&[
            ("top/", EntryType::Directory, None, b""),
            ("top/sub/", EntryType::Directory, None, b""),
            ("top/sub/file", EntryType::Regular, None, b"content"),
            ("top/link", EntryType::Symlink, Some("sub/file"), b""),
            ("top/hard", EntryType::Link, Some("top/sub/file"), b""),
        ]);
        let renamed = dir.path().join("renamed");
        unpack(&tar[..], &Target::resolve(renamed.to_str().unwrap()).unwrap()).unwrap();
        assert_eq!(fs::read(renamed.join("sub/file")).unwrap(), b"content");
        assert_eq!(fs::read_link(renamed.join("link")).unwrap(), Path::new("sub/file"));
        assert_eq!(fs::read(renamed.join("hard")).unwrap(), b"content");
        let meta = fs::metadata(renamed.join("sub")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_600_000_000);
        // Into an existing directory, it keeps its name; a second copy replaces files whole.
        unpack(&tar[..], &Target::resolve(dir.path().to_str().unwrap()).unwrap()).unwrap();
        unpack(&tar[..], &Target::resolve(dir.path().to_str().unwrap()).unwrap()).unwrap();
        assert_eq!(fs::read(dir.path().join("top/sub/file")).unwrap(), b"content");
        let leftovers: Vec<_> =
            fs::read_dir(dir.path().join("top/sub")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers, ["file"]);
    }

    fn refused(entries: &[(&str, EntryType, Option<&str>, &[u8])], into: &Path) -> Refusal {
        unpack(&archive(entries)[..], &Target::resolve(into.to_str().unwrap()).unwrap()).unwrap_err()
    }

    #[test]
    fn escapes_are_refused_and_what_was_written_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let up = refused(
            &[("top/", EntryType::Directory, None, b""), ("top/../../x", EntryType::Regular, None, b"x")],
            &dest,
        );
        assert_eq!(up.kind, ErrorKind::InvalidArgument);
        assert!(up.message.contains(".."), "{}", up.message);
        let escape = outside.path().to_str().unwrap();
        let through_link = refused(
            &[
                ("top/", EntryType::Directory, None, b""),
                ("top/file", EntryType::Regular, None, b"x"),
                ("top/out", EntryType::Symlink, Some(escape), b""),
                ("top/out/evil", EntryType::Regular, None, b"x"),
            ],
            &dest,
        );
        assert!(through_link.message.contains("outside"), "{}", through_link.message);
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none(), "written outside");
        let two = refused(&[("a", EntryType::Regular, None, b"1"), ("b", EntryType::Regular, None, b"2")], &dest);
        assert!(two.message.contains("more than one top entry"), "{}", two.message);
        assert!(
            fs::read_dir(&dest).unwrap().next().is_none(),
            "a failed copy left {:?}",
            fs::read_dir(&dest).unwrap().collect::<Vec<_>>()
        );
        let hard = refused(&[("top", EntryType::Link, Some("../etc/passwd"), b"")], &dest);
        assert!(hard.message.contains(".."), "{}", hard.message);
    }

    #[test]
    fn a_truncated_stream_leaves_nothing_and_an_old_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("keep"), b"old").unwrap();
        let mut tar = archive(&[("keep", EntryType::Regular, None, &[b'n'; 5000])]);
        tar.truncate(2048);
        let cut = unpack(&tar[..], &Target::resolve(dir.path().to_str().unwrap()).unwrap()).unwrap_err();
        assert_eq!(cut.kind, ErrorKind::InvalidArgument, "{}", cut.message);
        assert_eq!(fs::read(dir.path().join("keep")).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["keep"]);
        let garbage = unpack(&[b'x'; 1024][..], &Target::resolve(dir.path().join("new").to_str().unwrap()).unwrap());
        assert_eq!(garbage.unwrap_err().kind, ErrorKind::InvalidArgument);
        assert!(!dir.path().join("new").exists());
    }

    #[test]
    fn an_entry_without_numeric_owners_still_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o600);
        header.set_cksum();
        builder.append_data(&mut header, "plain", &b"hi"[..]).unwrap();
        let tar = builder.into_inner().unwrap();
        unpack(&tar[..], &Target::resolve(dir.path().to_str().unwrap()).unwrap()).unwrap();
        assert_eq!(fs::read(dir.path().join("plain")).unwrap(), b"hi");
        assert_eq!(fs::metadata(dir.path().join("plain")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn destinations_are_checked_first() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Target::resolve("relative/path").unwrap_err().kind, ErrorKind::InvalidArgument);
        let missing = Target::resolve(dir.path().join("no/such").to_str().unwrap()).unwrap_err();
        assert_eq!(missing.kind, ErrorKind::NotFound, "{}", missing.message);
        fs::write(dir.path().join("file"), b"").unwrap();
        let under_file = Target::resolve(dir.path().join("file/x").to_str().unwrap()).unwrap_err();
        assert_eq!(under_file.kind, ErrorKind::InvalidArgument);
        symlink(dir.path(), dir.path().join("to-dir")).unwrap();
        let via_link = Target::resolve(dir.path().join("to-dir").to_str().unwrap()).unwrap();
        assert_eq!(via_link.rename, None, "a symlink to a directory is copied into");
    }
}
