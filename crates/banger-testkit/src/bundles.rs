//! Kernel bundles for tests: good ones made by banger's own bundler from a
//! kernel directory, and malicious ones written member by member.

use std::io;

use banger_api::CatalogEntry;
use tar::EntryType;

/// A tiny stand-in for an ELF vmlinux: the magic and a recognisable body.
pub fn fake_vmlinux(tag: &str) -> Vec<u8> {
    let mut data = b"\x7fELF\x02\x01\x01\0".to_vec();
    data.extend(tag.as_bytes().iter().cycle().take(64 * 1024));
    data
}

/// A good bundle: vmlinux, initrd.img and a modules tree, made with
/// `banger_kernel::bundle::create` as `banger kernel bundle` does.
pub fn good_bundle(tag: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vmlinux"), fake_vmlinux(tag)).unwrap();
    std::fs::write(dir.path().join("initrd.img"), b"initrd").unwrap();
    std::fs::create_dir_all(dir.path().join("modules/6.1.0-test/kernel")).unwrap();
    std::fs::write(dir.path().join("modules/6.1.0-test/kernel/virtio_blk.ko"), b"module").unwrap();
    let mut out = Vec::new();
    banger_kernel::bundle::create(dir.path(), &mut out, 3).unwrap();
    out
}

/// One member of a hand-made bundle.
pub enum Member<'a> {
    /// A regular file.
    File(&'a str, &'a [u8]),
    /// A directory.
    Dir(&'a str),
    /// A symlink and its target.
    Symlink(&'a str, &'a str),
}

/// A bundle written member by member, names taken verbatim (so `../x` and
/// `/etc/x` can be expressed, which `tar::Builder` would refuse).
pub fn raw_bundle(members: &[Member<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for member in members {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        let (path, kind, data, link): (&str, EntryType, &[u8], &str) = match member {
            Member::File(p, d) => (p, EntryType::Regular, d, ""),
            Member::Dir(p) => (p, EntryType::Directory, &[], ""),
            Member::Symlink(p, l) => (p, EntryType::Symlink, &[], l),
        };
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        builder.append(&header, io::Cursor::new(data)).unwrap();
    }
    zstd::encode_all(&builder.into_inner().unwrap()[..], 3).unwrap()
}

/// A catalog entry for `bundle` served at `url`.
pub fn entry(name: &str, url: &str, bundle: &[u8]) -> CatalogEntry {
    CatalogEntry {
        name: name.to_owned(),
        distro: "test".to_owned(),
        arch: "x86_64".to_owned(),
        kernel_version: "6.1.0-test".to_owned(),
        tarball_url: url.to_owned(),
        tarball_sha256: crate::sha256_hex(bundle),
        size_bytes: bundle.len() as u64,
        description: "test kernel".to_owned(),
    }
}
