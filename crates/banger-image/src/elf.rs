//! Recognises statically linked ELF executables: a binary copied into a
//! guest root must not need the host's dynamic loader.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use object::elf::{FileHeader32, FileHeader64, PT_INTERP};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, FileKind};

use crate::ImageError;

/// How much of a file is read to find its program headers.
const HEADER_WINDOW: u64 = 64 * 1024;

/// What the start of a file says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// Not an ELF file, or one whose headers could not be read.
    NotElf,
    /// An ELF file that asks for a dynamic loader (`PT_INTERP`).
    Dynamic,
    /// An ELF file without a loader: static, or static-pie.
    Static,
}

/// Classifies an ELF image from its first bytes. The bytes come from files
/// a user names, so anything malformed is [`Linkage::NotElf`], never a panic.
pub(crate) fn linkage(head: &[u8]) -> Linkage {
    let interp = match FileKind::parse(head) {
        Ok(FileKind::Elf32) => has_interpreter::<FileHeader32<Endianness>>(head),
        Ok(FileKind::Elf64) => has_interpreter::<FileHeader64<Endianness>>(head),
        _ => return Linkage::NotElf,
    };
    match interp {
        Ok(true) => Linkage::Dynamic,
        Ok(false) => Linkage::Static,
        Err(_) => Linkage::NotElf,
    }
}

/// Whether the program headers include `PT_INTERP`.
fn has_interpreter<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> object::Result<bool> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    Ok(header.program_headers(endian, data)?.iter().any(|ph| ph.p_type(endian) == PT_INTERP))
}

/// Reads the start of `path` and classifies it: what a binary copied into
/// a guest root (the agent, busybox) must be is [`Linkage::Static`].
pub fn file_linkage(path: &Path) -> io::Result<Linkage> {
    let mut head = Vec::new();
    File::open(path)?.take(HEADER_WINDOW).read_to_end(&mut head)?;
    Ok(linkage(&head))
}

/// Fails with `missing` when `path` is not a regular file, or with
/// `not_static` when it is not a static ELF executable.
pub(crate) fn require_static(
    path: &Path,
    missing: fn(PathBuf) -> ImageError,
    not_static: fn(PathBuf) -> ImageError,
) -> Result<(), ImageError> {
    if !path.is_file() {
        return Err(missing(path.to_owned()));
    }
    match file_linkage(path) {
        Ok(Linkage::Static) => Ok(()),
        Ok(_) => Err(not_static(path.to_owned())),
        Err(source) => Err(ImageError::Io { path: path.to_owned(), source }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    /// `PT_INTERP` as it is on the wire.
    const INTERP: u32 = 3;

    /// A small, well-formed static x86-64 executable header (one `PT_LOAD`).
    pub(crate) fn static_elf() -> Vec<u8> {
        elf64(&[1])
    }

    /// A minimal little-endian ELF64 header with the given program header types.
    fn elf64(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // little-endian
        b[6] = 1; // EV_CURRENT
        b[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        b[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        b[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn loader_means_dynamic() {
        assert_eq!(linkage(&elf64(&[6, INTERP, 1])), Linkage::Dynamic);
    }

    #[test]
    fn no_loader_means_static() {
        assert_eq!(linkage(&elf64(&[1, 1, 2, 4])), Linkage::Static);
    }

    #[test]
    fn garbage_is_not_elf() {
        assert_eq!(linkage(b"#!/bin/sh\necho hi\n"), Linkage::NotElf);
        assert_eq!(linkage(&elf64(&[1])[..40]), Linkage::NotElf);
    }

    #[test]
    fn truncated_program_headers_are_not_elf() {
        let mut b = elf64(&[1, 1]);
        b.truncate(64 + 56 + 2);
        assert_eq!(linkage(&b), Linkage::NotElf);
    }

    #[test]
    fn malformed_headers_are_not_elf_and_never_panic() {
        // Every truncation of a real binary's headers, and of a synthetic one.
        let real = fs::read("/bin/ls").unwrap();
        for data in [&real[..real.len().min(4096)], &elf64(&[1, INTERP])[..]] {
            for len in 0..data.len() {
                let _ = linkage(&data[..len]);
            }
        }
        // Nonsense counts and offsets.
        let mut b = elf64(&[1]);
        b[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(linkage(&b), Linkage::NotElf);
        let mut b = elf64(&[1]);
        b[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(linkage(&b), Linkage::NotElf);
        let mut b = elf64(&[1]);
        b[0x36..0x38].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(linkage(&b), Linkage::NotElf, "wrong program header size");
        let mut b = elf64(&[1]);
        b[4] = 9;
        assert_eq!(linkage(&b), Linkage::NotElf, "unknown class");
    }

    #[test]
    fn a_truncated_agent_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("banger-agent");
        fs::write(&agent, &elf64(&[1, 1])[..64 + 30]).unwrap();
        let err = require_static(&agent, ImageError::AgentMissing, ImageError::AgentNotStatic).unwrap_err();
        assert!(matches!(&err, ImageError::AgentNotStatic(p) if *p == agent), "{err}");
        assert!(err.to_string().contains("is not a statically linked ELF binary"), "{err}");
    }

    #[test]
    fn host_binaries() {
        if Path::new("/bin/busybox").exists() {
            assert_eq!(file_linkage(Path::new("/bin/busybox")).unwrap(), Linkage::Static);
        }
        assert_eq!(file_linkage(Path::new("/bin/ls")).unwrap(), Linkage::Dynamic);
    }
}
