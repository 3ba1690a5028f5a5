//! Importing a kernel from files on the host: an ELF vmlinux, an x86 bzImage
//! or a Debian `linux-image-*` package, plus its modules tree. Only what is
//! really a Linux kernel and its modules is taken, every source and every
//! decompression is streamed through a size limit. A kernel whose virtio
//! drivers are modules gets a small busybox initramfs that loads them and
//! switches to the guest's root filesystem.

pub mod bzimage;
pub mod deb;
pub mod elf;
pub mod initramfs;
pub mod modinfo;
mod modtree;
pub mod source;
mod targuard;

use std::fs;
use std::io::{self, Seek};
use std::path::{Path, PathBuf};

use modinfo::{ModuleIndex, ModuleState};
pub use source::{open_source, ModulesDir, SourceFile};

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
    /// A source is a device, a FIFO, a socket or a directory.
    #[error("{} is {what}, not a regular file", path.display())]
    NotRegularFile {
        /// The source.
        path: PathBuf,
        /// What it is instead, e.g. "a character device".
        what: &'static str,
    },
    /// A modules directory is not a directory.
    #[error("{} is {what}, not a modules directory", path.display())]
    NotADirectory {
        /// The path given as the modules directory.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// A source, or what decompresses out of it, passed its size limit.
    #[error("{what} is larger than the limit of {}", source::human(*limit))]
    TooLarge {
        /// What passed the limit: a file, or e.g. "the decompressed kernel payload".
        what: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A file given as a vmlinux is not a Linux kernel.
    #[error("{} is not a Linux kernel: {reason}", path.display())]
    NotKernel {
        /// The file that was examined.
        path: PathBuf,
        /// What it lacks.
        reason: &'static str,
    },
    /// A modules directory holds no module.
    #[error("{} holds no kernel modules (*.ko, *.ko.xz, *.ko.zst or *.ko.gz)", path.display())]
    NoModules {
        /// The modules directory.
        path: PathBuf,
    },
    /// A modules directory is not shaped like one.
    #[error("{} is not a modules tree: {reason}", path.display())]
    InvalidModulesTree {
        /// Where the walk found the problem.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
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
    /// The decompressed bzImage payload is not a Linux vmlinux.
    #[error("the decompressed kernel payload is not a Linux vmlinux: {0}")]
    PayloadNotKernel(&'static str),
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
    /// A `.ko` file is not an x86_64 relocatable ELF64 (with a `.modinfo`
    /// section, when it is one the guest loads).
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

impl SourceKind {
    /// How the README and errors call it.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Vmlinux => "vmlinux",
            SourceKind::BzImage => "bzImage",
            SourceKind::Deb => "package",
        }
    }
}

/// Choices for an import beyond the source file.
#[derive(Debug)]
pub struct ImportOptions {
    /// A `/lib/modules/<release>` directory to take the modules from. For a
    /// package it replaces the package's own modules.
    pub modules: Option<ModulesDir>,
    /// A statically linked busybox, copied into the initramfs.
    pub busybox: PathBuf,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { modules: None, busybox: PathBuf::from("/bin/busybox") }
    }
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedKernel {
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`, when it could be read.
    pub kernel_version: Option<String>,
    /// SHA-256 of `vmlinux`, lowercase hex, computed as it was written.
    pub vmlinux_sha256: String,
    /// Whether `initrd.img` was written.
    pub has_initrd: bool,
    /// Module names put in the initramfs, in load order.
    pub modules: Vec<String>,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Imports the kernel `source` into `dest`, which exists and is empty.
///
/// Writes `dest/vmlinux` (checked to be a Linux kernel) and, when the
/// kernel has its virtio drivers as modules, `dest/initrd.img` and
/// `dest/modules/<release>/` (the modules and `modules.*` files, with every
/// module stored uncompressed as `.ko`). Reports each step's name through
/// `progress`. On error, `dest` may hold part of the result; the caller
/// removes it.
pub fn import(
    source: SourceFile,
    opts: &ImportOptions,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<ImportedKernel, ImportError> {
    let modules_root = dest.join("modules");
    let vmlinux_path = dest.join("vmlinux");
    let SourceFile { mut file, path, kind, .. } = source;
    let (mut version, mut release, vmlinux_sha256) = match kind {
        SourceKind::Vmlinux => {
            progress("copy vmlinux");
            // SourceFile::new checked it is a Linux kernel.
            file.rewind().map_err(io_err("read", &path))?;
            let out = fs::File::create(&vmlinux_path).map_err(io_err("create", &vmlinux_path))?;
            let mut writer = source::HashingWriter::new(elf::VersionScanner::new(io::BufWriter::new(out)));
            let read_err = io_err("read", &path);
            source::copy_limited(&file, &mut writer, source::VMLINUX_MAX, "the vmlinux", read_err, &vmlinux_path)?;
            let (scanner, sha256) = writer.finish();
            (scanner.finish(), None, sha256)
        }
        SourceKind::BzImage => {
            progress("extract vmlinux");
            let extracted = bzimage::extract_vmlinux_file(&mut file, &vmlinux_path)?;
            (extracted.release, None, extracted.sha256)
        }
        SourceKind::Deb => {
            progress("unpack package");
            let vmlinuz = dest.join("vmlinuz");
            let modules_dest = opts.modules.is_none().then_some(modules_root.as_path());
            let pkg = deb::read_kernel_package(&file, &path, &vmlinuz, modules_dest)?;
            progress("extract vmlinux");
            let mut bz = fs::File::open(&vmlinuz).map_err(io_err("read", &vmlinuz))?;
            let extracted = bzimage::extract_vmlinux_file(&mut bz, &vmlinux_path)?;
            fs::remove_file(&vmlinuz).map_err(io_err("remove", &vmlinuz))?;
            let release = pkg.has_modules.then(|| pkg.release.clone());
            (Some(pkg.release), release, extracted.sha256)
        }
    };

    if let Some(dir) = &opts.modules {
        progress("copy modules");
        if let Some(kernel) = &version {
            if *kernel != dir.release {
                return Err(ImportError::ReleaseMismatch { kernel: kernel.clone(), modules: dir.release.clone() });
            }
        }
        modtree::copy_modules_dir(dir, &modules_root.join(&dir.release))?;
        release = Some(dir.release.clone());
    }
    if version.is_none() {
        version.clone_from(&release);
    }

    let Some(release) = release else {
        return Ok(ImportedKernel { kernel_version: version, vmlinux_sha256, has_initrd: false, modules: Vec::new() });
    };

    progress("resolve modules");
    let index = ModuleIndex::scan(&modules_root.join(&release))?;
    let modules = initramfs_modules(&index)?;
    let needs_initrd = VIRTIO_MODULES.iter().any(|m| index.state(m) == ModuleState::Module);
    if !needs_initrd {
        return Ok(ImportedKernel { kernel_version: version, vmlinux_sha256, has_initrd: false, modules: Vec::new() });
    }

    progress("build initramfs");
    let files: Vec<(String, PathBuf)> = modules
        .iter()
        .map(|name| Ok((name.clone(), index.path_of(name)?.to_path_buf())))
        .collect::<Result<_, ImportError>>()?;
    initramfs::write_initramfs(&dest.join("initrd.img"), &opts.busybox, &files)?;
    Ok(ImportedKernel { kernel_version: version, vmlinux_sha256, has_initrd: true, modules })
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

#[cfg(test)]
mod tests {
    use super::*;
    use banger_testkit::bundles::{fake_vmlinux, FAKE_RELEASE};

    fn source(path: &Path, kind: Option<SourceKind>) -> SourceFile {
        SourceFile::new(open_source(path).unwrap(), path, kind).unwrap()
    }

    fn modules(path: &Path) -> Option<ModulesDir> {
        Some(ModulesDir::new(open_source(path).unwrap(), path).unwrap())
    }

    #[test]
    fn vmlinux_import_copies_and_reads_version() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, fake_vmlinux("copy")).unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let mut steps = Vec::new();
        let got =
            import(source(&src, None), &ImportOptions::default(), &dest, &mut |s| steps.push(s.to_string())).unwrap();
        assert_eq!(got.kernel_version.as_deref(), Some(FAKE_RELEASE));
        assert!(!got.has_initrd);
        assert_eq!(fs::read(dest.join("vmlinux")).unwrap(), fs::read(&src).unwrap());
        assert_eq!(steps, ["copy vmlinux"]);
    }

    #[test]
    fn what_is_not_a_kernel_is_refused_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        for (bad, why) in [
            (b"MZ not elf".to_vec(), "no ELF header"),
            (b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0".to_vec(), "no ELF header"),
            (modinfo::tests::make_module(&["name=x"]), "not an ELF executable"),
        ] {
            fs::write(&src, bad).unwrap();
            let err = SourceFile::new(open_source(&src).unwrap(), &src, Some(SourceKind::Vmlinux)).unwrap_err();
            assert!(matches!(err, ImportError::NotKernel { .. }), "{err}");
            assert!(err.to_string().contains(why), "{err}");
        }
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        fs::write(&src, bz).unwrap();
        let err = SourceFile::new(open_source(&src).unwrap(), &src, None).unwrap_err();
        assert!(matches!(err, ImportError::InvalidBzImage(_)), "{err}");
    }

    #[test]
    fn modules_dir_for_another_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, fake_vmlinux("x")).unwrap();
        let mods = dir.path().join("6.6.2-other");
        fs::create_dir(&mods).unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let opts = ImportOptions { modules: modules(&mods), ..ImportOptions::default() };
        let err = import(source(&src, None), &opts, &dest, &mut |_| {}).unwrap_err();
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
        io::Write::write_all(&mut gz, &fake_vmlinux("the kernel")).unwrap();
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
        let src = source(&path, None);
        assert_eq!(src.kind(), SourceKind::Deb);
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let opts = ImportOptions { modules: None, busybox: fake_static_busybox(dir.path()) };
        let mut steps = Vec::new();
        let got = import(src, &opts, &dest, &mut |s| steps.push(s.to_string())).unwrap();
        assert_eq!(got.kernel_version.as_deref(), Some("6.1.0-9-test"));
        assert!(got.has_initrd);
        assert_eq!(got.modules, ["virtio_ring", "virtio", "virtio_pci", "virtio_blk"]);
        assert_eq!(steps, ["unpack package", "extract vmlinux", "resolve modules", "build initramfs"]);
        assert_eq!(fs::read(dest.join("vmlinux")).unwrap(), fake_vmlinux("the kernel"));
        assert!(!dest.join("vmlinuz").exists(), "the bzImage is not kept");
        assert!(dest.join("modules/6.1.0-9-test/kernel/drivers/block/virtio_blk.ko").is_file());
        let entries = initramfs::tests::read_initramfs(&dest.join("initrd.img"));
        assert!(entries.iter().any(|e| e.name == "lib/modules/virtio_pci.ko"));
    }

    /// A modules directory for the fake kernel holding one module and
    /// `modules.builtin` listing `builtin`.
    fn fake_modules_dir(dir: &Path, builtin: &str) -> PathBuf {
        let mods = dir.join(FAKE_RELEASE);
        fs::create_dir_all(mods.join("kernel/fs")).unwrap();
        fs::write(mods.join("kernel/fs/dummy.ko"), modinfo::tests::make_module(&["name=dummy"])).unwrap();
        fs::write(mods.join("modules.builtin"), builtin).unwrap();
        mods
    }

    #[test]
    fn kernel_without_virtio_block_driver_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, fake_vmlinux("x")).unwrap();
        let mods = fake_modules_dir(dir.path(), "kernel/drivers/virtio/virtio.ko\n");
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let opts = ImportOptions { modules: modules(&mods), busybox: fake_static_busybox(dir.path()) };
        let err = import(source(&src, None), &opts, &dest, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImportError::MissingRequiredModule(_)), "{err}");
    }

    #[test]
    fn all_built_in_means_no_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, fake_vmlinux("x")).unwrap();
        let builtin: String = VIRTIO_MODULES.iter().map(|m| format!("kernel/x/{m}.ko\n")).collect();
        let mods = fake_modules_dir(dir.path(), &builtin);
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let opts = ImportOptions { modules: modules(&mods), ..ImportOptions::default() };
        let got = import(source(&src, None), &opts, &dest, &mut |_| {}).unwrap();
        assert!(!got.has_initrd);
        assert!(got.modules.is_empty());
        assert!(!dest.join("initrd.img").exists());
        assert!(dest.join(format!("modules/{FAKE_RELEASE}/modules.builtin")).is_file());
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
