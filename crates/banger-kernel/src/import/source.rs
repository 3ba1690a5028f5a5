//! The files an import reads and the limits on them: a source is opened
//! once, checked with `fstat` before any byte is read (a regular file, no
//! larger than its kind allows), and everything read from it or
//! decompressed out of it goes through a counting limit.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{deb, io_err, ImportError, SourceKind, ELF_MAGIC};

const MIB: u64 = 1 << 20;

/// The largest ELF vmlinux an import takes, as a source file and as the
/// decompressed payload of a bzImage.
pub const VMLINUX_MAX: u64 = 512 * MIB;
/// The largest bzImage (`vmlinuz`) file, on its own or inside a package.
pub const BZIMAGE_MAX: u64 = 512 * MIB;
/// The largest Debian package file.
pub const DEB_MAX: u64 = 1024 * MIB;
/// The most a package's `data.tar` may decompress to.
pub const DEB_DATA_MAX: u64 = 4096 * MIB;
/// The most a package's `control.tar` may decompress to.
pub const DEB_CONTROL_MAX: u64 = 16 * MIB;
/// The largest kernel module, decompressed (the biggest of a distribution
/// kernel are a few MiB; the initramfs step reads the needed ones whole).
pub const MODULE_MAX: u64 = 64 * MIB;
/// The largest `modules.*` metadata file.
pub const MODULES_METADATA_MAX: u64 = 64 * MIB;
/// The most a whole modules tree may hold, decompressed.
pub const MODULES_TREE_MAX: u64 = 4096 * MIB;

/// The size limit of a source file of `kind`.
pub fn source_limit(kind: SourceKind) -> u64 {
    match kind {
        SourceKind::Vmlinux => VMLINUX_MAX,
        SourceKind::BzImage => BZIMAGE_MAX,
        SourceKind::Deb => DEB_MAX,
    }
}

