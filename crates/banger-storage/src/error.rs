//! Why a disk could not be cloned, grown or measured.

use std::io;
use std::path::PathBuf;

/// Why a disk could not be cloned, grown or measured.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The destination already exists; it is left alone.
    #[error("{0} already exists")]
    DestExists(PathBuf),
    /// The destination's filesystem cannot make reflink copies.
    #[error("the filesystem holding {dest} cannot make reflink copies (use XFS with reflink=1, or btrfs)")]
    ReflinkUnsupported {
        /// The clone that was asked for.
        dest: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Reflink copies need the source and destination on one filesystem.
    #[error("cannot reflink {src} to {dest}: they are on different filesystems")]
    CrossDevice {
        /// The disk cloned.
        src: PathBuf,
        /// The clone.
        dest: PathBuf,
    },
    /// dm-snapshot was chosen but the kernel has no device-mapper.
    #[error("device-mapper is not available on this host (no /dev/mapper/control)")]
    DeviceMapperUnavailable,
    /// dm-snapshot disks are as large as their origin.
    #[error("a dm-snapshot disk cannot be larger than its origin ({origin} bytes)")]
    DmCannotGrow {
        /// The origin's size in bytes.
        origin: u64,
    },
    /// Disks only grow.
    #[error("cannot shrink a disk from {current} to {requested} bytes")]
    Shrink {
        /// The disk's size now.
        current: u64,
        /// The size asked for.
        requested: u64,
    },
    /// resize2fs refused the size (each ext4 grows only so far past the size
    /// it was made at); the disk is put back as it was.
    #[error("the filesystem in {path} cannot grow to {size} bytes; the disk is left as it was")]
    CannotGrow {
        /// The disk.
        path: PathBuf,
        /// The size asked for.
        size: u64,
        /// What resize2fs said.
        #[source]
        source: banger_host::CommandError,
    },
    /// A host tool is not installed.
    #[error("{tool} not found; install Debian's {package} package")]
    MissingTool {
        /// The program looked for.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
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

/// A closure mapping an `io::Error` to [`StorageError::Io`] for `path`.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_owned(), source }
}
