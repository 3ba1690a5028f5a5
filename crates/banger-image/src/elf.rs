//! Recognises statically linked ELF executables: a binary copied into a
//! guest root must not need the host's dynamic loader.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::ImageError;

/// How much of a file is read to find its program headers.
const HEADER_WINDOW: u64 = 64 * 1024;
/// Program header type naming a dynamic loader.
const PT_INTERP: u32 = 3;

/// What the start of a file says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Linkage {
    /// Not an ELF file, or one whose headers could not be read.
    NotElf,
    /// An ELF file that asks for a dynamic loader (`PT_INTERP`).
    Dynamic,
    /// An ELF file without a loader: static, or static-pie.
    Static,
}

/// Classifies an ELF image from its first bytes.
pub(crate) fn linkage(head: &[u8]) -> Linkage {
    if head.len() < 52 || head[..4] != *b"\x7fELF" {
        return Linkage::NotElf;
    }
    let little = match head[5] {
        1 => true,
        2 => false,
        _ => return Linkage::NotElf,
    };
    let u16_at =
        |o: usize| {
            head.get(o..o + 2).map(|b| [b[0], b[1]]).map(|b| {
                if little {
                    u16::from_le_bytes(b)
                } else {
                    u16::from_be_bytes(b)
                }
            })
        };
    let u32_at = |o: usize| {
        head.get(o..o + 4).map(|b| [b[0], b[1], b[2], b[3]]).map(|b| {
            if little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            }
        })
    };
    let u64_at = |o: usize| {
        head.get(o..o + 8).map(|b| <[u8; 8]>::try_from(b).expect("eight bytes")).map(|b| {
            if little {
                u64::from_le_bytes(b)
            } else {
                u64::from_be_bytes(b)
            }
        })
    };
    let (phoff, phentsize, phnum) = match head[4] {
        1 => (u32_at(0x1c).map(u64::from), u16_at(0x2a), u16_at(0x2c)),
        2 => (u64_at(0x20), u16_at(0x36), u16_at(0x38)),
        _ => return Linkage::NotElf,
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Linkage::NotElf;
    };
    for i in 0..u64::from(phnum) {
        let Some(offset) = i.checked_mul(u64::from(phentsize)).and_then(|o| o.checked_add(phoff)) else {
            return Linkage::NotElf;
        };
        let Some(p_type) = usize::try_from(offset).ok().and_then(u32_at) else {
            return Linkage::NotElf;
        };
        if p_type == PT_INTERP {
            return Linkage::Dynamic;
        }
    }
    Linkage::Static
}

/// Reads the start of `path` and classifies it.
pub(crate) fn file_linkage(path: &Path) -> io::Result<Linkage> {
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
        assert_eq!(linkage(&elf64(&[6, PT_INTERP, 1])), Linkage::Dynamic);
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
    fn host_binaries() {
        if Path::new("/bin/busybox").exists() {
            assert_eq!(file_linkage(Path::new("/bin/busybox")).unwrap(), Linkage::Static);
        }
        assert_eq!(file_linkage(Path::new("/bin/ls")).unwrap(), Linkage::Dynamic);
    }
}
