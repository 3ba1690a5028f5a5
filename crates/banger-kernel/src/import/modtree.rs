//! Writing a modules tree under the destination: only kernel modules
//! (`*.ko`, `*.ko.xz`, `*.ko.zst`, `*.ko.gz`, each an x86_64 relocatable
//! ELF) and the `modules.*` files at the tree's top are taken, every other
//! file is skipped, symlinks are never followed; path checks keep every
//! write inside the destination, each file and the whole tree have a size
//! limit, and modules are stored uncompressed so busybox `insmod` can load
//! them.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::source::{copy_to_file, ModulesDir, MODULES_METADATA_MAX, MODULES_TREE_MAX, MODULE_MAX};
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

/// What a file of a modules tree is, from its path inside the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TreeFile {
    /// A module, compressed with the given suffix or not.
    Module(Option<&'static str>),
    /// `modules.dep`, `modules.builtin` and the like, at the tree's top.
    Metadata,
}

impl TreeFile {
    /// What `rel` is; `None` for a file an import skips.
    pub(crate) fn of(rel: &Path) -> Option<TreeFile> {
        let name = rel.file_name()?.to_str()?;
        if rel.components().count() == 1 && name.starts_with("modules.") {
            return Some(TreeFile::Metadata);
        }
        if name.ends_with(".ko") {
            return Some(TreeFile::Module(None));
        }
        COMPRESSED_SUFFIXES
            .iter()
            .find(|s| name.strip_suffix(**s).is_some_and(|b| b.ends_with(".ko")))
            .map(|s| TreeFile::Module(Some(*s)))
    }
}

/// What may still be written into one modules tree.
#[derive(Debug)]
pub(crate) struct TreeBudget {
    bytes_left: u64,
    /// Modules written so far.
    pub(crate) modules: usize,
}

impl Default for TreeBudget {
    fn default() -> Self {
        TreeBudget { bytes_left: MODULES_TREE_MAX, modules: 0 }
    }
}

/// Writes one file of a modules tree to `root/rel` when it is a module or
/// a metadata file (true), skips it otherwise (false). A `.ko.xz`,
/// `.ko.zst` or `.ko.gz` module is stored as a plain `.ko`, and must be an
/// x86_64 relocatable ELF.
pub(crate) fn install_file(
    reader: impl Read,
    root: &Path,
    rel: &Path,
    budget: &mut TreeBudget,
) -> Result<bool, ImportError> {
    let rel = safe_relative(rel)?;
    let Some(kind) = TreeFile::of(&rel) else { return Ok(false) };
    let name = rel.file_name().and_then(|n| n.to_str()).expect("TreeFile::of read the name");
    let (target_name, suffix, limit, what) = match kind {
        TreeFile::Module(Some(suffix)) => (&name[..name.len() - suffix.len()], Some(suffix), MODULE_MAX, "a module"),
        TreeFile::Module(None) => (name, None, MODULE_MAX, "a module"),
        TreeFile::Metadata => (name, None, MODULES_METADATA_MAX, "a modules.* file"),
    };
    let target = root.join(rel.with_file_name(target_name));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    let decompress_err = io_err("decompress", &rel);
    let reader: Box<dyn Read + '_> = match suffix {
        Some(".xz") => Box::new(xz2::read::XzDecoder::new(reader)),
        Some(".zst") => Box::new(zstd::stream::read::Decoder::new(reader).map_err(decompress_err)?),
        Some(_) => Box::new(flate2::read::GzDecoder::new(reader)),
        None => Box::new(reader),
    };
    let written = copy_to_file(reader, &target, limit.min(budget.bytes_left), what, io_err("read", &rel)).map_err(
        |e| match e {
            ImportError::TooLarge { limit, .. } if limit == budget.bytes_left => {
                ImportError::TooLarge { what: "the modules tree".into(), limit: MODULES_TREE_MAX }
            }
            ImportError::TooLarge { limit, .. } => ImportError::TooLarge { what: format!("{}", rel.display()), limit },
            other => other,
        },
    )?;
    budget.bytes_left -= written;
    if let TreeFile::Module(_) = kind {
        let mut head = Vec::with_capacity(64);
        File::open(&target).and_then(|f| f.take(64).read_to_end(&mut head)).map_err(io_err("read", &target))?;
        super::elf::check_module_header(&head)
            .map_err(|reason| ImportError::InvalidModule { path: rel.clone(), reason })?;
        budget.modules += 1;
    }
    Ok(true)
}

