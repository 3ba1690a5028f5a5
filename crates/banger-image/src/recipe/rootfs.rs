//! Roots banger did not make: a directory (copied, never modified) or a
//! tarball (unpacked into scratch space). The agent is added when missing;
//! the image boots the root's own `/sbin/init` if it has one, else the agent.

use std::fs;
use std::io::Read;
use std::path::Path;

use banger_host::HostCommands;

use crate::error::io_at;
use crate::{host, layout, tarball, tree, BuildOptions, BuiltImage, ImageError, AGENT_PATH};

/// Builds an image from the root directory `dir`.
pub(crate) fn from_dir(
    cmds: &dyn HostCommands,
    dir: &Path,
    opts: &BuildOptions,
    scratch: &Path,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    if !dir.is_dir() {
        return Err(ImageError::BadSource { path: dir.to_owned(), expected: "a directory" });
    }
    host::require_tool(cmds, "mkfs.ext4", "e2fsprogs")?;
    if has_agent(dir) {
        return finish(cmds, dir, opts, output, progress);
    }
    progress("copying the root directory");
    let root = scratch.join("root");
    fs::create_dir(&root).map_err(io_at(&root))?;
    host::copy_tree(cmds, dir, &root)?;
    add_agent(&root, opts)?;
    finish(cmds, &root, opts, output, progress)
}

/// Builds an image from a root tarball.
pub(crate) fn from_tar(
    cmds: &dyn HostCommands,
    tar: &Path,
    opts: &BuildOptions,
    scratch: &Path,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    if !tar.is_file() {
        return Err(ImageError::BadSource { path: tar.to_owned(), expected: "a tarball" });
    }
    let mut file = fs::File::open(tar).map_err(|source| ImageError::Tar { path: tar.to_owned(), source })?;
    from_tar_stream(cmds, &mut file, tar, opts, scratch, output, progress)
}

/// Builds an image from a root tarball read from `tar` (`source` names it).
pub(crate) fn from_tar_stream(
    cmds: &dyn HostCommands,
    tar: &mut dyn Read,
    source: &Path,
    opts: &BuildOptions,
    scratch: &Path,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    host::require_tool(cmds, "mkfs.ext4", "e2fsprogs")?;
    progress("unpacking the root tarball");
    let root = scratch.join("root");
    fs::create_dir(&root).map_err(io_at(&root))?;
    let skipped = tarball::extract(tar, source, &root)?;
    if skipped.special_files > 0 {
        progress(&format!("left out {} device nodes and FIFOs (/dev is a devtmpfs)", skipped.special_files));
    }
    if !has_agent(&root) {
        add_agent(&root, opts)?;
    }
    finish(cmds, &root, opts, output, progress)
}

fn has_agent(root: &Path) -> bool {
    tree::exists_in_root(root, Path::new(AGENT_PATH))
}

fn add_agent(root: &Path, opts: &BuildOptions) -> Result<(), ImageError> {
    tree::materialize(root, &layout::agent_only(&opts.agent))
}

fn finish(
    cmds: &dyn HostCommands,
    root: &Path,
    opts: &BuildOptions,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    let init = if tree::exists_in_root(root, Path::new("/sbin/init")) { "/sbin/init" } else { AGENT_PATH };
    let size_bytes = super::make_ext4(cmds, root, opts, output, progress)?;
    Ok(BuiltImage { size_bytes, init: init.to_owned() })
}
