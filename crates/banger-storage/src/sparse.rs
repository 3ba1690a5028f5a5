//! Sparse copies: only the source's data extents are read, and blocks of
//! zeros inside them are not written, so holes stay holes.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use crate::sys;

/// The unit in which zeros are skipped.
const BLOCK: usize = 4096;
/// How much is read at once.
const CHUNK: usize = 1 << 20;

/// The ranges of `buf` made of `block`-sized pieces that are not all zero,
/// with neighbouring pieces merged.
pub(crate) fn nonzero_runs(buf: &[u8], block: usize) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, piece) in buf.chunks(block).enumerate() {
        if piece.iter().all(|&b| b == 0) {
            continue;
        }
        let start = i * block;
        let end = start + piece.len();
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

/// Copies `len` bytes of `src` into the empty `dest`, leaving holes where
/// `src` has holes or blocks of zeros.
pub(crate) fn copy(src: &File, dest: &File, len: u64) -> io::Result<()> {
    dest.set_len(len)?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < len {
        let Some(data) = sys::seek_data(src, offset)? else {
            break;
        };
        let hole = sys::seek_hole(src, data)?.min(len);
        copy_range(src, dest, data..hole, &mut buf)?;
        offset = hole;
    }
    Ok(())
}

fn copy_range(src: &File, dest: &File, range: Range<u64>, buf: &mut [u8]) -> io::Result<()> {
    let mut pos = range.start;
    while pos < range.end {
        let want = usize::try_from(range.end - pos).unwrap_or(usize::MAX).min(buf.len());
        let chunk = &mut buf[..want];
        src.read_exact_at(chunk, pos)?;
        for run in nonzero_runs(chunk, BLOCK) {
            dest.write_all_at(&chunk[run.clone()], pos + run.start as u64)?;
        }
        pos += want as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_skipped() {
        let mut buf = vec![0u8; 5 * 4];
        buf[5] = 1; // block 1
        buf[9] = 1; // block 2
        buf[19] = 1; // block 4
        assert_eq!(nonzero_runs(&buf, 4), [4..12, 16..20]);
        assert!(nonzero_runs(&[0; 10], 4).is_empty());
        assert_eq!(nonzero_runs(&[0, 0, 0, 0, 0, 7], 4), [Range { start: 4, end: 6 }]);
    }
}
