//! Extracting the ELF vmlinux from an x86 bzImage: the setup header locates
//! the compressed payload, whose magic names the compression to undo.

use std::io::{self, Read};

use super::{ImportError, ELF_MAGIC};

/// The largest block of the lz4 legacy frame, decompressed.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// Where the payload sits in a bzImage, from its setup header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    /// Offset of the protected-mode code: `(setup_sects + 1) * 512`.
    pub protected_mode_offset: usize,
    /// The compressed payload's offset, relative to the protected-mode code.
    pub payload_offset: usize,
    /// The compressed payload's length in bytes.
    pub payload_length: usize,
}

/// The payload's compression, read from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// lz4 legacy frame (`02 21 4c 18`), what Debian's kernels use.
    Lz4Legacy,
    /// lzma alone (`5d 00 00`).
    Lzma,
    /// bzip2 (`BZh`): not supported.
    Bzip2,
    /// lzo (`89 LZO`): not supported.
    Lzo,
}

impl Compression {
    /// Recognises the compression from the payload's first bytes.
    pub fn detect(payload: &[u8]) -> Option<Self> {
        let table: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b], Self::Gzip),
            (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], Self::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Self::Zstd),
            (&LZ4_LEGACY_MAGIC, Self::Lz4Legacy),
            (&[0x5d, 0x00, 0x00], Self::Lzma),
            (b"BZh", Self::Bzip2),
            (&[0x89, b'L', b'Z', b'O'], Self::Lzo),
        ];
        table.iter().find(|(magic, _)| payload.starts_with(magic)).map(|&(_, c)| c)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Lz4Legacy => "lz4",
            Self::Lzma => "lzma",
            Self::Bzip2 => "bzip2",
            Self::Lzo => "lzo",
        }
    }
}

fn u16_at(data: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
}

/// Parses the setup header of a bzImage.
pub fn parse_header(data: &[u8]) -> Result<SetupHeader, ImportError> {
    if data.get(0x202..0x206) != Some(b"HdrS") {
        return Err(ImportError::InvalidBzImage("no HdrS signature at 0x202"));
    }
    // The payload fields exist from boot protocol 2.08 on.
    let protocol = u16_at(data, 0x206).unwrap_or(0);
    if protocol < 0x0208 {
        return Err(ImportError::InvalidBzImage("boot protocol older than 2.08 has no payload fields"));
    }
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let header = SetupHeader {
        protected_mode_offset: (setup_sects + 1) * 512,
        payload_offset: u32_at(data, 0x248).unwrap_or(0) as usize,
        payload_length: u32_at(data, 0x24c).unwrap_or(0) as usize,
    };
    let start = header.protected_mode_offset + header.payload_offset;
    if header.payload_length == 0 || start + header.payload_length > data.len() {
        return Err(ImportError::InvalidBzImage("payload lies outside the file"));
    }
    Ok(header)
}

/// The kernel release from the header's version string (its first word).
pub fn kernel_version(data: &[u8]) -> Option<String> {
    if data.get(0x202..0x206) != Some(b"HdrS") {
        return None;
    }
    let start = usize::from(u16_at(data, 0x20e)?) + 0x200;
    let rest = data.get(start..)?;
    let end = rest.iter().take(256).position(|&b| b == 0 || b == b' ')?;
    let word = std::str::from_utf8(&rest[..end]).ok()?;
    (!word.is_empty()).then(|| word.to_string())
}

