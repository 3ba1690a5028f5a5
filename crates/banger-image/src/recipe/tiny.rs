//! The tiny recipe: busybox and the agent, which runs as PID 1.

use std::fs;
use std::path::Path;

use banger_host::HostCommands;

use crate::error::io_at;
use crate::{elf, host, layout, tree, BuildOptions, BuiltImage, ImageError};

/// Builds a busybox root in `scratch` and writes it to `output`.
pub(crate) fn build(
    cmds: &dyn HostCommands,
    opts: &BuildOptions,
    scratch: &Path,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, ImageError> {
    elf::require_static(&opts.busybox, ImageError::BusyboxMissing, ImageError::BusyboxNotStatic)?;
    let applets = layout::parse_applets(&host::busybox_list(cmds, &opts.busybox)?);
    if applets.is_empty() {
        return Err(ImageError::NoApplets(opts.busybox.clone()));
    }
    progress(&format!("laying out a busybox root with {} applets", applets.len()));
    let root = scratch.join("root");
    fs::create_dir(&root).map_err(io_at(&root))?;
    tree::materialize(&root, &layout::tiny(&applets, &opts.busybox, &opts.agent))?;
    let size_bytes = super::make_ext4(cmds, &root, opts, output, progress)?;
    Ok(BuiltImage { size_bytes, init: "/sbin/init".to_owned() })
}
