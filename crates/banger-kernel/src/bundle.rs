//! Kernel bundles: a zstd-compressed tar holding `vmlinux` and, optionally,
//! `initrd.img` and `modules/`. [`extract`] unpacks an untrusted bundle
//! without letting any member land or point outside the target directory;
//! [`create`] writes one from a kernel directory.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Files a bundle may carry at its top level, in the order `create` writes them.
const BUNDLE_MEMBERS: &[&str] = &["vmlinux", "initrd.img", "modules"];

/// Why a bundle could not be made or extracted.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A member's path or link target would land outside the target.
    #[error("unsafe member {path:?}: {reason}")]
    UnsafeMember {
        /// The member's path as the archive gives it.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The decompressed bundle is larger than allowed.
    #[error("bundle is larger than the limit of {limit} bytes when decompressed")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The bundle has no `vmlinux`, or it is not an ELF file.
    #[error("bundle has no vmlinux (an ELF kernel image at its top level)")]
    MissingVmlinux,
    /// The stream is not a valid zstd-compressed tar.
    #[error("bundle is not a valid zstd-compressed tar")]
    Corrupt(#[source] io::Error),
    /// Reading or writing a file failed.
    #[error("cannot write {path}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// What [`extract`] unpacked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files written.
    pub files: u64,
    /// Bytes of regular files written.
    pub bytes: u64,
    /// Members skipped (hardlinks, devices, fifos).
    pub skipped: u64,
}

/// Unpacks a zstd-compressed tar from `reader` into `dest`, which must exist
/// and be empty. Refuses members that escape `dest` (absolute paths, `..`
/// past the top, symlinks pointing out) and stops once more than
/// `max_bytes` have been decompressed. The caller removes `dest` on error.
pub fn extract(reader: impl Read, dest: &Path, max_bytes: u64) -> Result<Extracted, BundleError> {
    let decoder = zstd::Decoder::new(reader).map_err(BundleError::Corrupt)?;
    let limited = LimitedReader { inner: decoder, remaining: max_bytes, limit: max_bytes, exceeded: false };
    let mut archive = tar::Archive::new(limited);
    let mut summary = Extracted::default();
    let result = extract_entries(&mut archive, dest, &mut summary);
    if archive.into_inner().exceeded {
        return Err(BundleError::TooLarge { limit: max_bytes });
    }
    result?;
    if !is_elf(&dest.join("vmlinux")) {
        return Err(BundleError::MissingVmlinux);
    }
    Ok(summary)
}

fn extract_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    dest: &Path,
    summary: &mut Extracted,
) -> Result<(), BundleError> {
    for entry in archive.entries().map_err(BundleError::Corrupt)? {
        let mut entry = entry.map_err(BundleError::Corrupt)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let relative = normalize_member(&raw)?;
        let Some(relative) = relative else { continue };
        let kind = entry.header().entry_type();
        let target = dest.join(&relative);
        if kind.is_dir() {
            make_dirs(dest, &relative, &raw)?;
            continue;
        }
        if !(kind.is_file() || kind.is_symlink()) {
            summary.skipped += 1;
            continue;
        }
        if let Some(parent) = relative.parent() {
            make_dirs(dest, parent, &raw)?;
        }
        remove_existing(&target)?;
        if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(BundleError::Corrupt)?
                .ok_or(BundleError::UnsafeMember { path: raw.clone(), reason: "symlink without a target" })?;
            check_link_target(&relative, &link, &raw)?;
            symlink(&link, &target).map_err(|source| BundleError::Io { path: target.clone(), source })?;
            continue;
        }
        // Only the owner's bits: the store is readable by root alone.
        let mode = entry.header().mode().unwrap_or(0o600) & 0o700;
        let mut file = File::create(&target).map_err(|source| BundleError::Io { path: target.clone(), source })?;
        let written = copy_member(&mut entry, &mut file, &target)?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|source| BundleError::Io { path: target.clone(), source })?;
        summary.files += 1;
        summary.bytes += written;
    }
    Ok(())
}

/// Copies one member's data. Read errors are the archive's fault (corrupt,
/// truncated or over the limit); write errors are the disk's.
fn copy_member(entry: &mut impl Read, file: &mut File, target: &Path) -> Result<u64, BundleError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::Corrupt(e)),
        };
        file.write_all(&buf[..n]).map_err(|source| BundleError::Io { path: target.to_owned(), source })?;
        total += n as u64;
    }
}

