//! What makes an ELF file a Linux kernel or a kernel module, read from its
//! headers without loading the file: a vmlinux is a 64-bit x86_64
//! executable whose PT_NOTE segment carries a note owned by "Linux" (every
//! vmlinux has them, see `readelf -n`); a module is a 64-bit x86_64
//! relocatable object. Also the streaming search for the release banner.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::ELF_MAGIC;

const ET_REL: u16 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_NOTE: u32 = 4;
/// A program header of an ELF64 file.
const PHDR_LEN: usize = 56;
/// More program headers than any kernel has (a vmlinux has about five).
const MAX_PHDRS: u16 = 64;
/// More note bytes than any kernel carries (Debian's have 512).
const MAX_NOTES: u64 = 64 * 1024;

fn u16_at(data: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([data[off], data[off + 1]])
}

fn u32_at(data: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(data[off..off + 4].try_into().expect("four bytes"))
}

fn u64_at(data: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(data[off..off + 8].try_into().expect("eight bytes"))
}

/// Checks the ELF64 identification and that the file is for x86_64 with
/// type `e_type`. `header` holds at least the file's first 64 bytes.
fn check_header(header: &[u8], e_type: u16, type_name: &'static str) -> Result<(), &'static str> {
    if header.len() < 64 || !header.starts_with(ELF_MAGIC) {
        return Err("no ELF header");
    }
    if header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF file");
    }
    if u16_at(header, 0x12) != EM_X86_64 {
        return Err("not built for x86_64");
    }
    if u16_at(header, 0x10) != e_type {
        return Err(type_name);
    }
    Ok(())
}

/// Whether the first 64 bytes of a file are those of an x86_64 kernel module.
pub fn check_module_header(header: &[u8]) -> Result<(), &'static str> {
    check_header(header, ET_REL, "not a relocatable ELF object")
}

/// Checks that `file` is a Linux vmlinux for x86_64, reading only its
/// headers and notes. The error says what it lacks.
pub fn check_vmlinux<R: Read + Seek>(file: &mut R) -> Result<(), &'static str> {
    let truncated = |_: io::Error| "truncated ELF file";
    let mut header = [0u8; 64];
    file.seek(SeekFrom::Start(0)).map_err(truncated)?;
    file.read_exact(&mut header).map_err(|_| "no ELF header")?;
    check_header(&header, ET_EXEC, "not an ELF executable")?;
    let (phoff, phentsize, phnum) = (u64_at(&header, 0x20), u16_at(&header, 0x36), u16_at(&header, 0x38));
    if phnum == 0 || usize::from(phentsize) != PHDR_LEN || phnum > MAX_PHDRS {
        return Err("no usable program headers");
    }
    let mut phdrs = vec![0u8; PHDR_LEN * usize::from(phnum)];
    file.seek(SeekFrom::Start(phoff)).map_err(truncated)?;
    file.read_exact(&mut phdrs).map_err(truncated)?;
    for phdr in phdrs.chunks_exact(PHDR_LEN) {
        if u32_at(phdr, 0) != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(phdr, 0x08), u64_at(phdr, 0x20));
        if size > MAX_NOTES {
            return Err("implausibly large notes");
        }
        let mut notes = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset)).map_err(truncated)?;
        file.read_exact(&mut notes).map_err(truncated)?;
        if note_owners(&notes).any(|owner| owner == b"Linux") {
            return Ok(());
        }
    }
    Err("no Linux ELF note (a vmlinux has notes owned by \"Linux\")")
}

/// The owner names of the notes in a PT_NOTE segment, without their NUL.
fn note_owners(mut notes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if notes.len() < 12 {
            return None;
        }
        let namesz = u32_at(notes, 0) as usize;
        let descsz = u32_at(notes, 4) as usize;
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = name_end.checked_next_multiple_of(4)?;
        let next = desc_start.checked_add(descsz)?.checked_next_multiple_of(4)?;
        let name = notes.get(12..name_end)?;
        notes = notes.get(next..).unwrap_or(&[]);
        Some(name.strip_suffix(b"\0").unwrap_or(name))
    })
}

/// How far past the start of `Linux version ` the release may end.
const BANNER_WINDOW: usize = 320;

/// A writer that passes bytes on and looks for the `Linux version X`
/// banner in them, keeping only a small window, so a vmlinux is searched
/// as it is copied.
pub(crate) struct VersionScanner<W> {
    inner: W,
    window: Vec<u8>,
    found: Option<String>,
}

impl<W: Write> VersionScanner<W> {
    pub(crate) fn new(inner: W) -> Self {
        VersionScanner { inner, window: Vec::new(), found: None }
    }

    /// The release, once every byte has been written.
    pub(crate) fn finish(mut self) -> Option<String> {
        if self.found.is_none() {
            self.found = find_linux_version(&self.window, self.window.len());
        }
        self.found
    }
}

