//! Root filesystem images for banger guests. [`build`] turns a [`Recipe`]
//! (a busybox root, a debootstrapped Debian, a directory or a tarball) into
//! an ext4 file made without mounting (`mkfs.ext4 -d`); [`ensure_seed`] keeps
//! the pre-formatted empty work disks that VMs clone; [`install_agent`]
//! puts a guest agent into an existing disk at each boot. Nothing here
//! knows about the daemon.

mod agent_install;
mod elf;
mod error;
mod guest_files;
mod host;
mod layout;
mod recipe;
mod seed;
mod tarball;
mod tree;

use std::path::{Path, PathBuf};

use banger_host::{HostCommands, SystemCommands};

pub use agent_install::{agent_candidates, install_agent, locate_agent, AgentInstallError};
pub use elf::{file_linkage, Linkage};
pub use error::ImageError;
pub use guest_files::{guest_directory_exists, install_files, GuestFile};
pub use seed::{ensure_seed, seed_file, seed_path, SeedFile};

/// File name of the root filesystem inside an image directory.
pub const ROOTFS_FILE: &str = "rootfs.ext4";

/// Where non-tiny images carry the guest agent.
pub const AGENT_PATH: &str = "/usr/local/bin/banger-agent";

/// What to build a root filesystem from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// A busybox root whose PID 1 is the banger agent: boots in a blink.
    Tiny,
    /// A minimal Debian from `debootstrap`, booted by systemd, with the agent as a service.
    Debian {
        /// The Debian suite, such as `bookworm` (see [`Recipe::DEFAULT_DEBIAN_SUITE`]).
        suite: String,
    },
    /// An existing root directory; it is copied, never modified.
    FromDir(PathBuf),
    /// A root tarball: plain, gzip or zstd (or xz), recognised by its magic bytes.
    FromTar(PathBuf),
}

impl Recipe {
    /// The suite [`Recipe::Debian`] uses when none is given.
    pub const DEFAULT_DEBIAN_SUITE: &'static str = "bookworm";

    /// A Debian recipe for the default suite.
    pub fn debian() -> Self {
        Recipe::Debian { suite: Self::DEFAULT_DEBIAN_SUITE.to_owned() }
    }
}

/// Inputs every recipe shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// The static `banger-agent` binary to install in the image.
    pub agent: PathBuf,
    /// A static busybox, for [`Recipe::Tiny`].
    pub busybox: PathBuf,
    /// Size of the ext4 file; by default the content plus headroom, at least
    /// [`MIN_IMAGE_BYTES`], rounded up to a MiB.
    pub size_bytes: Option<u64>,
}

impl BuildOptions {
    /// Options with the default busybox (`/bin/busybox`) and size.
    pub fn new(agent: impl Into<PathBuf>) -> Self {
        BuildOptions { agent: agent.into(), busybox: PathBuf::from("/bin/busybox"), size_bytes: None }
    }
}

/// The smallest image [`build`] makes when no size is given.
pub const MIN_IMAGE_BYTES: u64 = layout::MIN_IMAGE_BYTES;

/// What [`build`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Size of `rootfs.ext4`, in bytes.
    pub size_bytes: u64,
    /// What the kernel's `init=` should be.
    pub init: String,
}

/// Builds `dest/rootfs.ext4` from `recipe`.
///
/// `dest` must exist and be empty; on error the caller removes it. Scratch
/// trees live in a temporary directory inside `dest` (so on the same
/// filesystem) and are removed whatever happens. Needs root: ownership in the
/// image comes from the build tree.
pub fn build(
    recipe: Recipe,
    opts: &BuildOptions,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    build_with(&SystemCommands, recipe, opts, dest, progress)
}

/// Builds `dest/rootfs.ext4` from a root tarball (plain or compressed)
/// read from `tar`: one the caller opened, or a tree streamed as a tar.
/// `source` names it in messages. Like [`build`] otherwise.
pub fn build_from_tar_stream(
    tar: &mut dyn std::io::Read,
    source: &Path,
    opts: &BuildOptions,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    let cmds = &SystemCommands;
    in_scratch(cmds, opts, dest, |scratch, output| {
        recipe::rootfs::from_tar_stream(cmds, tar, source, opts, scratch, output, progress)
    })
}

/// [`build`], running host tools through `cmds`.
pub(crate) fn build_with(
    cmds: &dyn HostCommands,
    recipe: Recipe,
    opts: &BuildOptions,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    in_scratch(cmds, opts, dest, |scratch, output| match recipe {
        Recipe::Tiny => recipe::tiny::build(cmds, opts, scratch, output, progress),
        Recipe::Debian { suite } => recipe::debian::build(cmds, &suite, opts, scratch, output, progress),
        Recipe::FromDir(dir) => recipe::rootfs::from_dir(cmds, &dir, opts, scratch, output, progress),
        Recipe::FromTar(tar) => recipe::rootfs::from_tar(cmds, &tar, opts, scratch, output, progress),
    })
}

/// Runs `fill(scratch, output)` with scratch space inside `dest` (so on
/// the same filesystem), removed whatever happens.
fn in_scratch(
    cmds: &dyn HostCommands,
    opts: &BuildOptions,
    dest: &Path,
    fill: impl FnOnce(&Path, &Path) -> Result<BuiltImage, ImageError>,
) -> Result<BuiltImage, ImageError> {
    let scratch = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(dest)
        .map_err(|source| ImageError::Io { path: dest.to_owned(), source })?;
    if !host::owned_by_root(scratch.path())? {
        return Err(ImageError::NotRoot);
    }
    elf::require_static(&opts.agent, ImageError::AgentMissing, ImageError::AgentNotStatic)?;
    let result = fill(scratch.path(), &dest.join(ROOTFS_FILE));
    // Never delete through a mount that debootstrap left behind.
    if let Err(e) = host::unmount_under(cmds, scratch.path()) {
        let _ = scratch.keep();
        return Err(e);
    }
    scratch.close().map_err(|source| ImageError::Io { path: dest.to_owned(), source })?;
    result
}
