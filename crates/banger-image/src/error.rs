//! Why an image or a seed could not be made.

use std::io;
use std::path::PathBuf;

/// Why an image or a work-disk seed could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A host tool is not installed.
    #[error("{tool} not found; install Debian's {package} package")]
    MissingTool {
        /// The program looked for.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// Building needs root, because ownership in the image comes from the build tree.
    #[error("building an image needs root (file ownership in the image comes from the build tree)")]
    NotRoot,
    /// The busybox given for a tiny image does not exist.
    #[error("busybox not found at {0}; install Debian's busybox-static package")]
    BusyboxMissing(PathBuf),
    /// The busybox given is not a statically linked ELF binary.
    #[error("{0} is not a statically linked busybox; install Debian's busybox-static package")]
    BusyboxNotStatic(PathBuf),
    /// The agent binary does not exist.
    #[error("banger-agent not found at {0}")]
    AgentMissing(PathBuf),
    /// The agent is not a statically linked ELF binary, so it cannot run in every image.
    #[error("{0} is not a statically linked ELF binary; build banger-agent with +crt-static")]
    AgentNotStatic(PathBuf),
    /// The source directory or tarball of a recipe does not exist or has the wrong type.
    #[error("{path} is not {expected}")]
    BadSource {
        /// The path given.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
    /// A tarball member would land outside the root, or has an unusable path.
    #[error("refusing tarball member {path:?}: {reason}")]
    UnsafeTarMember {
        /// The member's path as the archive gives it.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A tarball could not be read or unpacked.
    #[error("cannot extract {path}")]
    Tar {
        /// The tarball.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The requested size is too small for the content.
    #[error("image size {size} bytes is too small: the content needs about {needed} bytes")]
    TooSmall {
        /// The size asked for.
        size: u64,
        /// What the content needs, roughly.
        needed: u64,
    },
    /// A work-disk seed size that cannot be made.
    #[error("seed size {size} bytes is invalid: it must be a multiple of 4096 and at least 1 MiB")]
    InvalidSeedSize {
        /// The size asked for.
        size: u64,
    },
    /// `busybox --list-full` printed something unusable.
    #[error("busybox at {0} lists no applets")]
    NoApplets(PathBuf),
    /// Something is still mounted in the scratch tree, so it was left in place
    /// rather than deleted through the mount.
    #[error("{0} is still mounted; unmount it and remove the build directory by hand")]
    StillMounted(PathBuf),
    /// A host command could not be run or failed.
    #[error(transparent)]
    Command(#[from] banger_host::CommandError),
    /// Reading or writing a file failed.
    #[error("cannot access {path}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// A closure mapping an `io::Error` to [`ImageError::Io`] for `path`.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_owned(), source }
}
