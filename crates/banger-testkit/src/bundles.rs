//! Kernel bundles for tests: good ones made by banger's own bundler from a
//! kernel directory, and malicious ones written member by member.

use std::io;

use banger_api::CatalogEntry;
use tar::EntryType;

/// A small stand-in for a vmlinux that `kernel import` takes as one but
/// that boots nothing: a 64-bit x86_64 ELF executable whose only program
/// header is a PT_NOTE with a note owned by "Linux" (as every vmlinux has),
/// then the banner of release [`FAKE_RELEASE`] and a body made of `tag`.
pub fn fake_vmlinux(tag: &str) -> Vec<u8> {
    const NOTE_OFFSET: usize = 0x40 + 56;
    let mut note = Vec::new();
    note.extend_from_slice(&6u32.to_le_bytes()); // namesz: "Linux\0"
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&0x100u32.to_le_bytes()); // LINUX_ELFNOTE_BUILD_SALT
    note.extend_from_slice(b"Linux\0\0\0fake");
    let mut elf = vec![0u8; 0x40];
    elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\0");
    elf[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
    elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
    elf[0x34..0x36].copy_from_slice(&0x40u16.to_le_bytes()); // e_ehsize
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let mut phdr = [0u8; 56];
    phdr[0..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
    phdr[0x08..0x10].copy_from_slice(&(NOTE_OFFSET as u64).to_le_bytes());
    phdr[0x20..0x28].copy_from_slice(&(note.len() as u64).to_le_bytes());
    phdr[0x28..0x30].copy_from_slice(&(note.len() as u64).to_le_bytes());
    phdr[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
    elf.extend_from_slice(&phdr);
    elf.extend_from_slice(&note);
    elf.extend_from_slice(format!("\0Linux version {FAKE_RELEASE} (banger-testkit) #1\0").as_bytes());
    elf.extend(tag.as_bytes().iter().cycle().take(64 * 1024));
    elf
}

/// The release [`fake_vmlinux`]'s banner names.
pub const FAKE_RELEASE: &str = "6.1.0-banger-fake";

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

/// A stand-in for a kernel module that `kernel import --modules` takes as
/// one: the ELF header of an x86_64 relocatable object, then `tag`. It has
/// no `.modinfo`, so name it after no module the guest needs.
pub fn fake_module(tag: &str) -> Vec<u8> {
    let mut elf = vec![0u8; 0x40];
    elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\0");
    elf[0x10..0x12].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(tag.as_bytes());
    elf
}

/// An x86 bzImage around `payload` (a compressed vmlinux): a boot-protocol
/// 2.15 setup header whose payload fields point at it.
pub fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 3u8;
    let protected_mode = (usize::from(setup_sects) + 1) * 512;
    let mut data = vec![0u8; protected_mode];
    data[0x1f1] = setup_sects;
    data[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    data[0x202..0x206].copy_from_slice(b"HdrS");
    data[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    let payload_offset = 0x40u32;
    data[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
    data[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    data.resize(protected_mode + payload_offset as usize, 0);
    data.extend_from_slice(payload);
    data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    data
}

/// A zstd frame that inflates to `inflated` zero bytes: small to store,
/// a decompression bomb for anything that decodes it whole.
pub fn zstd_zeros(inflated: u64) -> Vec<u8> {
    zstd_zeros_after(&[], inflated)
}

/// A zstd frame that inflates to `head` then `zeros` zero bytes.
pub fn zstd_zeros_after(head: &[u8], zeros: u64) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd encoder");
    encoder.write_all(head).expect("encode");
    let chunk = vec![0u8; 8 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        encoder.write_all(&chunk[..n]).expect("encode");
        left -= n as u64;
    }
    encoder.finish().expect("finish zstd")
}