/// A human size for limits: `512 MiB`, `1 GiB`.
pub(crate) fn human(bytes: u64) -> String {
    if bytes >= 1024 * MIB && bytes.is_multiple_of(1024 * MIB) {
        format!("{} GiB", bytes / (1024 * MIB))
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Opens a path a caller named, for reading: the only place an import
/// opens one. Non-blocking, so a FIFO cannot hold the open forever; what
/// it is gets checked from the open file, never from the path again.
pub fn open_source(path: &Path) -> Result<File, ImportError> {
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(|e| {
        // open(2) refuses a unix socket before anything could fstat it.
        match std::fs::metadata(path) {
            Ok(meta) if e.raw_os_error() == Some(libc::ENXIO) && !meta.is_file() => {
                ImportError::NotRegularFile { path: path.to_path_buf(), what: file_type_name(&meta) }
            }
            _ => io_err("open", path)(e),
        }
    })
}

/// What a file that is not a regular file is, for the error.
fn file_type_name(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// An opened source file that passed the checks: regular, of a known kind,
/// within its kind's size limit.
#[derive(Debug)]
pub struct SourceFile {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) kind: SourceKind,
}

impl SourceFile {
    /// Checks `file` (opened from `path` by [`open_source`]): refused unless
    /// it is a regular file; its kind is `kind` or detected from its first
    /// bytes; refused if larger than the kind's limit.
    pub fn new(file: File, path: &Path, kind: Option<SourceKind>) -> Result<SourceFile, ImportError> {
        let meta = file.metadata().map_err(io_err("stat", path))?;
        if !meta.is_file() {
            return Err(ImportError::NotRegularFile { path: path.to_path_buf(), what: file_type_name(&meta) });
        }
        let kind = match kind {
            Some(kind) => kind,
            None => detect_kind(&file, path)?,
        };
        let limit = source_limit(kind);
        if meta.len() > limit {
            return Err(ImportError::TooLarge { what: format!("the {} {}", kind.name(), path.display()), limit });
        }
        let source = SourceFile { file, path: path.to_path_buf(), kind };
        source.check_headers()?;
        Ok(source)
    }

    /// What the headers alone tell: a vmlinux must be a Linux kernel, a
    /// bzImage must have a sane setup header. Cheap: a few reads at the
    /// file's start.
    fn check_headers(&self) -> Result<(), ImportError> {
        let mut file = &self.file;
        match self.kind {
            SourceKind::Vmlinux => super::elf::check_vmlinux(&mut file)
                .map_err(|reason| ImportError::NotKernel { path: self.path.clone(), reason }),
            SourceKind::BzImage => {
                let len = file.metadata().map_err(io_err("stat", &self.path))?.len();
                let setup = super::bzimage::read_setup(&mut file).map_err(io_err("read", &self.path))?;
                super::bzimage::parse_header(&setup, len).map(drop)
            }
            SourceKind::Deb => Ok(()),
        }
    }

    /// What the file is.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }
}

/// Detects the kind of kernel file from its first bytes: the ELF magic for a
/// vmlinux, `HdrS` at 0x202 for a bzImage, an ar archive with a
/// `debian-binary` member for a package.
fn detect_kind(file: &File, path: &Path) -> Result<SourceKind, ImportError> {
    let mut head = [0u8; 0x208];
    let mut len = 0;
    while len < head.len() {
        match file.read_at(&mut head[len..], len as u64).map_err(io_err("read", path))? {
            0 => break,
            n => len += n,
        }
    }
    kind_from_head(&head[..len]).ok_or_else(|| ImportError::UnknownKind { path: path.to_path_buf() })
}

pub(crate) fn kind_from_head(head: &[u8]) -> Option<SourceKind> {
    if head.starts_with(ELF_MAGIC) {
        Some(SourceKind::Vmlinux)
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(SourceKind::BzImage)
    } else if deb::looks_like_deb(head) {
        Some(SourceKind::Deb)
    } else {
        None
    }
}

/// An opened modules directory (`/lib/modules/<release>`).
#[derive(Debug)]
pub struct ModulesDir {
    pub(crate) dir: File,
    pub(crate) path: PathBuf,
    pub(crate) release: String,
}

impl ModulesDir {
    /// Checks `dir` (opened from `path` by [`open_source`]) is a directory
    /// named after a kernel release.
    pub fn new(dir: File, path: &Path) -> Result<ModulesDir, ImportError> {
        let meta = dir.metadata().map_err(io_err("stat", path))?;
        if !meta.is_dir() {
            return Err(ImportError::NotADirectory { path: path.to_path_buf(), what: file_type_name(&meta) });
        }
        let release = super::modtree::release_of_dir(path)?;
        Ok(ModulesDir { dir, path: path.to_path_buf(), release })
    }
}

/// The marker inside an `io::Error` that a [`LimitedReader`] ran past its limit.
#[derive(Debug)]
pub(crate) struct LimitExceeded {
    pub(crate) what: String,
    pub(crate) limit: u64,
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is larger than the limit of {}", self.what, human(self.limit))
    }
}

impl std::error::Error for LimitExceeded {}

/// A reader that fails, rather than ending early, once more than `limit`
/// bytes have come through it: a decompression bomb stops at the limit.
pub(crate) struct LimitedReader<R> {
    inner: R,
    remaining: u64,
    what: &'static str,
    limit: u64,
}

impl<R: Read> LimitedReader<R> {
    pub(crate) fn new(inner: R, limit: u64, what: &'static str) -> Self {
        LimitedReader { inner, remaining: limit, what, limit }
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // One byte past the limit is enough to know it is exceeded.
        let max = buf.len().min(usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n as u64 > self.remaining {
            return Err(io::Error::other(LimitExceeded { what: self.what.to_string(), limit: self.limit }));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Turns an `io::Error` that carries a [`LimitExceeded`] into
/// [`ImportError::TooLarge`], anything else through `other`.
pub(crate) fn limit_or(error: io::Error, other: impl FnOnce(io::Error) -> ImportError) -> ImportError {
    match error.get_ref().and_then(|e| e.downcast_ref::<LimitExceeded>()) {
        Some(exceeded) => ImportError::TooLarge { what: exceeded.what.clone(), limit: exceeded.limit },
        None => other(error),
    }
}

/// Copies `reader` to the file `dest` (created), at most `limit` bytes:
/// one byte more is [`ImportError::TooLarge`] naming `what`. `read_err`
/// says what a failed read is. Returns the bytes copied.
pub(crate) fn copy_to_file(
    reader: impl Read,
    dest: &Path,
    limit: u64,
    what: &'static str,
    read_err: impl FnOnce(io::Error) -> ImportError,
) -> Result<u64, ImportError> {
    let mut out = File::create(dest).map_err(io_err("create", dest))?;
    copy_limited(reader, &mut out, limit, what, read_err, dest)
}

/// [`copy_to_file`] into an open writer; `dest` names it in write errors.
pub(crate) fn copy_limited(
    reader: impl Read,
    out: &mut impl Write,
    limit: u64,
    what: &'static str,
    read_err: impl FnOnce(io::Error) -> ImportError,
    dest: &Path,
) -> Result<u64, ImportError> {
    let mut reader = LimitedReader::new(reader, limit, what);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(limit_or(e, read_err)),
        };
        out.write_all(&buf[..n]).map_err(io_err("write", dest))?;
        total += n as u64;
    }
    out.flush().map_err(io_err("write", dest))?;
    Ok(total)
}

/// A writer that passes bytes on and computes their SHA-256 as they go.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: sha2::Digest::new() }
    }

    /// The inner writer and the lowercase hex digest of what went through.
    pub(crate) fn finish(self) -> (W, String) {
        let digest = sha2::Digest::finalize(self.hasher);
        (self.inner, digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_directories_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, 0o600.into(), 0).unwrap();
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = open_source(&socket).unwrap_err();
        assert!(matches!(err, ImportError::NotRegularFile { what: "a socket", .. }), "{err}");
        for (path, what) in
            [(Path::new("/dev/zero"), "a character device"), (fifo.as_path(), "a FIFO"), (dir.path(), "a directory")]
        {
            let file = open_source(path).unwrap();
            let err = SourceFile::new(file, path, Some(SourceKind::Vmlinux)).unwrap_err();
            assert!(matches!(err, ImportError::NotRegularFile { .. }), "{err}");
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn a_source_past_its_kinds_limit_is_refused_by_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let file = File::create(&path).unwrap();
        file.write_all_at(&banger_testkit::bundles::fake_vmlinux("big"), 0).unwrap();
        file.set_len(VMLINUX_MAX + 1).unwrap();
        let err = SourceFile::new(open_source(&path).unwrap(), &path, None).unwrap_err();
        assert!(matches!(err, ImportError::TooLarge { limit: VMLINUX_MAX, .. }), "{err}");
        assert!(err.to_string().contains("512 MiB"), "{err}");
        file.set_len(VMLINUX_MAX).unwrap();
        assert_eq!(SourceFile::new(open_source(&path).unwrap(), &path, None).unwrap().kind(), SourceKind::Vmlinux);
    }

    #[test]
    fn limited_reader_fails_one_byte_past_the_limit() {
        let mut out = Vec::new();
        let ok = copy_limited(&[7u8; 100][..], &mut out, 100, "x", |e| panic!("{e}"), Path::new("o"));
        assert_eq!(ok.unwrap(), 100);
        let err = copy_limited(&[7u8; 101][..], &mut Vec::new(), 100, "the thing", |e| panic!("{e}"), Path::new("o"))
            .unwrap_err();
        assert!(matches!(err, ImportError::TooLarge { limit: 100, .. }), "{err}");
        assert!(err.to_string().contains("the thing"), "{err}");
    }

    #[test]
    fn the_digest_is_computed_while_copying() {
        let mut out = HashingWriter::new(Vec::new());
        copy_limited(&b"abc"[..], &mut out, 10, "x", |e| panic!("{e}"), Path::new("o")).unwrap();
        let (bytes, digest) = out.finish();
        assert_eq!(bytes, b"abc");
        assert_eq!(digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn kind_is_detected_from_magic() {
        assert_eq!(kind_from_head(b"\x7fELF\x02\x01"), Some(SourceKind::Vmlinux));
        let mut bz = vec![0u8; 0x208];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kind_from_head(&bz), Some(SourceKind::BzImage));
        let deb = deb::tests::ar_archive(&[("debian-binary", b"2.0\n")]);
        assert_eq!(kind_from_head(&deb), Some(SourceKind::Deb));
        assert_eq!(kind_from_head(b"!<arch>\nfoo"), None);
        assert_eq!(kind_from_head(b"hello"), None);
    }

    #[test]
    fn unknown_kind_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, b"not a kernel").unwrap();
        let err = SourceFile::new(open_source(&path).unwrap(), &path, None).unwrap_err();
        assert!(err.to_string().contains("junk"), "{err}");
    }
}