/// More entries than any real modules tree has (Debian's hold a few thousand).
const TREE_ENTRIES_MAX: usize = 100_000;
/// Deeper than any real modules tree (`kernel/drivers/net/ethernet/x/y`).
const TREE_DEPTH_MAX: usize = 16;

/// Copies the modules and metadata files of an opened modules directory to
/// `dest`, walking it through its file descriptors: every entry is opened
/// relative to its directory without following symlinks, so a symlink, or
/// a path swapped for one, is never followed out of the tree. Refused when
/// the directory holds no module.
pub(crate) fn copy_modules_dir(src: &ModulesDir, dest: &Path) -> Result<(), ImportError> {
    let mut walk = TreeWalk { src: &src.path, dest, budget: TreeBudget::default(), entries: 0 };
    walk.dir(&src.dir, Path::new(""), 0)?;
    if walk.budget.modules == 0 {
        return Err(ImportError::NoModules { path: src.path.clone() });
    }
    Ok(())
}

struct TreeWalk<'a> {
    src: &'a Path,
    dest: &'a Path,
    budget: TreeBudget,
    entries: usize,
}

impl TreeWalk<'_> {
    fn dir(&mut self, dir: &impl AsFd, rel: &Path, depth: usize) -> Result<(), ImportError> {
        let here = self.src.join(rel);
        if depth > TREE_DEPTH_MAX {
            return Err(ImportError::InvalidModulesTree { path: here, reason: "deeper than any modules tree" });
        }
        let read_err = |e: rustix::io::Errno| ImportError::Io { action: "read", path: here.clone(), source: e.into() };
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(entry.file_name().to_owned());
            }
            self.entries += 1;
            if self.entries > TREE_ENTRIES_MAX {
                return Err(ImportError::InvalidModulesTree {
                    path: here,
                    reason: "more entries than any modules tree",
                });
            }
        }
        for name in names {
            let rel = rel.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
            let fd = match rustix::fs::openat(dir, name.as_c_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                // A symlink: never followed, never copied.
                Err(rustix::io::Errno::LOOP) => continue,
                Err(e) => return Err(ImportError::Io { action: "open", path: self.src.join(&rel), source: e.into() }),
            };
            let file = File::from(fd);
            let meta = file.metadata().map_err(io_err("stat", &self.src.join(&rel)))?;
            if meta.is_dir() {
                self.dir(&file, &rel, depth + 1)?;
            } else if meta.is_file() {
                install_file(io::BufReader::new(file), self.dest, &rel, &mut self.budget)?;
            }
            // Devices, FIFOs and sockets are skipped like any other non-module.
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// The first 64 bytes of an x86_64 relocatable ELF, then `body`.
    pub(crate) fn module_bytes(body: &[u8]) -> Vec<u8> {
        let mut m = crate::import::modinfo::tests::make_module(&["name=x"]);
        m.extend_from_slice(body);
        m
    }

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
    fn only_modules_and_top_level_metadata_are_tree_files() {
        let of = |p: &str| TreeFile::of(Path::new(p));
        assert_eq!(of("kernel/a.ko"), Some(TreeFile::Module(None)));
        assert_eq!(of("updates/a.ko.zst"), Some(TreeFile::Module(Some(".zst"))));
        assert_eq!(of("modules.dep.bin"), Some(TreeFile::Metadata));
        assert_eq!(of("kernel/modules.dep"), None, "metadata only at the top");
        for junk in ["shadow", "etc/passwd", "a.ko.bz2", "ko", "kernel/x.txt", "a.xz"] {
            assert_eq!(of(junk), None, "{junk}");
        }
    }

    #[test]
    fn compressed_modules_are_stored_plain() {
        let dir = tempfile::tempdir().unwrap();
        let mut budget = TreeBudget::default();
        let (a, b, c) = (module_bytes(b"xz"), module_bytes(b"zst"), module_bytes(b"gz"));
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&a[..], 1).read_to_end(&mut xz).unwrap();
        assert!(install_file(&xz[..], dir.path(), Path::new("kernel/a.ko.xz"), &mut budget).unwrap());
        let zst = zstd::encode_all(&b[..], 1).unwrap();
        install_file(&zst[..], dir.path(), Path::new("kernel/b.ko.zst"), &mut budget).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&c).unwrap();
        install_file(&gz.finish().unwrap()[..], dir.path(), Path::new("kernel/c.ko.gz"), &mut budget).unwrap();
        install_file(&b"order"[..], dir.path(), Path::new("modules.order"), &mut budget).unwrap();
        assert!(!install_file(&b"x"[..], dir.path(), Path::new("notes.txt"), &mut budget).unwrap());
        let read = |p: &str| fs::read(dir.path().join(p)).unwrap();
        assert_eq!(read("kernel/a.ko"), a);
        assert_eq!(read("kernel/b.ko"), b);
        assert_eq!(read("kernel/c.ko"), c);
        assert_eq!(read("modules.order"), b"order");
        assert!(!dir.path().join("notes.txt").exists());
        assert_eq!(budget.modules, 3);
    }

    #[test]
    fn a_ko_that_is_not_a_module_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = install_file(
            &b"root:x:0:0::/root:/bin/sh\n"[..],
            dir.path(),
            Path::new("shadow.ko"),
            &mut TreeBudget::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ImportError::InvalidModule { .. }), "{err}");
    }

    #[test]
    fn a_module_that_inflates_past_the_limit_is_refused_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MODULE_MAX >> 20) {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        let err = install_file(&bomb[..], dir.path(), Path::new("kernel/bomb.ko.zst"), &mut TreeBudget::default())
            .unwrap_err();
        assert!(matches!(err, ImportError::TooLarge { limit: MODULE_MAX, .. }), "{err}");
        assert!(fs::metadata(dir.path().join("kernel/bomb.ko")).unwrap().len() <= MODULE_MAX);
    }

    fn modules_dir(path: &Path) -> ModulesDir {
        ModulesDir::new(crate::import::source::open_source(path).unwrap(), path).unwrap()
    }

    #[test]
    fn copy_takes_modules_only_and_never_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("6.1.0-test");
        fs::create_dir_all(src.join("kernel/drivers")).unwrap();
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("kernel/drivers/x.ko"), module_bytes(b"x")).unwrap();
        fs::write(src.join("modules.builtin"), b"kernel/y.ko\n").unwrap();
        fs::write(src.join("etc/passwd"), b"root:x:0:0").unwrap();
        std::os::unix::fs::symlink("/usr/src/linux", src.join("build")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("kernel/shadow.ko")).unwrap();
        std::os::unix::fs::symlink("/etc", src.join("kernel/etc")).unwrap();
        let dest = dir.path().join("out");
        copy_modules_dir(&modules_dir(&src), &dest).unwrap();
        assert_eq!(fs::read(dest.join("kernel/drivers/x.ko")).unwrap(), module_bytes(b"x"));
        let mut found: Vec<String> = Vec::new();
        collect(&dest, &dest, &mut found);
        found.sort();
        assert_eq!(found, ["kernel/drivers/x.ko", "modules.builtin"]);
        assert_eq!(release_of_dir(&src).unwrap(), "6.1.0-test");
    }

    fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                collect(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }

    #[test]
    fn a_directory_without_modules_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("6.1.0-test");
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/shadow"), b"root:secret").unwrap();
        fs::write(src.join("modules.builtin"), b"kernel/y.ko\n").unwrap();
        let err = copy_modules_dir(&modules_dir(&src), &dir.path().join("out")).unwrap_err();
        assert!(matches!(err, ImportError::NoModules { .. }), "{err}");
        let file = src.join("modules.builtin");
        let err = ModulesDir::new(crate::import::source::open_source(&file).unwrap(), &file).unwrap_err();
        assert!(matches!(err, ImportError::NotADirectory { .. }), "{err}");
    }
}