/// Extracts the ELF vmlinux from a bzImage by decompressing its payload.
pub fn extract_vmlinux(data: &[u8]) -> Result<Vec<u8>, ImportError> {
    let header = parse_header(data)?;
    let start = header.protected_mode_offset + header.payload_offset;
    let payload = &data[start..start + header.payload_length];
    let compression = Compression::detect(payload).ok_or(ImportError::UnsupportedCompression("unrecognised magic"))?;
    let decompress_err = |source| ImportError::Decompress { format: compression.name(), source };
    let vmlinux = match compression {
        Compression::Gzip => read_all(flate2::read::GzDecoder::new(payload)),
        Compression::Xz => xz2::stream::Stream::new_stream_decoder(u64::MAX, 0)
            .map_err(io::Error::other)
            .and_then(|s| decode_lzma_family(s, payload)),
        Compression::Lzma => xz2::stream::Stream::new_lzma_decoder(u64::MAX)
            .map_err(io::Error::other)
            .and_then(|s| decode_lzma_family(s, payload)),
        // The payload ends with the uncompressed size: one frame only.
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(payload).and_then(|d| read_all(d.single_frame())),
        Compression::Lz4Legacy => decompress_lz4_legacy(payload),
        Compression::Bzip2 | Compression::Lzo => return Err(ImportError::UnsupportedCompression(compression.name())),
    }
    .map_err(decompress_err)?;
    if !vmlinux.starts_with(ELF_MAGIC) {
        return Err(ImportError::PayloadNotElf);
    }
    Ok(vmlinux)
}

fn read_all(mut reader: impl Read) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out)?;
    Ok(out)
}

/// Runs an xz or lzma decoder over `input` up to the end of its stream,
/// ignoring what follows (the appended size), which xz2's reader rejects.
fn decode_lzma_family(mut stream: xz2::stream::Stream, mut input: &[u8]) -> io::Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len().saturating_mul(4));
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(1 << 20));
        }
        let (in_before, out_before) = (stream.total_in(), out.len());
        let status = stream.process_vec(input, &mut out, xz2::stream::Action::Finish).map_err(io::Error::other)?;
        let consumed = (stream.total_in() - in_before) as usize;
        input = &input[consumed..];
        if status == xz2::stream::Status::StreamEnd {
            return Ok(out);
        }
        if consumed == 0 && out.len() == out_before {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated stream"));
        }
    }
}