/// Turns a member path into a relative path with only normal components,
/// or refuses it. `None` means the member is the top directory itself.
fn normalize_member(raw: &str) -> Result<Option<PathBuf>, BundleError> {
    let unsafe_member = |reason| BundleError::UnsafeMember { path: raw.to_owned(), reason };
    let path = Path::new(raw);
    if path.is_absolute() {
        return Err(unsafe_member("absolute path"));
    }
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(unsafe_member("path escapes the bundle"));
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_member("absolute path")),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(parts.iter().collect()))
}

/// Refuses a symlink whose target, resolved from the link's own directory,
/// would leave the bundle.
fn check_link_target(relative: &Path, link: &Path, raw: &str) -> Result<(), BundleError> {
    let escape = BundleError::UnsafeMember { path: raw.to_owned(), reason: "symlink points outside the bundle" };
    if link.is_absolute() {
        return Err(escape);
    }
    let mut depth: usize = relative.components().count() - 1;
    for component in link.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or(BundleError::UnsafeMember {
                    path: raw.to_owned(),
                    reason: "symlink points outside the bundle",
                })?
            }
            Component::RootDir | Component::Prefix(_) => return Err(escape),
        }
    }
    Ok(())
}

/// Creates `relative` under `dest` one component at a time, refusing to go
/// through anything that is not a real directory (an earlier member may be
/// a symlink; extraction never follows one).
fn make_dirs(dest: &Path, relative: &Path, raw: &str) -> Result<(), BundleError> {
    let mut current = dest.to_path_buf();
    for part in relative.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(BundleError::UnsafeMember {
                    path: raw.to_owned(),
                    reason: "path goes through a symlink or file",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(|source| BundleError::Io { path: current.clone(), source })?
            }
            Err(source) => return Err(BundleError::Io { path: current, source }),
        }
    }
    Ok(())
}

/// A later member replaces an earlier one of the same path, but never a directory.
fn remove_existing(target: &Path) -> Result<(), BundleError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => Err(BundleError::Io {
            path: target.to_owned(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"),
        }),
        Ok(_) => fs::remove_file(target).map_err(|source| BundleError::Io { path: target.to_owned(), source }),
        Err(_) => Ok(()),
    }
}

/// Whether `path` is a regular file starting with the ELF magic.
pub fn is_elf(path: &Path) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF"
}

struct LimitedReader<R> {
    inner: R,
    remaining: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.remaining.checked_sub(n as u64) {
            Some(left) => {
                self.remaining = left;
                Ok(n)
            }
            None => {
                self.exceeded = true;
                Err(io::Error::other(format!("more than {} bytes decompressed", self.limit)))
            }
        }
    }
}

