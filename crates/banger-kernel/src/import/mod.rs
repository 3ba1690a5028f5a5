//! Importing a kernel from files on the host: an ELF vmlinux, an x86 bzImage
//! or a Debian `linux-image-*` package, plus its modules tree. A kernel whose
//! virtio drivers are modules gets a small busybox initramfs that loads them
//! and switches to the guest's root filesystem.

pub mod bzimage;
pub mod deb;
pub mod initramfs;
pub mod modinfo;
mod modtree;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use modinfo::{ModuleIndex, ModuleState};

/// Modules the guest needs for its devices, in a sensible load order. Any of
/// them built into the kernel is skipped.
pub const VIRTIO_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// Modules needed to mount an ext4 root when ext4 itself is a module.
/// `crc32c_generic` is only reached through the crypto API, never `depends=`.
const EXT4_MODULES: &[&str] = &["crc32c_generic", "ext4"];

/// Without these the guest cannot reach its root disk: the import fails
/// when the modules tree proves they are neither modules nor built in.
const REQUIRED_MODULES: &[&str] = &["virtio", "virtio_ring", "virtio_pci", "virtio_blk"];

/// What a kernel import failed on.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done, e.g. "read" or "create".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The input is none of the kinds an import understands.
    #[error(
        "{} is not an ELF vmlinux, an x86 bzImage or a Debian package",
        path.display()
    )]
    UnknownKind {
        /// The file that was examined.
        path: PathBuf,
    },
    /// A file given as a vmlinux does not start with the ELF magic.
    #[error("{} is not an ELF file", path.display())]
    NotElf {
        /// The file that was examined.
        path: PathBuf,
    },
    /// The bzImage setup header is malformed.
    #[error("not a valid bzImage: {0}")]
    InvalidBzImage(&'static str),
    /// The bzImage payload uses a compression this importer cannot undo.
    #[error("unsupported kernel payload compression: {0}")]
    UnsupportedCompression(&'static str),
    /// Decompressing the bzImage payload failed.
    #[error("cannot decompress the {format} kernel payload")]
    Decompress {
        /// The payload's compression format.
        format: &'static str,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// The decompressed bzImage payload is not an ELF image.
    #[error("the decompressed kernel payload is not an ELF vmlinux")]
    PayloadNotElf,
    /// The Debian package is malformed or holds something unexpected.
    #[error("not a valid kernel package: {0}")]
    InvalidDeb(String),
    /// Reading the package's data archive failed.
    #[error("cannot read the package's {member}")]
    DebMember {
        /// The ar member being read, e.g. `data.tar.xz`.
        member: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The package holds no `/boot/vmlinuz-*`: a metapackage.
    #[error("{}", metapackage_message(package.as_deref(), depends.as_deref()))]
    MetaPackage {
        /// The package's own name, if its control file could be read.
        package: Option<String>,
        /// The versioned kernel package it depends on, if any.
        depends: Option<String>,
    },
    /// A path inside an archive or modules tree would escape its directory.
    #[error("refusing unsafe path {} in the modules tree", path.display())]
    UnsafePath {
        /// The offending path.
        path: PathBuf,
    },
    /// A `.ko` file is not a relocatable ELF64 with a `.modinfo` section.
    #[error("{} is not a loadable kernel module: {reason}", path.display())]
    InvalidModule {
        /// The module file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A needed module depends on one the modules tree does not have.
    #[error("module {module} depends on {dependency}, which is neither in the modules tree nor built in")]
    MissingDependency {
        /// The module that needs the dependency.
        module: String,
        /// The dependency that cannot be found.
        dependency: String,
    },
    /// A module the guest cannot boot without is missing from the kernel.
    #[error("the kernel has no {0} driver, neither built in nor as a module")]
    MissingRequiredModule(String),
    /// Module dependencies form a cycle.
    #[error("module dependencies form a cycle through {0}")]
    DependencyCycle(String),
    /// The modules directory belongs to another kernel release.
    #[error("the modules are for kernel {modules} but the kernel is {kernel}")]
    ReleaseMismatch {
        /// The release the kernel reports.
        kernel: String,
        /// The release the modules directory is named after.
        modules: String,
    },
    /// The busybox for the initramfs is missing or not statically linked.
    #[error("{} is {problem}: install Debian's busybox-static package (or pass a static busybox)", path.display())]
    Busybox {
        /// The busybox path that was tried.
        path: PathBuf,
        /// "missing", "not an ELF executable" or "dynamically linked".
        problem: &'static str,
    },
}

fn metapackage_message(package: Option<&str>, depends: Option<&str>) -> String {
    let name = package.unwrap_or("The package");
    match depends {
        Some(dep) => format!(
            "{name} has no kernel image (/boot/vmlinuz-*): it is a metapackage; import the package it depends on, {dep}"
        ),
        None => format!("{name} has no kernel image (/boot/vmlinuz-*): it is a metapackage"),
    }
}

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImportError {
    let path = path.to_path_buf();
    move |source| ImportError::Io { action, path, source }
}

/// What kind of file a kernel is imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An uncompressed ELF kernel, booted as is.
    Vmlinux,
    /// An x86 bzImage (`vmlinuz`), whose compressed payload is the vmlinux.
    BzImage,
    /// A Debian `linux-image-*` package with the bzImage and the modules.
    Deb,
}

/// Choices for an import beyond the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// A `/lib/modules/<release>` directory to take the modules from. For a
    /// package it replaces the package's own modules.
    pub modules_dir: Option<PathBuf>,
    /// A statically linked busybox, copied into the initramfs.
    pub busybox: PathBuf,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { modules_dir: None, busybox: PathBuf::from("/bin/busybox") }
    }
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedKernel {
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`, when it could be read.
    pub kernel_version: Option<String>,
    /// Whether `initrd.img` was written.
    pub has_initrd: bool,
    /// Module names put in the initramfs, in load order.
    pub modules: Vec<String>,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Detects the kind of kernel file from its first bytes: the ELF magic for a
/// vmlinux, `HdrS` at 0x202 for a bzImage, an ar archive with a
/// `debian-binary` member for a package.
pub fn detect_kind(path: &Path) -> Result<SourceKind, ImportError> {
    use io::Read;
    let mut head = Vec::with_capacity(0x208);
    fs::File::open(path).and_then(|f| f.take(0x208).read_to_end(&mut head)).map_err(io_err("read", path))?;
    kind_from_head(&head).ok_or_else(|| ImportError::UnknownKind { path: path.to_path_buf() })
}

fn kind_from_head(head: &[u8]) -> Option<SourceKind> {
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

/// Imports the kernel at `path` into `dest`, which exists and is empty.
///
/// Writes `dest/vmlinux` (an ELF) and, when the kernel has its virtio drivers
/// as modules, `dest/initrd.img` and `dest/modules/<release>/` (the whole
/// modules tree, with every module stored uncompressed as `.ko`). Reports
/// each step's name through `progress`. On error, `dest` may hold part of
/// the result; the caller removes it.
pub fn import(
    path: &Path,
    kind: SourceKind,
    opts: &ImportOptions,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<ImportedKernel, ImportError> {
    let modules_root = dest.join("modules");
    let (vmlinux, mut version, mut release) = match kind {
        SourceKind::Vmlinux => {
            progress("copy vmlinux");
            let data = fs::read(path).map_err(io_err("read", path))?;
            if !data.starts_with(ELF_MAGIC) {
                return Err(ImportError::NotElf { path: path.to_path_buf() });
            }
            let version = find_linux_version(&data);
            (data, version, None)
        }
        SourceKind::BzImage => {
            progress("extract vmlinux");
            let data = fs::read(path).map_err(io_err("read", path))?;
            let version = bzimage::kernel_version(&data);
            (bzimage::extract_vmlinux(&data)?, version, None)
        }
        SourceKind::Deb => {
            progress("unpack package");
            let modules_dest = opts.modules_dir.is_none().then_some(modules_root.as_path());
            let pkg = deb::read_kernel_package(path, modules_dest)?;
            progress("extract vmlinux");
            let vmlinux = bzimage::extract_vmlinux(&pkg.vmlinuz)?;
            let release = pkg.has_modules.then(|| pkg.release.clone());
            (vmlinux, Some(pkg.release), release)
        }
    };
    let vmlinux_path = dest.join("vmlinux");
    fs::write(&vmlinux_path, &vmlinux).map_err(io_err("write", &vmlinux_path))?;
    drop(vmlinux);

    if let Some(dir) = &opts.modules_dir {
        progress("copy modules");
        let name = modtree::release_of_dir(dir)?;
        if let Some(kernel) = &version {
            if *kernel != name {
                return Err(ImportError::ReleaseMismatch { kernel: kernel.clone(), modules: name });
            }
        }
        modtree::copy_modules_dir(dir, &modules_root.join(&name))?;
        release = Some(name);
    }
    if version.is_none() {
        version.clone_from(&release);
    }

    let Some(release) = release else {
        return Ok(ImportedKernel { kernel_version: version, has_initrd: false, modules: Vec::new() });
    };

    progress("resolve modules");
    let index = ModuleIndex::scan(&modules_root.join(&release))?;
    let modules = initramfs_modules(&index)?;
    let needs_initrd = VIRTIO_MODULES.iter().any(|m| index.state(m) == ModuleState::Module);
    if !needs_initrd {
        return Ok(ImportedKernel { kernel_version: version, has_initrd: false, modules: Vec::new() });
    }

    progress("build initramfs");
    let files: Vec<(String, PathBuf)> = modules
        .iter()
        .map(|name| Ok((name.clone(), index.path_of(name)?.to_path_buf())))
        .collect::<Result<_, ImportError>>()?;
    initramfs::write_initramfs(&dest.join("initrd.img"), &opts.busybox, &files)?;
    Ok(ImportedKernel { kernel_version: version, has_initrd: true, modules })
}

/// The modules to load from the initramfs, dependencies first.
fn initramfs_modules(index: &ModuleIndex) -> Result<Vec<String>, ImportError> {
    for name in REQUIRED_MODULES {
        if index.state(name) == ModuleState::Absent {
            return Err(ImportError::MissingRequiredModule((*name).to_string()));
        }
    }
    let mut wanted: Vec<&str> = VIRTIO_MODULES.to_vec();
    if index.state("ext4") == ModuleState::Module {
        wanted.extend_from_slice(EXT4_MODULES);
    }
    index.load_order(&wanted)
}

/// Finds the release in a `Linux version X ...` banner inside a vmlinux.
fn find_linux_version(data: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(pos) = data[from..].iter().position(|&b| b == b'L') {
        let start = from + pos;
        if data[start..].starts_with(BANNER) {
            let rest = &data[start + BANNER.len()..];
            let end = rest.iter().position(|&b| b == b' ' || b == 0)?;
            let word = std::str::from_utf8(&rest[..end]).ok()?;
            // The format string "Linux version %s" also appears; skip it.
            if !word.is_empty() && word.as_bytes()[0].is_ascii_digit() {
                return Some(word.to_string());
            }
        }
        from = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn detect_kind_names_the_file_when_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        fs::write(&path, b"not a kernel").unwrap();
        let err = detect_kind(&path).unwrap_err();
        assert!(err.to_string().contains("junk"), "{err}");
    }

    #[test]
    fn linux_version_is_found_in_banner() {
        let mut data = b"\x7fELF junk Linux version %s (%s) ".to_vec();
        data.extend_from_slice(b"\0Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org)");
        assert_eq!(find_linux_version(&data).as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(find_linux_version(b"\x7fELF nothing"), None);
    }

    #[test]
    fn vmlinux_import_copies_and_reads_version() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, b"\x7fELF\x02\x01\x01 Linux version 6.6.1-test (x)").unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let mut steps = Vec::new();
        let got =
            import(&src, SourceKind::Vmlinux, &ImportOptions::default(), &dest, &mut |s| steps.push(s.to_string()))
                .unwrap();
        assert_eq!(got.kernel_version.as_deref(), Some("6.6.1-test"));
        assert!(!got.has_initrd);
        assert_eq!(fs::read(dest.join("vmlinux")).unwrap(), fs::read(&src).unwrap());
        assert_eq!(steps, ["copy vmlinux"]);
    }

    #[test]
    fn vmlinux_import_rejects_non_elf() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, b"MZ not elf").unwrap();
        let err = import(&src, SourceKind::Vmlinux, &ImportOptions::default(), dir.path(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImportError::NotElf { .. }), "{err}");
    }

    #[test]
    fn modules_dir_for_another_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, b"\x7fELF Linux version 6.6.1-test (x)").unwrap();
        let mods = dir.path().join("6.6.2-other");
        fs::create_dir(&mods).unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let opts = ImportOptions { modules_dir: Some(mods), ..ImportOptions::default() };
        let err = import(&src, SourceKind::Vmlinux, &opts, &dest, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImportError::ReleaseMismatch { .. }), "{err}");
    }

    /// A static "busybox" good enough for the initramfs writer's checks.
    fn fake_static_busybox(dir: &Path) -> PathBuf {
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        let path = dir.join("busybox");
        fs::write(&path, elf).unwrap();
        path
    }

    #[test]
    fn synthetic_package_gets_vmlinux_modules_and_initrd() {
        use deb::tests::{make_deb, TarItem};
        use modinfo::tests::make_module;
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, b"\x7fELF\x02\x01\x01 the kernel").unwrap();
        let vmlinuz = bzimage::tests::make_bzimage(&gz.finish().unwrap(), "6.1.0-9-test");
        let m = |deps: &str, name: &str| make_module(&[&format!("depends={deps}"), &format!("name={name}")]);
        let (ring, virtio, pci, blk) = (
            m("", "virtio_ring"),
            m("", "virtio"),
            m("virtio,virtio_ring", "virtio_pci"),
            m("virtio,virtio_ring", "virtio_blk"),
        );
        let kdir = "./lib/modules/6.1.0-9-test/kernel/drivers/virtio";
        let (p_ring, p_virtio, p_pci, p_blk) = (
            format!("{kdir}/virtio_ring.ko"),
            format!("{kdir}/virtio.ko"),
            format!("{kdir}/virtio_pci.ko"),
            "./lib/modules/6.1.0-9-test/kernel/drivers/block/virtio_blk.ko".to_string(),
        );
        let deb = make_deb(
            "Package: linux-image-6.1.0-9-test\n",
            &[
                TarItem::File("./boot/vmlinuz-6.1.0-9-test", &vmlinuz),
                TarItem::File(&p_blk, &blk),
                TarItem::File(&p_pci, &pci),
                TarItem::File(&p_virtio, &virtio),
                TarItem::File(&p_ring, &ring),
                TarItem::File(
                    "./lib/modules/6.1.0-9-test/modules.builtin",
                    b"kernel/fs/ext4/ext4.ko\nkernel/drivers/virtio/virtio_mmio.ko\n",
                ),
            ],
        );
        let path = dir.path().join("k.deb");
        fs::write(&path, deb).unwrap();
        assert_eq!(detect_kind(&path).unwrap(), SourceKind::Deb);
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let opts = ImportOptions { modules_dir: None, busybox: fake_static_busybox(dir.path()) };
        let mut steps = Vec::new();
        let got = import(&path, SourceKind::Deb, &opts, &dest, &mut |s| steps.push(s.to_string())).unwrap();
        assert_eq!(got.kernel_version.as_deref(), Some("6.1.0-9-test"));
        assert!(got.has_initrd);
        assert_eq!(got.modules, ["virtio_ring", "virtio", "virtio_pci", "virtio_blk"]);
        assert_eq!(steps, ["unpack package", "extract vmlinux", "resolve modules", "build initramfs"]);
        assert!(fs::read(dest.join("vmlinux")).unwrap().starts_with(ELF_MAGIC));
        assert!(dest.join("modules/6.1.0-9-test/kernel/drivers/block/virtio_blk.ko").is_file());
        let entries = initramfs::tests::read_initramfs(&dest.join("initrd.img"));
        assert!(entries.iter().any(|e| e.name == "lib/modules/virtio_pci.ko"));
    }

    #[test]
    fn kernel_without_virtio_block_driver_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, b"\x7fELF Linux version 6.6.1-test (x)").unwrap();
        let mods = dir.path().join("6.6.1-test");
        fs::create_dir(&mods).unwrap();
        fs::write(mods.join("modules.builtin"), "kernel/drivers/virtio/virtio.ko\n").unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let opts = ImportOptions { modules_dir: Some(mods), busybox: fake_static_busybox(dir.path()) };
        let err = import(&src, SourceKind::Vmlinux, &opts, &dest, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImportError::MissingRequiredModule(_)), "{err}");
    }

    #[test]
    fn all_built_in_means_no_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, b"\x7fELF Linux version 6.6.1-test (x)").unwrap();
        let mods = dir.path().join("6.6.1-test");
        fs::create_dir(&mods).unwrap();
        let builtin: String = VIRTIO_MODULES.iter().map(|m| format!("kernel/x/{m}.ko\n")).collect();
        fs::write(mods.join("modules.builtin"), builtin).unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let opts = ImportOptions { modules_dir: Some(mods), ..ImportOptions::default() };
        let got = import(&src, SourceKind::Vmlinux, &opts, &dest, &mut |_| {}).unwrap();
        assert!(!got.has_initrd);
        assert!(got.modules.is_empty());
        assert!(!dest.join("initrd.img").exists());
        assert!(dest.join("modules/6.6.1-test/modules.builtin").is_file());
    }

    #[test]
    fn metapackage_message_names_the_dependency() {
        let err = ImportError::MetaPackage {
            package: Some("linux-image-cloud-amd64".into()),
            depends: Some("linux-image-6.1.0-56-cloud-amd64".into()),
        };
        let msg = err.to_string();
        assert!(msg.contains("metapackage"), "{msg}");
        assert!(msg.contains("linux-image-6.1.0-56-cloud-amd64"), "{msg}");
    }
}
