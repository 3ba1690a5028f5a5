//! `copy_out`: a guest path and what is below it as a tar stream of one
//! top entry named after the path's last component. Symlinks go as
//! symlinks; sockets, which tar cannot hold, are left out.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tar::{Builder, HeaderMode};

use crate::log::log;
use crate::requests::Refusal;

/// What to send: the path, and the name its entry gets.
pub(crate) struct Source {
    path: PathBuf,
    name: OsString,
}

impl Source {
    pub(crate) fn resolve(path: &str) -> Result<Source, Refusal> {
        let source = Path::new(path);
        if !source.is_absolute() {
            return Err(Refusal::invalid(format!("the path {path} is not absolute")));
        }
        if let Err(e) = fs::symlink_metadata(source) {
            return Err(Refusal::of_io(&e, format!("cannot copy {path}: {e}")));
        }
        let Some(name) = source.file_name() else {
            return Err(Refusal::invalid(format!("{path} names no file to copy (copy what is inside it one by one)")));
        };
        Ok(Source { path: source.to_owned(), name: name.to_owned() })
    }
}

/// Writes the tar stream of `source` to `out`.
pub(crate) fn pack(source: &Source, out: impl Write) -> Result<(), Refusal> {
    let mut builder = Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(HeaderMode::Complete);
    add(&mut builder, &source.path, Path::new(&source.name))?;
    let mut out = builder.into_inner().map_err(|e| failure(&source.path, e))?;
    out.flush().map_err(|e| failure(&source.path, e))
}

fn failure(path: &Path, e: std::io::Error) -> Refusal {
    Refusal::of_io(&e, format!("cannot copy {}: {e}", path.display()))
}

fn add<W: Write>(builder: &mut Builder<W>, path: &Path, name: &Path) -> Result<(), Refusal> {
    let meta = fs::symlink_metadata(path).map_err(|e| failure(path, e))?;
    if meta.file_type().is_socket() {
        log!("copy: leaving out the socket {}", path.display());
        return Ok(());
    }
    builder.append_path_with_name(path, name).map_err(|e| failure(path, e))?;
    if meta.is_dir() {
        let mut children: Vec<OsString> =
            fs::read_dir(path).map_err(|e| failure(path, e))?.flatten().map(|entry| entry.file_name()).collect();
        children.sort();
        for child in children {
            add(builder, &path.join(&child), &name.join(&child))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_agent_proto::ErrorKind;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_tree_is_one_top_entry_with_its_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("tree");
        fs::create_dir_all(top.join("sub")).unwrap();
        fs::write(top.join("sub/file"), b"data").unwrap();
        symlink("sub/file", top.join("link")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(top.join("sock")).unwrap();
        let mut tar = Vec::new();
        pack(&Source::resolve(top.to_str().unwrap()).unwrap(), &mut tar).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<(String, tar::EntryType)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().entry_type())
            })
            .collect();
        assert_eq!(
            names,
            [
                ("tree".to_string(), tar::EntryType::Directory),
                ("tree/link".to_string(), tar::EntryType::Symlink),
                ("tree/sub".to_string(), tar::EntryType::Directory),
                ("tree/sub/file".to_string(), tar::EntryType::Regular),
            ]
        );
    }

    #[test]
    fn a_missing_path_is_not_found() {
        let refusal = Source::resolve("/no/such/path/here").err().unwrap();
        assert_eq!(refusal.kind, ErrorKind::NotFound);
        assert_eq!(Source::resolve("/").err().unwrap().kind, ErrorKind::InvalidArgument);
        assert_eq!(Source::resolve("rel").err().unwrap().kind, ErrorKind::InvalidArgument);
    }
}
