//! Extracting the ELF vmlinux from an x86 bzImage: the setup header locates
//! the compressed payload, whose magic names the compression to undo. The
//! payload is decompressed as a stream into the destination, with a limit.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::source::{copy_limited, HashingWriter, VMLINUX_MAX};
use super::{io_err, ImportError};

/// The largest block of the lz4 legacy frame, decompressed.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// The most an xz or lzma decoder may allocate (the kernel's build uses a
/// 32 MiB dictionary).
const LZMA_MEMLIMIT: u64 = 128 << 20;
/// The setup area is at most 256 sectors of 512 bytes.
const SETUP_MAX: u64 = 256 * 512;
/// Boot protocols with the payload fields (2.08) up to what a 2.x can be.
const PROTOCOLS: std::ops::RangeInclusive<u16> = 0x0208..=0x02ff;

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

/// Parses the setup header of a bzImage from its setup area (the file's
/// first bytes, up to [`SETUP_MAX`]); `file_len` bounds the payload.
pub fn parse_header(setup: &[u8], file_len: u64) -> Result<SetupHeader, ImportError> {
    if setup.get(0x202..0x206) != Some(b"HdrS") {
        return Err(ImportError::InvalidBzImage("no HdrS signature at 0x202"));
    }
    if u16_at(setup, 0x1fe) != Some(0xaa55) {
        return Err(ImportError::InvalidBzImage("no 0xAA55 boot flag at 0x1fe"));
    }
    let protocol = u16_at(setup, 0x206).unwrap_or(0);
    if !PROTOCOLS.contains(&protocol) {
        return Err(ImportError::InvalidBzImage("boot protocol is not 2.08 or later 2.x"));
    }
    let setup_sects = match setup[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let header = SetupHeader {
        protected_mode_offset: (setup_sects + 1) * 512,
        payload_offset: u32_at(setup, 0x248).unwrap_or(0) as usize,
        payload_length: u32_at(setup, 0x24c).unwrap_or(0) as usize,
    };
    let start = (header.protected_mode_offset + header.payload_offset) as u64;
    if header.payload_length == 0 || start + header.payload_length as u64 > file_len {
        return Err(ImportError::InvalidBzImage("payload lies outside the file"));
    }
    Ok(header)
}

/// The kernel release from the header's version string (its first word).
pub fn kernel_version(setup: &[u8]) -> Option<String> {
    if setup.get(0x202..0x206) != Some(b"HdrS") {
        return None;
    }
    let start = usize::from(u16_at(setup, 0x20e)?) + 0x200;
    let rest = setup.get(start..)?;
    let end = rest.iter().take(256).position(|&b| b == 0 || b == b' ')?;
    let word = std::str::from_utf8(&rest[..end]).ok()?;
    (!word.is_empty()).then(|| word.to_string())
}

/// Reads a bzImage's setup area: enough for [`parse_header`] and
/// [`kernel_version`].
pub fn read_setup(src: &mut (impl Read + Seek)) -> io::Result<Vec<u8>> {
    let mut setup = Vec::new();
    src.seek(SeekFrom::Start(0))?;
    src.take(SETUP_MAX).read_to_end(&mut setup)?;
    Ok(setup)
}

/// Decompresses the payload of the bzImage `src` into `out`, at most
/// [`VMLINUX_MAX`] bytes; `dest` names `out` in errors. Returns the
/// release the header names, if any. What comes out is not checked here.
pub fn extract_payload<R: Read + Seek>(
    src: &mut R,
    out: &mut impl Write,
    dest: &Path,
) -> Result<Option<String>, ImportError> {
    let read_err = |e| ImportError::Io { action: "read", path: "the bzImage".into(), source: e };
    let file_len = src.seek(SeekFrom::End(0)).map_err(read_err)?;
    let setup = read_setup(src).map_err(read_err)?;
    let header = parse_header(&setup, file_len)?;
    let start = header.protected_mode_offset + header.payload_offset;
    src.seek(SeekFrom::Start(start as u64)).map_err(read_err)?;
    let mut payload = BufReader::with_capacity(256 * 1024, src.take(header.payload_length as u64));
    let compression = Compression::detect(payload.fill_buf().map_err(read_err)?)
        .ok_or(ImportError::UnsupportedCompression("unrecognised magic"))?;
    let decompress_err = |source| ImportError::Decompress { format: compression.name(), source };
    let decoder: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::GzDecoder::new(payload)),
        Compression::Xz => Box::new(LzmaReader::new(
            xz2::stream::Stream::new_stream_decoder(LZMA_MEMLIMIT, 0)
                .map_err(|e| decompress_err(io::Error::other(e)))?,
            payload,
        )),
        Compression::Lzma => Box::new(LzmaReader::new(
            xz2::stream::Stream::new_lzma_decoder(LZMA_MEMLIMIT).map_err(|e| decompress_err(io::Error::other(e)))?,
            payload,
        )),
        // The payload ends with the uncompressed size: one frame only.
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(payload).map_err(decompress_err)?.single_frame())
        }
        Compression::Lz4Legacy => Box::new(Lz4LegacyReader::new(payload, header.payload_length)),
        Compression::Bzip2 | Compression::Lzo => return Err(ImportError::UnsupportedCompression(compression.name())),
    };
    copy_limited(decoder, out, VMLINUX_MAX, "the decompressed kernel payload", decompress_err, dest)?;
    Ok(kernel_version(&setup))
}

