//! Reads a tar stream of one top entry into the host as it arrives, into
//! a staging directory beside the target, and moves it into place only
//! once the whole stream is in: a copy that fails or is interrupted leaves
//! nothing behind. Modes, times and symlinks are kept; owners only when
//! banger runs as root (else the files are the caller's, and set-id bits
//! are dropped).

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
use tar::{Archive, EntryType, Header};

use super::{Counted, HostTarget};

/// Unpacks `input` to `target`, keeping owners when `keep_owners`.
pub fn unpack(input: impl Read, target: &HostTarget, keep_owners: bool) -> io::Result<Counted> {
    let staging = Staging::new(&target.parent)?;
    let landed = staging.path.join(&target.name);
    let mut unpacker = Unpacker { root: &landed, keep_owners, dirs: Vec::new(), done: Counted::default() };
    unpacker.all(input)?;
    unpacker.finish_dirs()?;
    let done = unpacker.done;
    if done.entries == 0 {
        return Err(io::Error::other("the guest sent nothing"));
    }
    place(&landed, &target.path())?;
    drop(staging);
    Ok(done)
}

/// A directory beside the target, removed with what is in it unless its
/// content was moved out.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn new(parent: &Path) -> io::Result<Staging> {
        for n in 0..100u32 {
            let path = parent.join(format!(".banger-cp-{}-{n}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Staging { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("cannot write in {}: {e}", parent.display()))),
            }
        }
        Err(io::Error::other(format!("cannot make a staging directory in {}", parent.display())))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // What the copy made may be read-only to us: open it up first.
        let _ = make_removable(&self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn make_removable(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(path)? {
            make_removable(&entry?.path())?;
        }
    }
    Ok(())
}

/// Moves the finished copy to its place: a file or link replaces what is
/// there, a directory only an empty one.
fn place(landed: &Path, target: &Path) -> io::Result<()> {
    fs::rename(landed, target).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::ENOTEMPTY | libc::EEXIST) => "a directory that is not empty is there".to_owned(),
            Some(libc::EISDIR) => "a directory is there".to_owned(),
            Some(libc::ENOTDIR) => "a file is there, and the copy is a directory".to_owned(),
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), format!("cannot put the copy at {}: {why}", target.display()))
    })
}

struct Unpacker<'a> {
    /// Where the top entry goes.
    root: &'a Path,
    keep_owners: bool,
    /// Directories made, with their header, to be given their mode, owner
    /// and time once everything below them is in.
    dirs: Vec<(PathBuf, Header)>,
    done: Counted,
}

