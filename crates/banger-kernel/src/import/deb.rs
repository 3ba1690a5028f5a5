//! Reading a Debian `linux-image-*` package: the ar archive, its control
//! fields, and from `data.tar.*` the bzImage (`/boot/vmlinuz-<release>`) and
//! the modules tree, streamed to disk without unpacking anything else. Every
//! member decompresses through a limit.

use std::collections::BTreeSet;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::modtree::TreeBudget;
use super::source::{copy_to_file, limit_or, LimitedReader, BZIMAGE_MAX, DEB_CONTROL_MAX, DEB_DATA_MAX};
use super::targuard::TarGuard;
use super::{io_err, modtree, ImportError};

/// More of the control file than any package has.
const CONTROL_FILE_MAX: u64 = 1 << 20;

const AR_MAGIC: &[u8; 8] = b"!<arch>\n";
const AR_HEADER_LEN: usize = 60;

/// What a kernel package yielded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    /// The `Package:` field of the control file, when present.
    pub package: Option<String>,
    /// The kernel release, from `/boot/vmlinuz-<release>`.
    pub release: String,
    /// Whether `<modules_dest>/<release>/` was written.
    pub has_modules: bool,
}

/// Whether `head` starts an ar archive whose first member is `debian-binary`.
pub fn looks_like_deb(head: &[u8]) -> bool {
    head.starts_with(AR_MAGIC)
        && head
            .get(8..8 + AR_HEADER_LEN)
            .and_then(|h| parse_member_header(h.try_into().ok()?))
            .is_some_and(|(name, _)| name == "debian-binary")
}

/// Parses an ar member header into the member's name and size.
fn parse_member_header(header: &[u8; AR_HEADER_LEN]) -> Option<(String, u64)> {
    if &header[58..60] != b"`\n" {
        return None;
    }
    let name = std::str::from_utf8(&header[..16]).ok()?.trim_end();
    let name = name.strip_suffix('/').unwrap_or(name);
    let size = std::str::from_utf8(&header[48..58]).ok()?.trim().parse().ok()?;
    Some((name.to_string(), size))
}

/// Reads the kernel package `file` (from `path`): writes its bzImage to
/// `vmlinuz_dest` and, when `modules_dest` is given, its modules to
/// `modules_dest/<release>/` (modules and `modules.*` files only, modules
/// decompressed, symlinks skipped).
pub fn read_kernel_package(
    file: impl Read,
    path: &Path,
    vmlinuz_dest: &Path,
    modules_dest: Option<&Path>,
) -> Result<KernelPackage, ImportError> {
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(io_err("read", path))?;
    if &magic != AR_MAGIC {
        return Err(ImportError::InvalidDeb("not an ar archive".into()));
    }
    let mut control = ControlFields::default();
    let mut data = None;
    loop {
        let mut header = [0u8; AR_HEADER_LEN];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err("read", path)(e)),
        }
        let (name, size) =
            parse_member_header(&header).ok_or_else(|| ImportError::InvalidDeb("malformed ar member header".into()))?;
        let mut member = (&mut reader).take(size);
        let member_err = |source| limit_or(source, |source| ImportError::DebMember { member: name.clone(), source });
        if name.starts_with("control.tar") {
            let control_tar = LimitedReader::new(decompressor(&name, &mut member)?, DEB_CONTROL_MAX, "control.tar");
            control = read_control(control_tar).map_err(member_err)?;
        } else if name.starts_with("data.tar") {
            let data_tar = LimitedReader::new(decompressor(&name, &mut member)?, DEB_DATA_MAX, "data.tar");
            data = Some(read_data(data_tar, vmlinuz_dest, modules_dest, &name)?);
            // Nothing after data.tar matters.
            break;
        }
        io::copy(&mut member, &mut io::sink()).map_err(io_err("read", path))?;
        if size % 2 == 1 {
            let mut pad = [0u8; 1];
            // A missing final pad byte is harmless.
            let _ = reader.read(&mut pad).map_err(io_err("read", path))?;
        }
    }
    let data = data.ok_or_else(|| ImportError::InvalidDeb("no data.tar member".into()))?;
    let Some(release) = data.vmlinuz else {
        return Err(ImportError::MetaPackage { package: control.package, depends: control.kernel_dependency });
    };
    let other_releases: Vec<&String> = data.module_releases.iter().filter(|r| **r != release).collect();
    if !other_releases.is_empty() {
        return Err(ImportError::InvalidDeb(format!("modules for {other_releases:?} do not match kernel {release}")));
    }
    Ok(KernelPackage { package: control.package, has_modules: data.module_releases.contains(&release), release })
}

fn decompressor<'a>(name: &str, reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>, ImportError> {
    let member_err = |source| ImportError::DebMember { member: name.to_string(), source };
    Ok(match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("tar") => Box::new(reader),
        Some("xz") => Box::new(xz2::read::XzDecoder::new(reader)),
        Some("zst") => Box::new(zstd::stream::read::Decoder::new(reader).map_err(member_err)?),
        Some("gz") => Box::new(flate2::read::GzDecoder::new(reader)),
        _ => return Err(ImportError::InvalidDeb(format!("unsupported compression of {name}"))),
    })
}

