//! Kernel module metadata and load order: each module's `.modinfo` ELF
//! section names its dependencies, since Debian ships no `modules.dep`.
//! The modules tree is indexed by module name, `-` and `_` alike.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use object::elf::FileHeader64;
use object::read::elf::{FileHeader, SectionHeader};
use object::LittleEndian;

use super::{io_err, ImportError, ELF_MAGIC};

/// What a module's `.modinfo` section says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleInfo {
    /// `name=`, when present (older modules lack it).
    pub name: Option<String>,
    /// `depends=`: modules that must be loaded first.
    pub depends: Vec<String>,
    /// The `pre:` part of `softdep=`: loaded first when available.
    pub soft_pre: Vec<String>,
}

/// The canonical form of a module name: `-` read as `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The contents of the ELF64 little-endian section called `wanted`. The
/// file comes from an untrusted package: every offset and size is checked
/// by `object`, and a malformed file is an error, never a panic.
pub fn elf64_section<'a>(elf: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, &'static str> {
    if !elf.starts_with(ELF_MAGIC) {
        return Err("no ELF magic");
    }
    if elf.get(4..6) != Some(&[2, 1]) {
        return Err("not a little-endian ELF64 file");
    }
    let header = FileHeader64::<LittleEndian>::parse(elf).map_err(|_| "malformed ELF header")?;
    let sections = header.sections(LittleEndian, elf).map_err(|_| "truncated or malformed section headers")?;
    let Some((_, section)) = sections.section_by_name(LittleEndian, wanted.as_bytes()) else {
        return Ok(None);
    };
    section.data(LittleEndian, elf).map(Some).map_err(|_| "section data outside the file")
}

/// Parses a module's `.modinfo` section (NUL-separated `key=value`).
pub fn parse_modinfo(elf: &[u8]) -> Result<ModuleInfo, &'static str> {
    let section = elf64_section(elf, ".modinfo")?.ok_or("no .modinfo section")?;
    let mut info = ModuleInfo::default();
    let entries = section.split(|&b| b == 0).filter_map(|e| std::str::from_utf8(e).ok()?.split_once('='));
    for (key, value) in entries {
        match key {
            "name" => info.name = Some(normalize(value)),
            "depends" => info.depends.extend(value.split(',').filter(|d| !d.is_empty()).map(normalize)),
            "softdep" => info.soft_pre.extend(parse_softdep_pre(value)),
            _ => {}
        }
    }
    Ok(info)
}

/// `pre: a b post: c` -> `[a, b]`.
fn parse_softdep_pre(value: &str) -> Vec<String> {
    let mut in_pre = false;
    let mut out = Vec::new();
    for word in value.split_whitespace() {
        match word {
            "pre:" => in_pre = true,
            "post:" => in_pre = false,
            name if in_pre => out.push(normalize(name)),
            _ => {}
        }
    }
    out
}

/// What a lookup found for a module name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A loadable module with these hard and soft (pre) dependencies.
    Module {
        /// Must be loaded first.
        depends: Vec<String>,
        /// Loaded first when available.
        soft_pre: Vec<String>,
    },
    /// Part of the kernel image: nothing to load.
    Builtin,
    /// Neither a module nor known to be built in.
    Missing,
}

/// Orders `wanted` and their transitive dependencies so every module comes
/// after its dependencies, each once. A wanted module that is not a module
/// is skipped (built in, or absent from this kernel); a missing hard
/// dependency is an error.
pub fn resolve_load_order<F>(wanted: &[&str], mut lookup: F) -> Result<Vec<String>, ImportError>
where
    F: FnMut(&str) -> Result<Lookup, ImportError>,
{
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    struct Walk<'f> {
        lookup: &'f mut dyn FnMut(&str) -> Result<Lookup, ImportError>,
        marks: BTreeMap<String, Mark>,
        order: Vec<String>,
    }
    impl Walk<'_> {
        /// `needed_by` is the module that hard-depends on `name`, if any.
        fn visit(&mut self, name: &str, needed_by: Option<&str>) -> Result<(), ImportError> {
            match self.marks.get(name) {
                Some(Mark::Done) => return Ok(()),
                Some(Mark::Visiting) => return Err(ImportError::DependencyCycle(name.to_string())),
                None => {}
            }
            let (depends, soft_pre) = match (self.lookup)(name)? {
                Lookup::Module { depends, soft_pre } => (depends, soft_pre),
                Lookup::Builtin => return Ok(()),
                Lookup::Missing => {
                    return match needed_by {
                        Some(module) => Err(ImportError::MissingDependency {
                            module: module.to_string(),
                            dependency: name.to_string(),
                        }),
                        None => Ok(()),
                    }
                }
            };
            self.marks.insert(name.to_string(), Mark::Visiting);
            for soft in &soft_pre {
                self.visit(soft, None)?;
            }
            for dep in &depends {
                self.visit(dep, Some(name))?;
            }
            self.marks.insert(name.to_string(), Mark::Done);
            self.order.push(name.to_string());
            Ok(())
        }
    }
    let mut walk = Walk { lookup: &mut lookup, marks: BTreeMap::new(), order: Vec::new() };
    for name in wanted {
        walk.visit(&normalize(name), None)?;
    }
    Ok(walk.order)
}

