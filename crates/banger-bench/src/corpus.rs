//! The bundle the pull benchmark downloads: a kernel-shaped tree (one big
//! `vmlinux`, a few thousand module files) of seeded pseudo-random content
//! that compresses about as well as a real kernel does.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// Share of the bundle's bytes that goes into `vmlinux`; the rest is modules.
const VMLINUX_SHARE: f64 = 0.2;
/// Mean size of a module file; sizes spread from a tenth to twice this.
const MEAN_MODULE_BYTES: u64 = 80 * 1024;
/// Module files per directory under `modules/<release>/kernel/`.
const MODULES_PER_DIR: u64 = 100;
const RELEASE: &str = "6.1.0-bench";
const BLOCK: usize = 4096;
/// Earlier blocks a repeated block may copy; small enough to sit in zstd's window.
const HISTORY_BLOCKS: usize = 64;

/// A generated bundle, held in memory.
pub struct Bundle {
    /// The `.tar.zst` bytes.
    pub bytes: Vec<u8>,
    /// Lowercase hex SHA-256 of `bytes`.
    pub sha256: String,
    /// Bytes of regular files once extracted.
    pub unpacked_bytes: u64,
    /// Regular files in the bundle.
    pub files: u64,
}

/// Writes a kernel tree of about `total_bytes` under `src` (which must not
/// exist) and bundles it at zstd `level`. The tree stays: deleting
/// thousands of files just before the timed runs would slow their file
/// creation (ext4 without a journal skips recently freed inodes).
pub fn make(src: &Path, total_bytes: u64, level: i32) -> anyhow::Result<Bundle> {
    let mut filler = Filler::new(0x6261_6e67_6572);
    let mut unpacked_bytes = 0;
    let mut files = 0;

    fs::create_dir_all(src).with_context(|| format!("cannot create {}", src.display()))?;
    let vmlinux_bytes = (total_bytes as f64 * VMLINUX_SHARE) as u64;
    let mut vmlinux = filler.bytes(vmlinux_bytes as usize);
    vmlinux[..4].copy_from_slice(b"\x7fELF");
    write(&src.join("vmlinux"), &vmlinux)?;
    unpacked_bytes += vmlinux_bytes;
    files += 1;
    drop(vmlinux);

    let release = src.join("modules").join(RELEASE);
    let mut remaining = total_bytes.saturating_sub(vmlinux_bytes);
    while remaining > 0 {
        let module = files - 1;
        let dir = release.join("kernel").join(format!("drivers{:03}", module / MODULES_PER_DIR));
        if module % MODULES_PER_DIR == 0 {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let spread = filler.next() % (MEAN_MODULE_BYTES * 19 / 10);
        let size = (MEAN_MODULE_BYTES / 10 + spread).min(remaining);
        write(&dir.join(format!("mod{module:05}.ko")), &filler.bytes(size as usize))?;
        unpacked_bytes += size;
        files += 1;
        remaining -= size;
    }
    // Real module trees carry a relative symlink back into the tree.
    std::os::unix::fs::symlink("kernel", release.join("build")).context("cannot create the build symlink")?;

    let mut bytes = Vec::with_capacity((total_bytes / 2) as usize);
    banger_kernel::bundle::create(src, &mut bytes, level).context("cannot bundle the generated kernel")?;
    let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    Ok(Bundle { bytes, sha256, unpacked_bytes, files })
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(data).with_context(|| format!("cannot write {}", path.display()))
}

/// Seeded content in 4 KiB blocks of four kinds: random bytes (1/8,
/// incompressible, like packed code), bytes from a 16-symbol alphabet
/// (2/8, entropy-coded to about half, like string tables), copies of a
/// recent block (3/8, long matches, like repeated structures) and short
/// repeating patterns (2/8, like padding and zeroed tables). zstd -3 makes
/// about a third of it, as it does of a real kernel and its modules.
struct Filler {
    state: u64,
    history: Vec<u8>,
}

impl Filler {
    fn new(seed: u64) -> Filler {
        let mut filler = Filler { state: seed, history: Vec::new() };
        let mut history = vec![0u8; HISTORY_BLOCKS * BLOCK];
        filler.random(&mut history);
        filler.history = history;
        filler
    }

    /// splitmix64: fast, and good enough to defeat a compressor.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn random(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        const ALPHABET: &[u8; 16] = b"\0\x01\x02\x04\x08\x10\x20\x40\x80\xffeEtaoi";
        let mut out = vec![0u8; len];
        for block in out.chunks_mut(BLOCK) {
            let pick = self.next();
            match pick % 8 {
                0 => self.random(block),
                1 | 2 => {
                    for chunk in block.chunks_mut(16) {
                        let mut word = self.next();
                        for byte in chunk {
                            *byte = ALPHABET[(word & 15) as usize];
                            word >>= 4;
                        }
                    }
                }
                3..=5 => {
                    let start = (pick >> 8) as usize % HISTORY_BLOCKS * BLOCK;
                    block.copy_from_slice(&self.history[start..start + block.len()]);
                }
                _ => {
                    let pattern = self.next().to_le_bytes();
                    let period = 1 + (pick >> 8) as usize % 8;
                    for (i, byte) in block.iter_mut().enumerate() {
                        *byte = pattern[i % period];
                    }
                }
            }
        }
        out
    }
}
