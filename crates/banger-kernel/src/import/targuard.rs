//! A reader that follows a tar stream's framing as it passes, to refuse the
//! entries the `tar` crate would read whole into memory: GNU long names and
//! link names (`L`, `K`) and pax headers (`x`, `g`) larger than
//! [`META_MAX`]. The other entries' data are streamed by the importer.

use std::io::{self, Read};

/// The most a long name or a pax header may hold.
pub(crate) const META_MAX: u64 = 64 * 1024;
const BLOCK: usize = 512;

/// The tar framing error put inside an `io::Error`.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) &'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Refused {}

/// See the module docs.
pub(crate) struct TarGuard<R> {
    inner: R,
    header: [u8; BLOCK],
    header_len: usize,
    /// Data and padding of the current entry still to pass.
    data_left: u64,
    /// A pax header's records, kept to learn a `size` override.
    pax: Option<Vec<u8>>,
    /// The size the last pax header gave the next entry.
    next_size: Option<u64>,
}

impl<R: Read> TarGuard<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarGuard { inner, header: [0; BLOCK], header_len: 0, data_left: 0, pax: None, next_size: None }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Refused> {
        while !bytes.is_empty() {
            if self.data_left > 0 {
                let n = bytes.len().min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                if let Some(pax) = &mut self.pax {
                    pax.extend_from_slice(&bytes[..n]);
                }
                self.data_left -= n as u64;
                bytes = &bytes[n..];
                if self.data_left == 0 {
                    if let Some(pax) = self.pax.take() {
                        self.next_size = pax_size(&pax);
                    }
                }
                continue;
            }
            let n = bytes.len().min(BLOCK - self.header_len);
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == BLOCK {
                self.header_len = 0;
                self.header_done()?;
            }
        }
        Ok(())
    }

    fn header_done(&mut self) -> Result<(), Refused> {
        let header = &self.header;
        if header.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let size = size_field(&header[124..136]).ok_or(Refused("a tar header has a malformed size"))?;
        let kind = header[156];
        let size = match kind {
            b'L' | b'K' | b'x' | b'g' => {
                if size > META_MAX {
                    return Err(Refused("a tar long name or pax header is larger than 64 KiB"));
                }
                if kind == b'x' {
                    self.pax = Some(Vec::with_capacity(size as usize));
                }
                size
            }
            b'S' => return Err(Refused("sparse files in a tar are not supported")),
            // A pax `size` replaces the header's for the entry it precedes.
            _ => self.next_size.take().unwrap_or(size),
        };
        self.data_left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if self.data_left == 0 {
            if let Some(pax) = self.pax.take() {
                self.next_size = pax_size(&pax);
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }
}

/// A header's size: octal, or base-256 when the first byte's top bit is set.
fn size_field(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut value = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The `size` record of pax extended header records (`LEN key=value\n`),
/// given with the block padding that follows them.
fn pax_size(records: &[u8]) -> Option<u64> {
    let mut records = &records[..records.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)];
    let mut size = None;
    while !records.is_empty() {
        let space = records.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&records[..space]).ok()?.parse().ok()?;
        let record = records.get(space + 1..len)?;
        if let Some(value) = record.strip_prefix(b"size=") {
            size = std::str::from_utf8(value).ok()?.trim_end_matches('\n').parse().ok();
        }
        records = &records[len..];
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries_through_guard(tar: &[u8]) -> io::Result<Vec<(String, u64)>> {
        let mut archive = tar::Archive::new(TarGuard::new(tar));
        let mut out = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry.path()?.display().to_string();
            let n = io::copy(&mut entry, &mut io::sink())?;
            out.push((name, n));
        }
        Ok(out)
    }

    #[test]
    fn ordinary_long_name_and_pax_archives_pass() {
        let mut builder = tar::Builder::new(Vec::new());
        let long = format!("lib/modules/6.1/{}/x.ko", "d".repeat(200));
        for (name, data) in [("a", &b"hello"[..]), (long.as_str(), &[7u8; 1000][..])] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, data).unwrap();
        }
        // A pax header whose size overrides the next entry's.
        let mut pax = tar::Header::new_ustar();
        let record = b"16 size=1234567\n";
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_size(record.len() as u64);
        pax.set_cksum();
        builder.append(&pax, &record[..]).unwrap();
        let mut big = tar::Header::new_ustar();
        big.set_path("big").unwrap();
        big.set_size(0);
        big.set_cksum();
        // The builder copies and pads whatever the reader gives.
        builder.append(&big, &vec![1u8; 1234567][..]).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        builder.append_data(&mut header, "after", &b"end"[..]).unwrap();
        let tar = builder.into_inner().unwrap();
        let got = entries_through_guard(&tar).unwrap();
        assert_eq!(got, [("a".into(), 5), (long, 1000), ("big".into(), 1234567), ("after".into(), 3)]);
    }

    #[test]
    fn a_huge_long_name_is_refused_before_it_is_read() {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        header.set_entry_type(tar::EntryType::GNULongName);
        header.set_size(3 << 30);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend(vec![b'a'; 1 << 20]);
        let err = entries_through_guard(&tar).unwrap_err();
        assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
    }

    #[test]
    fn sizes_parse_in_octal_and_base_256() {
        assert_eq!(size_field(b"00000001750\0"), Some(1000));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 5;
        b256[10] = 1;
        assert_eq!(size_field(&b256), Some(261));
        assert_eq!(size_field(b"zz\0\0\0\0\0\0\0\0\0\0"), None);
        assert_eq!(pax_size(b"19 path=abcdefghij\n16 size=1234567\n"), Some(1234567));
    }
}