impl<W: Write> Write for VersionScanner<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.found.is_none() {
            self.window.extend_from_slice(&buf[..n]);
            if self.window.len() > 4 * BANNER_WINDOW {
                // A banner starting here has its whole release in the window.
                let starts = self.window.len() - BANNER_WINDOW;
                self.found = find_linux_version(&self.window, starts);
                self.window.drain(..starts);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Finds the release in a `Linux version X ...` banner starting before
/// `starts_before` in `data`.
pub(crate) fn find_linux_version(data: &[u8], starts_before: usize) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let mut from = 0;
    while from < starts_before {
        let pos = data[from..starts_before].iter().position(|&b| b == b'L')?;
        let start = from + pos;
        from = start + 1;
        let Some(rest) = data[start..].strip_prefix(BANNER) else { continue };
        let Some(end) = rest.iter().take(BANNER_WINDOW - BANNER.len()).position(|&b| b == b' ' || b == 0) else {
            continue;
        };
        // The format string "Linux version %s" also appears; skip it.
        match std::str::from_utf8(&rest[..end]) {
            Ok(word) if word.as_bytes().first().is_some_and(u8::is_ascii_digit) => return Some(word.to_string()),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn fake(tag: &str) -> Vec<u8> {
        banger_testkit::bundles::fake_vmlinux(tag)
    }

    #[test]
    fn the_testkit_kernel_passes_and_mangled_ones_say_why() {
        let good = fake("x");
        check_vmlinux(&mut Cursor::new(&good)).unwrap();
        let mangle = |off: usize, bytes: &[u8]| {
            let mut elf = good.clone();
            elf[off..off + bytes.len()].copy_from_slice(bytes);
            check_vmlinux(&mut Cursor::new(elf)).unwrap_err()
        };
        assert_eq!(mangle(4, &[1]), "not a 64-bit little-endian ELF file");
        assert_eq!(mangle(0x12, &183u16.to_le_bytes()), "not built for x86_64");
        assert_eq!(mangle(0x10, &3u16.to_le_bytes()), "not an ELF executable");
        assert_eq!(mangle(0x38, &0u16.to_le_bytes()), "no usable program headers");
        let no_linux = String::from_utf8_lossy(&good).replace("Linux\0", "Linus\0").into_bytes();
        assert_eq!(no_linux.len(), good.len());
        assert!(check_vmlinux(&mut Cursor::new(no_linux)).unwrap_err().contains("no Linux ELF note"));
    }

    #[test]
    fn a_twenty_byte_elf_is_not_a_kernel() {
        let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0".to_vec();
        assert_eq!(elf.len(), 20);
        assert_eq!(check_vmlinux(&mut Cursor::new(&elf)).unwrap_err(), "no ELF header");
        elf.resize(64, 0);
        assert_eq!(check_vmlinux(&mut Cursor::new(&elf)).unwrap_err(), "no usable program headers");
    }

    #[test]
    fn module_headers_are_checked() {
        let mut head = [0u8; 64];
        head[..4].copy_from_slice(ELF_MAGIC);
        head[4] = 2;
        head[5] = 1;
        head[0x10..0x12].copy_from_slice(&ET_REL.to_le_bytes());
        head[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        check_module_header(&head).unwrap();
        assert_eq!(check_module_header(b"root:x:0:0::/root:/bin/sh\n"), Err("no ELF header"));
        head[0x10] = ET_EXEC as u8;
        assert_eq!(check_module_header(&head), Err("not a relocatable ELF object"));
    }

    #[test]
    fn notes_are_walked_with_padding() {
        let mut notes = Vec::new();
        for (name, desc) in [(&b"Xen\0"[..], &b"linux\0"[..]), (b"Linux\0", b"6.1")] {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&1u32.to_le_bytes());
            notes.extend_from_slice(name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend_from_slice(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }
        let owners: Vec<&[u8]> = note_owners(&notes).collect();
        assert_eq!(owners, [&b"Xen"[..], b"Linux"]);
        assert_eq!(note_owners(&[0xff; 16]).count(), 0, "a bad size ends the walk");
    }

    #[test]
    fn the_banner_is_found_across_writes() {
        let mut data = b"\x7fELF junk Linux version %s (%s) ".to_vec();
        data.extend(std::iter::repeat_n(b'x', 5000));
        data.extend_from_slice(b"\0Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org)");
        data.extend(std::iter::repeat_n(b'y', 5000));
        for chunk in [1, 7, 333, 4096, data.len()] {
            let mut scanner = VersionScanner::new(Vec::new());
            for piece in data.chunks(chunk) {
                scanner.write_all(piece).unwrap();
            }
            assert_eq!(scanner.inner, data);
            assert_eq!(scanner.finish().as_deref(), Some("6.1.0-56-cloud-amd64"), "chunks of {chunk}");
        }
        let mut scanner = VersionScanner::new(io::sink());
        scanner.write_all(b"\x7fELF nothing").unwrap();
        assert_eq!(scanner.finish(), None);
    }
}