impl Unpacker<'_> {
    fn all(&mut self, input: impl Read) -> io::Result<()> {
        let mut archive = Archive::new(input);
        let mut top: Option<PathBuf> = None;
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry.path()?.into_owned();
            let relative = relative_to_top(&name, &mut top)?;
            let path =
                if relative.as_os_str().is_empty() { self.root.to_path_buf() } else { self.root.join(&relative) };
            self.check_parents(&relative)?;
            let header = entry.header().clone();
            match header.entry_type() {
                EntryType::Directory => {
                    match fs::DirBuilder::new().mode(0o700).create(&path) {
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
                        other => other.map_err(|e| context(e, &path))?,
                    }
                    self.dirs.push((path, header));
                    self.done.entries += 1;
                    continue;
                }
                // A GNU sparse file reads back whole, its holes as zeros.
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    let mut file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .map_err(|e| context(e, &path))?;
                    let copied = io::copy(&mut entry, &mut file).map_err(|e| context(e, &path))?;
                    if copied != header.size()? {
                        return Err(bad(&name, "a file cut short"));
                    }
                    self.done.bytes += copied;
                }
                EntryType::Symlink => {
                    let target = entry.link_name()?.ok_or_else(|| bad(&name, "a symlink without a target"))?;
                    std::os::unix::fs::symlink(&target, &path).map_err(|e| context(e, &path))?;
                }
                EntryType::Link => {
                    let linked = entry.link_name()?.ok_or_else(|| bad(&name, "a hard link without a target"))?;
                    let linked = relative_to_top(&linked, &mut top)?;
                    if linked.as_os_str().is_empty() {
                        return Err(bad(&name, "a hard link to the top entry"));
                    }
                    self.check_parents(&linked)?;
                    let linked = self.root.join(linked);
                    if !fs::symlink_metadata(&linked).is_ok_and(|m| m.is_file()) {
                        return Err(bad(&name, "a hard link to what is not a file copied before it"));
                    }
                    fs::hard_link(&linked, &path).map_err(|e| context(e, &path))?;
                }
                EntryType::Fifo => {
                    rustix::fs::mknodat(CWD, &path, rustix::fs::FileType::Fifo, 0o600.into(), 0)
                        .map_err(|e| context(e.into(), &path))?;
                }
                // Extended headers the reader has already applied.
                EntryType::XHeader | EntryType::XGlobalHeader | EntryType::GNULongName | EntryType::GNULongLink => {
                    continue
                }
                other => return Err(bad(&name, &format!("an entry of a kind banger does not copy ({other:?})"))),
            }
            self.apply(&path, &header)?;
            self.done.entries += 1;
        }
        if top.is_none() {
            return Err(io::Error::other("the guest sent nothing"));
        }
        Ok(())
    }

    /// Refuses an entry whose parent, inside the copy, is a symlink: a
    /// stream must not write through a link it made itself.
    fn check_parents(&self, relative: &Path) -> io::Result<()> {
        let mut at = self.root.to_path_buf();
        let parents: Vec<Component> = relative.components().collect();
        for part in parents.iter().take(parents.len().saturating_sub(1)) {
            at.push(part);
            let meta = fs::symlink_metadata(&at).map_err(|e| context(e, &at))?;
            if !meta.is_dir() {
                return Err(bad(relative, "a path through something that is not a directory"));
            }
        }
        Ok(())
    }

    /// Owner, then mode (a chown clears set-id bits), then time.
    fn apply(&self, path: &Path, header: &Header) -> io::Result<()> {
        let is_link = header.entry_type() == EntryType::Symlink;
        if self.keep_owners {
            let (uid, gid) = (id(header.uid()?)?, id(header.gid()?)?);
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| context(e, path))?;
        }
        if !is_link {
            let mut mode = header.mode()? & 0o7777;
            if !self.keep_owners {
                mode &= !0o6000;
            }
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| context(e, path))?;
        }
        let mtime = i64::try_from(header.mtime()?).unwrap_or(i64::MAX);
        let time = Timespec { tv_sec: mtime, tv_nsec: 0 };
        let times = Timestamps { last_access: time, last_modification: time };
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| context(e.into(), path))?;
        Ok(())
    }

    /// Gives the directories their metadata, deepest first.
    fn finish_dirs(&mut self) -> io::Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, header) in dirs.iter().rev() {
            self.apply(path, header)?;
        }
        Ok(())
    }
}

/// An entry's path below the top entry; the first entry sets which that is.
fn relative_to_top(name: &Path, top: &mut Option<PathBuf>) -> io::Result<PathBuf> {
    let mut parts = Vec::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            _ => return Err(bad(name, "a path that leaves the copy")),
        }
    }
    let Some((first, rest)) = parts.split_first() else { return Err(bad(name, "an empty path")) };
    match top {
        None => *top = Some(PathBuf::from(first)),
        Some(top) if top.as_os_str() == *first => {}
        Some(top) => return Err(bad(name, &format!("a second top entry (the first was {})", top.display()))),
    }
    Ok(rest.iter().collect())
}

fn id(value: u64) -> io::Result<u32> {
    u32::try_from(value).map_err(|_| io::Error::other(format!("owner id {value} is out of range")))
}

fn bad(name: &Path, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the copy's stream has {what}: {}", name.display()))
}