/// An xz or lzma decoder over `input` that ends with its stream, ignoring
/// what follows (the appended size), which xz2's reader rejects.
struct LzmaReader<R> {
    stream: xz2::stream::Stream,
    input: R,
    done: bool,
}

impl<R: BufRead> LzmaReader<R> {
    fn new(stream: xz2::stream::Stream, input: R) -> Self {
        LzmaReader { stream, input, done: false }
    }
}

impl<R: BufRead> Read for LzmaReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        loop {
            let input = self.input.fill_buf()?;
            let eof = input.is_empty();
            let action = if eof { xz2::stream::Action::Finish } else { xz2::stream::Action::Run };
            let (in_before, out_before) = (self.stream.total_in(), self.stream.total_out());
            let status = self.stream.process(input, buf, action).map_err(io::Error::other)?;
            let consumed = (self.stream.total_in() - in_before) as usize;
            let produced = (self.stream.total_out() - out_before) as usize;
            self.input.consume(consumed);
            if status == xz2::stream::Status::StreamEnd {
                self.done = true;
                return Ok(produced);
            }
            if produced > 0 {
                return Ok(produced);
            }
            if eof && consumed == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated stream"));
            }
        }
    }
}

/// Decodes an lz4 legacy frame: the magic, then `[u32 LE size][block]`
/// repeated, one 8 MiB block at a time. The kernel's build appends the
/// uncompressed size as a last u32, which is not a plausible block size
/// (or runs past the payload), so decoding stops there.
struct Lz4LegacyReader<R> {
    input: R,
    /// Payload bytes not yet read from `input`.
    remaining: usize,
    block: Vec<u8>,
    decoded: Vec<u8>,
    pos: usize,
    started: bool,
    blocks: usize,
    done: bool,
}

impl<R: Read> Lz4LegacyReader<R> {
    fn new(input: R, payload_length: usize) -> Self {
        Lz4LegacyReader {
            input,
            remaining: payload_length,
            block: Vec::new(),
            decoded: Vec::new(),
            pos: 0,
            started: false,
            blocks: 0,
            done: false,
        }
    }

    fn word(&mut self) -> io::Result<Option<[u8; 4]>> {
        if self.remaining < 4 {
            return Ok(None);
        }
        let mut word = [0u8; 4];
        self.input.read_exact(&mut word)?;
        self.remaining -= 4;
        Ok(Some(word))
    }

    /// Decodes the next block into `decoded`; false at the end of the frame.
    fn next_block(&mut self) -> io::Result<bool> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
        if !self.started {
            self.started = true;
            if self.word()? != Some(LZ4_LEGACY_MAGIC) {
                return Err(invalid("missing lz4 legacy magic".into()));
            }
        }
        // LZ4_compressBound(8 MiB): the largest a block can be compressed.
        let max_block = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;
        loop {
            let Some(word) = self.word()? else { return Ok(false) };
            if word == LZ4_LEGACY_MAGIC {
                // Concatenated frames: the kernel's decoder skips the magic too.
                continue;
            }
            let size = u32::from_le_bytes(word) as usize;
            if size == 0 || size > max_block || size > self.remaining {
                return Ok(false);
            }
            self.block.resize(size, 0);
            self.input.read_exact(&mut self.block)?;
            self.remaining -= size;
            self.decoded.resize(LZ4_LEGACY_BLOCK, 0);
            let written = lz4_flex::block::decompress_into(&self.block, &mut self.decoded)
                .map_err(|e| invalid(format!("lz4 block: {e}")))?;
            self.decoded.truncate(written);
            self.pos = 0;
            self.blocks += 1;
            return Ok(true);
        }
    }
}

