//! One module per recipe; each fills a root in scratch space and hands it to
//! [`make_ext4`].

pub(crate) mod debian;
pub(crate) mod rootfs;
pub(crate) mod tiny;

use std::path::Path;

use crate::{host, layout, tree, BuildOptions, ImageError};

/// Measures `root`, picks the image size and writes it as ext4 to `output`.
pub(crate) fn make_ext4(
    root: &Path,
    opts: &BuildOptions,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<u64, ImageError> {
    let needed = tree::content_bytes(root)?;
    let size = match opts.size_bytes {
        Some(size) if size < needed => return Err(ImageError::TooSmall { size, needed }),
        Some(size) => size,
        None => layout::default_size(needed),
    };
    progress(&format!("making a {} MiB ext4 filesystem", size.div_ceil(1 << 20)));
    host::mkfs_ext4("rootfs", Some(root), output, size)?;
    Ok(size)
}