/// Whether the kernel has a module, has it built in, or lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    /// A `.ko` file in the modules tree.
    Module,
    /// Listed in `modules.builtin`.
    Builtin,
    /// Neither, and `modules.builtin` exists to say so.
    Absent,
    /// Not a module, and without `modules.builtin` nothing more is known.
    Unknown,
}

/// A modules tree (`/lib/modules/<release>`) indexed by module name.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
    builtin: Option<BTreeSet<String>>,
}

impl ModuleIndex {
    /// Indexes the uncompressed `.ko` files under `root` and reads its
    /// `modules.builtin`, if any. Symlinks are not followed.
    pub fn scan(root: &Path) -> Result<Self, ImportError> {
        let mut files = BTreeMap::new();
        collect_modules(root, &mut files)?;
        let builtin_path = root.join("modules.builtin");
        let builtin = match fs::read_to_string(&builtin_path) {
            Ok(text) => Some(text.lines().filter_map(|l| module_name_of(l.trim())).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("read", &builtin_path)(e)),
        };
        Ok(Self { files, builtin })
    }

    /// How the kernel provides module `name`.
    pub fn state(&self, name: &str) -> ModuleState {
        let name = normalize(name);
        if self.files.contains_key(&name) {
            ModuleState::Module
        } else {
            match &self.builtin {
                Some(set) if set.contains(&name) => ModuleState::Builtin,
                Some(_) => ModuleState::Absent,
                None => ModuleState::Unknown,
            }
        }
    }

    /// The `.ko` file of module `name`.
    pub fn path_of(&self, name: &str) -> Result<&Path, ImportError> {
        self.files
            .get(&normalize(name))
            .map(PathBuf::as_path)
            .ok_or_else(|| ImportError::MissingRequiredModule(name.to_string()))
    }

    /// Reads and parses the `.modinfo` of module `name`.
    pub fn info(&self, name: &str) -> Result<ModuleInfo, ImportError> {
        let path = self.path_of(name)?;
        let data = fs::read(path).map_err(io_err("read", path))?;
        parse_modinfo(&data).map_err(|reason| ImportError::InvalidModule { path: path.to_path_buf(), reason })
    }

    /// The load order of the modules in `wanted` that are modules here,
    /// with their dependencies.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>, ImportError> {
        resolve_load_order(wanted, |name| {
            Ok(match self.state(name) {
                ModuleState::Module => {
                    let info = self.info(name)?;
                    Lookup::Module { depends: info.depends, soft_pre: info.soft_pre }
                }
                ModuleState::Builtin => Lookup::Builtin,
                ModuleState::Absent | ModuleState::Unknown => Lookup::Missing,
            })
        })
    }
}

/// `kernel/fs/ext4/ext4.ko` -> `ext4`.
fn module_name_of(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    file.strip_suffix(".ko").map(normalize)
}

