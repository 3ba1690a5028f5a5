//! Writing a modules tree under the destination: path checks that keep every
//! write inside it, and modules stored uncompressed so busybox `insmod` can
//! load them.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use super::{io_err, ImportError};

/// Module compressions kmod knows, by file suffix.
const COMPRESSED_SUFFIXES: &[&str] = &[".xz", ".zst", ".gz"];

/// `path` with `.` components dropped, provided every other component is a
/// plain name (no `..`, no root, no prefix).
pub(crate) fn safe_relative(path: &Path) -> Result<PathBuf, ImportError> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ImportError::UnsafePath { path: path.to_path_buf() })
            }
        }
    }
    Ok(out)
}

/// Whether `name` can be a kernel release used as one directory name.
pub(crate) fn is_valid_release(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b))
}

/// The release a `/lib/modules/<release>` directory is named after.
pub(crate) fn release_of_dir(dir: &Path) -> Result<String, ImportError> {
    let canonical = fs::canonicalize(dir).map_err(io_err("open", dir))?;
    canonical
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_valid_release(n))
        .map(str::to_string)
        .ok_or_else(|| ImportError::UnsafePath { path: dir.to_path_buf() })
}

/// Writes one file of a modules tree to `root/rel`, decompressing a
/// `.ko.xz`, `.ko.zst` or `.ko.gz` module into a plain `.ko`.
pub(crate) fn install_file(reader: impl Read, root: &Path, rel: &Path) -> Result<(), ImportError> {
    let rel = safe_relative(rel)?;
    let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
        return Err(ImportError::UnsafePath { path: rel });
    };
    let (target_name, suffix) =
        match COMPRESSED_SUFFIXES.iter().find(|s| name.strip_suffix(**s).is_some_and(|b| b.ends_with(".ko"))) {
            Some(suffix) => (&name[..name.len() - suffix.len()], Some(*suffix)),
            None => (name, None),
        };
    let target = root.join(rel.with_file_name(target_name));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    let mut reader: Box<dyn Read + '_> = match suffix {
        Some(".xz") => Box::new(xz2::read::XzDecoder::new(reader)),
        Some(".zst") => Box::new(zstd::stream::read::Decoder::new(reader).map_err(io_err("decompress", &rel))?),
        Some(_) => Box::new(flate2::read::GzDecoder::new(reader)),
        None => Box::new(reader),
    };
    let mut out = fs::File::create(&target).map_err(io_err("create", &target))?;
    io::copy(&mut reader, &mut out).map_err(io_err("write", &target))?;
    Ok(())
}

/// Copies a modules directory to `dest`, skipping symlinks (`build`,
/// `source`) and decompressing modules.
pub(crate) fn copy_modules_dir(src: &Path, dest: &Path) -> Result<(), ImportError> {
    fs::create_dir_all(dest).map_err(io_err("create", dest))?;
    copy_dir(src, dest, Path::new(""))
}

fn copy_dir(src_root: &Path, dest_root: &Path, rel: &Path) -> Result<(), ImportError> {
    let dir = src_root.join(rel);
    for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
        let entry = entry.map_err(io_err("read", &dir))?;
        let rel = rel.join(entry.file_name());
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_err("read", &path))?;
        if file_type.is_dir() {
            let target = dest_root.join(&rel);
            fs::create_dir_all(&target).map_err(io_err("create", &target))?;
            copy_dir(src_root, dest_root, &rel)?;
        } else if file_type.is_file() {
            let file = fs::File::open(&path).map_err(io_err("read", &path))?;
            install_file(file, dest_root, &rel)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(safe_relative(Path::new("./a/b.ko")).unwrap(), Path::new("a/b.ko"));
        assert!(safe_relative(Path::new("a/../../etc/passwd")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn releases_are_single_names() {
        assert!(is_valid_release("6.1.0-56-cloud-amd64"));
        assert!(is_valid_release("6.8.0+rc1~x"));
        assert!(!is_valid_release(".."));
        assert!(!is_valid_release("a/b"));
        assert!(!is_valid_release(""));
    }

    #[test]
    fn compressed_modules_are_stored_plain() {
        let dir = tempfile::tempdir().unwrap();
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&b"xz module"[..], 1).read_to_end(&mut xz).unwrap();
        install_file(&xz[..], dir.path(), Path::new("kernel/a.ko.xz")).unwrap();
        let zst = zstd::encode_all(&b"zst module"[..], 1).unwrap();
        install_file(&zst[..], dir.path(), Path::new("kernel/b.ko.zst")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"gz module").unwrap();
        install_file(&gz.finish().unwrap()[..], dir.path(), Path::new("kernel/c.ko.gz")).unwrap();
        install_file(&b"order"[..], dir.path(), Path::new("modules.order")).unwrap();
        let read = |p: &str| fs::read(dir.path().join(p)).unwrap();
        assert_eq!(read("kernel/a.ko"), b"xz module");
        assert_eq!(read("kernel/b.ko"), b"zst module");
        assert_eq!(read("kernel/c.ko"), b"gz module");
        assert_eq!(read("modules.order"), b"order");
    }

    #[test]
    fn copy_skips_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("6.1.0-test");
        fs::create_dir_all(src.join("kernel/drivers")).unwrap();
        fs::write(src.join("kernel/drivers/x.ko"), b"x").unwrap();
        std::os::unix::fs::symlink("/usr/src/linux", src.join("build")).unwrap();
        let dest = dir.path().join("out");
        copy_modules_dir(&src, &dest).unwrap();
        assert_eq!(fs::read(dest.join("kernel/drivers/x.ko")).unwrap(), b"x");
        assert!(fs::symlink_metadata(dest.join("build")).is_err());
        assert_eq!(release_of_dir(&src).unwrap(), "6.1.0-test");
    }
}
