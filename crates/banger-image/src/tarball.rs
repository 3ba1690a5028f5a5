//! Unpacks a root tarball (plain, gzip, zstd or xz, told apart by magic
//! bytes) with modes, ownership and symbolic links intact. Member paths must
//! stay inside the root: `..` and absolute member paths are refused.
//! Absolute link targets are fine, as they are in any root filesystem.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::ImageError;

/// How a tarball is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

/// Tells the compression from the first bytes of a file.
pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else {
        Compression::None
    }
}

/// Checks a member path (or hard link name) and returns it relative to the
/// root; `None` for the root itself (`./`).
pub(crate) fn member_path(raw: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("path is absolute"),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// What an extraction left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Skipped {
    /// Device nodes and FIFOs: a guest's `/dev` is a devtmpfs.
    pub special_files: usize,
}

/// Unpacks the tarball read from `input` (`path` names it) into the
/// existing, empty directory `root`.
pub(crate) fn extract(input: &mut dyn Read, path: &Path, root: &Path) -> Result<Skipped, ImageError> {
    let tar_error = |source| ImageError::Tar { path: path.to_owned(), source };
    let mut input = BufReader::new(input);
    let compression = sniff(input.fill_buf().map_err(tar_error)?);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(input).map_err(tar_error)?),
        Compression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(input)),
    };
    unpack(reader, root).map_err(|e| match e {
        Unpack::Unsafe { path, reason } => ImageError::UnsafeTarMember { path, reason },
        Unpack::Io(source) => tar_error(source),
    })
}

enum Unpack {
    Unsafe { path: String, reason: &'static str },
    Io(io::Error),
}

impl From<io::Error> for Unpack {
    fn from(e: io::Error) -> Self {
        Unpack::Io(e)
    }
}

fn unpack(reader: impl Read, root: &Path) -> Result<Skipped, Unpack> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut skipped = Skipped::default();
    // Directories are applied last, deepest first, so that a read-only
    // directory mode does not get in the way of its own contents.
    let mut directories = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let unsafe_member = |reason| Unpack::Unsafe { path: raw.display().to_string(), reason };
        let Some(_) = member_path(&raw).map_err(unsafe_member)? else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind == EntryType::Link {
            let target = entry.link_name()?.ok_or_else(|| unsafe_member("hard link without a target"))?;
            member_path(&target).map_err(|reason| Unpack::Unsafe { path: raw.display().to_string(), reason })?;
        }
        match kind {
            EntryType::Char | EntryType::Block | EntryType::Fifo => skipped.special_files += 1,
            EntryType::Directory => directories.push(entry),
            _ => {
                entry.unpack_in(root)?;
            }
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in directories {
        dir.unpack_in(root)?;
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(sniff(b"\xfd7zXZ\0rest"), Compression::Xz);
        assert_eq!(sniff(b"etc/\0\0\0"), Compression::None);
        assert_eq!(sniff(b""), Compression::None);
    }

    #[test]
    fn member_paths() {
        assert_eq!(member_path(Path::new("./etc/passwd")), Ok(Some(PathBuf::from("etc/passwd"))));
        assert_eq!(member_path(Path::new("./")), Ok(None));
        assert_eq!(member_path(Path::new("etc/../../x")), Err("path contains `..`"));
        assert_eq!(member_path(Path::new("/etc/passwd")), Err("path is absolute"));
    }
}
