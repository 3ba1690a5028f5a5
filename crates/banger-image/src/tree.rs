//! Writes [`Entry`] lists into a root on the host and measures roots. Every
//! path is resolved the way the guest would see it: symbolic links in a
//! root are followed inside that root, never into the host.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::io_at;
use crate::layout::Entry;
use crate::ImageError;

/// How many symbolic links one lookup may follow, as Linux allows.
const MAX_LINKS: usize = 40;

/// One step of a path walk.
enum Part {
    Root,
    Parent,
    Name(OsString),
}

/// The steps of `path`, last first (so that `pop` yields them in order).
fn parts_reversed(path: &Path) -> impl Iterator<Item = Part> + '_ {
    let parts: Vec<Part> = path
        .components()
        .filter_map(|c| match c {
            Component::RootDir | Component::Prefix(_) => Some(Part::Root),
            Component::ParentDir => Some(Part::Parent),
            Component::CurDir => None,
            Component::Normal(name) => Some(Part::Name(name.to_owned())),
        })
        .collect();
    parts.into_iter().rev()
}

/// Resolves `path` (relative to, or absolute within, `root`) to a host path
/// inside `root`, following symbolic links as if `root` were `/`. With
/// `follow_last` false the final component is left as is.
pub(crate) fn resolve_in_root(root: &Path, path: &Path, follow_last: bool) -> io::Result<PathBuf> {
    let mut pending: Vec<Part> = parts_reversed(path).collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part {
            Part::Root => resolved.clear(),
            Part::Parent => {
                resolved.pop();
            }
            Part::Name(name) => {
                let host = root.join(&resolved).join(&name);
                let is_last = pending.is_empty();
                match fs::symlink_metadata(&host) {
                    Ok(meta) if meta.file_type().is_symlink() && (follow_last || !is_last) => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(io::Error::other("too many levels of symbolic links"));
                        }
                        let target = fs::read_link(&host)?;
                        pending.extend(parts_reversed(&target));
                    }
                    _ => resolved.push(name),
                }
            }
        }
    }
    Ok(root.join(resolved))
}

/// Whether `path` names a file (after in-root links) in the guest's view of `root`.
pub(crate) fn exists_in_root(root: &Path, path: &Path) -> bool {
    resolve_in_root(root, path, true).is_ok_and(|p| fs::metadata(p).is_ok())
}

/// Writes `entries` into `root`, in order.
pub(crate) fn materialize(root: &Path, entries: &[Entry]) -> Result<(), ImageError> {
    for entry in entries {
        match entry {
            Entry::Dir { path, mode } => {
                let host = place(root, path)?;
                if !fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir()) {
                    remove_any(&host)?;
                    fs::create_dir(&host).map_err(io_at(&host))?;
                    chmod(&host, *mode)?;
                }
            }
            Entry::File { path, contents, mode } => {
                let host = place(root, path)?;
                remove_any(&host)?;
                fs::write(&host, contents).map_err(io_at(&host))?;
                chmod(&host, *mode)?;
            }
            Entry::Copy { from, path, mode } => {
                let host = place(root, path)?;
                remove_any(&host)?;
                fs::copy(from, &host).map_err(io_at(from))?;
                chmod(&host, *mode)?;
            }
            Entry::Symlink { path, target } => {
                let host = place(root, path)?;
                remove_any(&host)?;
                symlink(target, &host).map_err(io_at(&host))?;
            }
            Entry::Remove { path } => remove_any(&place(root, path)?)?,
        }
    }
    Ok(())
}

/// The host path for `path` in `root`: its parent resolved in the root.
fn place(root: &Path, path: &Path) -> Result<PathBuf, ImageError> {
    let name = path.file_name().ok_or_else(|| ImageError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
    })?;
    let parent = path.parent().unwrap_or(Path::new(""));
    let parent = resolve_in_root(root, parent, true).map_err(io_at(parent))?;
    Ok(parent.join(name))
}

fn chmod(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io_at(path))
}

/// Removes a file, link or tree at `path`, if there is one.
pub(crate) fn remove_any(path: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(io_at(path)),
        Ok(_) => fs::remove_file(path).map_err(io_at(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ImageError::Io { path: path.to_owned(), source }),
    }
}

/// Removes the entries of the directory `dir` (in-root) for which `doomed` holds.
pub(crate) fn prune_dir(root: &Path, dir: &str, doomed: impl Fn(&str) -> bool) -> Result<(), ImageError> {
    let host = resolve_in_root(root, Path::new(dir), true).map_err(io_at(Path::new(dir)))?;
    let entries = match fs::read_dir(&host) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(ImageError::Io { path: host, source }),
    };
    for entry in entries {
        let entry = entry.map_err(io_at(&host))?;
        if entry.file_name().to_str().is_some_and(&doomed) {
            remove_any(&entry.path())?;
        }
    }
    Ok(())
}

/// Roughly how many bytes of ext4 the tree at `root` fills: data rounded to
/// 4 KiB blocks, a block per directory, and an inode's worth per entry;
/// hard links count once.
pub(crate) fn content_bytes(root: &Path) -> Result<u64, ImageError> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        total += 4096 + 256;
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let meta = entry.metadata().map_err(io_at(&entry.path()))?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let data = if meta.is_file() || meta.len() > 60 { meta.len().div_ceil(4096) * 4096 } else { 0 };
            total += data + 256;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("usr/sbin")).unwrap();
        symlink("usr/sbin", r.join("sbin")).unwrap();
        symlink("/etc", r.join("escape")).unwrap();
        symlink("../../../../..", r.join("up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in_root(r, Path::new("/sbin/init"), true).unwrap(), r.join("usr/sbin/init"));
        assert_eq!(resolve_in_root(r, Path::new("escape/passwd"), true).unwrap(), r.join("etc/passwd"));
        assert_eq!(resolve_in_root(r, Path::new("up/x"), true).unwrap(), r.join("x"));
        assert_eq!(resolve_in_root(r, Path::new("escape"), false).unwrap(), r.join("escape"));
        assert!(resolve_in_root(r, Path::new("loop/x"), true).is_err());
    }

    #[test]
    fn materialize_never_writes_through_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink(outside.path(), r.join("etc")).unwrap();
        let entries = [Entry::File { path: "etc/hostname".into(), contents: "x\n", mode: 0o644 }];
        // The link resolves to `etc/<outside path>` in the root, which does not exist.
        assert!(materialize(r, &entries).is_err());
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing lands outside");
    }

    #[test]
    fn files_dirs_and_links() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let entries = [
            Entry::Dir { path: "tmp".into(), mode: 0o1777 },
            Entry::File { path: "tmp/a".into(), contents: "hi", mode: 0o600 },
            Entry::Symlink { path: "tmp/b".into(), target: "a".into() },
            Entry::Symlink { path: "tmp/b".into(), target: "c".into() },
            Entry::Remove { path: "tmp/a".into() },
        ];
        materialize(r, &entries).unwrap();
        assert_eq!(fs::metadata(r.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
        assert_eq!(fs::read_link(r.join("tmp/b")).unwrap(), Path::new("c"));
        assert!(!r.join("tmp/a").exists());
        assert!(content_bytes(r).unwrap() >= 2 * 4096);
    }
}