fn collect_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<(), ImportError> {
    for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
        let entry = entry.map_err(io_err("read", dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_err("read", &path))?;
        if file_type.is_dir() {
            collect_modules(&path, files)?;
        } else if file_type.is_file() {
            if let Some(name) = path.to_str().and_then(module_name_of) {
                files.insert(name, path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal relocatable ELF64 with a `.modinfo` section holding `modinfo`.
    pub(crate) fn make_module(modinfo: &[&str]) -> Vec<u8> {
        let mut info = Vec::new();
        for entry in modinfo {
            info.extend_from_slice(entry.as_bytes());
            info.push(0);
        }
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little endian
        elf[6] = 1;
        elf[0x10..0x12].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        elf[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes());
        let info_off = elf.len();
        elf.extend_from_slice(&info);
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        elf.resize(elf.len().next_multiple_of(8), 0);
        let shoff = elf.len();
        let mut section = |name: u32, kind: u32, off: usize, size: usize| {
            let mut sh = [0u8; 0x40];
            sh[0..4].copy_from_slice(&name.to_le_bytes());
            sh[4..8].copy_from_slice(&kind.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&sh);
        };
        section(0, 0, 0, 0);
        section(1, 3, strtab_off, shstrtab.len());
        section(11, 1, info_off, info.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_is_parsed() {
        let elf = make_module(&[
            "license=GPL",
            "depends=virtio,virtio_ring",
            "softdep=pre: crc32c post: x",
            "name=virtio_blk",
            "vermagic=6.1.0 SMP",
        ]);
        let info = parse_modinfo(&elf).unwrap();
        assert_eq!(info.name.as_deref(), Some("virtio_blk"));
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(info.soft_pre, ["crc32c"]);
        let empty = parse_modinfo(&make_module(&["depends=", "name=virtio_ring"])).unwrap();
        assert!(empty.depends.is_empty());
    }

    #[test]
    fn bad_modules_are_reported() {
        assert_eq!(parse_modinfo(b"MZ"), Err("no ELF magic"));
        let mut elf = make_module(&["name=x"]);
        elf.truncate(0x60);
        assert!(parse_modinfo(&elf).is_err());
        assert_eq!(parse_modinfo(&make_module(&["name=x"])[..0x30]), Err("malformed ELF header"));
    }

    #[test]
    fn malformed_modules_are_errors_not_panics() {
        let good = make_module(&["depends=virtio", "name=virtio_blk"]);
        for len in 0..good.len() {
            assert!(parse_modinfo(&good[..len]).is_err(), "a module cut to {len} bytes parsed");
        }
        let with = |offset: usize, bytes: &[u8]| {
            let mut elf = good.clone();
            elf[offset..offset + bytes.len()].copy_from_slice(bytes);
            parse_modinfo(&elf)
        };
        let shoff = u64::from_le_bytes(good[0x28..0x30].try_into().unwrap()) as usize;
        assert!(with(0x28, &u64::MAX.to_le_bytes()).is_err(), "section headers past the end");
        assert!(with(0x3c, &u16::MAX.to_le_bytes()).is_err(), "more sections than the file holds");
        assert!(with(0x3e, &7u16.to_le_bytes()).is_err(), "string table index out of range");
        assert!(with(0x3a, &0x20u16.to_le_bytes()).is_err(), "wrong section header size");
        // The .modinfo section (the third header) pointing outside the file.
        assert_eq!(with(shoff + 2 * 0x40 + 0x20, &u64::MAX.to_le_bytes()), Err("section data outside the file"));
    }

    #[test]
    fn a_malformed_module_in_the_tree_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.ko");
        fs::write(&path, &make_module(&["name=broken"])[..0x50]).unwrap();
        let index = ModuleIndex::scan(dir.path()).unwrap();
        let err = index.load_order(&["broken"]).unwrap_err();
        assert!(matches!(&err, ImportError::InvalidModule { path: p, .. } if *p == path), "{err}");
        assert!(err.to_string().contains("broken.ko is not a loadable kernel module: "), "{err}");
    }

    fn table(entries: &[(&str, &[&str])]) -> impl FnMut(&str) -> Result<Lookup, ImportError> {
        let map: BTreeMap<String, Vec<String>> =
            entries.iter().map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect())).collect();
        move |name| {
            Ok(match map.get(name) {
                Some(depends) => Lookup::Module { depends: depends.clone(), soft_pre: Vec::new() },
                None if name == "ext4" => Lookup::Builtin,
                None => Lookup::Missing,
            })
        }
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let lookup = table(&[
            ("virtio_ring", &[]),
            ("virtio", &[]),
            ("virtio_blk", &["virtio", "virtio_ring"]),
            ("virtio_pci", &["virtio_pci_modern_dev", "virtio", "virtio_ring"]),
            ("virtio_pci_modern_dev", &[]),
        ]);
        let order = resolve_load_order(&["virtio_blk", "virtio-pci", "ext4", "nonexistent"], lookup).unwrap();
        assert_eq!(order, ["virtio", "virtio_ring", "virtio_blk", "virtio_pci_modern_dev", "virtio_pci"]);
    }

    #[test]
    fn missing_dependency_and_cycles_are_errors() {
        let err = resolve_load_order(&["a"], table(&[("a", &["b"])])).unwrap_err();
        assert!(
            matches!(&err, ImportError::MissingDependency { module, dependency } if module == "a" && dependency == "b"),
            "{err}"
        );
        let err = resolve_load_order(&["a"], table(&[("a", &["b"]), ("b", &["a"])])).unwrap_err();
        assert!(matches!(err, ImportError::DependencyCycle(_)), "{err}");
        // A built-in dependency needs nothing loaded.
        assert_eq!(resolve_load_order(&["a"], table(&[("a", &["ext4"])])).unwrap(), ["a"]);
    }

    #[test]
    fn index_reads_tree_and_builtin_list() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("kernel/drivers")).unwrap();
        fs::write(root.join("kernel/drivers/virtio.ko"), make_module(&["name=virtio"])).unwrap();
        fs::write(root.join("kernel/drivers/virtio-blk.ko"), make_module(&["depends=virtio,crc-x", "name=virtio_blk"]))
            .unwrap();
        fs::write(root.join("kernel/drivers/crc-x.ko"), make_module(&["name=crc_x"])).unwrap();
        fs::write(root.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let index = ModuleIndex::scan(root).unwrap();
        assert_eq!(index.state("virtio_blk"), ModuleState::Module);
        assert_eq!(index.state("ext4"), ModuleState::Builtin);
        assert_eq!(index.state("virtio_net"), ModuleState::Absent);
        assert_eq!(index.load_order(&["virtio_blk", "ext4", "virtio_net"]).unwrap(), ["virtio", "crc_x", "virtio_blk"]);
    }
}