fn context(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::copy::pack::pack;

    /// A tree with a file of mode 0640, an executable, a read-only
    /// directory, a relative and a dangling symlink, and an empty directory.
    fn tree(root: &Path) {
        fs::create_dir_all(root.join("sub/empty")).unwrap();
        fs::write(root.join("a.txt"), b"alpha\n").unwrap();
        fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(root.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("dangling")).unwrap();
        fs::create_dir(root.join("sub/ro")).unwrap();
        fs::write(root.join("sub/ro/x"), b"x").unwrap();
        fs::set_permissions(root.join("sub/ro"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    fn packed(src: &Path, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        pack(src, name, false, &mut out).unwrap();
        out
    }

    #[test]
    fn a_tree_round_trips_with_modes_links_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let stream = packed(&src, "src");
        fs::create_dir(dir.path().join("out")).unwrap();
        let target = HostTarget { parent: dir.path().join("out"), name: "copy".into() };
        let done = unpack(&stream[..], &target, false).unwrap();
        assert_eq!(done.entries, 9);
        let copy = target.path();
        let mode = |p: &str| fs::symlink_metadata(copy.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(fs::read(copy.join("a.txt")).unwrap(), b"alpha\n");
        assert_eq!((mode("a.txt"), mode("sub/run.sh"), mode("sub/ro")), (0o640, 0o755, 0o555));
        assert_eq!(fs::read_link(copy.join("sub/link")).unwrap(), Path::new("../a.txt"));
        assert_eq!(fs::read_link(copy.join("dangling")).unwrap(), Path::new("/nowhere"));
        assert!(copy.join("sub/empty").is_dir());
        let mtime = |p: &Path| fs::symlink_metadata(p).unwrap().mtime();
        assert_eq!(mtime(&copy.join("sub/run.sh")), mtime(&src.join("sub/run.sh")));
        assert_eq!(mtime(&copy.join("sub")), mtime(&src.join("sub")));
        let left: Vec<_> = fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["copy"], "no staging directory is left");
        // The read-only directory would stop the temporary directory's clean-up.
        fs::set_permissions(src.join("sub/ro"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(copy.join("sub/ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_broken_stream_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("big"), vec![7u8; 100_000]).unwrap();
        let stream = packed(&src, "src");
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let target = HostTarget { parent: out.clone(), name: "src".into() };
        let error = unpack(&stream[..60_000], &target, false).unwrap_err();
        assert!(error.to_string().contains("big"), "{error}");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "nothing is left behind");
        assert!(unpack(&b""[..], &target, false).is_err());
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn a_stream_cannot_write_outside_the_copy_or_through_its_links() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let target = HostTarget { parent: out.clone(), name: "t".into() };
        let entry = |builder: &mut tar::Builder<Vec<u8>>, kind: EntryType, path: &str, link: Option<&str>| {
            let mut header = Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(0o755);
            header.set_size(0);
            match link {
                Some(link) => builder.append_link(&mut header, path, link).unwrap(),
                None => builder.append_data(&mut header, path, io::empty()).unwrap(),
            }
        };
        let mut through_link = tar::Builder::new(Vec::new());
        entry(&mut through_link, EntryType::Directory, "t", None);
        entry(&mut through_link, EntryType::Symlink, "t/l", Some(dir.path().to_str().unwrap()));
        entry(&mut through_link, EntryType::Regular, "t/l/escaped", None);
        let error = unpack(&through_link.into_inner().unwrap()[..], &target, false).unwrap_err();
        assert!(error.to_string().contains("not a directory"), "{error}");
        assert!(!dir.path().join("escaped").exists());

        let mut two_tops = tar::Builder::new(Vec::new());
        entry(&mut two_tops, EntryType::Regular, "a", None);
        entry(&mut two_tops, EntryType::Regular, "b", None);
        let error = unpack(&two_tops.into_inner().unwrap()[..], &target, false).unwrap_err();
        assert!(error.to_string().contains("second top entry"), "{error}");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn what_is_in_the_way_is_replaced_only_when_it_may_be() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"new").unwrap();
        let stream = packed(&dir.path().join("f"), "f");
        let out = dir.path().join("out");
        fs::create_dir_all(out.join("full/x")).unwrap();
        fs::write(out.join("old"), b"old").unwrap();
        unpack(&stream[..], &HostTarget { parent: out.clone(), name: "old".into() }, false).unwrap();
        assert_eq!(fs::read(out.join("old")).unwrap(), b"new");
        let error = unpack(&stream[..], &HostTarget { parent: out.clone(), name: "full".into() }, false).unwrap_err();
        assert!(error.to_string().contains("a directory"), "{error}");
        let mut names: Vec<_> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["full", "old"]);
    }
}