/// Writes a bundle of the kernel directory `src` (its `vmlinux`, and its
/// `initrd.img` and `modules/` when present) to `out`, zstd at `level`.
pub fn create(src: &Path, out: impl Write, level: i32) -> Result<(), BundleError> {
    if !is_elf(&src.join("vmlinux")) {
        return Err(BundleError::MissingVmlinux);
    }
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { path, source }
    };
    let encoder = zstd::Encoder::new(out, level).map_err(io_err(src))?;
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    for member in BUNDLE_MEMBERS {
        let path = src.join(member);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => builder.append_dir_all(member, &path).map_err(io_err(&path))?,
            Ok(_) => builder.append_path_with_name(&path, member).map_err(io_err(&path))?,
            Err(_) => continue,
        }
    }
    let encoder = builder.into_inner().map_err(io_err(src))?;
    encoder.finish().map_err(io_err(src))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0rest-of-kernel";

    /// Builds a tar.zst in memory from (path, kind, data-or-link) triples,
    /// writing raw header names so unsafe paths can be expressed.
    fn bundle(members: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if kind.is_symlink() {
                header.set_size(0);
                header.as_old_mut().linkname[..data.len()].copy_from_slice(data);
                header.set_cksum();
                builder.append(&header, io::empty()).unwrap();
            } else {
                header.set_size(data.len() as u64);
                header.set_cksum();
                builder.append(&header, *data).unwrap();
            }
        }
        zstd::encode_all(&builder.into_inner().unwrap()[..], 3).unwrap()
    }

    fn extract_bytes(data: &[u8], limit: u64) -> (tempfile::TempDir, Result<Extracted, BundleError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = extract(data, dir.path(), limit);
        (dir, result)
    }

    use tar::EntryType::{Directory, Regular, Symlink};

    #[test]
    fn extracts_files_dirs_and_safe_links() {
        let data = bundle(&[
            ("./vmlinux", Regular, ELF),
            ("modules/", Directory, b""),
            ("modules/6.1/a.ko", Regular, b"ko"),
            ("modules/6.1/build", Symlink, b"../../vmlinux"),
            ("fifo", tar::EntryType::Fifo, b""),
        ]);
        let (dir, result) = extract_bytes(&data, 1 << 20);
        let summary = result.unwrap();
        assert_eq!(summary.files, 2);
        assert_eq!(summary.skipped, 1);
        assert_eq!(fs::read(dir.path().join("modules/6.1/a.ko")).unwrap(), b"ko");
        assert!(fs::symlink_metadata(dir.path().join("modules/6.1/build")).unwrap().is_symlink());
        assert!(!dir.path().join("fifo").exists());
    }

    fn assert_unsafe(members: &[(&str, tar::EntryType, &[u8])], reason: &str) {
        let (dir, result) = extract_bytes(&bundle(members), 1 << 20);
        match result {
            Err(BundleError::UnsafeMember { reason: r, .. }) => assert!(r.contains(reason), "{r}"),
            other => panic!("expected unsafe member, got {other:?}"),
        }
        assert!(!dir.path().parent().unwrap().join("escaped").exists());
    }

    #[test]
    fn refuses_escapes() {
        assert_unsafe(&[("../escaped", Regular, b"x")], "escapes");
        assert_unsafe(&[("a/../../escaped", Regular, b"x")], "escapes");
        assert_unsafe(&[("/tmp/escaped", Regular, b"x")], "absolute");
        assert_unsafe(&[("link", Symlink, b"../escaped")], "outside");
        assert_unsafe(&[("link", Symlink, b"/etc/passwd")], "outside");
        assert_unsafe(&[("a/b/link", Symlink, b"../../../x")], "outside");
        // A safe link to a directory must not be written through.
        assert_unsafe(&[("d/", Directory, b""), ("l", Symlink, b"d"), ("l/f", Regular, b"x")], "symlink");
    }

    #[test]
    fn normalizes_inner_parent_dirs() {
        let data = bundle(&[("x/../vmlinux", Regular, ELF)]);
        let (dir, result) = extract_bytes(&data, 1 << 20);
        result.unwrap();
        assert!(is_elf(&dir.path().join("vmlinux")));
    }

    #[test]
    fn requires_vmlinux() {
        let (_dir, result) = extract_bytes(&bundle(&[("initrd.img", Regular, b"x")]), 1 << 20);
        assert!(matches!(result, Err(BundleError::MissingVmlinux)));
        let (_dir, result) = extract_bytes(&bundle(&[("vmlinux", Regular, b"not elf")]), 1 << 20);
        assert!(matches!(result, Err(BundleError::MissingVmlinux)));
    }

    #[test]
    fn enforces_the_size_limit() {
        let big = vec![0u8; 64 * 1024];
        let (_dir, result) = extract_bytes(&bundle(&[("vmlinux", Regular, ELF), ("big", Regular, &big)]), 32 * 1024);
        assert!(matches!(result, Err(BundleError::TooLarge { limit: 32768 })), "{result:?}");
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        let (_dir, result) = extract_bytes(b"definitely not zstd", 1 << 20);
        assert!(matches!(result, Err(BundleError::Corrupt(_))), "{result:?}");
        let data = bundle(&[("vmlinux", Regular, &[ELF, &[7u8; 100_000]].concat())]);
        let (_dir, result) = extract_bytes(&data[..data.len() / 2], 1 << 20);
        assert!(matches!(result, Err(BundleError::Corrupt(_))), "{result:?}");
    }

    #[test]
    fn create_round_trips() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("vmlinux"), ELF).unwrap();
        fs::write(src.path().join("initrd.img"), b"initrd").unwrap();
        fs::create_dir_all(src.path().join("modules/6.1/kernel")).unwrap();
        fs::write(src.path().join("modules/6.1/kernel/x.ko"), b"ko").unwrap();
        fs::write(src.path().join("manifest.json"), b"{}").unwrap();
        let mut out = Vec::new();
        create(src.path(), &mut out, 3).unwrap();
        let (dir, result) = extract_bytes(&out, 1 << 20);
        assert_eq!(result.unwrap().files, 3);
        assert_eq!(fs::read(dir.path().join("initrd.img")).unwrap(), b"initrd");
        assert_eq!(fs::read(dir.path().join("modules/6.1/kernel/x.ko")).unwrap(), b"ko");
        assert!(!dir.path().join("manifest.json").exists());
    }
}