#[derive(Debug, Default)]
struct ControlFields {
    package: Option<String>,
    /// The first `linux-image-*` package in `Depends:`, without version.
    kernel_dependency: Option<String>,
}

fn read_control(reader: impl Read) -> io::Result<ControlFields> {
    let mut archive = tar::Archive::new(TarGuard::new(reader));
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.path()?.file_name() != Some("control".as_ref()) {
            continue;
        }
        let mut text = String::new();
        entry.take(CONTROL_FILE_MAX).read_to_string(&mut text)?;
        return Ok(parse_control(&text));
    }
    Ok(ControlFields::default())
}

fn parse_control(text: &str) -> ControlFields {
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim);
    let kernel_dependency = field("Depends").and_then(|deps| {
        deps.split([',', '|'])
            .map(|d| d.split_whitespace().next().unwrap_or(""))
            .find(|d| d.starts_with("linux-image-"))
            .map(str::to_string)
    });
    ControlFields { package: field("Package").map(str::to_string), kernel_dependency }
}

#[derive(Debug, Default)]
struct DataContents {
    /// The release of the `/boot/vmlinuz-<release>` written.
    vmlinuz: Option<String>,
    module_releases: BTreeSet<String>,
}

fn read_data(
    reader: impl Read,
    vmlinuz_dest: &Path,
    modules_dest: Option<&Path>,
    member: &str,
) -> Result<DataContents, ImportError> {
    let member_err = |source| limit_or(source, |source| ImportError::DebMember { member: member.to_string(), source });
    let mut contents = DataContents::default();
    let mut budgets: std::collections::BTreeMap<String, TreeBudget> = Default::default();
    let mut archive = tar::Archive::new(TarGuard::new(reader));
    for entry in archive.entries().map_err(member_err)? {
        let mut entry = entry.map_err(member_err)?;
        let raw_path = entry.path().map_err(member_err)?.into_owned();
        let Ok(path) = modtree::safe_relative(&raw_path) else {
            // Only modules paths are written anywhere: refuse those.
            let lexical: PathBuf = raw_path.components().filter(|c| *c != std::path::Component::CurDir).collect();
            if modules_path(&lexical).is_some() {
                return Err(ImportError::UnsafePath { path: raw_path });
            }
            continue;
        };
        let kind = entry.header().entry_type();
        if let Some(release) = vmlinuz_release(&path) {
            if !kind.is_file() {
                continue;
            }
            if contents.vmlinuz.is_some() {
                return Err(ImportError::InvalidDeb("more than one /boot/vmlinuz-*".into()));
            }
            if entry.size() > BZIMAGE_MAX {
                return Err(ImportError::TooLarge { what: path.display().to_string(), limit: BZIMAGE_MAX });
            }
            copy_to_file(&mut entry, vmlinuz_dest, BZIMAGE_MAX, "the package's vmlinuz", member_err)?;
            contents.vmlinuz = Some(release);
        } else if let Some((release, rel)) = modules_path(&path) {
            let Some(dest) = modules_dest else { continue };
            if !modtree::is_valid_release(&release) {
                return Err(ImportError::UnsafePath { path });
            }
            // Directories come with their files; symlinks (`build`,
            // `source`) and anything else stay out.
            if !kind.is_file() {
                continue;
            }
            let budget = budgets.entry(release.clone()).or_default();
            if modtree::install_file(&mut entry, &dest.join(&release), &rel, budget)? {
                contents.module_releases.insert(release);
            }
        }
    }
    Ok(contents)
}

fn vmlinuz_release(path: &Path) -> Option<String> {
    let rest = path.strip_prefix("boot").ok()?;
    let name = rest.to_str()?.strip_prefix("vmlinuz-")?;
    modtree::is_valid_release(name).then(|| name.to_string())
}

