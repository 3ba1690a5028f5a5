//! Imports Debian's real cloud kernel package: downloaded with `apt-get
//! download` (cached under the target directory); where the machine has no
//! apt the tests skip, and fail under CI.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::PathBuf;

use banger_kernel::import::{self, bzimage, modinfo, open_source, ImportOptions, SourceFile, SourceKind};

/// The package; `None` without apt (a SKIP; under CI a failure).
fn kernel_deb() -> Option<PathBuf> {
    banger_testkit::debian::cloud_kernel_deb()
}

struct CpioEntry {
    name: String,
    data: Vec<u8>,
}

fn read_cpio(mut data: &[u8]) -> Vec<CpioEntry> {
    let mut entries = Vec::new();
    loop {
        assert_eq!(&data[..6], b"070701");
        let field = |i: usize| {
            let hex = std::str::from_utf8(&data[6 + 8 * i..14 + 8 * i]).unwrap();
            usize::from_str_radix(hex, 16).unwrap()
        };
        let (size, namesize) = (field(6), field(11));
        let name = String::from_utf8(data[110..110 + namesize - 1].to_vec()).unwrap();
        let start = (110 + namesize).next_multiple_of(4);
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.push(CpioEntry { name, data: data[start..start + size].to_vec() });
        data = &data[(start + size).next_multiple_of(4)..];
    }
}

#[test]
fn import_real_debian_cloud_kernel() {
    let Some(deb) = kernel_deb() else { return };
    let source = SourceFile::new(open_source(&deb).unwrap(), &deb, None).unwrap();
    assert_eq!(source.kind(), SourceKind::Deb);

    let dest = tempfile::tempdir().unwrap();
    let mut steps = Vec::new();
    let imported =
        import::import(source, &ImportOptions::default(), dest.path(), &mut |s| steps.push(s.to_string())).unwrap();
    eprintln!("imported: {imported:?}\nsteps: {steps:?}");

    let vmlinux = fs::read(dest.path().join("vmlinux")).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    assert_eq!(vmlinux[4], 2, "ELF64");
    assert_eq!(u16::from_le_bytes([vmlinux[16], vmlinux[17]]), 2, "ET_EXEC");
    assert_eq!(u16::from_le_bytes([vmlinux[18], vmlinux[19]]), 0x3e, "x86_64");

    let version = imported.kernel_version.clone().unwrap();
    let number = version
        .strip_prefix("6.1.0-")
        .and_then(|v| v.strip_suffix("-cloud-amd64"))
        .unwrap_or_else(|| panic!("unexpected version {version}"));
    assert!(number.parse::<u32>().is_ok(), "unexpected version {version}");
    let modules_root = dest.path().join("modules").join(&version);
    assert!(modules_root.join("modules.builtin").is_file());

    assert!(imported.has_initrd);
    let initrd = fs::read(dest.path().join("initrd.img")).unwrap();
    assert_eq!(&initrd[..2], &[0x1f, 0x8b], "initrd.img is gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&initrd[..]).read_to_end(&mut raw).unwrap();
    let entries = read_cpio(&raw);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    for needed in ["init", "bin/busybox"] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }
    // virtio_net with its dependencies (net_failover, failover), which
    // only its `.modinfo` names.
    for module in [
        "virtio_blk",
        "virtio_pci",
        "virtio_console",
        "virtio_mmio",
        "vmw_vsock_virtio_transport",
        "virtio_net",
        "net_failover",
        "failover",
    ] {
        let path = format!("lib/modules/{module}.ko");
        assert!(names.contains(&path.as_str()), "{path} missing from {names:?}");
    }

    // Every module's dependencies come before it, in the load-order list and
    // in `imported.modules` alike.
    let order_file = entries.iter().find(|e| e.name == "lib/modules/load-order").unwrap();
    let order: Vec<&str> = std::str::from_utf8(&order_file.data).unwrap().lines().collect();
    assert_eq!(order, imported.modules);
    let position: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    for (i, module) in order.iter().enumerate() {
        let ko = &entries.iter().find(|e| e.name == format!("lib/modules/{module}.ko")).unwrap().data;
        let info = modinfo::parse_modinfo(ko).unwrap();
        for dep in &info.depends {
            let at = position.get(dep.as_str()).unwrap_or_else(|| panic!("{module} needs {dep}, not in {order:?}"));
            assert!(*at < i, "{dep} must load before {module}: {order:?}");
        }
    }
}

#[test]
fn import_bzimage_from_real_debian_package_is_lz4() {
    let Some(deb) = kernel_deb() else { return };
    let dir = tempfile::tempdir().unwrap();
    let vmlinuz_path = dir.path().join("vmlinuz");
    let pkg = import::deb::read_kernel_package(fs::File::open(&deb).unwrap(), &deb, &vmlinuz_path, None).unwrap();
    let vmlinuz = fs::read(&vmlinuz_path).unwrap();
    let header = bzimage::parse_header(&vmlinuz, vmlinuz.len() as u64).unwrap();
    let start = header.protected_mode_offset + header.payload_offset;
    assert_eq!(bzimage::Compression::detect(&vmlinuz[start..]), Some(bzimage::Compression::Lz4Legacy));
    assert_eq!(bzimage::kernel_version(&vmlinuz).as_deref(), Some(pkg.release.as_str()));
    let vmlinux_path = dir.path().join("vmlinux");
    bzimage::extract_vmlinux_file(&mut fs::File::open(&vmlinuz_path).unwrap(), &vmlinux_path).unwrap();
    let vmlinux = fs::read(&vmlinux_path).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    // The size the build appended after the payload matches.
    let end = start + header.payload_length;
    let appended = u32::from_le_bytes(vmlinuz[end - 4..end].try_into().unwrap());
    assert_eq!(appended as usize, vmlinux.len());
}