/// Decodes an lz4 legacy frame: the magic, then `[u32 LE size][block]`
/// repeated. The kernel's build appends the uncompressed size as a last u32,
/// which is not a plausible block size, so decoding stops there.
pub fn decompress_lz4_legacy(input: &[u8]) -> io::Result<Vec<u8>> {
    let invalid = |msg: &str| io::Error::new(io::ErrorKind::InvalidData, msg.to_string());
    let mut rest = input.strip_prefix(&LZ4_LEGACY_MAGIC[..]).ok_or_else(|| invalid("missing lz4 legacy magic"))?;
    // LZ4_compressBound(8 MiB): the largest a block can be compressed.
    let max_block = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let word: [u8; 4] = rest[..4].try_into().expect("four bytes");
        if word == LZ4_LEGACY_MAGIC {
            // Concatenated frames: the kernel's decoder skips the magic too.
            rest = &rest[4..];
            continue;
        }
        let size = u32::from_le_bytes(word) as usize;
        if size == 0 || size > max_block || size > rest.len() - 4 {
            break;
        }
        let block = &rest[4..4 + size];
        let pos = out.len();
        out.resize(pos + LZ4_LEGACY_BLOCK, 0);
        let written = lz4_flex::block::decompress_into(block, &mut out[pos..])
            .map_err(|e| invalid(&format!("lz4 block at offset {pos}: {e}")))?;
        out.truncate(pos + written);
        rest = &rest[4 + size..];
    }
    if out.is_empty() {
        return Err(invalid("lz4 legacy frame holds no blocks"));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal bzImage: a setup header pointing at `payload`, and a
    /// version string reached through the kernel_version pointer.
    pub(crate) fn make_bzimage(payload: &[u8], version: &str) -> Vec<u8> {
        let setup_sects = 3u8;
        let pm = (usize::from(setup_sects) + 1) * 512;
        let mut data = vec![0u8; pm];
        data[0x1f1] = setup_sects;
        data[0x202..0x206].copy_from_slice(b"HdrS");
        data[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        let version_off = 0x300usize;
        data[0x20e..0x210].copy_from_slice(&((version_off - 0x200) as u16).to_le_bytes());
        let v = format!("{version} (builder@host) #1 SMP\0");
        data[version_off..version_off + v.len()].copy_from_slice(v.as_bytes());
        let payload_offset = 0x40u32;
        data[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
        data[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        data.resize(pm + payload_offset as usize, 0xcc);
        data.extend_from_slice(payload);
        data.extend_from_slice(&[0u8; 64]);
        data
    }

    fn fake_vmlinux() -> Vec<u8> {
        let mut v = ELF_MAGIC.to_vec();
        v.extend((0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()));
        v
    }

    fn with_size_trailer(mut compressed: Vec<u8>, len: usize) -> Vec<u8> {
        compressed.extend_from_slice(&(len as u32).to_le_bytes());
        compressed
    }

    #[test]
    fn gzip_payload_is_extracted() {
        let vmlinux = fake_vmlinux();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vmlinux).unwrap();
        let payload = with_size_trailer(enc.finish().unwrap(), vmlinux.len());
        let bz = make_bzimage(&payload, "6.6.1-test");
        assert_eq!(extract_vmlinux(&bz).unwrap(), vmlinux);
        assert_eq!(kernel_version(&bz).as_deref(), Some("6.6.1-test"));
    }

    #[test]
    fn zstd_xz_and_lzma_payloads_are_extracted() {
        let vmlinux = fake_vmlinux();
        let zst = with_size_trailer(zstd::encode_all(&vmlinux[..], 1).unwrap(), vmlinux.len());
        assert_eq!(extract_vmlinux(&make_bzimage(&zst, "1")).unwrap(), vmlinux);
        let mut lzma = Vec::new();
        let encoder = xz2::stream::Stream::new_lzma_encoder(&xz2::stream::LzmaOptions::new_preset(1).unwrap()).unwrap();
        xz2::read::XzEncoder::new_stream(&vmlinux[..], encoder).read_to_end(&mut lzma).unwrap();
        let lzma = with_size_trailer(lzma, vmlinux.len());
        assert_eq!(extract_vmlinux(&make_bzimage(&lzma, "1")).unwrap(), vmlinux);
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&vmlinux[..], 1).read_to_end(&mut xz).unwrap();
        let xz = with_size_trailer(xz, vmlinux.len());
        assert_eq!(extract_vmlinux(&make_bzimage(&xz, "1")).unwrap(), vmlinux);
    }

    #[test]
    fn lz4_legacy_payload_is_extracted() {
        // Two blocks, the first a full 8 MiB, to exercise the block loop.
        let mut vmlinux = fake_vmlinux();
        vmlinux.resize(LZ4_LEGACY_BLOCK + 12345, 7);
        let mut payload = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in vmlinux.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
            payload.extend_from_slice(&block);
        }
        let payload = with_size_trailer(payload, vmlinux.len());
        assert_eq!(extract_vmlinux(&make_bzimage(&payload, "1")).unwrap(), vmlinux);
    }

    #[test]
    fn bad_inputs_get_clear_errors() {
        let bz2 = make_bzimage(b"BZh91AY&SY", "1");
        assert!(matches!(extract_vmlinux(&bz2), Err(ImportError::UnsupportedCompression("bzip2"))));
        assert!(matches!(extract_vmlinux(&[0u8; 1024]), Err(ImportError::InvalidBzImage(_))));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"MZ not an elf").unwrap();
        let not_elf = make_bzimage(&enc.finish().unwrap(), "1");
        assert!(matches!(extract_vmlinux(&not_elf), Err(ImportError::PayloadNotElf)));
    }

    #[test]
    fn payload_outside_file_is_rejected() {
        let mut bz = make_bzimage(b"\x1f\x8b", "1");
        bz[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_header(&bz), Err(ImportError::InvalidBzImage(_))));
    }
}