impl<R: Read> Read for Lz4LegacyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.decoded.len() {
            if self.done {
                return Ok(0);
            }
            if !self.next_block()? {
                self.done = true;
                if self.blocks == 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "lz4 legacy frame holds no blocks"));
                }
                return Ok(0);
            }
        }
        let n = buf.len().min(self.decoded.len() - self.pos);
        buf[..n].copy_from_slice(&self.decoded[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What [`extract_vmlinux_file`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedVmlinux {
    /// The release the setup header names, if any.
    pub release: Option<String>,
    /// The vmlinux's SHA-256, lowercase hex, computed as it was written.
    pub sha256: String,
}

/// Extracts the vmlinux of the bzImage `src` to the file `dest` and checks
/// it is a Linux kernel.
pub fn extract_vmlinux_file<R: Read + Seek>(src: &mut R, dest: &Path) -> Result<ExtractedVmlinux, ImportError> {
    let mut out = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dest)
        .map_err(io_err("create", dest))?;
    let mut writer = HashingWriter::new(io::BufWriter::new(&mut out));
    let release = extract_payload(src, &mut writer, dest)?;
    let (buffered, sha256) = writer.finish();
    drop(buffered);
    super::elf::check_vmlinux(&mut out).map_err(ImportError::PayloadNotKernel)?;
    Ok(ExtractedVmlinux { release, sha256 })
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
        data[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
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
        let mut v = banger_testkit::bundles::fake_vmlinux("bz");
        v.extend((0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()));
        v
    }

    /// The payload of `bz`, decompressed in memory.
    fn extract(bz: &[u8]) -> Result<Vec<u8>, ImportError> {
        let mut out = Vec::new();
        extract_payload(&mut std::io::Cursor::new(bz), &mut out, Path::new("out"))?;
        Ok(out)
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
        assert_eq!(extract(&bz).unwrap(), vmlinux);
        assert_eq!(kernel_version(&bz).as_deref(), Some("6.6.1-test"));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("vmlinux");
        let extracted = extract_vmlinux_file(&mut std::io::Cursor::new(&bz), &dest).unwrap();
        assert_eq!(extracted.release.as_deref(), Some("6.6.1-test"));
        let digest: String = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&vmlinux))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(extracted.sha256, digest);
        assert_eq!(std::fs::read(&dest).unwrap(), vmlinux);
    }

    #[test]
    fn zstd_xz_and_lzma_payloads_are_extracted() {
        let vmlinux = fake_vmlinux();
        let zst = with_size_trailer(zstd::encode_all(&vmlinux[..], 1).unwrap(), vmlinux.len());
        assert_eq!(extract(&make_bzimage(&zst, "1")).unwrap(), vmlinux);
        let mut lzma = Vec::new();
        let encoder = xz2::stream::Stream::new_lzma_encoder(&xz2::stream::LzmaOptions::new_preset(1).unwrap()).unwrap();
        xz2::read::XzEncoder::new_stream(&vmlinux[..], encoder).read_to_end(&mut lzma).unwrap();
        let lzma = with_size_trailer(lzma, vmlinux.len());
        assert_eq!(extract(&make_bzimage(&lzma, "1")).unwrap(), vmlinux);
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&vmlinux[..], 1).read_to_end(&mut xz).unwrap();
        let xz = with_size_trailer(xz, vmlinux.len());
        assert_eq!(extract(&make_bzimage(&xz, "1")).unwrap(), vmlinux);
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
        assert_eq!(extract(&make_bzimage(&payload, "1")).unwrap(), vmlinux);
    }

    #[test]
    fn bad_inputs_get_clear_errors() {
        let bz2 = make_bzimage(b"BZh91AY&SY", "1");
        assert!(matches!(extract(&bz2), Err(ImportError::UnsupportedCompression("bzip2"))));
        assert!(matches!(extract(&[0u8; 1024]), Err(ImportError::InvalidBzImage(_))));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"MZ not an elf").unwrap();
        let not_elf = make_bzimage(&enc.finish().unwrap(), "1");
        let dir = tempfile::tempdir().unwrap();
        let err = extract_vmlinux_file(&mut std::io::Cursor::new(not_elf), &dir.path().join("v")).unwrap_err();
        assert!(matches!(err, ImportError::PayloadNotKernel(_)), "{err}");
    }

    #[test]
    fn headers_without_a_sane_protocol_or_boot_flag_are_refused() {
        let bz = make_bzimage(b"\x1f\x8b", "1");
        let mut old = bz.clone();
        old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
        let mut future = bz.clone();
        future[0x206..0x208].copy_from_slice(&0x0300u16.to_le_bytes());
        let mut no_flag = bz.clone();
        no_flag[0x1fe] = 0;
        for bad in [old, future, no_flag] {
            assert!(matches!(parse_header(&bad, bad.len() as u64), Err(ImportError::InvalidBzImage(_))));
        }
        parse_header(&bz, bz.len() as u64).unwrap();
    }

    #[test]
    fn payload_outside_file_is_rejected() {
        let mut bz = make_bzimage(b"\x1f\x8b", "1");
        bz[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_header(&bz, bz.len() as u64), Err(ImportError::InvalidBzImage(_))));
    }

    #[test]
    fn a_payload_that_inflates_past_the_limit_stops_at_the_limit() {
        // 8 MiB of zeros per write, well past VMLINUX_MAX in all.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        let zeros = vec![0u8; 8 << 20];
        for _ in 0..(VMLINUX_MAX / zeros.len() as u64 + 1) {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = make_bzimage(&enc.finish().unwrap(), "1");
        let mut written = 0u64;
        let mut counter = CountingSink(&mut written);
        let err = extract_payload(&mut std::io::Cursor::new(bomb), &mut counter, Path::new("out")).unwrap_err();
        assert!(matches!(err, ImportError::TooLarge { limit: VMLINUX_MAX, .. }), "{err}");
        assert!(err.to_string().contains("512 MiB"), "{err}");
        assert!(written <= VMLINUX_MAX);
    }

    struct CountingSink<'a>(&'a mut u64);

    impl Write for CountingSink<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            *self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