/// Splits `[usr/]lib/modules/<release>/<rel>` into release and `rel`.
fn modules_path(path: &Path) -> Option<(String, PathBuf)> {
    let rest = path.strip_prefix("lib/modules").or_else(|_| path.strip_prefix("usr/lib/modules")).ok()?;
    let mut components = rest.components();
    let release = components.next()?.as_os_str().to_str()?.to_string();
    Some((release, components.as_path().to_path_buf()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// An ar archive with the given members.
    pub(crate) fn ar_archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = AR_MAGIC.to_vec();
        for (name, data) in members {
            let header = format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, 0, 0, 0, 100644, data.len());
            assert_eq!(header.len(), AR_HEADER_LEN);
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    pub(crate) enum TarItem<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
    }

    pub(crate) fn tar_xz(items: &[TarItem]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            match item {
                TarItem::Dir(p) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    builder.append_data(&mut header, p, &[][..]).unwrap();
                }
                TarItem::File(p, data) => {
                    header.set_mode(0o644);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, p, *data).unwrap();
                }
                TarItem::Symlink(p, target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, p, target).unwrap();
                }
            }
        }
        let tar = builder.into_inner().unwrap();
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&tar[..], 1).read_to_end(&mut xz).unwrap();
        xz
    }

    pub(crate) fn make_deb(control: &str, data: &[TarItem]) -> Vec<u8> {
        let control_tar = tar_xz(&[TarItem::File("./control", control.as_bytes())]);
        let data_tar = tar_xz(data);
        ar_archive(&[("debian-binary", b"2.0\n"), ("control.tar.xz", &control_tar), ("data.tar.xz", &data_tar)])
    }

    fn read(path: &Path, vmlinuz: &Path, modules: Option<&Path>) -> Result<KernelPackage, ImportError> {
        read_kernel_package(std::fs::File::open(path).unwrap(), path, vmlinuz, modules)
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn package_yields_vmlinuz_and_modules() {
        let dir = tempfile::tempdir().unwrap();
        let module = modtree::tests::module_bytes(b"module bytes");
        let ko_gz = gz(&module);
        let deb = make_deb(
            "Package: linux-image-6.1.0-1-test\nVersion: 1\n",
            &[
                TarItem::Dir("./"),
                TarItem::Dir("./boot/"),
                TarItem::File("./boot/vmlinuz-6.1.0-1-test", b"bzimage"),
                TarItem::File("./boot/config-6.1.0-1-test", b"CONFIG_X=y"),
                TarItem::Dir("./lib/modules/6.1.0-1-test/"),
                TarItem::Dir("./lib/modules/6.1.0-1-test/kernel/"),
                TarItem::File("./lib/modules/6.1.0-1-test/kernel/a.ko.gz", &ko_gz),
                TarItem::File("./lib/modules/6.1.0-1-test/modules.builtin", b"kernel/b.ko\n"),
                TarItem::Symlink("./lib/modules/6.1.0-1-test/build", "/usr/src/x"),
                TarItem::File("./lib/modules/6.1.0-1-test/kernel/notes.txt", b"not a module"),
                TarItem::File("./usr/share/doc/x/changelog", b"log"),
            ],
        );
        let path = dir.path().join("k.deb");
        std::fs::write(&path, &deb).unwrap();
        assert!(looks_like_deb(&deb));
        let mods = dir.path().join("modules");
        let vmlinuz = dir.path().join("vmlinuz");
        let pkg = read(&path, &vmlinuz, Some(&mods)).unwrap();
        assert_eq!(pkg.package.as_deref(), Some("linux-image-6.1.0-1-test"));
        assert_eq!(pkg.release, "6.1.0-1-test");
        assert_eq!(std::fs::read(&vmlinuz).unwrap(), b"bzimage");
        assert!(pkg.has_modules);
        let root = mods.join("6.1.0-1-test");
        assert_eq!(std::fs::read(root.join("kernel/a.ko")).unwrap(), module);
        assert!(root.join("modules.builtin").is_file());
        assert!(std::fs::symlink_metadata(root.join("build")).is_err());
        assert!(!root.join("kernel/notes.txt").exists(), "only modules and modules.* files");

        // Without a destination, modules are left alone.
        let pkg = read(&path, &vmlinuz, None).unwrap();
        assert!(!pkg.has_modules);
    }

    #[test]
    fn metapackage_names_its_dependency() {
        let dir = tempfile::tempdir().unwrap();
        let deb = make_deb(
            "Package: linux-image-cloud-amd64\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n",
            &[TarItem::Dir("./usr/share/doc/linux-image-cloud-amd64/")],
        );
        let path = dir.path().join("meta.deb");
        std::fs::write(&path, &deb).unwrap();
        let err = read(&path, &dir.path().join("vmlinuz"), None).unwrap_err();
        match &err {
            ImportError::MetaPackage { package, depends } => {
                assert_eq!(package.as_deref(), Some("linux-image-cloud-amd64"));
                assert_eq!(depends.as_deref(), Some("linux-image-6.1.0-56-cloud-amd64"));
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn escaping_module_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        // `append_data` refuses `..`, so write the name by hand.
        header.as_gnu_mut().unwrap().name[..36].copy_from_slice(b"./lib/modules/6.1/../../../../evil.x");
        header.set_cksum();
        tar.append(&header, &b"x"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&tar[..], 1).read_to_end(&mut xz).unwrap();
        let deb = ar_archive(&[("debian-binary", b"2.0\n"), ("data.tar.xz", &xz)]);
        let path = dir.path().join("evil.deb");
        std::fs::write(&path, &deb).unwrap();
        let mods = dir.path().join("modules");
        let err = read(&path, &dir.path().join("vmlinuz"), Some(&mods)).unwrap_err();
        assert!(matches!(err, ImportError::UnsafePath { .. }), "{err}");
        assert!(!dir.path().join("evil.x").exists());
    }

    #[test]
    fn control_depends_parsing() {
        let fields = parse_control("Package: a\nDepends: kmod, linux-image-6.1.0-9-amd64 (= 1) | x\n");
        assert_eq!(fields.package.as_deref(), Some("a"));
        assert_eq!(fields.kernel_dependency.as_deref(), Some("linux-image-6.1.0-9-amd64"));
        assert!(parse_control("Package: a\n").kernel_dependency.is_none());
    }
}
