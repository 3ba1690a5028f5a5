//! Writes a host file, symlink or tree as a tar stream of one top entry,
//! read as it is written (a file of any size passes through a small
//! buffer). Modes, times and symlinks are kept; owners are the files' own
//! when banger runs as root, else root's (the guest's user the copy is for).

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::{Builder, EntryType, Header, HeaderMode};

use super::Counted;

/// Writes `src` (and, for a directory, what is below it, links not
/// followed) to `out` as a tar stream whose top entry is `name`.
pub fn pack(src: &Path, name: &str, keep_owners: bool, out: impl Write) -> io::Result<Counted> {
    let mut builder = Builder::new(out);
    let mut packer = Packer { builder: &mut builder, keep_owners, counted: Counted::default() };
    packer.add(src, Path::new(name))?;
    let counted = packer.counted;
    builder.into_inner()?.flush()?;
    Ok(counted)
}

struct Packer<'a, W: Write> {
    builder: &'a mut Builder<W>,
    keep_owners: bool,
    counted: Counted,
}

impl<W: Write> Packer<'_, W> {
    /// Adds `path` as `name`, then (for a directory) its entries, parents first.
    fn add(&mut self, path: &Path, name: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(path).map_err(|e| context(e, path))?;
        let mut header = self.header(&meta);
        let kind = meta.file_type();
        if kind.is_dir() {
            header.set_entry_type(EntryType::Directory);
            self.builder.append_data(&mut header, name, io::empty())?;
            let mut entries: Vec<_> = fs::read_dir(path)
                .map_err(|e| context(e, path))?
                .collect::<io::Result<_>>()
                .map_err(|e| context(e, path))?;
            // A stable order: the same tree makes the same stream.
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                self.add(&entry.path(), &name.join(entry.file_name()))?;
            }
        } else if kind.is_file() {
            let file = File::open(path).map_err(|e| context(e, path))?;
            header.set_entry_type(EntryType::Regular);
            header.set_size(meta.len());
            let exact = Exact { inner: file, left: meta.len(), path };
            self.builder.append_data(&mut header, name, exact)?;
            self.counted.bytes += meta.len();
        } else if kind.is_symlink() {
            let target = fs::read_link(path).map_err(|e| context(e, path))?;
            header.set_entry_type(EntryType::Symlink);
            self.builder.append_link(&mut header, name, target)?;
        } else if kind.is_fifo() {
            header.set_entry_type(EntryType::Fifo);
            self.builder.append_data(&mut header, name, io::empty())?;
        } else {
            let what = if kind.is_socket() { "a socket" } else { "a device" };
            return Err(io::Error::other(format!("cannot copy {}: it is {what}", path.display())));
        }
        self.counted.entries += 1;
        Ok(())
    }

    fn header(&self, meta: &Metadata) -> Header {
        let mut header = Header::new_gnu();
        header.set_metadata_in_mode(meta, HeaderMode::Complete);
        header.set_size(0);
        header.set_mode(meta.mode() & 0o7777);
        if !self.keep_owners {
            header.set_uid(0);
            header.set_gid(0);
        }
        header
    }
}

fn context(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// A file's bytes, exactly as many as its header says: one that grows
/// while it is read is cut there, one that shrinks is an error (the stream
/// would be corrupt).
struct Exact<'a> {
    inner: File,
    left: u64,
    path: &'a Path,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::other(format!("{} shrank while it was copied", self.path.display())));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
